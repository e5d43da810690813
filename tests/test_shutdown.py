"""
Graceful shutdown, on a clock: stopping the service lets sessions go on for
C{shutdownTimeout} seconds, then ends them, each delivering what it owes.
The real signals are in L{tests.test_signals}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from caretproto.service import CaretService
from tests.fakes import clockedFactory, connect


class ShutdownTimeoutTests(TestCase):
    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.service = CaretService([], self.factory)
        self.service.shutdownTimeout = 10.0
        self.service.startService()

    def test_stop_without_sessions_is_done_at_once(self) -> None:
        self.assertIsNone(self.successResultOf(self.service.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessions_go_on_until_the_timeout(self) -> None:
        session, transport = connect(self.factory)
        stopped = self.service.stopService()
        self.clock.advance(9.9)
        session.dataReceived(b"^abc")
        self.assertEqual(transport.value(), GREETING + b"bcd")
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(stopped)

    def test_stop_is_done_when_the_last_session_ends_by_itself(self) -> None:
        first, _ = connect(self.factory)
        second, _ = connect(self.factory, port=40001)
        stopped = self.service.stopService()
        first.connectionLost()
        self.assertNoResult(stopped)
        self.clock.advance(3)
        second.connectionLost()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessions_left_at_the_timeout_are_finished(self) -> None:
        session, transport = connect(self.factory)
        session.pauseProducing()
        stopped = self.service.stopService()
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertFalse(transport.disconnected)
        self.assertNoResult(stopped)
        session.connectionLost()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_session_whose_client_takes_no_replies_is_cut_off_at_last(
        self,
    ) -> None:
        _, transport = connect(self.factory)
        self.service.stopService()
        self.clock.advance(10)
        self.assertFalse(transport.disconnected)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)


class StopListeningTests(TestCase):
    async def test_new_clients_are_refused_once_stopping(self) -> None:
        factory, clock = clockedFactory()
        service = CaretService(
            [TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")], factory
        )
        service.startService()
        (port,) = service.ports
        address = port.getHost()
        _, transport = connect(factory)
        stopped = service.stopService()
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)  # type: ignore[attr-defined]
        with self.assertRaises(ConnectionRefusedError):
            await client.connect(Factory.forProtocol(Protocol))
        self.assertNoResult(stopped)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)
