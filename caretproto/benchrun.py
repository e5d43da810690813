# -*- test-case-name: tests.test_bench -*-
"""
The C{caret-bench} command: options, spreading the load over processes,
the live display and the report.

C{caret-bench HOST PORT --mode rr -c 100 --processes 2 --json} runs two
load processes (this module again, C{python -m caretproto.benchrun
--load-process PARAMS}, in the same environment), each a L{caretproto.bench.Load}
with half the connections; all start measuring together, and their tallies
are merged into one report.  The load itself, and the checking of every
reply byte, is L{caretproto.bench}; where the server is, and how the options
are read, L{caretproto.clientoptions}; this module only runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall, react
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage
from twisted.python.failure import Failure

from caretproto.bench import MODES, Load, Tally
from caretproto.clientoptions import ClientOptions, connectTo
from caretproto.openfiles import OpenFilesLimitError, raiseOpenFilesLimit
from caretproto.optionchecks import positive, usageFailure
from caretproto.processlines import LineProcessProtocol

PROGRAM = "caret-bench"
"""The command's name, in its messages and its C{--version}."""

LOAD_PROCESS = "--load-process"
"""The first argument of a load process, followed by its L{Params} as JSON."""

PROGRESS_INTERVAL = 0.5
"""Seconds between updates of the live display and load process progress."""


@dataclass(frozen=True)
class Params:
    """
    What to run: the options of one C{caret-bench} command.  The server is
    C{host} and C{port} (over TLS if C{tls}), or the client endpoint
    description C{endpoint}.

    @ivar host: the server's name or address, or C{None} with C{endpoint}.
    @ivar port: the server's TCP port, or C{None} with C{endpoint}.
    @ivar mode: C{--mode}, one of L{caretproto.bench.MODES}.
    @ivar connections: C{--connections}, over all processes.
    @ivar size: C{--size}, bytes of each rr or hold message on the wire.
    @ivar duration: C{--duration}, in seconds.
    @ivar processes: C{--processes}.
    @ivar tls: C{--tls}.
    @ivar ca: C{--ca}, the path of a PEM certificate, or C{None}.
    @ivar greetingTimeout: C{--greeting-timeout}, in seconds.
    @ivar endpoint: C{--endpoint}, a client endpoint description, or
        C{None}.
    """

    host: str | None
    port: int | None
    mode: str = "rr"
    connections: int = 1
    size: int = 16
    duration: float = 10.0
    processes: int = 1
    tls: bool = False
    ca: str | None = None
    greetingTimeout: float = 10.0
    endpoint: str | None = None

    def shares(self) -> list[Params]:
        """
        The same run cut into one share per process (none left empty).

        @return: one L{Params} per process, each for one process and its
            part of the connections; as many as C{processes}, unless there
            are fewer connections.
        """
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

    @property
    def server(self) -> str:
        """The server, as the report names it."""
        if self.endpoint is not None:
            return self.endpoint
        return f"{self.host}:{self.port}"


def mode(value: str) -> str:
    """
    C{--mode}: one of L{MODES}.

    @param value: the value given.
    @return: C{value}.
    @raise usage.UsageError: C{value} is not a mode.
    """
    if value not in MODES:
        raise usage.UsageError(
            f"--mode takes one of {', '.join(MODES)}, like --mode rr; got {value!r}"
        )
    return value


mode.coerceDoc = f"One of {', '.join(MODES)}."  # type: ignore[attr-defined]


