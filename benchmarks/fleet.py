"""
A fleet that loses nothing: three caret servers behind a real HAProxy on one
machine, clients running reference sessions all the while, through a rolling
restart and then the sudden death of one server.

Loopback addresses stand in for hosts.  HAProxy listens on 127.0.0.1 and
balances over caret servers on 127.0.0.2, 127.0.0.3 and 127.0.0.4, each
C{twistd -n caret --workers 2 --port haproxy:tcp:PORT:interface=127.0.0.N
--trusted-proxy 127.0.0.1}.  HAProxy sends the PROXY header (C{send-proxy}),
checks each server every C{--check-interval} by waiting for its greeting
(C{fall 1 rise 1}), and sends a connection that a server refuses to another
server (C{retries}, C{option redispatch 1}).  The clients run the reference
session of docs/protocol.rst with short pauses on C{--lanes} connections at
once, each lane starting a new session as soon as its last one ends, and
check every reply byte.

The phases, each session counted in the phase it started in:

 - B{steady}: nothing happens; the baseline.
 - B{rolling restart}: each server in turn is drained in HAProxy (no new
   sessions), gets SIGTERM (it stops listening at once and drains its
   sessions), exits, is started again on the same address, and is made ready
   in HAProxy again.  No session may fail.
 - B{SIGTERM alone}: the same without telling HAProxy.  HAProxy's connections
   are refused and go to another server, but one that the kernel had queued
   as the last process closed the listening socket is reset, and HAProxy does
   not retry an established connection: such a session fails before its
   greeting, and no other may.
 - B{kill}: one server and its workers get SIGKILL together, as if its host
   had died.  Only the sessions it was serving at that moment may fail (HAProxy
   says, in its log, which server served each session); HAProxy must stop
   trying it once its check has failed, the connections it tried there until
   then going to another.  Then it is started again.

It prints a report (and, with C{--json FILE}, writes the figures to FILE as
JSON), and exits 1 if a claim above does not hold.  tests/test_fleet.py runs
it, small, in CI; docs/fleet.rst describes the procedure.

    python benchmarks/fleet.py [--lanes 24] [--workers 2] [--pause 0.05]
                               [--json FILE] [--keep]

It needs C{haproxy} (Debian's package).  Not for throughput (see
benchmarks/compare.py), and not a real network: every host is this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater, react
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.listening import listeningIn
from caretproto.processlines import LineProcessProtocol
from caretproto.reference import REFERENCE_SCRIPT
from caretproto.referenceclient import runSession
from caretproto.service import LISTENING

TWISTD = str(Path(sys.executable).parent / "twistd")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")

BALANCER = "127.0.0.1"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
VICTIM = 1
"""The index in L{HOSTS} of the server that is killed."""

# Each server runs in a session of its own, so that SIGKILL to its process
# group takes the parent and its workers at once, as a host's death would.
_NEW_SESSION = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"

HAPROXY_CONFIG = """\
global
    log stdout format raw local0 info
    stats socket {stats} level admin
    nbthread 1

defaults
    mode tcp
    log global
    log-format "fleet-session %cp %s %rc %ts %Ts.%ms %Tt"
    timeout connect 2s
    timeout check 1s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1

frontend fleet
    bind {balancer}:{port}
    default_backend carets

