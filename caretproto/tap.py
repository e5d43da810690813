"""
The C{caret} command of twistd and twist: its options and L{makeService}.

C{twistd -n caret --port 9090} and C{twist caret --port 9090} both come here
through C{twisted/plugins/caret.py}.  A C{.tac} file or any program may build
the same service.  L{Options.parseOptions} returns nothing, as Twisted's
does: parse, then pass the L{Options} themselves to L{makeService}::

    from twisted.application import service
    from caretproto import tap

    application = service.Application("caret")
    options = tap.Options()
    options.parseOptions(["--port", "tcp:9090:interface=127.0.0.1"])
    tap.makeService(options).setServiceParent(application)

A bad option raises C{usage.UsageError} there; C{docs/howto/composing.rst}
says what the service gives and what it does when a port cannot listen.

This module turns options into services, and does what the command does as
a program at its start and its end (L{CaretCommand}: errors at start, a
second signal while stopping); it holds no protocol logic.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any, TextIO

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from caretproto import proxy as proxies
from caretproto.capacity import OpenFilesLimit
from caretproto.optionchecks import (
    endpointPort,
    positive,
    positiveOrOff,
    printVersion,
    usageFailure,
)
from caretproto.server import CaretFactory
from caretproto.service import CannotListen, CaretService
from caretproto.workers import WORKER_FDS, WorkerPool, reactorName, workerCommand
from caretproto.workerside import (
    ADOPTABLE,
    ParentLink,
    adoptable,
    inheritedEndpoint,
)

DEFAULT_PORT = "9090"
"""Where C{caret} listens when no C{--port} is given: TCP port 9090."""

DEFAULT_BACKLOG = 4096
"""
Room in the listen queue for thousands of clients connecting at once (the
kernel caps it at C{net.core.somaxconn}).  With Twisted's own default, 50, a
burst of thousands of connects crawls: the SYNs dropped past the queue wait
for the clients to send them again.  C{docs/limits.rst} measures the burst
the default serves.
"""

ENDPOINT_EXAMPLES = (
    "9090, tcp:9090:interface=127.0.0.1, tcp6:9090, unix:/run/caret.sock, "
    "ssl:9443:privateKey=key.pem:certKey=cert.pem, haproxy:tcp:9090, "
    "systemd:domain=INET:index=0"
)
"""Endpoint descriptions that usage errors about C{--port} give as examples."""

TRUSTED_PROXY_EXAMPLES = "10.0.0.5, 10.0.0.0/8, 127.0.0.1, ::1, fd00::/8, any"
"""What usage errors about C{--trusted-proxy} give as examples."""

METRICS_EXAMPLES = "9100, tcp:9100:interface=127.0.0.1, unix:/run/caret-metrics.sock"
"""What usage errors about C{--metrics} give as examples."""

# Endpoint types that listen themselves and so accept a backlog= argument
# (haproxy: passes its arguments to the endpoint it wraps).
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})

WORKERS_KILL_MARGIN = 5.0
"""
A worker drains as L{CaretService.stopService} does: its sessions get
C{--shutdown-timeout} seconds to end, then are ended and get as long again to
take their replies.  The parent kills a worker still running this many
seconds after that.
"""


def endpointDescription(port: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    The endpoint description that C{--port PORT} means: a bare number is TCP
    on that port, and a listening endpoint without C{backlog=} gets
    C{backlog}.

    @param port: the value of C{--port}.
    @param backlog: the listen queue size for an endpoint that sets none.
    @return: a Twisted endpoint description.
    """
    if port.isdigit():
        return f"tcp:{port}:backlog={backlog}"
    if _listensItself(port) and "backlog=" not in port:
        return f"{port}:backlog={backlog}"
    return port


def _listensItself(description: str) -> bool:
    """
    Whether the endpoint of C{description} makes its own listening socket,
    behind C{haproxy:} or not: a C{systemd:} one inherits it, with the
    backlog systemd gave it, and takes no C{backlog=}.
    """
    kind, _, rest = description.partition(":")
    if kind == proxies.PREFIX:
        return _listensItself(rest)
    return kind in _BACKLOG_TYPES


DEFAULT_IDLE_TIMEOUT = 300.0
"""
Seconds a session may go without sending a byte, by default.  The reference
client pauses 1 s between writes and a program rarely more; five minutes
also lets a person typing into C{nc} stop to read or think.  A client that
connects and says nothing holds a descriptor for no longer than that.
"""


