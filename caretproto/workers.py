"""
Worker processes: one caret server on one machine, served by N processes.

One CPython process runs on one core.  With C{--workers N}, the process
twistd starts (the parent) binds every C{--port} through its endpoint, as a
single process would, but never accepts: it starts N workers, each a normal
C{caret} server built by L{caretproto.tap.makeService} with the same options,
that accepts on the parent's listening sockets instead of binding its own.

The workers share the parent's sockets rather than each binding one with
C{SO_REUSEPORT}, because sharing keeps endpoints the one way to listen: UNIX
sockets, sockets inherited from systemd and ports below 1024 bound before
twistd drops privileges all work, none of which C{SO_REUSEPORT} can do; a
client waiting in the shared listen queue is accepted by another worker when
one dies, where a C{SO_REUSEPORT} socket's queue dies with its process; and no
other program can bind the same port and take a share of the clients.  What
C{SO_REUSEPORT} does better, spreading a burst of connections evenly, the
workers get by accepting one connection each time the socket is ready.

The parent side is L{WorkerPool}: it starts the workers, relays their log
events into its own log (marked with the worker's number and pid), hands
their reports (log events with a L{REPORT} field: their metrics) to whatever
gathers them, replaces a worker that dies, and on shutdown asks each to stop
(SIGTERM, so that each drains its sessions as
L{caretproto.service.CaretService} does) and waits for them.  The worker side
is L{inheritedEndpoint} (listen on an inherited socket as the description's
own endpoint would) and L{ParentLink} (stop when the parent is gone).

Not here: the protocol, the options (L{caretproto.tap}), or balancing across
machines, which is a load balancer's job (C{haproxy:} endpoints,
L{caretproto.proxy}).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import sys
from collections.abc import Callable, Hashable, Sequence
from string import Formatter
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints, fdesc, tcp, unix
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorFDSet,
    IReactorProcess,
    IReactorTime,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto import proxy

FIRST_FD = 3
"""A worker finds the listening sockets at descriptors 3, 4, ..., in --port order."""

ADOPTABLE = frozenset({"tcp", "tcp6", "unix", "ssl", "systemd"})
"""
Endpoint types whose listening socket a worker can take over, alone or
behind C{haproxy:}.  Each listens with C{listenTCP}, C{listenUNIX},
C{listenSSL} or C{adoptStreamPort}, which L{inheritedEndpoint} answers.
"""


REPORT = "worker_report"
"""
The field of a worker's log event that makes it a report to the parent: the
pool hands its value to L{WorkerPool.reports} instead of logging it.
"""


class WorkerReports(TypingProtocol):
    """
    What gathers the workers' reports: L{caretproto.metrics.WorkersMetrics}.
    Each worker process is known by a key of its own, and is told of once it
    has ended.
    """

    def reported(self, worker: Hashable, report: Any) -> None:
        """C{worker} reported C{report}, a L{REPORT} field's value."""

    def ended(self, worker: Hashable) -> None:
        """C{worker} has ended: it will report no more."""


def adoptable(description: str) -> bool:
    """Whether workers can share the socket that C{description} listens on."""
    kind, _, wrapped = description.partition(":")
    if kind == proxy.PREFIX:
        return adoptable(wrapped)
    return kind in ADOPTABLE


def workerCommand(argv: Sequence[str], listening: int) -> list[str]:
    """
    The command that starts a worker: the C{caret} command with the parent's
    own options, under C{twist} logging JSON events to its standard output
    for the parent to relay, told that its C{listening} sockets are
    inherited.
    """
    fds = ",".join(str(fd) for fd in range(FIRST_FD, FIRST_FD + listening))
    return [
        sys.executable,
        "-m",
        "twisted",
        "--log-format=json",
        "--log-file=-",
        "caret",
        *argv,
        "--workers=1",
        f"--worker-fds={fds}",
    ]


def describeExit(reason: Failure) -> str:
    """How a process ended, for the log: an exit code or a signal's name."""
    ended = reason.value
    if isinstance(ended, ProcessTerminated) and ended.signal is not None:
        try:
            return signal.Signals(ended.signal).name
        except ValueError:
            return f"signal {ended.signal}"
    if isinstance(ended, (ProcessDone, ProcessTerminated)):
        return f"exit code {ended.exitCode}"
    return str(ended)