backend carets
    balance leastconn
    source {balancer}
    option tcp-check
    tcp-check expect string *
    default-server send-proxy check inter {interval}ms fall 1 rise 1
{servers}
"""
"""
C{nbthread 1}: HAProxy writes a log line to standard output only if no other
of its threads is writing one just then, and drops it otherwise (after 200
tries; its C{DroppedLogs} counts them); one thread never collides, and is
plenty for this load.  The report says whether any line was dropped anyway
(standard output is non-blocking to HAProxy: a full pipe drops one too).
C{send-proxy} also puts the PROXY header in front of the health checks (no
C{check-send-proxy} needed), so a check is a real session that must be
greeted.  C{option redispatch 1} sends every retry to another server, with no
turn-around delay: a refused connection means a server that is going or gone.
C{timeout check} lets a busy server take up to a second to greet a check (a
dead one refuses it at once).  C{source} makes explicit the balancer's
address, the one the servers trust.
"""

ACCEPTED_WITHIN = 1.0
"""
Seconds after HAProxy is told to drain a server before it gets SIGTERM: time
for its workers to accept the connections HAProxy had just opened, a reactor
turn on an idle machine, far longer allowed for a busy one.
"""

SESSION_LOG = re.compile(
    r"fleet-session (?P<port>\d+) (?P<server>\S+) (?P<retries>\+?\d+) "
    r"(?P<termination>\S+) (?P<accepted>[\d.]+) (?P<total>-?\d+)"
)


def freePort(host: str) -> int:
    """A port on C{host} that nobody listens on now, for HAProxy to bind."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds)  # type: ignore[arg-type]


class Program(LineProcessProtocol):
    """
    A child process in a session of its own, its output kept line by line.

    @ivar ended: fires with the exit code, or minus the signal that ended it.
    """

    def __init__(self, name: str, argv: Sequence[str], folder: Path) -> None:
        super().__init__()
        self.name = name
        self.lines: list[str] = []
        self.ended: Deferred[int] = Deferred()
        self._waiting: list[tuple[re.Pattern[str], Deferred[re.Match[str]]]] = []
        self.log = open(folder / f"{name}.log", "a")
        argv = [sys.executable, "-c", _NEW_SESSION, *argv]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            self, argv[0], argv, env=dict(os.environ), path=str(folder)
        )
        # Stopped early (Ctrl-C, SIGTERM), the script leaves nothing running.
        reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
            "before", "shutdown", self._stopped
        )

    def _stopped(self) -> Deferred[int] | None:
        if self.ended.called:
            return None
        self.signal(signal.SIGKILL)
        return self.ended

    def lineReceived(self, childFD: int, line: str) -> None:
        self.lines.append(line)
        self.log.write(line + "\n")
        waiting, self._waiting = self._waiting, []
        for pattern, waiter in waiting:
            match = pattern.search(line)
            if match:
                waiter.callback(match)
            else:
                self._waiting.append((pattern, waiter))

    def waitFor(self, pattern: str) -> Deferred[re.Match[str]]:
        """Fires with the match of the next line that matches C{pattern}."""
        waiter: Deferred[re.Match[str]] = Deferred()
        self._waiting.append((re.compile(pattern), waiter))
        return waiter

    def signal(self, number: int) -> None:
        """Send signal C{number} to the program and every process it started."""
        pid = self.transport.pid  # type: ignore[union-attr]
        if pid is not None:
            try:
                os.killpg(pid, number)
            except ProcessLookupError:
                pass

    def processEnded(self, reason: Failure) -> None:
        self.log.close()
        waiting, self._waiting = self._waiting, []
        for _, waiter in waiting:
            waiter.errback(RuntimeError(f"{self.name} ended:\n" + self.tail()))
        ended = reason.value
        if isinstance(ended, (ProcessDone, ProcessTerminated)):
            status = ended.exitCode
            if status is None:
                status = -(ended.signal or 0)
            self.ended.callback(status)
        else:
            self.ended.errback(reason)

    def tail(self, count: int = 20) -> str:
        return "\n".join(self.lines[-count:])


