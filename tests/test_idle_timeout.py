"""
The idle timeout: a connection that sends nothing for C{idleTimeout} seconds
is closed, and logged; one that keeps sending never is.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from tests.fakes import clockedFactory, connect, messages


class IdleTimeoutTests(TestCase):
    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.factory.idleTimeout = 5.0

    def test_connection_that_sends_nothing_is_closed_after_the_timeout(
        self,
    ) -> None:
        _session, transport = connect(self.factory)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_closing_for_idleness_is_logged_with_the_peer(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        connect(self.factory, "192.0.2.7", 5555)
        self.clock.advance(5)
        self.assertIn("192.0.2.7:5555 sent nothing for 5.0s: closing", messages(logged))

    def test_every_read_restarts_the_timeout(self) -> None:
        session, transport = connect(self.factory)
        self.clock.advance(4)
        session.dataReceived(b"x")
        self.clock.advance(4)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_reads_keep_one_timer_that_closes_the_timeout_after_the_last_read(
        self,
    ) -> None:
        """
        A read notes its time rather than rescheduling the timer (see
        L{caretproto.server.CaretProtocol._setIdleTimeout}): the one timer,
        when it fires early, waits out the rest from the last read.
        """
        session, transport = connect(self.factory)
        for _ in range(3):
            self.clock.advance(1.5)
            session.dataReceived(b"^a$")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_slow_client_that_keeps_sending_is_never_closed(self) -> None:
        session, transport = connect(self.factory)
        for _ in range(1000):
            self.clock.advance(4.9)
            session.dataReceived(b"^")
        self.assertFalse(transport.disconnecting)

    def test_no_timeout_by_default(self) -> None:
        self.factory.idleTimeout = None
        session, transport = connect(self.factory)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        session.dataReceived(b"^a")
        self.clock.advance(10**9)
        self.assertFalse(transport.disconnecting)

    def test_time_paused_by_flow_control_does_not_count(self) -> None:
        """
        While the server does not read, it cannot tell whether the client
        sends; the client is not idle by its own doing.
        """
        session, transport = connect(self.factory)
        self.clock.advance(4)
        session.pauseProducing()
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        session.resumeProducing()
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_idle_close_delivers_owed_replies(self) -> None:
        session, transport = connect(self.factory)
        session.dataReceived(b"^abc")
        self.clock.advance(5)
        self.assertEqual(transport.value(), GREETING + b"bcd")
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)

    def test_client_that_takes_no_replies_after_idle_close_is_cut_off(
        self,
    ) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        _session, transport = connect(self.factory, "192.0.2.7", 5555)
        self.clock.advance(5)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertIn(
            "192.0.2.7:5555 did not take its replies within 5.0s of being "
            "closed for idleness: aborting",
            messages(logged),
        )

    def test_connection_lost_cancels_the_timeout(self) -> None:
        session, _transport = connect(self.factory)
        session.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_held_for_a_free_session_is_not_idle(self) -> None:
        self.factory.maxSessions = 1
        first, _firstTransport = connect(self.factory, port=1)
        _held, heldTransport = connect(self.factory, port=2)
        self.clock.advance(4)
        first.connectionLost()
        self.assertEqual(heldTransport.value(), GREETING)
        self.clock.advance(4.9)
        self.assertFalse(heldTransport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(heldTransport.disconnecting)
