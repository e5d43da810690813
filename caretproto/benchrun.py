"""
The C{caret-bench} command: options, spreading the load over processes,
the live display and the report.

C{caret-bench HOST PORT --mode rr -c 100 --processes 2 --json} runs two
worker processes (this module again, with C{--worker}), each a
L{caretproto.bench.Load} with half the connections; all start measuring
together, and their tallies are merged into one report.  The load itself, and
the checking of every reply byte, is L{caretproto.bench}; this module only
runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ClientFactory, ProcessProtocol
from twisted.internet.task import LoopingCall, react
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from caretproto.bench import MODES, Connect, Load, Tally
from caretproto.endpoints import resolve, tlsCreator
from caretproto.openfiles import OpenFilesLimitError, raiseOpenFilesLimit
from caretproto.optionchecks import positive, tcpPort

PROGRESS_INTERVAL = 0.5
"""Seconds between updates of the live display and worker progress."""


@dataclass(frozen=True)
class Params:
    """What to run: the options of one C{caret-bench} command."""

    host: str
    port: int
    mode: str = "rr"
    connections: int = 1
    size: int = 16
    duration: float = 10.0
    processes: int = 1
    tls: bool = False
    ca: str | None = None
    greetingTimeout: float = 10.0

    def shares(self) -> list[Params]:
        """The same run cut into one share per process (none left empty)."""
        processes = min(self.processes, self.connections)
        each, extra = divmod(self.connections, processes)
        return [
            Params(
                **{
                    **asdict(self),
                    "connections": each + (1 if index < extra else 0),
                    "processes": 1,
                }
            )
            for index in range(processes)
        ]


def parser() -> argparse.ArgumentParser:
    """The options of C{caret-bench}."""
    parse = argparse.ArgumentParser(
        prog="caret-bench",
        description=(
            "Drive a caret server and check every byte it answers.  rr: rounds "
            "of one --size byte message and its reply on each connection; bulk: "
            "one endless message per connection, replies counted; hold: hold "
            "the connections idle for --duration, then one round on each; "
            "sessions: the reference session of docs/protocol.rst on every connection "
            "at once.  Any wrong byte is an error and makes the exit status 1."
        ),
        epilog=(
            "The report: rounds (sessions, for sessions) and rounds_per_s; "
            "mb_per_s, reply bytes checked per second in millions; p50_ms and "
            "p99_ms of round (session) times; errors; elapsed_s, the "
            "measured window."
        ),
    )
    parse.add_argument("host", metavar="HOST", help="The server's name or address.")
    parse.add_argument("port", metavar="PORT", type=tcpPort, help="Its TCP port.")
    parse.add_argument(
        "-m", "--mode", choices=MODES, default="rr", help="What to run (default rr)."
    )
    parse.add_argument(
        "-c",
        "--connections",
        type=positive("connections", "100"),
        default=1,
        metavar="N",
        help="Connections, spread over the processes (default 1).",
    )
    parse.add_argument(
        "-s",
        "--size",
        type=positive("size", "16"),
        default=16,
        metavar="BYTES",
        help="Bytes of each rr/hold message on the wire, ^ and $ included, at "
        "least 3 (default 16).",
    )
    parse.add_argument(
        "-d",
        "--duration",
        type=positive("duration", "10", float),
        default=10.0,
        metavar="SECONDS",
        help="Seconds to measure (rr, bulk) or to hold (hold); sessions ignore "
        "it (default 10).",
    )
    parse.add_argument(
        "-P",
        "--processes",
        type=positive("processes", "2"),
        default=1,
        metavar="N",
        help="Client processes to spread the connections over (default 1).",
    )
    parse.add_argument(
        "--greeting-timeout",
        type=positive("greeting-timeout", "10", float),
        default=10.0,
        metavar="SECONDS",
        help="rr, bulk, hold: seconds to wait for every connection's greeting; "
        "the rest are errors and the run goes on with those greeted (default 10).",
    )
    parse.add_argument(
        "--json", action="store_true", help="Print the report as one JSON object."
    )
    parse.add_argument(
        "--tls",
        action="store_true",
        help="Connect with TLS, trusting the platform's CAs unless --ca.",
    )
    parse.add_argument("--ca", metavar="PEM", help="With --tls: the CA to trust.")
    return parse


def parseParams(args: Sequence[str]) -> tuple[Params, bool]:
    """
    C{args} as parameters and whether to print JSON; a bad option exits with
    status 2 and a message naming it.
    """
    parse = parser()
    options = parse.parse_args(args)
    if options.size < 3:
        parse.error(
            f"argument -s/--size: at least 3 (^, one byte, $), like --size 16; "
            f"got {options.size}"
        )
    if options.ca is not None:
        if not options.tls:
            parse.error("argument --ca: only with --tls")
        try:
            tlsCreator(options.host, options.ca)
        except ValueError as error:
            parse.error(f"argument --ca: {error}")
    try:
        resolve(options.host, options.port)
    except ValueError as error:
        parse.error(f"argument HOST: {error}")
    params = Params(
        host=options.host,
        port=options.port,
        mode=options.mode,
        connections=options.connections,
        size=options.size,
        duration=options.duration,
        processes=options.processes,
        tls=options.tls,
        ca=options.ca,
        greetingTimeout=options.greeting_timeout,
    )
    return params, options.json


def connector(reactor: Any, params: Params) -> Connect:
    """
    How each connection of a load is opened: the host is resolved once, not
    per connection.
    """
    ip = resolve(params.host, params.port)
    if not params.tls:
        return lambda factory: reactor.connectTCP(ip, params.port, factory, 30)
    creator = tlsCreator(params.host, params.ca)

    def connectTLS(factory: ClientFactory) -> Any:
        return reactor.connectSSL(ip, params.port, factory, creator, 30)

    return connectTLS


def report(params: Params, tally: Tally) -> dict[str, Any]:
    """The run's figures, as C{--json} prints them."""
    # A run that never measured (nothing connected) has no rate: 0, which
    # JSON can carry, rather than NaN, which it cannot.
    elapsed = tally.elapsed or float("inf")
    return {
        "mode": params.mode,
        "host": params.host,
        "port": params.port,
        "connections": params.connections,
        "size": params.size,
        "duration": params.duration,
        "processes": params.processes,
        "tls": params.tls,
        "rounds": tally.rounds,
        "rounds_per_s": round(tally.rounds / elapsed, 1),
        "bytes": tally.bytes,
        "mb_per_s": round(tally.bytes / elapsed / 1e6, 3),
        "p50_ms": tally.percentileMs(0.50),
        "p99_ms": tally.percentileMs(0.99),
        "errors": tally.errors,
        "elapsed_s": round(tally.elapsed, 3),
        "held": tally.held,
        "connect_s": round(tally.connectSeconds, 3),
        "error_samples": tally.errorSamples,
    }