class Server:
    """One caret server of the fleet: a host, at one address."""

    def __init__(self, index: int, host: str, workers: int, folder: Path) -> None:
        self.name = f"caret{index + 1}"
        self.host = host
        self.port = 0
        self.workers = workers
        self.folder = folder
        self.program: Program | None = None

    async def start(self) -> None:
        """Start it, on its port of before if it had one; wait until it listens."""
        self.program = Program(
            self.name,
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "caret",
                "--workers",
                str(self.workers),
                "--port",
                f"haproxy:tcp:{self.port}:interface={self.host}",
                "--trusted-proxy",
                BALANCER,
            ],
            self.folder,
        )
        line = await self.program.waitFor(re.escape(LISTENING.format(address="")))
        [listening] = listeningIn(line.string)
        assert listening.port is not None
        self.port = listening.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class _Command(Protocol):
    """One command to HAProxy's stats socket, which answers and closes."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.command.encode() + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.received)


class HAProxy:
    """HAProxy in front of the servers, its log and its stats socket."""

    def __init__(
        self, servers: Sequence[Server], interval: float, folder: Path
    ) -> None:
        self.port = freePort(BALANCER)
        self.stats = str(folder / "stats.sock")
        self.interval = interval
        config = folder / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                stats=self.stats,
                balancer=BALANCER,
                port=self.port,
                interval=round(interval * 1000),
                servers="\n".join(
                    f"    server {server.name} {server.address}" for server in servers
                ),
            )
        )
        assert HAPROXY is not None
        self.program = Program("haproxy", [HAPROXY, "-db", "-f", str(config)], folder)

    async def command(self, command: str) -> str:
        """Run C{command} on HAProxy's stats socket; return its answer."""
        client = _Command(command)
        await connectProtocol(UNIXClientEndpoint(reactor, self.stats), client)
        return (await client.done).decode()

    async def status(self) -> dict[str, str]:
        """
        Each server's status (C{UP}, C{DOWN}, C{DRAIN}...), with C{?} after
        it until a check has passed.
        """
        table = (await self.command("show stat")).splitlines()
        header = table[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in table[1:]]
        return {
            # HAProxy starts with every server up, before any check: up
            # means up with a check passed.
            row["svname"]: row["status"]
            + ("" if row["check_status"] == "L7OK" else "?")
            for row in rows
            if row.get("pxname") == "carets" and row["svname"].startswith("caret")
        }

    async def until(self, name: str, up: bool, timeout: float = 60.0) -> float:
        """
        Wait until HAProxy has server C{name} up (or not), polling every 20
        ms; return when it was first seen so.
        """
        deadline = time.time() + timeout
        while True:
            try:
                status = (await self.status()).get(name, "")
            except (OSError, IndexError, ConnectError):
                status = ""
            if (status == "UP") == up and status:
                return time.time()
            if time.time() > deadline:
                raise RuntimeError(
                    f"HAProxy did not see {name} {'up' if up else 'down'} within "
                    f"{timeout}s:\n{self.program.tail()}"
                )
            await sleep(0.02)

    async def droppedLogs(self) -> int:
        """How many log lines HAProxy could not write."""
        info = await self.command("show info")
        match = re.search(r"^DroppedLogs: (\d+)$", info, re.MULTILINE)
        assert match is not None, info
        return int(match[1])

    def sessions(self) -> dict[int, list[dict[str, Any]]]:
        """HAProxy's log of every session that ended, by client port."""
        byPort: dict[int, list[dict[str, Any]]] = {}
        for line in self.program.lines:
            match = SESSION_LOG.search(line)
            if match:
                entry = match.groupdict()
                entry["accepted"] = float(entry["accepted"])
                byPort.setdefault(int(entry["port"]), []).append(entry)
        return byPort


ORDER_UNCERTAIN = 0.05
"""
Seconds within which a time HAProxy logged and a time this script saw on its
stats socket are not known to be in order (a CI run once had a redispatch
logged 10 ms after the poll that first saw the server down).
"""


@implementer(IStreamClientEndpoint)
class _NotingPort:
    """Connects through C{endpoint}, noting the connection's own port."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint
        self.port = 0

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Protocol]:
        def note(protocol: Protocol) -> Protocol:
            assert protocol.transport is not None
            self.port = protocol.transport.getHost().port  # type: ignore[attr-defined]
            return protocol

        return self.endpoint.connect(protocolFactory).addCallback(note)


@dataclass
class Session:
    """One reference session, as the client saw it, and HAProxy's word on it."""

    started: float
    ended: float = 0.0
    port: int = 0
    failure: str | None = None
    detail: str = ""
    server: str = ""
    redispatched: bool = False
    accepted: float = 0.0
    received: str = ""
    """The bytes received, as Latin-1 text: one character a byte, for JSON."""