class Options(ClientOptions):
    """
    Options of C{caret-bench}; where the server is: L{ClientOptions}.  Each,
    with its default (C{caret-bench --help} describes them in full):

      - C{--mode MODE}, C{-m}: what to run, one of rr, bulk, hold and
        sessions (L{caretproto.bench} says what each does). [default: rr]
      - C{--connections N}, C{-c}: connections, spread over the processes.
        [default: 1]
      - C{--size BYTES}, C{-s}: bytes of each rr or hold message on the
        wire, C{^} and C{$} included; at least 3. [default: 16]
      - C{--duration SECONDS}, C{-d}: how long to measure (rr, bulk) or to
        hold (hold); sessions ignore it. [default: 10.0]
      - C{--processes N}, C{-P}: client processes to spread the
        connections over. [default: 1]
      - C{--greeting-timeout SECONDS}: rr, bulk, hold: how long every
        connection has to be greeted; the rest are errors. [default: 10.0]
      - C{--json}: print the report as one JSON object.
      - C{--tls}: speak TLS to C{HOST PORT}.
      - C{--ca FILE}: with C{--tls}, a PEM file of the certificate
        authority to trust instead of the system's. [default: none]
      - C{--endpoint DESCRIPTION}: a Twisted client endpoint description
        to connect to instead of C{HOST PORT}. [default: none]

    tests/test_docpages.py checks this list against the options themselves.

    @cvar program: L{PROGRAM}, for C{--version}.
    @cvar synopsis: the first line of C{--help}.
    @cvar longdesc: what C{--help} says the command does, and what its
        report holds.
    @cvar optFlags: the options that take no value, as C{usage.Options}
        reads them.
    @cvar optParameters: the options that take a value, with their
        defaults and checks, as C{usage.Options} reads them.
    """

    program = PROGRAM
    synopsis = (
        f"{PROGRAM} [options] ([--tls [--ca FILE]] HOST PORT | --endpoint DESCRIPTION)"
    )
    longdesc = (
        "Drive a caret server and check every byte it answers.  rr: rounds "
        "of one --size byte message and its reply on each connection; bulk: "
        "one endless message per connection, replies counted; hold: hold "
        "the connections idle for --duration, then one round on each; "
        "sessions: the reference session of docs/protocol.rst on every "
        "connection at once.  Any wrong byte is an error and makes the exit "
        "status 1.  The report: rounds (sessions, for sessions) and "
        "rounds_per_s; mb_per_s, reply bytes checked per second in millions; "
        "p50_ms and p99_ms of round (session) times; errors; elapsed_s, the "
        "measured window."
    )
    optFlags = [["json", None, "Print the report as one JSON object."]]
    optParameters: list[list[Any]] = [
        ["mode", "m", "rr", "What to run.", mode],
        [
            "connections",
            "c",
            1,
            "Connections, spread over the processes.",
            positive("connections", "100"),
        ],
        [
            "size",
            "s",
            16,
            "Bytes of each rr/hold message on the wire, ^ and $ included, at least 3.",
            positive("size", "16"),
        ],
        [
            "duration",
            "d",
            10.0,
            "Seconds to measure (rr, bulk) or to hold (hold); sessions ignore it.",
            positive("duration", "10", float),
        ],
        [
            "processes",
            "P",
            1,
            "Client processes to spread the connections over.",
            positive("processes", "2"),
        ],
        [
            "greeting-timeout",
            None,
            10.0,
            "rr, bulk, hold: seconds to wait for every connection's greeting; "
            "the rest are errors and the run goes on with those greeted.",
            positive("greeting-timeout", "10", float),
        ],
    ]

    def postOptions(self) -> None:
        """
        Refuse a C{--size} too small for a message, then check the server as
        L{ClientOptions.postOptions} does.

        @raise usage.UsageError: C{--size} is below 3, or the server is
            wrong.
        """
        if self["size"] < 3:
            raise usage.UsageError(
                f"--size takes at least 3 (^, one byte, $), like --size 16; "
                f"got {self['size']}"
            )
        super().postOptions()

    def params(self) -> Params:
        """
        The run these options ask for.

        @return: the options, parsed, as one value.
        """
        return Params(
            host=self["host"],
            port=self["port"],
            mode=self["mode"],
            connections=self["connections"],
            size=self["size"],
            duration=self["duration"],
            processes=self["processes"],
            tls=bool(self["tls"]),
            ca=self["ca"],
            greetingTimeout=self["greeting-timeout"],
            endpoint=self["endpoint"],
        )


def parseParams(args: Sequence[str]) -> tuple[Params, bool]:
    """
    C{args} as parameters and whether to print JSON.

    @param args: the command line's arguments, without the program's name.
    @return: the run, and whether C{--json} was given.
    @raise usage.UsageError: an option or argument is wrong; the message
        names it.
    """
    options = Options()
    options.parseOptions(args)
    return options.params(), options["json"]


def endpointFor(reactor: Any, params: Params) -> IStreamClientEndpoint:
    """
    The endpoint every connection of a load opens: with C{HOST PORT}, the
    host is resolved once, not per connection.

    @param reactor: the reactor the endpoint connects with.
    @param params: the run, which says where the server is.
    @return: the endpoint, as L{caretproto.clientoptions.connectTo} makes
        it.
    """
    return connectTo(
        reactor,
        params.host,
        params.port,
        tls=params.tls,
        ca=params.ca,
        endpoint=params.endpoint,
    )