class _Worker(ProcessProtocol):
    """One worker process, as its pool sees it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.startedAt = 0.0
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial[childFD] + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self.pool.relay(self, childFD, line)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._partial.items():
            if rest:
                self.pool.relay(self, childFD, rest)
        self.pool.workerEnded(self, reason)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass


class WorkerPool(Service):
    """
    Runs C{count} worker processes with C{command}, each given the listening
    sockets that C{descriptors} returns; replaces a worker that dies; stops
    them all, gracefully, when stopped.

    A worker that ran for C{steadyAfter} seconds or more before it died is
    replaced at once.  One that died sooner is replaced after a delay that
    grows with each such death in a row (L{restartDelay}), so that a worker
    that cannot start does not make the parent spin.

    @ivar killAfter: seconds the workers get to drain their sessions after
        SIGTERM before they are killed.
    @ivar reports: what the workers' reports go to, if anything; without it
        they are logged like any other event.
    """

    _log = Logger()
    reports: WorkerReports | None = None
    steadyAfter = 10.0
    restartDelay: Callable[[int], float] = staticmethod(
        backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter=lambda: 0)
    )

    def __init__(
        self,
        count: int,
        command: Sequence[str],
        descriptors: Callable[[], Sequence[int]],
        killAfter: float,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.count = count
        self.command = list(command)
        self.descriptors = descriptors
        self.killAfter = killAfter
        self._processes: IReactorProcess = reactor
        self._clock: IReactorTime = reactor
        self.workers: dict[int, _Worker] = {}
        self._quickDeaths: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._killCall: IDelayedCall | None = None
        self._allEnded: list[Deferred[None]] = []

    def startService(self) -> None:
        Service.startService(self)
        for index in range(1, self.count + 1):
            self._start(index)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = _Worker(self, index)
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for offset, fd in enumerate(self.descriptors()):
            childFDs[FIRST_FD + offset] = fd
        worker.startedAt = self._clock.seconds()
        try:
            self._processes.spawnProcess(
                worker,
                self.command[0],
                self.command,
                env=dict(os.environ),
                childFDs=childFDs,
            )
        except OSError as error:
            delay = self._replaceLater(index, 0.0)
            self._log.error(
                "worker {index} could not be started: {error}; trying again "
                "in {delay:.1f}s",
                index=index,
                error=error,
                delay=delay,
            )
            return
        self.workers[index] = worker
        self._log.info("worker {index} started: pid {pid}", index=index, pid=worker.pid)

    def _replaceLater(self, index: int, lived: float) -> float:
        """
        Start worker C{index} anew, after a worker that ran for C{lived}
        seconds died: at once after a steady run, later and later after quick
        deaths in a row.  Returns the delay.
        """
        if lived >= self.steadyAfter:
            self._quickDeaths[index] = 0
            delay = 0.0
        else:
            deaths = self._quickDeaths.get(index, 0)
            self._quickDeaths[index] = deaths + 1
            delay = self.restartDelay(deaths)
        self._restarts[index] = self._clock.callLater(delay, self._start, index)
        return delay

    def relay(self, worker: _Worker, childFD: int, line: bytes) -> None:
        """
        Log a line a worker wrote: a JSON log event from its standard output
        goes into this process's log as it was, marked with the worker's
        number and pid; anything else is logged as text.
        """
        text = line.lstrip(b"\x1e").decode("utf-8", "replace")
        event = _logEvent(text) if childFD == 1 else None
        if event is not None and REPORT in event and self.reports is not None:
            self.reports.reported(worker, event[REPORT])
            return
        if event is None:
            if text.strip():
                self._log.emit(
                    LogLevel.warn if childFD == 2 else LogLevel.info,
                    "{line}",
                    line=text,
                    log_system=_system(worker, "stderr" if childFD == 2 else "stdout"),
                    worker=worker.index,
                    worker_pid=worker.pid,
                )
            return
        level = event.get("log_level")
        system = event.get("log_system") or (
            f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        )
        event["log_system"] = _system(worker, system)
        event["worker"] = worker.index
        event["worker_pid"] = worker.pid
        self._log.observer(event)

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        """
        C{worker} is gone: replace it if this pool is running, or count it
        out if the pool is stopping.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.reports is not None:
            self.reports.ended(worker)
        status = describeExit(reason)
        if not self.running:
            self._log.info(
                "worker {index} (pid {pid}) ended: {status}",
                index=worker.index,
                pid=worker.pid,
                status=status,
            )
            if not self.workers:
                self._ended()
            return
        lived = self._clock.seconds() - worker.startedAt
        delay = self._replaceLater(worker.index, lived)
        self._log.error(
            "worker {index} (pid {pid}) died after {lived:.1f}s: {status}; "
            "starting another in {delay:.1f}s",
            index=worker.index,
            pid=worker.pid,
            lived=lived,
            status=status,
            delay=delay,
        )

    def stopService(self) -> Deferred[None]:
        """
        Ask every worker to stop, as twistd asks a single process, with
        SIGTERM: each stops accepting and drains its sessions.  Fires when all
        have ended; those still running after C{killAfter} seconds are
        killed.
        """
        Service.stopService(self)
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        if not self.workers:
            return succeed(None)
        for worker in self.workers.values():
            worker.signal("TERM")
        self._killCall = self._clock.callLater(self.killAfter, self._kill)
        ended: Deferred[None] = Deferred()
        self._allEnded.append(ended)
        return ended

    def _kill(self) -> None:
        self._killCall = None
        for worker in self.workers.values():
            self._log.warn(
                "worker {index} (pid {pid}) still running {timeout}s after "
                "SIGTERM: killing it",
                index=worker.index,
                pid=worker.pid,
                timeout=self.killAfter,
            )
            worker.signal("KILL")

    def _ended(self) -> None:
        if self._killCall is not None:
            self._killCall.cancel()
            self._killCall = None
        waiting, self._allEnded = self._allEnded, []
        for ended in waiting:
            ended.callback(None)