class Clients:
    """C{lanes} connections at a time, each running sessions back to back."""

    def __init__(self, endpoint: IStreamClientEndpoint, lanes: int, pause: float):
        self.endpoint = endpoint
        self.script = [(data, pause) for data, _ in REFERENCE_SCRIPT]
        self.sessions: list[Session] = []
        self.running = True
        self._log = Logger(observer=lambda event: None)
        self._lanes = [ensureDeferred(self._lane(lane)) for lane in range(lanes)]

    async def _lane(self, lane: int) -> None:
        while self.running:
            session = Session(time.time())
            self.sessions.append(session)
            noting = _NotingPort(self.endpoint)
            outcome = await runSession(
                reactor,  # type: ignore[arg-type]
                noting,
                f"lane{lane}",
                self._log,
                self.script,
                timeout=30,
            )
            session.ended = time.time()
            session.port = noting.port
            session.failure = outcome.failure
            session.detail = outcome.detail
            session.received = outcome.received.decode("latin-1")

    async def stop(self) -> None:
        """Start no more sessions; wait for those running to end."""
        self.running = False
        await gatherResults(self._lanes)


@dataclass
class Phase:
    name: str
    began: float
    ended: float = 0.0
    started: int = 0
    completed: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def count(self, sessions: Sequence[Session]) -> list[Session]:
        mine = [s for s in sessions if self.began <= s.started < self.ended]
        self.started = len(mine)
        self.failed = sum(1 for s in mine if s.failure)
        self.completed = self.started - self.failed
        for s in mine:
            if s.failure:
                self.failures[s.failure] = self.failures.get(s.failure, 0) + 1
        return mine


async def restart(server: Server, haproxy: HAProxy, drainFirst: bool) -> None:
    """
    Restart C{server}: SIGTERM, which it drains, then start it again and wait
    until HAProxy has it up.  With C{drainFirst}, tell HAProxy first to send
    it no new sessions, and give the connections HAProxy made just before
    that a moment to be accepted: a connection still in the listen queue
    when the last process holding the socket closes it is reset, and HAProxy
    does not retry a connection that had been established.
    """
    assert server.program is not None
    if drainFirst:
        await haproxy.command(f"set server carets/{server.name} state drain")
        await sleep(ACCEPTED_WITHIN)
    server.program.signal(signal.SIGTERM)
    await server.program.ended
    await server.start()
    if drainFirst:
        await haproxy.command(f"set server carets/{server.name} state ready")
    await haproxy.until(server.name, up=True)