def summary(figures: dict[str, Any]) -> str:
    """The report as a few lines for a person."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    what = {
        "rr": f"{figures['size']}-byte rounds",
        "bulk": "bulk replies",
        "hold": f"held, then one {figures['size']}-byte round each",
        "sessions": "reference sessions",
    }[figures["mode"]]
    lines = [
        f"caret-bench {figures['mode']} {figures['host']}:{figures['port']}: "
        f"{figures['connections']} connections, {what}, "
        f"{figures['processes']} process(es)",
    ]
    if figures["mode"] != "bulk":
        counted = "sessions" if figures["mode"] == "sessions" else "rounds  "
        lines.append(
            f"  {counted} {figures['rounds']:,} in {figures['elapsed_s']:.3f} s "
            f"({figures['rounds_per_s']:,.1f}/s)"
        )
    lines.append(
        f"  replies  {figures['bytes']:,} bytes in {figures['elapsed_s']:.3f} s "
        f"({figures['mb_per_s']:,.3f} MB/s)"
    )
    if figures["mode"] != "bulk":
        lines.append(
            f"  latency  p50 {ms(figures['p50_ms'])}, p99 {ms(figures['p99_ms'])}"
        )
    if figures["mode"] == "hold":
        lines.append(
            f"  held     {figures['held']:,} connections "
            f"(opened in {figures['connect_s']:.3f} s)"
        )
    lines.append(f"  errors   {figures['errors']:,}")
    lines.extend(f"    {sample}" for sample in figures["error_samples"])
    return "\n".join(lines)


class Share:
    """One process's part of a run, as the runner sees it."""

    connections = 0

    def ready(self) -> Deferred[None]:
        raise NotImplementedError

    def start(self) -> Deferred[Tally]:
        raise NotImplementedError

    def progress(self) -> dict[str, Any]:
        raise NotImplementedError