def workerCount(value: str) -> int:
    """
    C{--workers}: a positive number, or C{auto} for one per CPU.

    @param value: the value given to C{--workers}.
    @return: how many workers.
    @raise usage.UsageError: if C{value} is neither, naming both forms.
    """
    if value == "auto":
        return os.cpu_count() or 1
    try:
        return int(positive("workers", "4")(value))
    except usage.UsageError:
        raise usage.UsageError(
            f"--workers takes a positive number or auto, like --workers 4 or "
            f"--workers auto; got {value!r}"
        ) from None


workerCount.coerceDoc = "A positive number, or auto for one per CPU."  # type: ignore[attr-defined]


def inheritedDescriptors(environ: Mapping[str, str]) -> list[int] | None:
    """
    The descriptors a worker inherits its listening sockets at, as its pool
    names them in L{WORKER_FDS}.

    @param environ: the process's environment.
    @return: the descriptors, in C{--port} order, or C{None} for a process
        that is no worker.
    @raise usage.UsageError: if L{WORKER_FDS} is not a list of numbers.
    """
    value = environ.get(WORKER_FDS)
    if value is None:
        return None
    try:
        return [int(fd) for fd in value.split(",")]
    except ValueError:
        raise usage.UsageError(
            f"{WORKER_FDS} takes descriptor numbers like 3,4; got {value!r}"
        ) from None