async def runFleet(options: argparse.Namespace, folder: Path) -> dict[str, Any]:
    servers = [
        Server(index, host, options.workers, folder) for index, host in enumerate(HOSTS)
    ]
    await gatherResults([ensureDeferred(server.start()) for server in servers])
    haproxy = HAProxy(servers, options.check_interval, folder)
    try:
        for server in servers:
            await haproxy.until(server.name, up=True)
        # The phase begins before the clients: their first sessions count.
        phases = [Phase("steady", time.time())]
        clients = Clients(
            TCP4ClientEndpoint(reactor, BALANCER, haproxy.port),
            options.lanes,
            options.pause,
        )
        await sleep(options.steady)

        for name, drainFirst in [
            ("rolling restart", True),
            ("SIGTERM alone", False),
        ]:
            phases.append(Phase(name, time.time()))
            phases[-2].ended = phases[-1].began
            for server in servers:
                await restart(server, haproxy, drainFirst)
                await sleep(options.steady / 3)

        phases.append(Phase("kill", time.time()))
        phases[-2].ended = phases[-1].began
        await sleep(options.steady / 2)
        victim = servers[VICTIM]
        assert victim.program is not None
        killedAt = time.time()
        victim.program.signal(signal.SIGKILL)
        downAt = await haproxy.until(victim.name, up=False)
        await victim.program.ended
        # The kernel ends the processes a moment after the signal: until
        # then they still accept and serve.
        deadAt = time.time()
        await sleep(options.steady / 2)
        await victim.start()
        backAt = await haproxy.until(victim.name, up=True)
        await sleep(options.steady / 3)
        phases[-1].ended = time.time()
        await clients.stop()

        # HAProxy logs a session as it ends: wait for the last ones' lines.
        # The log is read once a turn, not once a session: that took seconds
        # on a busy machine, the reactor (and every pipe) standing still.
        deadline = time.time() + 10
        while time.time() < deadline:
            logged = haproxy.sessions()
            if all(s.port in logged for s in clients.sessions if s.port):
                break
            await sleep(0.1)
        droppedLogs = await haproxy.droppedLogs()
    finally:
        for program in [haproxy.program, *(s.program for s in servers)]:
            if program is not None and not program.ended.called:
                program.signal(signal.SIGTERM)
        await gatherResults(
            [p.ended for p in [haproxy.program, *(s.program for s in servers)] if p]
        )

    logged = haproxy.sessions()
    for session in clients.sessions:
        entries = logged.get(session.port, [])
        if entries:
            entry = min(entries, key=lambda e: abs(e["accepted"] - session.started))
            session.server = entry["server"]
            session.redispatched = entry["retries"].startswith("+")
            session.accepted = entry["accepted"]

    counted = [phase.count(clients.sessions) for phase in phases]
    killPhase = counted[-1]
    held = [
        s
        for s in clients.sessions
        if s.server == victim.name and s.started <= deadAt and killedAt < s.ended
    ]
    failedElsewhere = [s for s in killPhase if s.failure and s not in held]
    movedAway = [
        s.accepted - killedAt
        for s in killPhase
        if s.redispatched and killedAt <= s.accepted < backAt
    ]
    kill = {
        "server": victim.name,
        "heldAtKill": len(held),
        "failedOfHeld": sum(1 for s in held if s.failure),
        "failedNotHeld": len(failedElsewhere),
        "downAfter": downAt - killedAt,
        "redispatched": len(movedAway),
        "lastRedispatchAfter": max(movedAway, default=None),
        # The two times come from different observers: HAProxy's log clock
        # and this script's poll of its stats socket.  Within
        # ORDER_UNCERTAIN of each other their order is not established.
        "redispatchedAfterDown": sum(
            1 for t in movedAway if t > downAt - killedAt + ORDER_UNCERTAIN
        ),
        "downFor": backAt - killedAt,
    }
    served = {server.name: 0 for server in servers}
    for session in clients.sessions:
        if session.server in served:
            served[session.server] += 1
    unlogged = sum(1 for s in clients.sessions if s.port and not s.server)
    # What the completed sessions received, so that a reader (and the test)
    # can check it against the specification, not against caretproto.rules,
    # which the sessions themselves check with.
    replies: dict[str, int] = {}
    for session in clients.sessions:
        if not session.failure:
            replies[session.received] = replies.get(session.received, 0) + 1
    rolling = phases[1]
    claims = {
        "no session failed in the steady phase": phases[0].failed == 0,
        "no session failed during the rolling restart": rolling.failed == 0,
        "every failure of SIGTERM alone was a connection reset before the greeting": (
            set(phases[2].failures) <= {"no greeting"}
        ),
        "every server served sessions": all(served.values()),
        "only sessions the killed server held failed": not failedElsewhere,
        "HAProxy tried the killed server no more once it saw it down": (
            kill["redispatchedAfterDown"] == 0
        ),
    }
    return {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}",
        "haproxy": _haproxyVersion(),
        "servers": {server.name: server.address for server in servers},
        "workers": options.workers,
        "lanes": options.lanes,
        "pause": options.pause,
        "checkInterval": options.check_interval,
        "phases": [asdict(phase) for phase in phases],
        "kill": kill,
        "served": served,
        "unlogged": unlogged,
        "droppedLogs": droppedLogs,
        "replies": replies,
        "claims": claims,
        "failures": [
            asdict(s) for s in clients.sessions if s.failure and s not in held
        ][:10],
    }


