"""
The C{caret-client} command: the reference client session
(docs/protocol.rst) on N connections at once, against any caret server::

    caret-client [-n N] HOST PORT
    caret-client [-n N] --tls [--ca ca.pem] HOST PORT
    caret-client [-n N] --endpoint unix:path=/run/caret.sock

It parses options, makes room for N open connections, runs
L{caretproto.referenceclient.runSessions} in the reactor and prints its log and the
elapsed time.  The exit status is 0 when every connection's session went as
the protocol says, 1 with a one-line summary when any failed, and 2 for bad
options.  The session itself lives in L{caretproto.referenceclient}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from caretproto.endpoints import clientEndpoint
from caretproto.openfiles import OpenFilesLimitError, raiseOpenFilesLimit
from caretproto.optionchecks import positive, tcpPort
from caretproto.referenceclient import (
    DEFAULT_TIMEOUT,
    ReferenceLogObserver,
    Report,
    runSessions,
)

PROGRAM = "caret-client"

SPARE_FILES = 64
"""Descriptors needed besides one per connection: stdio, the reactor's own."""

ENDPOINT_EXAMPLES = (
    "tcp:host=127.0.0.1:port=9090, unix:path=/run/caret.sock, tls:example.com:9443"
)


class Options(usage.Options):
    """Options of C{caret-client}."""

    synopsis = (
        f"{PROGRAM} [-n N] [options] ([--tls [--ca FILE]] HOST PORT "
        "| --endpoint DESCRIPTION)"
    )
    longdesc = (
        "Run the reference session of the caret protocol (greeting, three "
        "buffers 1.0 s, 1.0 s and 0.2 s apart, close) on N connections at "
        "once, log it, and print the elapsed time.  Exits 1, with a summary, "
        "if any connection failed."
    )
    optFlags = [
        ["quiet", "q", "Log only failures; print the elapsed time and summary."],
        [
            "tls",
            None,
            "Speak TLS to HOST PORT; the server's certificate must be valid for HOST.",
        ],
    ]
    optParameters = [
        [
            "connections",
            "n",
            1,
            "How many connections run the session at once.",
            positive("connections", "100"),
        ],
        [
            "ca",
            None,
            None,
            "With --tls: a PEM file of the certificate authority to trust, "
            "instead of those the system trusts.",
        ],
        [
            "endpoint",
            None,
            None,
            "A Twisted client endpoint description to connect to instead of "
            f"HOST PORT, like {ENDPOINT_EXAMPLES}.",
        ],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds a connection may wait to connect, for its greeting, or "
            "for the server to close after it has; against a sequential server "
            "the last of N clients waits about N x 2.2 s for its greeting.",
            positive("timeout", "60", float),
        ],
    ]

    def parseArgs(self, *server: str) -> None:
        if self["ca"] is not None and not self["tls"]:
            raise usage.UsageError("--ca FILE is for --tls: give both")
        if self["endpoint"] is not None:
            if server:
                raise usage.UsageError("give either HOST PORT or --endpoint, not both")
            if self["tls"]:
                raise usage.UsageError(
                    "--tls is for HOST PORT; with --endpoint, give a tls: "
                    "description, like tls:example.com:9443:trustRoots=/etc/caret/ca"
                )
            return
        if len(server) != 2:
            raise usage.UsageError(
                "give the server as HOST PORT (like 127.0.0.1 9090, after the "
                f"options) or as --endpoint DESCRIPTION (like {ENDPOINT_EXAMPLES}); "
                f"got {' '.join(server) or 'neither'}"
            )
        host, port = server
        self["host"] = host
        self["port"] = tcpPort(port)


def _endpoint(reactor: IReactorTime, options: Options) -> IStreamClientEndpoint:
    if options["endpoint"] is None:
        try:
            return clientEndpoint(
                reactor,
                options["host"],
                options["port"],
                tls=options["tls"],
                ca=options["ca"],
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
    try:
        return endpoints.clientFromString(reactor, options["endpoint"])
    except Exception as error:
        raise usage.UsageError(
            f"--endpoint {options['endpoint']!r} is not a usable client endpoint "
            f"({error}); use a Twisted endpoint description, like "
            f"{ENDPOINT_EXAMPLES}"
        ) from None


async def _run(reactor: IReactorTime, options: Options) -> None:
    try:
        endpoint = _endpoint(reactor, options)
    except usage.UsageError as error:
        _fail(str(error), 2)
    observer = ReferenceLogObserver(sys.stdout)
    log = Logger(
        namespace="caretproto.referenceclient",
        observer=FilteringLogObserver(
            observer,
            [
                LogLevelFilterPredicate(
                    LogLevel.error if options["quiet"] else LogLevel.info
                )
            ],
        ),
    )
    report: Report = await runSessions(
        reactor, endpoint, options["connections"], log, timeout=options["timeout"]
    )
    print(f"Elapsed: {report.elapsed:.2f}", flush=True)
    summary = report.summary()
    if summary is not None:
        print(f"{PROGRAM}: {summary}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def _fail(message: str, status: int) -> NoReturn:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run C{caret-client} with C{argv} (default: the command line)."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        _fail(f"{error}\nRun '{PROGRAM} --help' for the options.", 2)
    try:
        raiseOpenFilesLimit(options["connections"] + SPARE_FILES, PROGRAM)
    except OpenFilesLimitError as error:
        _fail(f"-n {options['connections']}: {error}", 1)
    # Twisted's own errors (an unhandled one is a bug) still reach stderr,
    # without taking over stdout as twistd would.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    react(lambda reactor: Deferred.fromCoroutine(_run(reactor, options)))


if __name__ == "__main__":
    main()
