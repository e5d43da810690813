"""
The C{caret-client} command: the reference client session
(docs/protocol.rst) on N connections at once, against any caret server::

    caret-client [-n N] HOST PORT
    caret-client [-n N] --tls [--ca ca.pem] HOST PORT
    caret-client [-n N] --endpoint unix:path=/run/caret.sock

It parses options, makes room for N open connections, runs
L{caretproto.referenceclient.runSessions} in the reactor and prints its log and the
elapsed time.  The exit status is 0 when every connection's session went as
the protocol says, and 1 with a one-line summary when any failed or the
options are wrong.  The options it shares with C{caret-bench} are
L{caretproto.clientoptions}; the session itself lives in
L{caretproto.referenceclient}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
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

from caretproto.clientoptions import ClientOptions
from caretproto.openfiles import OpenFilesLimitError, raiseOpenFilesLimit
from caretproto.optionchecks import positive, usageFailure
from caretproto.referenceclient import (
    DEFAULT_TIMEOUT,
    ReferenceLogObserver,
    Report,
    runSessions,
)

PROGRAM = "caret-client"
"""The command's name, in its messages and its C{--version}."""

SPARE_FILES = 64
"""Descriptors needed besides one per connection: stdio, the reactor's own."""


class Options(ClientOptions):
    """
    Options of C{caret-client}; where the server is: L{ClientOptions}.
    Each, with its default (C{caret-client --help} describes them in full):

      - C{--connections N}, C{-n}: how many connections run the session at
        once. [default: 1]
      - C{--timeout SECONDS}: how long a connection may wait to connect,
        for its greeting, or for the server to close after it has.
        [default: 60.0]
      - C{--quiet}, C{-q}: log only failures; print the elapsed time and
        the summary.
      - C{--tls}: speak TLS to C{HOST PORT}.
      - C{--ca FILE}: with C{--tls}, a PEM file of the certificate
        authority to trust instead of the system's. [default: none]
      - C{--endpoint DESCRIPTION}: a Twisted client endpoint description
        to connect to instead of C{HOST PORT}. [default: none]

    tests/test_docpages.py checks this list against the options themselves.

    @cvar program: L{PROGRAM}, for C{--version}.
    @cvar synopsis: the first line of C{--help}.
    @cvar longdesc: what C{--help} says the command does.
    @cvar optFlags: the options that take no value, as C{usage.Options}
        reads them.
    @cvar optParameters: the options that take a value, with their
        defaults and checks, as C{usage.Options} reads them.
    """

    program = PROGRAM
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
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds a connection may wait to connect, for its greeting, or "
            "for the server to close after it has; against a sequential server "
            "the last of N clients waits about N x 2.2 s for its greeting.",
            positive("timeout", "60", float),
        ],
    ]


async def _run(reactor: IReactorTime, options: Options) -> None:
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
        reactor,
        options.connectTo,
        options["connections"],
        log,
        timeout=options["timeout"],
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
    """
    Run C{caret-client} with C{argv}: parse the options, raise the
    open-files limit for C{-n} connections, run the sessions, print their
    log and the elapsed time.

    @param argv: the arguments, without the program's name; C{None} for
        the command line's.
    @return: does not return: the process exits.
    @raise SystemExit: always: status 0 when every session went as the
        protocol says; 1 with a one-line summary on standard error when any
        failed, when the options are wrong, or when the open-files limit
        cannot be raised far enough.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as error:
        raise usageFailure(PROGRAM, error) from None
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