def _haproxyVersion() -> str:
    assert HAPROXY is not None
    first = subprocess.run(
        [HAPROXY, "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return first[0] if first else "?"


def report(figures: dict[str, Any]) -> str:
    """The figures, as a person reads them."""
    lines = [
        f"{figures['haproxy']}",
        f"machine: {figures['machine']}",
        f"HAProxy on {BALANCER} in front of "
        + ", ".join(f"{name} {address}" for name, address in figures["servers"].items())
        + f", each --workers {figures['workers']}; health checks every "
        f"{figures['checkInterval']:g} s",
        f"{figures['lanes']} clients running reference sessions back to back "
        f"(pauses {figures['pause']:g} s)",
        "",
        f"{'phase':<17} {'started':>8} {'completed':>10} {'failed':>7}  seconds",
    ]
    for phase in figures["phases"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in phase["failures"].items())
        lines.append(
            f"{phase['name']:<17} {phase['started']:>8} {phase['completed']:>10} "
            f"{phase['failed']:>7}  {phase['ended'] - phase['began']:7.1f}"
            + (f"  ({kinds})" if kinds else "")
        )
    kill = figures["kill"]
    last = kill["lastRedispatchAfter"]
    lines += [
        "",
        f"kill: {kill['server']} was serving {kill['heldAtKill']} sessions at the "
        f"SIGKILL; {kill['failedOfHeld']} of them failed, and "
        f"{kill['failedNotHeld']} other sessions failed",
        f"      HAProxy saw it down {kill['downAfter']:.2f} s after the kill; the "
        f"{kill['redispatched']} sessions it tried there meanwhile went to another "
        f"server"
        + (f" (the last {last:.2f} s after the kill)" if last is not None else ""),
        "served: "
        + ", ".join(f"{name} {count}" for name, count in figures["served"].items())
        + (
            f"; {figures['unlogged']} not in HAProxy's log"
            f" (HAProxy dropped {figures['droppedLogs']} log lines)"
            if figures["unlogged"] or figures["droppedLogs"]
            else ""
        ),
        "",
    ]
    for claim, holds in figures["claims"].items():
        lines.append(f"{'ok' if holds else 'FAILED':>6}  {claim}")
    for failure in figures["failures"]:
        lines.append(f"        {failure}")
    return "\n".join(lines)


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--lanes", type=int, default=24, help="sessions at once")
    parser.add_argument("--workers", type=int, default=2, help="of each server")
    parser.add_argument(
        "--pause", type=float, default=0.05, help="after each of a session's buffers"
    )
    parser.add_argument(
        "--steady", type=float, default=3.0, help="seconds of the steady phase"
    )
    parser.add_argument(
        "--check-interval", type=float, default=0.2, help="HAProxy's, in seconds"
    )
    parser.add_argument(
        "--json", metavar="FILE", type=Path, help="write the figures to FILE as JSON"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the logs and HAProxy's configuration"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    if HAPROXY is None:
        sys.exit("fleet.py needs haproxy (Debian's package haproxy)")
    folder = Path(tempfile.mkdtemp(prefix="caret-fleet-"))

    async def run(_: Any) -> None:
        figures = await runFleet(options, folder)
        print(report(figures))
        if options.json:
            options.json.write_text(json.dumps(figures, indent=2))
        if options.keep:
            print(f"logs: {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        if not all(figures["claims"].values()):
            raise SystemExit(1)

    react(lambda r: ensureDeferred(run(r)))


if __name__ == "__main__":
    main()
