"""
The limit options of C{twistd caret}: parsed into the factory and service,
and bad values refused with a message naming the option.
"""

from __future__ import annotations

from twisted.application.service import IServiceCollection
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase

from caretproto import capacity
from caretproto.capacity import OpenFilesLimit
from caretproto.service import CaretService
from caretproto.tap import Options, makeService
from tests.fakes import connect, messages


def caretService(*argv: str) -> CaretService:
    options = Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *argv])
    top = makeService(options)
    assert IServiceCollection.providedBy(top)
    service = top.getServiceNamed("caret")  # type: ignore[attr-defined]
    assert isinstance(service, CaretService)
    return service


class LimitOptionsTests(TestCase):
    def test_defaults_idle_timeout_five_minutes_shutdown_ten_seconds(
        self,
    ) -> None:
        service = caretService()
        self.assertEqual(service.factory.idleTimeout, 300.0)
        self.assertIsNone(service.factory.maxPerPeer)
        self.assertIsNone(service.factory.maxSessions)
        self.assertEqual(service.shutdownTimeout, 10.0)

    def test_the_defaults_close_a_silent_connection_in_five_minutes(self) -> None:
        service = caretService()
        clock = Clock()
        service.factory.clock = clock
        _, transport = connect(service.factory)
        clock.advance(299.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_off_turns_each_limit_off(self) -> None:
        service = caretService(
            "--idle-timeout", "off", "--max-per-peer", "OFF", "--max-connections", "off"
        )
        self.assertIsNone(service.factory.idleTimeout)
        self.assertIsNone(service.factory.maxPerPeer)
        self.assertIsNone(service.factory.maxSessions)

    def test_every_limits_default_is_in_the_help(self) -> None:
        help = " ".join(str(Options()).split())
        for shown in [
            "--idle-timeout= Close a connection",
            "[default: 300.0]",
            "[default: off, no limit]",
            "[default: 10.0]",
            "[default: 4096]",
        ]:
            self.assertIn(shown, help)

    def test_options_reach_the_factory_and_service(self) -> None:
        service = caretService(
            "--idle-timeout", "2.5", "--max-per-peer", "3", "--shutdown-timeout", "4"
        )
        self.assertEqual(service.factory.idleTimeout, 2.5)
        self.assertEqual(service.factory.maxPerPeer, 3)
        self.assertEqual(service.shutdownTimeout, 4.0)

    def test_open_files_limit_is_raised_before_listening(self) -> None:
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
        first, second = list(makeService(options))  # type: ignore[call-overload]
        self.assertIsInstance(first, OpenFilesLimit)
        self.assertIsInstance(second, CaretService)

    def test_bad_values_name_the_option(self) -> None:
        for option, value in [
            ("--idle-timeout", "0"),
            ("--idle-timeout", "soon"),
            ("--max-per-peer", "-1"),
            ("--max-per-peer", "1.5"),
            ("--shutdown-timeout", "never"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                Options().parseOptions([option, value])
            self.assertIn(f"{option} takes a positive number", str(raised.exception))

    def test_a_bad_limit_shows_how_to_turn_it_off(self) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            Options().parseOptions(["--idle-timeout", "never"])
        self.assertEqual(
            str(raised.exception),
            "--idle-timeout takes a positive number or off, like "
            "--idle-timeout 300 or --idle-timeout off; got 'never'",
        )


class OpenFilesLimitTests(TestCase):
    def test_soft_limit_is_raised_once_whichever_way_the_service_starts(
        self,
    ) -> None:
        calls: list[str] = []
        self.patch(
            capacity, "raiseOpenFilesLimit", lambda: calls.append("raise") or (1, 2)
        )
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        twistd = OpenFilesLimit()
        twistd.privilegedStartService()
        twistd.startService()
        twist = OpenFilesLimit()
        twist.startService()
        self.assertEqual(calls, ["raise", "raise"])
        self.assertEqual(
            messages(logged),
            ["open files limit raised from 1 to the hard limit, 2"] * 2,
        )