def _system(worker: _Worker, system: str) -> str:
    return f"worker {worker.index} pid {worker.pid} {system}"


_UNPERSISTABLE = {"unpersistable": True}
"""What L{eventAsJSON} writes for a field that JSON cannot hold."""


def _logEvent(text: str) -> dict[str, Any] | None:
    """The log event in a line of JSON a worker wrote, if it is one."""
    try:
        event = eventFromJSON(text)
        fields = [
            field
            for _, field, _, _ in Formatter().parse(event.get("log_format") or "")
            if field is not None
        ]
    except (ValueError, AttributeError):
        return None
    if not isinstance(event, dict) or "log_time" not in event:
        return None
    for key in ["log_logger", "log_source"]:
        if event.get(key) == _UNPERSISTABLE:
            del event[key]
    # Twisted formats a flattened event without the fields' format specs
    # ({duration:.3f}); when every field came through JSON as itself, let it
    # format the fields instead.
    roots = {re.split(r"[.\[]", field, maxsplit=1)[0] for field in fields}
    if all(event.get(root, _UNPERSISTABLE) != _UNPERSISTABLE for root in roots):
        event.pop("log_flattened", None)
    return event


# The worker side.


class _TakingTurns:
    """
    A listening socket shared with the other workers accepts one connection
    each time it is ready, where a Twisted port accepts all that are waiting:
    every worker wakes when clients connect, and taking one each spreads a
    burst of clients over the workers instead of giving it all to whichever
    woke first.
    """

    numberAccepts: int

    def doRead(self) -> None:
        self.numberAccepts = 1
        tcp.Port.doRead(self)  # type: ignore[arg-type]


class _SharedTCPPort(_TakingTurns, tcp.Port):
    """An inherited TCP socket (Twisted already leaves it as it found it)."""


class _SharedUNIXPort(_TakingTurns, unix.Port):
    """
    An inherited UNIX socket.  Twisted's UNIX port acts as the socket's owner
    even when it adopted it: stopped, it shuts the socket down, which ends it
    in every process that holds it, and removes its file.  The parent bound
    it; the parent does both.
    """

    _shouldShutdown = False

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)