class LocalShare(Share):
    """A load run in this process."""

    def __init__(self, reactor: Any, params: Params) -> None:
        self.connections = params.connections
        self.load = Load(
            reactor,
            connector(reactor, params),
            params.mode,
            params.connections,
            params.size,
            params.duration,
            greetingTimeout=params.greetingTimeout,
        )

    def ready(self) -> Deferred[None]:
        return self.load.connect()

    def start(self) -> Deferred[Tally]:
        return self.load.start()

    def progress(self) -> dict[str, Any]:
        return self.load.progress()


class WorkerShare(Share, ProcessProtocol):
    """
    A load run by a worker process (C{caret-bench --worker PARAMS}), which
    reports by JSON lines on its stdout and starts on C{go} on its stdin.
    """

    def __init__(self, reactor: Any, params: Params) -> None:
        self.connections = params.connections
        self.params = params
        self._ready: Deferred[None] = Deferred()
        self._done: Deferred[Tally] = Deferred()
        self._progress: dict[str, Any] = {}
        self._buffer = b""
        # The worker must import this very caretproto: "python -m" would put
        # the working directory first on sys.path, and with it any other
        # checkout of the project that happens to be there.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        start = (
            f"import sys; sys.path[0] = {root!r}; "
            "from caretproto.benchrun import main; main()"
        )
        reactor.spawnProcess(
            self,
            sys.executable,
            [sys.executable, "-c", start, "--worker", json.dumps(asdict(params))],
            env=os.environ,
        )

    def ready(self) -> Deferred[None]:
        return self._ready

    def start(self) -> Deferred[Tally]:
        if self.transport is not None:
            self.transport.write(b"go\n")
        return self._done

    def progress(self) -> dict[str, Any]:
        return self._progress

    def outReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            news = json.loads(line)
            if "ready" in news and not self._ready.called:
                self._ready.callback(None)
            elif "progress" in news:
                self._progress = news["progress"]
            elif "tally" in news and not self._done.called:
                self._done.callback(Tally.fromJSON(news["tally"]))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.flush()

    def processEnded(self, reason: Failure) -> None:
        if not self._ready.called:
            self._ready.callback(None)
        if not self._done.called:
            self._done.callback(
                Tally(
                    errors=self.connections,
                    connections=self.connections,
                    errorSamples=[f"worker process ended: {reason.getErrorMessage()}"],
                )
            )


class _WorkerControl(LineOnlyReceiver):
    """A worker's side of the conversation with the runner, on stdio."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.go: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def tell(self, **news: Any) -> None:
        self.sendLine(json.dumps(news).encode())

    def lineReceived(self, line: bytes) -> None:
        if line == b"go" and not self.go.called:
            self.go.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


async def worker(reactor: Any, params: Params) -> None:
    """Run one share as a worker process, under a runner's control."""
    from twisted.internet.stdio import StandardIO

    control = _WorkerControl()
    StandardIO(control, reactor=reactor)
    finished = False

    def orphaned(_: None) -> None:
        # The runner is gone (interrupted, killed): no one wants the tally.
        if not finished:
            reactor.stop()

    control.closed.addCallback(orphaned)
    share = LocalShare(reactor, params)
    await share.ready()
    control.tell(ready=True)
    await control.go
    reporting = LoopingCall(lambda: control.tell(progress=share.progress()))
    reporting.clock = reactor
    reporting.start(PROGRESS_INTERVAL, now=False)
    tally = await share.start()
    reporting.stop()
    finished = True
    control.tell(tally=tally.toJSON())
    assert control.transport is not None
    control.transport.loseConnection()
    await control.closed