def report(params: Params, tally: Tally) -> dict[str, Any]:
    """
    The run's figures, as C{--json} prints them.

    @param params: the run.
    @param tally: what the run measured, every share's merged.
    @return: the options, then the figures (the command's C{--help} names
        them); rates are 0 if nothing was measured.
    """
    # A run that never measured (nothing connected) has no rate: 0, which
    # JSON can carry, rather than NaN, which it cannot.
    elapsed = tally.elapsed or float("inf")
    return {
        "mode": params.mode,
        "host": params.host,
        "port": params.port,
        "endpoint": params.endpoint,
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
    """
    The report as a few lines for a person.

    @param figures: the report, as L{report} makes it.
    @return: the lines, without a final newline.
    """

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    what = {
        "rr": f"{figures['size']}-byte rounds",
        "bulk": "bulk replies",
        "hold": f"held, then one {figures['size']}-byte round each",
        "sessions": "reference sessions",
    }[figures["mode"]]
    server = figures.get("endpoint") or f"{figures['host']}:{figures['port']}"
    lines = [
        f"caret-bench {figures['mode']} {server}: "
        f"{_counted(figures['connections'], 'connection')}, {what}, "
        f"{_counted(figures['processes'], 'process', 'processes')}",
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
            f"  held     {_counted(figures['held'], 'connection')} "
            f"(opened in {figures['connect_s']:.3f} s)"
        )
    lines.append(f"  errors   {figures['errors']:,}")
    lines.extend(f"    {sample}" for sample in figures["error_samples"])
    return "\n".join(lines)


def _counted(count: int, one: str, many: str | None = None) -> str:
    """C{count} things, singular or plural as English says: 1 process, 2 processes."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"


class Share:
    """
    One process's part of a run, as the runner sees it.

    @ivar connections: how many connections this share opens.
    """

    connections = 0

    def ready(self) -> Deferred[None]:
        """
        Open and greet this share's connections.

        @return: fires once every connection is greeted or has failed.
        @raise NotImplementedError: always, here.
        """
        raise NotImplementedError

    def start(self) -> Deferred[Tally]:
        """
        Start measuring, once every share is L{ready}.

        @return: fires with this share's L{Tally} when its connections have
            closed.
        @raise NotImplementedError: always, here.
        """
        raise NotImplementedError

    def progress(self) -> dict[str, Any]:
        """
        What this share has done so far, for the live display.

        @return: counts, as L{Load.progress} gives them.
        @raise NotImplementedError: always, here.
        """
        raise NotImplementedError


class LocalShare(Share):
    """
    A load run in this process.

    @ivar connections: how many connections this share opens.
    @ivar load: the load.
    """

    def __init__(self, reactor: Any, params: Params) -> None:
        """
        Make the load, not yet connected.

        @param reactor: the reactor the load connects with.
        @param params: the share's run.
        """
        self.connections = params.connections
        self.load = Load(
            reactor,
            endpointFor(reactor, params),
            params.mode,
            params.connections,
            params.size,
            params.duration,
            greetingTimeout=params.greetingTimeout,
        )

    def ready(self) -> Deferred[None]:
        """
        Connect the load (L{Load.connect}).

        @return: fires once every connection is greeted or has failed.
        """
        return self.load.connect()

    def start(self) -> Deferred[Tally]:
        """
        Start the load (L{Load.start}).

        @return: fires with its L{Tally} when its connections have closed.
        """
        return self.load.start()

    def progress(self) -> dict[str, Any]:
        """
        The load's progress (L{Load.progress}).

        @return: its counts.
        """
        return self.load.progress()


class ProcessShare(Share, LineProcessProtocol):
    """
    A load run by a load process (C{caret-bench --load-process PARAMS}), which
    reports by JSON lines on its stdout and starts on C{go} on its stdin.

    @ivar connections: how many connections this share opens.
    @ivar params: the share's run.
    """

    def __init__(self, reactor: Any, params: Params) -> None:
        """
        Start the load process.

        @param reactor: the reactor, an C{IReactorProcess}, that spawns it.
        @param params: the share's run, which the load process is given.
        """
        LineProcessProtocol.__init__(self)
        self.connections = params.connections
        self.params = params
        self._ready: Deferred[None] = Deferred()
        self._done: Deferred[Tally] = Deferred()
        self._progress: dict[str, Any] = {}
        # The load process is this module run as "python -m", in this process's
        # environment, as the command's user would run it.
        reactor.spawnProcess(
            self,
            sys.executable,
            loadProcessCommand(params),
            env=os.environ,
        )

    def ready(self) -> Deferred[None]:
        """
        Wait for the load process to say it is ready.

        @return: fires once its connections are greeted or have failed, or
            once it has ended.
        """
        return self._ready

    def start(self) -> Deferred[Tally]:
        """
        Tell the load process to start measuring.

        @return: fires with the load process's L{Tally}, or, if it ends
            without one, a tally that counts each of its connections as an
            error.
        """
        if self.transport is not None:
            self.transport.write(b"go\n")
        return self._done

    def progress(self) -> dict[str, Any]:
        """
        The load process's last progress report.

        @return: its counts; empty before its first report.
        """
        return self._progress

    def lineReceived(self, childFD: int, line: str) -> None:
        """
        Read one report of the load process (ready, progress, or its
        tally), or pass a line of its standard error on to ours.

        @param childFD: 1 for a report, 2 for an error message.
        @param line: a JSON object, or the error message.
        """
        if childFD != 1:
            # The load process's own errors, for the person running the command.
            print(line, file=sys.stderr, flush=True)
            return
        news = json.loads(line)
        if "ready" in news and not self._ready.called:
            self._ready.callback(None)
        elif "progress" in news:
            self._progress = news["progress"]
        elif "tally" in news and not self._done.called:
            self._done.callback(Tally.fromJSON(news["tally"]))

    def processEnded(self, reason: Failure) -> None:
        """
        Make sure that neither L{ready} nor L{start} waits on a load process
        that has ended: if it ended before sending its tally, each of its
        connections counts as an error.

        @param reason: how the process ended.
        """
        if not self._ready.called:
            self._ready.callback(None)
        if not self._done.called:
            self._done.callback(
                Tally(
                    errors=self.connections,
                    connections=self.connections,
                    errorSamples=[f"load process ended: {reason.getErrorMessage()}"],
                )
            )


def loadProcessCommand(params: Params) -> list[str]:
    """
    The command line of a load process that runs C{params}.

    @param params: the share's run.
    @return: the program and its arguments: this module, run by this
        process's Python.
    """
    return [
        sys.executable,
        "-m",
        "caretproto.benchrun",
        LOAD_PROCESS,
        json.dumps(asdict(params)),
    ]


class _LoadProcessControl(LineOnlyReceiver):
    """A load process's side of the conversation with the runner, on stdio."""

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


async def runLoadProcess(reactor: Any, params: Params) -> None:
    """
    Run one share as a load process, under a runner's control: connect,
    say so on standard output, start measuring on C{go} from standard
    input, report progress as it goes, then the tally.  A runner that goes
    away stops the process.

    @param reactor: the reactor the load runs in.
    @param params: the share's run.
    """
    from twisted.internet.stdio import StandardIO

    control = _LoadProcessControl()
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
        """
        The shares' progress, summed, and what the run is doing: show them
        (here, nothing).

        @param progress: counts, as L{Load.progress} gives them.
        @param phase: C{connecting}, or the mode once measuring.
        """

    def stop(self) -> None:
        """The run is over."""


class LiveDisplay(Display):
    """A live line of figures on a terminal, with rich (the C{live} extra)."""

    def __init__(self, console: Any = None) -> None:
        """
        Start showing.

        @param console: the rich console to show on; standard error's if
            C{None}.
        """
        from rich.console import Console
        from rich.live import Live

        console = console if console is not None else Console(stderr=True)
        self._live = Live(console=console, auto_refresh=False)
        self._live.start()
        self._last: tuple[float, int, int] | None = None

    def update(self, progress: dict[str, Any], phase: str) -> None:
        """
        Show the counts, with rates since the last update.

        @param progress: counts, as L{Load.progress} gives them.
        @param phase: C{connecting}, or the mode once measuring.
        """
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
        """Stop showing; the last line stays on the terminal."""
        self._live.stop()


async def run(reactor: Any, params: Params, display: Display | None = None) -> Tally:
    """
    Run C{params}: in this process, or in C{params.processes} load processes that
    start measuring together.  The merged tally.

    @param reactor: the reactor the run connects with and is timed on.
    @param params: the run.
    @param display: what shows its progress; nothing, if C{None}.
    @return: every share's tally, merged, with the connections asked for.
    """
    display = display if display is not None else Display()
    if params.processes == 1:
        shares: Sequence[Share] = [LocalShare(reactor, params)]
    else:
        shares = [ProcessShare(reactor, share) for share in params.shares()]
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
        raiseOpenFilesLimit(program=PROGRAM)
    except OpenFilesLimitError as error:
        print(f"{PROGRAM}: warning: {error}", file=sys.stderr)


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
    """
    The C{caret-bench} console script; also a load process's, when the
    first argument is C{--load-process}.

    @param argv: the arguments, without the program's name; C{None} for
        the command line's.
    @raise SystemExit: always: status 0 when the run found no error; 1 when
        it did, or when the options are wrong.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [LOAD_PROCESS]:
        params = Params(**json.loads(args[1]))
        _raiseFileLimit()
        react(lambda reactor: Deferred.fromCoroutine(runLoadProcess(reactor, params)))
    try:
        params, printJSON = parseParams(args)
    except usage.UsageError as error:
        raise usageFailure(PROGRAM, error) from None
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