class Options(usage.Options):
    """
    Options of C{twistd caret} / C{twist caret}.  Each, with its default
    (C{twistd caret --help} and docs/running.rst describe them in full):

      - C{--port ENDPOINT}, C{-p}: where to listen, a Twisted endpoint
        description or a bare port number; may be given more than once.
        [default: 9090]
      - C{--backlog N}: listen queue size for endpoints given without
        C{backlog=}. [default: 4096]
      - C{--max-connections N|off}: the most sessions at once.
        [default: off, no limit]
      - C{--idle-timeout SECONDS|off}: close a connection that has sent
        nothing for this long. [default: 300.0]
      - C{--max-per-peer N|off}: the most connections at once from one IP
        address. [default: off, no limit]
      - C{--shutdown-timeout SECONDS}: how long sessions in progress may go
        on after SIGTERM or SIGINT. [default: 10.0]
      - C{--trusted-proxy ADDRESS}: whose PROXY protocol header to believe;
        may be given more than once. [default: none trusted]
      - C{--workers N|auto}: serve in this many worker processes.
        [default: 1]
      - C{--metrics ENDPOINT}: serve Prometheus metrics there.
        [default: none]

    tests/test_docpages.py checks this list against the options themselves.

    Parsed, the options also hold what L{makeService} builds from: C{port},
    the C{--port} values, defaulted; C{trusted}, the
    L{caretproto.proxy.TrustedProxies} of C{--trusted-proxy}; C{endpoints}, one
    endpoint per C{--port}; C{inherited}, a worker's descriptors
    (L{inheritedDescriptors}); and C{argv}, the options as given, for the
    workers' command line.

    @cvar synopsis: the usage line of C{--help}.
    @cvar longdesc: the paragraph of C{--help} after the options.
    @cvar optParameters: the options that take a value, as
        C{usage.Options} reads them.
    @ivar docs: each option's help text, on one line.
    """

    synopsis = "[--port ENDPOINT ...] [options]"
    longdesc = (
        "Serve the caret protocol: '*' on connect, then every byte inside "
        "^...$ answered with its successor.  --port takes a Twisted endpoint "
        "description and may be given several times."
    )
    optParameters = [
        [
            "backlog",
            None,
            DEFAULT_BACKLOG,
            "Listen queue size for endpoints given without backlog=.",
            positive("backlog", "4096"),
        ],
        [
            "max-connections",
            None,
            None,
            "Serve at most this many sessions at once; further clients wait "
            "in the listen backlog and are greeted as sessions end "
            "(1 makes a sequential server), or off.  [default: off, no limit]",
            positiveOrOff("max-connections", "1"),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Close a connection that has sent nothing for this many seconds "
            "(time spent paused by flow control does not count), or off to "
            "let it wait forever.",
            positiveOrOff("idle-timeout", "300", float),
        ],
        [
            "max-per-peer",
            None,
            None,
            "At most this many connections at once from one IP address; "
            "further ones are closed at once, without a greeting; or off.  "
            "[default: off, no limit]",
            positiveOrOff("max-per-peer", "100"),
        ],
        [
            "shutdown-timeout",
            None,
            CaretService.shutdownTimeout,
            "On SIGTERM or SIGINT, let sessions in progress go on for this "
            "many seconds, then end them, delivering the replies they owe.",
            positive("shutdown-timeout", "10", float),
        ],
        [
            "workers",
            None,
            1,
            "Serve in this many worker processes, or auto for one per CPU: "
            "this process binds every --port and hands the sockets to the "
            "workers, replacing any that dies; every other option applies "
            "to each worker (--max-connections is per worker).  1 serves in "
            "this process.",
            workerCount,
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint, like "
            "tcp:9100:interface=127.0.0.1 (a bare number is TCP on that port).",
        ],
    ]

    environ: Mapping[str, str] = os.environ
    """
    Where a worker finds L{WORKER_FDS}: the process's environment.
    """

    def __init__(self) -> None:
        """
        Options with nothing parsed yet: no C{--port} and no
        C{--trusted-proxy} given.
        """
        super().__init__()
        self["port"] = []
        self["trusted-proxy"] = []
        # A docstring's line breaks and indentation would otherwise reach
        # --help as runs of spaces in the middle of a wrapped line; and its
        # epytext fields (@param, @raise) are for the API reference only.
        self.docs = {name: _helpText(doc) for name, doc in self.docs.items()}

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options}, as C{usage.Options.parseOptions} does.

        Under twistd or twist (when this is a subcommand, with a C{parent}), a
        usage error ends the program with one line naming the option and what
        it accepts, and where to find the help, rather than with the whole
        help text that twistd and twist print first.  Called directly (a
        C{.tac} file, a test), it raises C{usage.UsageError} as usual.  It
        returns nothing: the options are this object's items.

        @param options: the command-line arguments; by default
            C{sys.argv[1:]}.
        @raise usage.UsageError: for a bad option, called directly.
        @raise SystemExit: for a bad option, under twistd or twist, once
            the message is written.
        """
        # Kept for --workers, whose workers run with the same options.
        self["argv"] = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            raise usageFailure(_program(), error) from None

    def opt_version(self) -> None:
        """
        Display caretproto's version, and Twisted's, and exit.
        """
        printVersion(_program())

    def opt_port(self, port: str) -> None:
        """
        Where to listen: a Twisted endpoint description, or a bare number for
        TCP on that port.  May be given more than once.  [default: 9090]
        Examples: 9090, tcp:9090:interface=127.0.0.1, unix:/run/caret.sock,
        ssl:9443:privateKey=key.pem:certKey=cert.pem, haproxy:tcp:9090,
        systemd:domain=INET:index=0

        @param port: the value given.
        @raise usage.UsageError: if C{port} is empty, or its TCP port is not
            a number from 0 to 65535.
        """
        if not port.strip():
            raise usage.UsageError(
                f"--port needs an endpoint description, like {ENDPOINT_EXAMPLES}"
            )
        endpointPort("--port", port, ENDPOINT_EXAMPLES)
        self["port"].append(port)

    opt_p = opt_port

    def opt_trusted_proxy(self, proxy: str) -> None:
        """
        Believe the PROXY protocol header of connections to a haproxy:
        endpoint from this address or network (CIDR), IPv4 or IPv6, or from
        anyone with "any"; connections from elsewhere are closed unread.
        May be given more than once; required with a haproxy: endpoint
        that is not a UNIX socket.  [default: none trusted]
        Examples: 10.0.0.5, 10.0.0.0/8, 127.0.0.1, ::1, fd00::/8, any

        @param proxy: the value given.
        @raise usage.UsageError: if C{proxy} is no address, network or
            C{any}.
        """
        try:
            proxies.TrustedProxies.fromStrings([proxy])
        except ValueError:
            raise usage.UsageError(
                f"--trusted-proxy takes an IP address, a network in CIDR form "
                f"or any, like {TRUSTED_PROXY_EXAMPLES}; got {proxy!r}"
            ) from None
        self["trusted-proxy"].append(proxy)

    def postOptions(self) -> None:
        """
        Check the options together and build what L{makeService} needs:
        C{--port 9090} if no C{--port} was given, the trusted proxies, one
        endpoint per C{--port} (on an inherited socket in a worker), and
        C{--metrics} as an endpoint description.

        @raise usage.UsageError: for a C{haproxy:} port without
            C{--trusted-proxy}, a worker's descriptors that do not match its
            C{--port}s, a C{--port} that workers cannot share or that is not
            a usable endpoint, or a C{--metrics} that is not.
        """
        if not self["port"]:
            self["port"] = [DEFAULT_PORT]
        self["trusted"] = proxies.TrustedProxies.fromStrings(self["trusted-proxy"])
        untrusting = [p for p in self["port"] if proxies.needsTrustedProxies(p)]
        if untrusting and not self["trusted-proxy"]:
            raise usage.UsageError(
                f"--port {untrusting[0]!r} believes the PROXY protocol header "
                f"of whoever connects, which names any client it likes: say "
                f"whose to believe with --trusted-proxy, like "
                f"--trusted-proxy 127.0.0.1 for a balancer on this machine "
                f"(accepted forms: {TRUSTED_PROXY_EXAMPLES})"
            )
        self["inherited"] = inheritedDescriptors(self.environ)
        inherited = self["inherited"]
        if inherited is None:
            inherited = [None] * len(self["port"])
        elif self["workers"] != 1 or len(inherited) != len(self["port"]):
            raise usage.UsageError(
                f"{WORKER_FDS} is for the workers that --workers starts, with "
                f"one descriptor per --port"
            )
        self["endpoints"] = [
            self._endpoint(port, fd)
            for port, fd in zip(self["port"], inherited, strict=True)
        ]
        if self["metrics"] is not None:
            given = self["metrics"]
            endpointPort("--metrics", given, METRICS_EXAMPLES)
            self["metrics"] = f"tcp:{given}" if given.isdigit() else given
            _checkMetricsEndpoint(self["metrics"], given)

    def _endpoint(self, port: str, inherited: int | None) -> IStreamServerEndpoint:
        """
        The endpoint for C{--port PORT}: listening, or, in a worker, on the
        socket inherited as descriptor C{inherited}.
        """
        from twisted.internet import reactor

        description = endpointDescription(port, self["backlog"])
        if self["workers"] > 1 and not adoptable(description):
            raise usage.UsageError(
                f"--port {port!r} cannot be shared by --workers, which take "
                f"over {', '.join(sorted(ADOPTABLE))} sockets, alone or "
                f"behind haproxy:"
            )
        try:
            if inherited is None:
                return proxies.serverFromString(
                    reactor, description, trusted=self["trusted"]
                )
            return inheritedEndpoint(
                reactor, description, inherited, self["backlog"], self["trusted"]
            )
        except Exception as error:
            if type(error).__module__.startswith("OpenSSL"):
                # pyOpenSSL's errors are lists of library tuples.
                error = f"its key or certificate file is not PEM: {error}"  # type: ignore[assignment]
            raise usage.UsageError(
                f"--port {port!r} is not a usable endpoint ({error}); "
                f"use a port number or a Twisted endpoint description, like "
                f"{ENDPOINT_EXAMPLES}"
            ) from None


def _helpText(doc: str) -> str:
    """
    An option method's docstring as C{--help} shows it: its text on one
    line, without its epytext fields.
    """
    return " ".join(re.split(r"^\s*@", doc, maxsplit=1, flags=re.MULTILINE)[0].split())


def _program() -> str:
    """The command as the user gave it, for messages: C{twistd caret}."""
    return f"{os.path.basename(sys.argv[0])} caret"


def _checkMetricsEndpoint(description: str, given: str) -> None:
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as error:
        raise usage.UsageError(
            f"--metrics {given!r} is not a usable endpoint ({error}); "
            f"use a port number or a Twisted endpoint description, like "
            f"{METRICS_EXAMPLES}"
        ) from None


def makeService(options: Mapping[str, Any]) -> IService:
    """
    The caret server for parsed C{options}: a L{CaretCommand} holding a
    L{CaretService}, named C{caret}, that listens on every C{--port}.

    With C{--workers N}, the C{caret} service only listens, and a
    L{WorkerPool} named C{workers} runs the N processes that accept.  A
    worker (started with L{WORKER_FDS}) is the plain server on inherited
    sockets, with a L{ParentLink}.  With C{--metrics}, the web service that
    serves the metrics is beside them, named C{metrics}; with C{--workers},
    the parent's serves the sum of the workers', which report to it.

    @param options: parsed L{Options} (C{parseOptions} already called), or
        a mapping with the same keys.
    @return: the command's services, not yet started; add it to an
        C{Application} or start it.
    """
    top = CaretCommand(options["port"], options.get("metrics"))
    top.terminal = startErrorsShownOn(options)
    OpenFilesLimit().setServiceParent(top)
    factory = CaretFactory(maxSessions=options.get("max-connections"))
    factory.idleTimeout = options.get("idle-timeout")
    factory.maxPerPeer = options.get("max-per-peer")
    caret = CaretService(options["endpoints"], factory)
    caret.shutdownTimeout = options.get("shutdown-timeout", caret.shutdownTimeout)
    caret.setName("caret")
    caret.setServiceParent(top)
    metrics = options.get("metrics")
    if options.get("workers", 1) > 1:
        caret.pauseAccepting("the workers accept")
        from twisted.internet import reactor

        pool = WorkerPool(
            options["workers"],
            # Workers run on the reactor the parent was given.
            workerCommand(options["argv"], reactorName(reactor)),
            caret.shareListening,
            killAfter=2 * caret.shutdownTimeout + WORKERS_KILL_MARGIN,
        )
        pool.setName("workers")
        pool.setServiceParent(top)
        if metrics is not None:
            from caretproto.metrics import WorkersMetrics, metricsService

            workersMetrics = WorkersMetrics()
            pool.reports = workersMetrics
            _named(metricsService(metrics, workersMetrics.registry), "metrics", top)
    elif options.get("inherited") is not None:
        ParentLink().setServiceParent(top)
        if metrics is not None:
            # The parent serves --metrics for all: a worker reports to it.
            from caretproto.metrics import CaretMetrics, MetricsReporter

            reporter = MetricsReporter(CaretMetrics(factory), factory)
            _named(reporter, "metrics", top)
    elif metrics is not None:
        from caretproto.metrics import CaretMetrics, metricsService

        _named(metricsService(metrics, CaretMetrics(factory).registry), "metrics", top)
    return top


class CannotStart(SystemExit, Exception):
    """
    The C{caret} command cannot start: one of its endpoints cannot listen.

    An C{Exception}, so that twistd reports it: twistd catches an exception
    raised while it starts the application, removes its pid file and, as a
    daemon, passes the exception's line through its status pipe to the
    process still waiting on the terminal, which prints it and exits with
    status 1 (C{postApplication} in C{twisted/scripts/_twistd_unix.py}).  A
    plain C{SystemExit} slips past that, leaving the pid file behind and the
    waiting process waiting for ever.  And a C{SystemExit} with status 1, so
    that the program, once twistd has re-raised it (or twist, which catches
    nothing), ends with that status and without a traceback.

    Its text begins with the reason, for twistd passes only its first 100
    bytes.

    @ivar option: C{--port} or C{--metrics}.
    @ivar given: the option's value.
    @ivar reason: why it cannot listen, in a few words (L{whyNot}).
    @ivar code: the exit status, 1.
    """

    def __init__(self, option: str, given: str, reason: str) -> None:
        """
        @param option: C{--port} or C{--metrics}.
        @param given: the option's value.
        @param reason: why it cannot listen, in a few words.
        """
        super().__init__(f"{reason.rstrip('.')}: {option} {given!r}")
        self.code = 1
        self.option = option
        self.given = given
        self.reason = reason


class CaretCommand(MultiService):
    """
    The services of the C{caret} command, and what the command does at its
    start and its end that no one of them can.

    A service that cannot listen (its port in use, its UNIX socket's folder
    missing) stops the program with one critical log line naming the option
    and why, and exit status 1, not a traceback: it is the operator's
    mistake, not the program's.  Raised as L{CannotStart}, which twistd
    passes on to the terminal it was started from; written there too by a
    twistd C{-n} whose log goes elsewhere (L{terminal}).  An endpoint that
    fails to listen later, once the program runs, stops it the same way
    (L{stopProgram}).

    A second SIGINT or SIGTERM while the services stop ends the drain at
    once (L{hurry}), where the reactor alone would fail to stop a second
    time, with a traceback.

    @ivar ports: the C{--port} values, in order.
    @ivar metrics: the C{--metrics} value, or C{None}.
    @ivar terminal: where to write a start error besides the log, or
        C{None} (see L{startErrorsShownOn}).
    @ivar stopProgram: called with the exit status when an endpoint fails
        to listen after the start; by default it stops the reactor and has
        the process exit with that status once twistd or twist is done.
    """

    _log = Logger()

    def __init__(
        self,
        ports: Sequence[str],
        metrics: str | None = None,
        reactor: Any = None,
    ) -> None:
        """
        @param ports: the C{--port} values, in order, to name a port that
            cannot listen.
        @param metrics: the C{--metrics} value, or C{None}.
        @param reactor: the reactor whose signal handlers a second signal
            replaces and which L{stopProgram} stops; by default the global
            one, looked up when first needed.
        """
        super().__init__()
        self.ports = list(ports)
        self.metrics = metrics
        self.terminal: TextIO | None = None
        self.stopProgram: Callable[[int], None] = self._exitOnceStopped
        self._reactor = reactor
        self._hooked: dict[int, Any] = {}

    @property
    def reactor(self) -> Any:
        """
        The reactor given, or the global one, imported only when needed so
        that building the services installs no reactor.
        """
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def privilegedStartService(self) -> None:
        """
        Start each service's privileged part, as C{MultiService} does; the
        C{caret} service listens now.  A port that cannot listen ends the
        start with one log line (and, under a twistd C{-n} logging
        elsewhere, one on L{terminal}).

        @raise CannotStart: if a C{--port} or the C{--metrics} endpoint
            cannot listen.
        """
        Service.privilegedStartService(self)
        for service in self:
            self._starting(service, service.privilegedStartService)

    def startService(self) -> None:
        """
        Start each service, as C{MultiService} does, failing as
        L{privilegedStartService} does (C{twist} starts services in this
        one step).  From now on, a C{caret} port that fails to listen later
        calls L{stopProgram}.

        @raise CannotStart: if a C{--port} or the C{--metrics} endpoint
            cannot listen.
        """
        Service.startService(self)
        for service in self:
            self._starting(service, service.startService)

    def _starting(self, service: IService, start: Callable[[], None]) -> None:
        if isinstance(service, CaretService):
            service.listenFailed = self._listenFailedLater
        try:
            start()
        except CannotListen as failed:
            option, given, reason = "--port", self.ports[failed.index], failed.reason
        except Exception as error:
            if service.name != "metrics" or self.metrics is None:
                raise
            option, given, reason = "--metrics", self.metrics, error
        else:
            return
        raise self._cannotStart(option, given, reason)

    def _cannotStart(
        self, option: str, given: str, error: BaseException
    ) -> CannotStart:
        """Say that C{option} C{given} cannot listen, for C{error}."""
        reason = whyNot(given, error)
        self._log.critical(
            "caret cannot start: {option} {given!r} cannot listen: {reason}",
            option=option,
            given=given,
            reason=reason,
        )
        if self.terminal is not None:
            self.terminal.write(
                f"caret cannot start: {option} {given!r} cannot listen: {reason}\n"
            )
            self.terminal.flush()
        return CannotStart(option, given, reason)

    def _listenFailedLater(self, failed: CannotListen) -> None:
        if not self.running:
            return
        self._cannotStart("--port", self.ports[failed.index], failed.reason)
        self.stopProgram(1)

    def _exitOnceStopped(self, status: int) -> None:
        """
        Stop the reactor, and exit with C{status} once twistd or twist is
        done (the pid file removed, the log written): neither lets a
        service choose the exit status (Twisted's issue #11335), so an exit
        handler ends the process with it.
        """
        atexit.register(_exitNow, status)
        self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[object]:
        """
        Stop every service, as C{MultiService} does, taking over SIGINT and
        SIGTERM from the reactor meanwhile: a second one ends the drain
        (L{hurry}).  A worker, whose parent ends it if need be, keeps the
        reactor's handlers.

        @return: a C{Deferred} that fires when every service has stopped.
        """
        self._hookSignals()
        stopped: Deferred[object] = super().stopService()
        return stopped.addBoth(self._unhookSignals)

    def _hookSignals(self) -> None:
        if any(isinstance(service, ParentLink) for service in self):
            # A worker may get a signal sent to its whole process group (as
            # systemd stops a service) and then the same one from its
            # parent: a second signal means nothing there.  Its parent ends
            # it if need be.
            return
        # Only the signals the reactor handles, as it does, by stopping: a
        # program that runs the services with handlers of its own keeps
        # them.
        for number in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(number)
            if getattr(handler, "__self__", None) is self.reactor:
                self._hooked[number] = handler
                signal.signal(number, self._signalled)

    def _unhookSignals(self, result: object) -> object:
        hooked, self._hooked = self._hooked, {}
        for number, handler in hooked.items():
            signal.signal(number, handler)
        return result

    def _signalled(self, number: int, frame: FrameType | None) -> None:
        # As the reactor's own handlers do: a signal handler runs between
        # any two bytecodes, so the work waits for the reactor's next turn.
        self.reactor.callFromThread(self.hurry, signal.Signals(number).name)

    def hurry(self, signalName: str = "a second signal") -> None:
        """
        End the drain now: abort the connections still open (replies owed
        and all) rather than wait for C{--shutdown-timeout}, and with
        C{--workers} kill the workers, whose connections close with them.
        What a second SIGINT or SIGTERM does, as nginx's fast shutdown and
        HAProxy's hard stop do after a graceful one.

        @param signalName: what asked, for the log line: C{SIGINT},
            C{SIGTERM}.
        """
        self._log.warn(
            "{signal} while stopping: ending the drain now", signal=signalName
        )
        for service in self:
            if isinstance(service, CaretService):
                service.hurry()
            elif isinstance(service, WorkerPool):
                for worker in service.workers.values():
                    worker.signal("KILL")


def _exitNow(status: int) -> None:
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(status)


def startErrorsShownOn(options: Mapping[str, Any]) -> TextIO | None:
    """
    Where the C{caret} command run with C{options} should write a start
    error besides its log (L{CaretCommand.terminal}): standard error, under
    a twistd C{-n} whose log goes elsewhere (C{--logfile}, C{--syslog},
    C{--logger}).  Nowhere else: twistd without C{-n} has the process
    waiting on the terminal print it (L{CannotStart}); twistd C{-n} without
    a log file logs to the terminal already; twist starts the services
    before its log begins, when a critical event goes to standard error by
    itself; and a C{.tac} file or a test has its own ways.

    @param options: the parsed L{Options}, whose C{parent} is twistd's or
        twist's options when run as a command.
    @return: C{sys.__stderr__}, or C{None} for nowhere.
    """
    runner = getattr(options, "parent", None)
    if not isinstance(runner, Mapping) or not runner.get("nodaemon"):
        return None
    if runner.get("logger") or runner.get("syslog"):
        return sys.__stderr__
    return None if runner.get("logfile") in (None, "", "-") else sys.__stderr__


def whyNot(description: str, error: BaseException) -> str:
    """
    Why listening on C{description} failed with C{error}, in a few words: the
    system's words for a socket error, and the folder that is missing for a
    UNIX socket path.

    @param description: the endpoint description that failed to listen.
    @param error: what it failed with.
    @return: the reason, for a log line and for L{CannotStart}.
    """
    path = _unixPath(description)
    if path is not None and not os.path.isdir(os.path.dirname(path) or "."):
        return f"the folder {os.path.dirname(path)!r} does not exist"
    if isinstance(error, CannotListenError):
        socketError = error.socketError
        text = getattr(socketError, "strerror", None) or str(socketError)
        return f"{text} ({error.interface or '*'}:{error.port})"
    if isinstance(error, OSError) and error.strerror:
        named = error.filename2 or error.filename
        return f"{error.strerror}: {named!s}" if named else error.strerror
    return str(error) or type(error).__name__


def _unixPath(description: str) -> str | None:
    """The socket path of a C{unix:} description, behind C{haproxy:} or not."""
    kind, _, rest = description.partition(":")
    if kind == proxies.PREFIX:
        return _unixPath(rest)
    if kind != "unix":
        return None
    for argument in rest.split(":"):
        name, equals, value = argument.partition("=")
        if not equals:
            return name
        if name == "address":
            return value
    return None


def _named(service: IService, name: str, parent: MultiService) -> None:
    service.setName(name)
    service.setServiceParent(parent)
