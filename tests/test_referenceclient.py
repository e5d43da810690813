"""
Tests for L{caretproto.referenceclient}: the reference session on a L{Clock},
against the real server protocol joined in memory (L{tests.wire}).
"""

from __future__ import annotations

import re
import time

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LegacyLogObserverWrapper, Logger, LogLevel, formatEvent
from twisted.python.log import textFromEventDict
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from caretproto.reference import REFERENCE_SCRIPT, expectedReplies
from caretproto.referenceclient import (
    Outcome,
    Report,
    formatReferenceLine,
    runSessions,
)
from caretproto.server import CaretFactory
from tests.wire import WiredEndpoint
from tests.workedexample import REFERENCE_REPLIES

EXPECTED = REFERENCE_REPLIES


class SessionRun:
    """Runs sessions on a Clock against C{serverFactory}, logging to a list."""

    def __init__(self, serverFactory: Factory, count: int = 1, **kwargs: object):
        self.clock = Clock()
        self.events: list[dict] = []
        self.endpoint = WiredEndpoint(serverFactory)
        done = runSessions(
            self.clock,
            self.endpoint,
            count,
            Logger(observer=self.events.append),
            **kwargs,  # type: ignore[arg-type]
        )
        self.endpoint.runUntil(self.clock, done)
        self.report: Report = TestCase().successResultOf(done)

    def lines(self, conn: str | None = None) -> list[tuple[float, str]]:
        """(time, message) of each log line, of one connection or all."""
        return [
            (round(event["at"], 6), formatEvent(event))
            for event in self.events
            if conn is None or event["conn"] == conn
        ]

    def first(self, conn: str, message: str) -> float:
        """When C{conn} first logged a line ending with C{message}."""
        return min(at for at, line in self.lines(conn) if line.endswith(message))


class Greeter(Protocol):
    """A server that greets with C{greeting} and then says nothing."""

    greeting = b"*"

    def connectionMade(self) -> None:
        self.transport.write(self.greeting)


class ReferenceSessionTests(TestCase):
    def test_the_reference_script_is_answered_as_protocol_md_says(self) -> None:
        self.assertEqual(expectedReplies(REFERENCE_SCRIPT), EXPECTED)

    def test_one_session_logs_each_step_at_its_time(self) -> None:
        run = SessionRun(CaretFactory())
        self.assertEqual(
            run.lines(),
            [
                (0.0, "conn1 connected..."),
                (0.0, "conn1 sending b'^abc$de^abte$f'"),
                (0.0, "conn1 received b'bcdbcuf'"),
                (1.0, "conn1 sending b'xyz^123'"),
                (1.0, "conn1 received b'234'"),
                (2.0, "conn1 sending b'25$^ab0000$abab'"),
                (2.0, "conn1 received b'36bc1111'"),
                (2.2, "conn1 disconnecting"),
            ],
        )
        self.assertEqual(run.report.outcomes, [Outcome("conn1", EXPECTED)])
        self.assertAlmostEqual(run.report.elapsed, 2.2)

    def test_the_session_closes_its_side_and_waits_for_the_server(self) -> None:
        run = SessionRun(CaretFactory())
        (wire,) = run.endpoint.wires
        self.assertTrue(wire.clientTransport.writeClosed)
        self.assertTrue(wire.readClosed)
        self.assertTrue(wire.serverTransport.disconnecting)

    def test_n_sessions_against_a_concurrent_server_run_at_once(self) -> None:
        run = SessionRun(CaretFactory(), count=3)
        self.assertAlmostEqual(run.report.elapsed, 2.2)
        self.assertEqual(run.report.failed, [])
        self.assertEqual([o.received for o in run.report.outcomes], [EXPECTED] * 3)
        for conn in ["conn1", "conn2", "conn3"]:
            self.assertEqual(run.first(conn, "sending b'^abc$de^abte$f'"), 0.0)

    def test_against_a_sequential_server_sessions_follow_one_another(self) -> None:
        run = SessionRun(CaretFactory(maxSessions=1), count=3)
        self.assertAlmostEqual(run.report.elapsed, 6.6)
        self.assertEqual(run.report.failed, [])
        self.assertEqual([o.received for o in run.report.outcomes], [EXPECTED] * 3)
        self.assertEqual(
            [run.first(conn, "connected...") for conn in ["conn1", "conn2", "conn3"]],
            [0.0, 0.0, 0.0],
        )
        for earlier, later in [("conn1", "conn2"), ("conn2", "conn3")]:
            self.assertEqual(
                run.first(later, "sending b'^abc$de^abte$f'"),
                run.first(earlier, "disconnecting"),
            )

    def test_the_pauses_come_from_the_script(self) -> None:
        script = [(b"^a", 0.5), (b"b$", 0.25)]
        run = SessionRun(CaretFactory(), script=script)
        self.assertEqual(run.report.outcomes, [Outcome("conn1", b"bc")])
        self.assertAlmostEqual(run.report.elapsed, 0.75)