class _AdoptingReactor:
    """
    What a worker's endpoint takes for the reactor: asked to listen, it
    adopts the inherited socket C{fd} instead of binding one, wrapping the
    factory as the real reactor would (TLS for C{listenSSL}).
    """

    def __init__(self, reactor: Any, fd: int, backlog: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._backlog = backlog

    def adopt(
        self, factory: IProtocolFactory, backlog: int | None = None
    ) -> IListeningPort:
        """Accept on the inherited socket with C{factory}."""
        fd = self._fd
        probe = socket.socket(fileno=fd)
        family, address = probe.family, probe.getsockname()
        probe.detach()
        port: tcp.Port
        if family == socket.AF_UNIX:
            unixPort = _SharedUNIXPort._fromListeningDescriptor(
                self._reactor, fd, factory
            )
            # unix.Port listens again and sets the file's mode as it starts:
            # keep what the parent set.
            unixPort.backlog = backlog or self._backlog
            if address and address[:1] not in (b"\0", "\0"):
                unixPort.mode = stat.S_IMODE(os.stat(address).st_mode)
            port = unixPort
        else:
            port = _SharedTCPPort._fromListeningDescriptor(
                self._reactor, fd, family, factory
            )
        port.startListening()
        os.close(fd)
        return port

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        return self.adopt(factory, backlog)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        return self.adopt(TLSMemoryBIOFactory(contextFactory, False, factory), backlog)

    def listenUNIX(
        self,
        address: str,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: bool = False,
    ) -> Any:
        return self.adopt(factory, backlog)

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: Any, factory: IProtocolFactory
    ) -> Any:
        return self.adopt(factory)


@implementer(IStreamServerEndpoint)
class _Inherited:
    """Listens on an inherited socket, putting nothing in front."""

    def __init__(self, adopting: _AdoptingReactor) -> None:
        self._adopting = adopting

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return defer.execute(self._adopting.adopt, protocolFactory)


def inheritedEndpoint(
    reactor: Any, description: str, fd: int, backlog: int
) -> IStreamServerEndpoint:
    """
    The endpoint on which a worker serves C{description}: the listening
    socket the parent bound for it, inherited as C{fd}, with whatever the
    description puts in front (TLS for C{ssl:}, the PROXY protocol for
    C{haproxy:}), done by the description's own endpoint.
    """
    adopting = _AdoptingReactor(reactor, fd, backlog)

    def parse(_: Any, wrapped: str) -> IStreamServerEndpoint:
        if wrapped.partition(":")[0] == "systemd":
            # systemd's environment names the parent's descriptors, not a
            # worker's; a systemd endpoint puts nothing in front.
            return _Inherited(adopting)
        return endpoints.serverFromString(adopting, wrapped)

    return proxy.serverFromString(adopting, description, parse)


@implementer(IReadDescriptor)
class _ParentPipe:
    """The read end of the pipe a parent holds open for as long as it lives."""

    def __init__(self, fd: int, closed: Callable[[], None]) -> None:
        self._fd = fd
        self._closed = closed

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        self._closed()

    def logPrefix(self) -> str:
        return "parent"


class ParentLink(Service):
    """
    A worker's tie to its parent.  The worker stops, draining its sessions,
    when its parent is gone (its standard input, a pipe the parent holds,
    reaches its end), so that a parent killed outright leaves no workers
    serving on.  And it ignores SIGINT: Ctrl-C in a terminal reaches every
    process of the group, and the parent passes it on as SIGTERM.
    """

    _log = Logger()

    def __init__(self, reactor: Any = None, fd: int = 0) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor: Any = reactor
        self._pipe = _ParentPipe(fd, self._parentGone)

    def startService(self) -> None:
        Service.startService(self)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fdesc.setNonBlocking(self._pipe.fileno())
        IReactorFDSet(self._reactor).addReader(self._pipe)

    def stopService(self) -> None:
        Service.stopService(self)
        IReactorFDSet(self._reactor).removeReader(self._pipe)

    def _parentGone(self) -> None:
        if self.running:
            self._log.warn("the parent process is gone: stopping")
            IReactorCore(self._reactor).stop()