class Display:
    """What a person sees while a run goes on: nothing, by default."""

    def update(self, progress: dict[str, Any], phase: str) -> None:
        """The shares' progress, summed, and what the run is doing."""

    def stop(self) -> None:
        """The run is over."""


class LiveDisplay(Display):
    """A live line of figures on a terminal, with rich (the C{live} extra)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        console = console if console is not None else Console(stderr=True)
        self._live = Live(console=console, auto_refresh=False)
        self._live.start()
        self._last: tuple[float, int, int] | None = None

    def update(self, progress: dict[str, Any], phase: str) -> None:
        from rich.table import Table

        now = time.monotonic()
        rate = byteRate = 0.0
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            rate = (progress["rounds"] - self._last[1]) / elapsed
            byteRate = (progress["bytes"] - self._last[2]) / elapsed
        self._last = (now, progress["rounds"], progress["bytes"])
        table = Table(box=None)
        for column in ("phase", "open", "rounds", "rounds/s", "MB/s", "errors"):
            table.add_column(column, justify="right")
        table.add_row(
            phase,
            f"{progress['open']:,}",
            f"{progress['rounds']:,}",
            f"{rate:,.0f}",
            f"{byteRate / 1e6:,.2f}",
            f"{progress['errors']:,}",
        )
        self._live.update(table, refresh=True)

    def stop(self) -> None:
        self._live.stop()


async def run(reactor: Any, params: Params, display: Display | None = None) -> Tally:
    """
    Run C{params}: in this process, or in C{params.processes} workers that
    start measuring together.  The merged tally.
    """
    display = display if display is not None else Display()
    if params.processes == 1:
        shares: Sequence[Share] = [LocalShare(reactor, params)]
    else:
        shares = [WorkerShare(reactor, share) for share in params.shares()]
    phase = ["connecting"]

    def show() -> None:
        total: dict[str, Any] = {"open": 0, "rounds": 0, "bytes": 0, "errors": 0}
        for share in shares:
            for key in total:
                total[key] += share.progress().get(key, 0)
        display.update(total, phase[0])

    showing = LoopingCall(show)
    showing.clock = reactor
    showing.start(PROGRESS_INTERVAL)
    try:
        await DeferredList([share.ready() for share in shares])
        phase[0] = params.mode
        results = await DeferredList(
            [share.start() for share in shares], fireOnOneErrback=True
        )
    finally:
        showing.stop()
        display.stop()
    tally = Tally()
    for _, shareTally in results:
        tally = tally.merge(shareTally)
    tally.connections = params.connections
    return tally


def _raiseFileLimit() -> None:
    """Thousands of connections need thousands of descriptors: as many as allowed."""
    try:
        raiseOpenFilesLimit(program="caret-bench")
    except OpenFilesLimitError as error:
        print(f"caret-bench: warning: {error}", file=sys.stderr)


def _canShowLive() -> bool:
    """
    Whether rich, the live display's one dependency (the C{live} extra), is
    installed; if not, say in one line what to install.  The run goes on
    without the display either way.
    """
    if importlib.util.find_spec("rich") is not None:
        return True
    print(
        "caret-bench: no live display without rich: pip install 'caretproto[live]'",
        file=sys.stderr,
    )
    return False


def main(argv: Sequence[str] | None = None) -> None:
    """The C{caret-bench} console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--worker"]:
        params = Params(**json.loads(args[1]))
        _raiseFileLimit()
        react(lambda reactor: Deferred.fromCoroutine(worker(reactor, params)))
    params, printJSON = parseParams(args)
    _raiseFileLimit()
    live = sys.stderr.isatty() and _canShowLive()

    async def bench(reactor: Any) -> None:
        tally = await run(reactor, params, LiveDisplay() if live else None)
        figures = report(params, tally)
        print(json.dumps(figures) if printJSON else summary(figures))
        if tally.errors:
            raise SystemExit(1)

    react(lambda reactor: Deferred.fromCoroutine(bench(reactor)))


if __name__ == "__main__":
    main()
