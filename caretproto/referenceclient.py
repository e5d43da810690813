"""
The reference client session of docs/protocol.rst, on any number of
connections at once, in one reactor.

L{runSessions} opens N connections through one client endpoint and runs the
script on each concurrently: wait for the greeting, send three buffers with
their pauses, close, and check that the bytes received are what
L{caretproto.rules} says a caret server answers.  The steps themselves are
played by L{caretproto.reference.ScriptRunner}, as C{caret-bench}'s are;
this module adds the connection, the timeouts and the log.  It logs what
it does in the reference format (L{ReferenceLogObserver}) and reports each
connection's L{Outcome}.  Time comes from the reactor given, so tests drive
it with a C{twisted.internet.task.Clock}.

This module is the session, not the command line: C{caret-client}
(L{caretproto.caretclient}) parses options and runs it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TextIO, TypeVar, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
)
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from zope.interface import implementer

from caretproto.client import (
    CaretClientFactory,
    CaretClientProtocol,
    GreetingError,
    connectEndpoint,
)
from caretproto.reference import (
    REFERENCE_SCRIPT,
    Script,
    ScriptRunner,
    expectedReplies,
)

DEFAULT_TIMEOUT = 60.0
"""
Seconds a session waits to connect, for its greeting, or for the server to
close once the client has, unless told otherwise.
"""


@dataclass
class Outcome:
    """
    How one connection's session went.

    @ivar name: the connection's name in the log (C{conn1}...).
    @ivar received: the reply bytes received, whether right or wrong.
    @ivar failure: C{None} if the session went as the protocol says, else
        what went wrong, in a few words (C{refused}, C{no greeting},
        C{wrong replies}...).
    @ivar detail: what happened, for the log and the summary.
    """

    name: str
    received: bytes = b""
    failure: str | None = None
    detail: str = ""


@dataclass
class Report:
    """
    All connections' outcomes, and how long they took together.

    @ivar outcomes: one L{Outcome} per connection, in the order of their
        names.
    @ivar elapsed: seconds from the first connection attempt to the end of
        the last session, on the sessions' clock.
    """

    outcomes: list[Outcome]
    elapsed: float

    @property
    def failed(self) -> list[Outcome]:
        """The outcomes of the sessions that failed, in order."""
        return [outcome for outcome in self.outcomes if outcome.failure]

    def summary(self) -> str | None:
        """
        One line saying which connections failed and how, or C{None} if
        none did.

        @return: how many failed, of how many, counted by kind of failure
            (the most frequent first), with the first failure's detail; or
            C{None}.
        """
        failed = self.failed
        if not failed:
            return None
        kinds = Counter(outcome.failure for outcome in failed)
        first = failed[0]
        total = len(self.outcomes)
        return (
            f"{len(failed)} of {total} connection{'' if total == 1 else 's'} "
            "failed: "
            + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
            + f" (first: {first.name}: {first.detail})"
        )


class _SessionFailed(Exception):
    def __init__(self, failure: str, detail: str) -> None:
        super().__init__(failure, detail)
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True)
class _Plan:
    """
    What one connection's session is to do, and where it logs: what its
    client, its steps and its factory share.

    @ivar name: the connection's name in the log (C{conn1}...).
    @ivar expected: the replies a caret server owes for C{script}.
    """

    name: str
    log: Logger
    clock: IReactorTime
    script: Script
    expected: bytes


class _SessionClient(CaretClientProtocol):
    """
    A client that logs every step and every read as the reference does, and
    plays the script through its L{_SessionSteps}.
    """

    def __init__(self, plan: _Plan) -> None:
        super().__init__()
        self.plan = plan
        self.steps = _SessionSteps(self, plan)

    def info(self, format: str, **kwargs: object) -> None:
        """Log a step of this session, at the session's clock's time."""
        plan = self.plan
        plan.log.info(format, conn=plan.name, at=plan.clock.seconds(), **kwargs)

    def replyReceived(self, data: bytes) -> None:
        self.info("{conn} received {data!r}", data=data)
        self.steps.replyReceived(data)


class _SessionSteps(ScriptRunner):
    """
    The script's steps on a L{_SessionClient}: each send logged, the end of
    the last pause (or the server closing first) reported through L{done}.
    The replies are judged by L{_session} once the server has closed, so
    that a wrong server's every byte is in the log and the L{Outcome}.

    @ivar done: fires when the last pause has elapsed; fails with
        L{_SessionFailed} if the server closes before.
    """

    def __init__(self, client: _SessionClient, plan: _Plan) -> None:
        super().__init__(plan.clock, client.send, plan.script, plan.expected)
        self.client = client
        self.done: Deferred[None] = Deferred()

    def sending(self, data: bytes) -> None:
        self.client.info("{conn} sending {data!r}", data=data)

    def scriptEnded(self) -> None:
        self.done.callback(None)

    def lost(self) -> None:
        """The connection is gone: before the script ended, that fails it."""
        if self.ended:
            return
        self.stop()
        self.done.errback(
            _SessionFailed(
                "connection lost",
                f"the server closed after {self.received!r}, before the session ended",
            )
        )


class _SessionClientFactory(CaretClientFactory):
    """Builds the one L{_SessionClient} of a L{_Plan}."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def buildProtocol(self, addr: object) -> _SessionClient:
        client = _SessionClient(self.plan)
        client.factory = self
        return client


_T = TypeVar("_T")