class SessionFailureTests(TestCase):
    def assertFailed(self, run: SessionRun, failure: str, detail: str) -> Outcome:
        (outcome,) = run.report.outcomes
        self.assertEqual(outcome.failure, failure)
        self.assertIn(detail, outcome.detail)
        errors = [e for e in run.events if e["log_level"] is LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn(failure, formatEvent(errors[0]))
        return outcome

    def test_a_refused_connection_fails_as_refused(self) -> None:
        @implementer(IStreamClientEndpoint)
        class Refusing:
            def connect(self, factory: Factory) -> Deferred[Protocol]:
                return fail(ConnectionRefusedError("nobody home"))

        done = runSessions(Clock(), Refusing(), 2, Logger(observer=lambda e: None))
        report = self.successResultOf(done)
        self.assertEqual([o.failure for o in report.outcomes], ["refused"] * 2)
        self.assertIn("nobody home", report.outcomes[0].detail)
        self.assertEqual(report.summary().split(":")[0], "2 of 2 connections failed")

    def test_one_connection_failed_is_singular(self) -> None:
        @implementer(IStreamClientEndpoint)
        class Refusing:
            def connect(self, factory: Factory) -> Deferred[Protocol]:
                return fail(ConnectionRefusedError("nobody home"))

        done = runSessions(Clock(), Refusing(), 1, Logger(observer=lambda e: None))
        summary = self.successResultOf(done).summary()
        self.assertEqual(summary.split(":")[0], "1 of 1 connection failed")

    def test_anything_but_the_greeting_fails_as_no_greeting(self) -> None:
        class Impostor(Greeter):
            greeting = b"220 smtp.example.com\r\n"

        run = SessionRun(Factory.forProtocol(Impostor))
        self.assertFailed(run, "no greeting", "b'220 smtp")

    def test_a_failure_reaches_legacy_log_observers_as_its_line(self) -> None:
        """
        Twisted's legacy observers, trial's among them, take an error
        event's C{failure} field for a Failure: a session's failure logged
        under that name, a string, crashed trial's reporter.
        """

        class Impostor(Greeter):
            greeting = b"220 smtp.example.com\r\n"

        legacy: list[dict] = []
        clock, endpoint = Clock(), WiredEndpoint(Factory.forProtocol(Impostor))
        done = runSessions(
            clock, endpoint, 1, Logger(observer=LegacyLogObserverWrapper(legacy.append))
        )
        endpoint.runUntil(clock, done)
        self.successResultOf(done)
        (error,) = [event for event in legacy if event["isError"]]
        self.assertEqual(
            textFromEventDict(error),
            "conn1 no greeting: expected the greeting b'*', "
            "got b'220 smtp.example.com\\r\\n'",
        )

    def test_a_server_that_never_greets_fails_after_the_timeout(self) -> None:
        run = SessionRun(Factory.forProtocol(Protocol), timeout=5)
        self.assertFailed(run, "no greeting", "nothing within 5 s")
        self.assertEqual(run.clock.seconds(), 5)
        (wire,) = run.endpoint.wires
        self.assertTrue(wire.clientTransport.disconnecting)

    def test_wrong_replies_fail_and_say_what_came(self) -> None:
        class Echo(Greeter):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)

            def readConnectionLost(self) -> None:
                self.transport.loseConnection()

        run = SessionRun(Factory.forProtocol(Echo))
        outcome = self.assertFailed(run, "wrong replies", f"expected {EXPECTED!r}")
        self.assertEqual(outcome.received, b"".join(d for d, _ in REFERENCE_SCRIPT))

    def test_a_server_that_closes_mid_session_fails_as_connection_lost(self) -> None:
        class Hasty(Greeter):
            def dataReceived(self, data: bytes) -> None:
                self.transport.loseConnection()

        run = SessionRun(Factory.forProtocol(Hasty))
        self.assertFailed(run, "connection lost", "before the session ended")

    def test_a_server_that_never_closes_fails_after_the_timeout(self) -> None:
        class Stubborn(Greeter):
            def dataReceived(self, data: bytes) -> None:
                """Answers nothing and never closes."""

            def readConnectionLost(self) -> None:
                """Ignores the client's close."""

        run = SessionRun(Factory.forProtocol(Stubborn), timeout=3)
        self.assertFailed(run, "server did not close", "nothing within 3 s")
        self.assertAlmostEqual(run.clock.seconds(), 5.2)


class ReportTests(TestCase):
    def test_a_report_with_no_failure_has_no_summary(self) -> None:
        self.assertIsNone(Report([Outcome("conn1", EXPECTED)], 2.2).summary())

    def test_the_summary_counts_failures_by_kind_and_shows_the_first(self) -> None:
        report = Report(
            [
                Outcome("conn1", EXPECTED),
                Outcome("conn2", failure="refused", detail="Connection refused"),
                Outcome("conn3", failure="no greeting", detail="got b'x'"),
                Outcome("conn4", failure="refused", detail="Connection refused"),
            ],
            0.1,
        )
        self.assertEqual(
            report.summary(),
            "3 of 4 connections failed: 2 refused, 1 no greeting "
            "(first: conn2: Connection refused)",
        )


class ReferenceFormatTests(TestCase):
    def event(self, level: LogLevel, at: float) -> dict:
        return {
            "log_format": "{conn} connected...",
            "conn": "conn1",
            "log_level": level,
            "log_time": 0.0,
            "at": at,
        }

    def test_a_line_is_level_local_time_with_milliseconds_and_message(self) -> None:
        at = 1505571257.763
        line = formatReferenceLine(self.event(LogLevel.info, at))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        self.assertEqual(line, f"INFO:{stamp},763:conn1 connected...")
        self.assertRegex(
            line, r"^INFO:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}:conn1 connected\.\.\.$"
        )

    def test_levels_are_named_as_python_logging_names_them(self) -> None:
        names = [
            formatReferenceLine(self.event(level, 0.5)).split(":", 1)[0]
            for level in [LogLevel.info, LogLevel.warn, LogLevel.error]
        ]
        self.assertEqual(names, ["INFO", "WARNING", "ERROR"])

    def test_without_a_session_time_the_log_time_is_used(self) -> None:
        event = self.event(LogLevel.info, 0)
        del event["at"]
        event["log_time"] = 1505571257.001
        self.assertTrue(re.search(r",001:conn1", formatReferenceLine(event)))