async def _within(
    waiting: Deferred[_T], clock: IReactorTime, timeout: float, failure: str
) -> _T:
    """Wait for C{waiting}, or fail with C{failure} after C{timeout}."""
    try:
        return await waiting.addTimeout(timeout, clock)
    except (DeferredTimeoutError, CancelledError):
        raise _SessionFailed(failure, f"nothing within {timeout:g} s") from None


async def _session(
    clock: IReactorTime,
    endpoint: IStreamClientEndpoint,
    name: str,
    log: Logger,
    script: Script,
    timeout: float,
) -> Outcome:
    expected = expectedReplies(script)
    client: _SessionClient | None = None
    try:
        try:
            plan = _Plan(name, log, clock, script, expected)
            connected = connectEndpoint(endpoint, _SessionClientFactory(plan))
            client = cast(
                _SessionClient,
                await _within(connected, clock, timeout, "could not connect"),
            )
        except ConnectionRefusedError as refused:
            raise _SessionFailed("refused", str(refused)) from None
        except _SessionFailed:
            raise
        except Exception as error:
            raise _SessionFailed("could not connect", str(error)) from None
        client.info("{conn} connected...")
        try:
            await _within(client.greeted, clock, timeout, "no greeting")
        except GreetingError as error:
            raise _SessionFailed("no greeting", str(error)) from None
        client.steps.start()
        client.closed.addCallback(lambda _: client.steps.lost())
        await client.steps.done
        client.info("{conn} disconnecting")
        client.close()
        await _within(client.closed, clock, timeout, "server did not close")
        received = client.steps.received
        if received != expected:
            raise _SessionFailed(
                "wrong replies", f"received {received!r}, expected {expected!r}"
            )
        return Outcome(name, received)
    except _SessionFailed as failed:
        # Not "failure": Twisted's legacy observers (trial's among them)
        # take an error event's "failure" field for a Failure.
        log.error(
            "{conn} {kind}: {detail}",
            conn=name,
            kind=failed.failure,
            detail=failed.detail,
            at=clock.seconds(),
        )
        received = b""
        if client is not None:
            client.steps.stop()
            received = client.steps.received
            if not client.closed.called:
                client.abort()
        return Outcome(name, received, failed.failure, failed.detail)


def runSession(
    clock: IReactorTime,
    endpoint: IStreamClientEndpoint,
    name: str,
    log: Logger,
    script: Script = REFERENCE_SCRIPT,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[Outcome]:
    """
    Run C{script} on one connection through C{endpoint}, logging as
    C{name}.  Never fails: a failure is in the L{Outcome}.

    @param clock: what the pauses and the timeouts are waited on, and the
        log's times read from: the reactor, or a test's C{Clock}.
    @param endpoint: where the server is.
    @param name: the connection's name in the log and the L{Outcome}.
    @param log: where the session's steps and reads go, at C{info}, and a
        failure, at C{error}; each event has the fields C{conn} (C{name})
        and C{at} (C{clock}'s time).
    @param script: the steps to play.
    @param timeout: the longest to wait to connect, for the greeting, and
        for the server to close once the client has.
    @return: fires with the session's L{Outcome} once it has ended.
    """
    return Deferred.fromCoroutine(_session(clock, endpoint, name, log, script, timeout))


def runSessions(
    clock: IReactorTime,
    endpoint: IStreamClientEndpoint,
    count: int,
    log: Logger,
    script: Script = REFERENCE_SCRIPT,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[Report]:
    """
    Run C{script} on C{count} connections at once, named C{conn1},
    C{conn2}...; fire with their L{Report} when all have ended.

    @param clock: as L{runSession} takes it; the report's C{elapsed} is
        measured on it too.
    @param endpoint: where the server is: every connection opens it.
    @param count: how many connections.
    @param log: where every session logs, as L{runSession} says.
    @param script: the steps each session plays.
    @param timeout: each session's, as L{runSession} takes it.
    @return: fires with the L{Report}; never fails, since a session's
        failure is in its L{Outcome}.
    """
    started = clock.seconds()
    sessions = [
        runSession(clock, endpoint, f"conn{number}", log, script, timeout)
        for number in range(1, count + 1)
    ]
    return gatherResults(sessions).addCallback(
        lambda outcomes: Report(outcomes, clock.seconds() - started)
    )


_LEVEL_NAMES = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARNING",
    LogLevel.error: "ERROR",
    LogLevel.critical: "CRITICAL",
}


def formatReferenceLine(event: LogEvent) -> str:
    """
    One log event as the reference client logs it,
    C{INFO:2017-09-16 14:14:17,763:conn1 connected...}: Python logging's
    C{%(levelname)s:%(asctime)s:%(message)s}.  The time is the event's C{at}
    (the session's clock) if it has one.

    @param event: a log event, as L{runSession} logs them, or any other.
    @return: the line, without a newline.
    """
    when: float = event["at"] if "at" in event else event["log_time"]
    seconds, millis = divmod(round(when * 1000), 1000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    level = _LEVEL_NAMES[event["log_level"]]
    return f"{level}:{stamp},{millis:03d}:{formatEvent(event)}"


@implementer(ILogObserver)
class ReferenceLogObserver:
    """
    Writes each event to C{stream} as a line of the reference format.

    @ivar stream: where the lines go.
    """

    def __init__(self, stream: TextIO) -> None:
        """
        An observer that writes to C{stream}.

        @param stream: where the lines go, such as C{sys.stdout}.
        """
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        """
        Write C{event} as one line (L{formatReferenceLine}).

        @param event: the log event to write.
        """
        self.stream.write(formatReferenceLine(event) + "\n")
