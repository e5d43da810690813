"""
The idle timeout: a connection that neither sends anything nor takes any of
its replies for C{idleTimeout} seconds is ended, and logged; one that keeps
sending, or keeps taking its replies, never is.  All of it on the factory's
one idle wheel, so a session is ended no earlier than its deadline and less
than two ticks (L{caretproto.idle.granularityFor}) after it: one for its
last read to be counted, one for the deadline's own.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from functools import partial

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.idle import granularityFor
from caretproto.rules import GREETING
from caretproto.service import CaretService
from tests.fakes import clockedFactory, connect, messages
from tests.test_writenow import sessionOnSocket

TIMEOUT = 5.0
TICK = granularityFor(TIMEOUT)


def wait(clock: Clock, seconds: float) -> None:
    """
    Let C{seconds} pass on C{clock} as they pass on a reactor: each call
    runs at its own time, not late at the end of one long step.  The idle
    wheel samples paused sessions each tick, and counts a read from the
    tick after it, so that a test which jumped past its ticks would see a
    reactor stalled for as long.
    """
    end = clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls()]
        due = [when for when in due if when <= end]
        if not due:
            break
        # Exactly at its time: C{advance} by a difference may land an ulp
        # short of it.
        clock.rightNow = max(clock.rightNow, min(due))
        clock.advance(0)
    clock.rightNow = end
    clock.advance(0)


def assertEndsAtTimeout(
    test: TestCase,
    ended: Callable[[], bool],
    advance: Callable[[float], object],
    ticks: int = 1,
) -> None:
    """
    Time passing with C{advance}: the session has not C{ended} just before
    L{TIMEOUT} from now, and has within C{ticks} ticks after it.
    """
    advance(TIMEOUT - 0.01)
    test.assertFalse(ended())
    advance(ticks * TICK)
    test.assertTrue(ended())


class IdleTimeoutTests(TestCase):
    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.factory.idleTimeout = TIMEOUT

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
        wait(self.clock, 4)
        session.dataReceived(b"x")
        assertEndsAtTimeout(
            self,
            lambda: transport.disconnecting,
            partial(wait, self.clock),
        )

    def test_a_read_counts_from_the_next_tick(self) -> None:
        """
        A read does not look at the clock: the wheel's next tick gives the
        session its time, so that a session is ended no earlier than the
        timeout after its last read, and at most a tick later.
        """
        session, transport = connect(self.factory)
        wait(self.clock, 3 * TICK)
        # At a tick's time: counted from the next tick, a whole tick later.
        session.dataReceived(b"x")
        wait(self.clock, TIMEOUT + TICK - 0.001)
        self.assertFalse(transport.disconnecting)
        wait(self.clock, 0.001)
        self.assertTrue(transport.disconnecting)

    def test_reads_after_the_first_since_a_tick_do_not_touch_the_wheel(
        self,
    ) -> None:
        session, _transport = connect(self.factory)
        wheel = self.factory.idleWheel
        noted = []
        self.patch(wheel, "noteProgress", noted.append)
        for _ in range(3):
            session.dataReceived(b"^a$")
        self.assertEqual(noted, [session])
        # The tick: the next read tells the wheel again.
        session.progressed(self.clock.seconds())
        session.dataReceived(b"^a$")
        session.dataReceived(b"^a$")
        self.assertEqual(noted, [session, session])

    def test_a_read_just_before_the_deadline_keeps_the_session(self) -> None:
        session, transport = connect(self.factory)
        self.clock.advance(TIMEOUT - 0.001)
        session.dataReceived(b"^a")
        self.clock.advance(0.001)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(TIMEOUT - 0.002)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(TICK)
        self.assertTrue(transport.disconnecting)

    def test_reads_set_no_timer(self) -> None:
        """
        A read sets no timer: the session's deadline is looked at when its
        tick comes, and filed again for what is left since the last read,
        counted from the tick after it (see
        L{caretproto.server.CaretProtocol._watchIdle}).
        """
        session, transport = connect(self.factory)
        for _ in range(30):
            wait(self.clock, 0.5)
            session.dataReceived(b"^a$")
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
        # The last read was at a tick's time, so counted from the next one.
        assertEndsAtTimeout(
            self,
            lambda: transport.disconnecting,
            partial(wait, self.clock),
            ticks=2,
        )

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
        session.pauseProducing()
        self.clock.advance(10**9)
        self.assertFalse(transport.disconnecting)

    def test_idle_close_delivers_owed_replies(self) -> None:
        session, transport = connect(self.factory)
        session.dataReceived(b"^abc")
        wait(self.clock, TIMEOUT + TICK)
        self.assertEqual(transport.value(), GREETING + b"bcd")
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)

    def test_client_that_takes_no_replies_after_idle_close_is_cut_off(
        self,
    ) -> None:
        """
        On a transport that cannot say what it holds unsent, nothing counts
        as taken: the client gets one more timeout.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        _session, transport = connect(self.factory, "192.0.2.7", 5555)
        self.clock.advance(5)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1 + TICK)
        self.assertTrue(transport.disconnected)
        self.assertIn(
            "192.0.2.7:5555 did not take its replies for 5.0s after being "
            "closed for idleness: aborting",
            messages(logged),
        )

    def test_connection_lost_leaves_no_timer(self) -> None:
        session, _transport = connect(self.factory)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        session.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.factory.idleWheel), 0)

    def test_connection_held_for_a_free_session_is_not_idle(self) -> None:
        self.factory.maxSessions = 1
        first, _firstTransport = connect(self.factory, port=1)
        _held, heldTransport = connect(self.factory, port=2)
        self.clock.advance(4)
        first.connectionLost()
        self.assertEqual(heldTransport.value(), GREETING)
        assertEndsAtTimeout(
            self, lambda: heldTransport.disconnecting, self.clock.advance
        )


class PausedTests(TestCase):
    """
    A session that flow control paused reads nothing, so only its client
    taking replies is progress: one that takes none for the timeout is cut
    off, its owed replies abandoned; one that keeps taking them stays.
    Sessions on a real TCP transport over a fake socket, whose room the
    test gives as the client would take bytes.
    """

    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.factory.idleTimeout = TIMEOUT
        self.session, self.transport, self.socket, _ = sessionOnSocket(self.factory)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def wait(self, seconds: float) -> None:
        """Let C{seconds} pass, the clock's calls running as a reactor's would."""
        wait(self.clock, seconds)

    def pause(self) -> None:
        """A client that sends a great deal and reads nothing."""
        self.socket.room = 0
        self.session.dataReceived(b"^" + b"a" * (self.transport.bufferSize + 1))
        self.assertTrue(self.session.paused)

    def take(self, count: int) -> None:
        """The client reads C{count} bytes; the socket is writable."""
        self.socket.room = count
        self.transport.doWrite()

    def test_a_paused_client_that_takes_nothing_is_aborted_after_the_timeout(
        self,
    ) -> None:
        self.wait(2)
        self.pause()
        assertEndsAtTimeout(self, lambda: self.transport._aborting, self.wait)
        self.assertIn(
            "127.0.0.1:40000 did not take its replies for 5.0s while its "
            f"reading was paused: aborting with {self.transport.bufferSize + 1} "
            "bytes unsent",
            messages(self.logged),
        )

    def test_a_paused_client_that_keeps_taking_replies_stays(self) -> None:
        self.pause()
        for _ in range(20):
            self.wait(4.5)
            self.take(100)
        self.assertTrue(self.session.paused)
        self.assertFalse(self.transport._aborting)
        self.assertFalse(self.transport.disconnecting)

    def test_a_paused_client_that_stops_taking_is_aborted_a_timeout_later(
        self,
    ) -> None:
        self.pause()
        self.wait(4.5)
        self.take(100)
        assertEndsAtTimeout(self, lambda: self.transport._aborting, self.wait, ticks=2)

    def test_a_session_resumed_counts_idle_time_from_the_resume(self) -> None:
        """
        Its client took everything: the session reads again, and a client
        that then sends nothing is closed as any silent one is.
        """
        self.pause()
        self.wait(4)
        self.take(10**9)
        self.assertFalse(self.session.paused)
        assertEndsAtTimeout(self, lambda: self.transport.disconnecting, self.wait)
        self.assertFalse(self.transport._aborting)

    def test_a_paused_session_is_sampled_each_tick_and_no_more(self) -> None:
        self.pause()
        self.wait(1)
        [call] = self.clock.getDelayedCalls()
        self.assertLessEqual(call.getTime() - self.clock.seconds(), TICK)


class ReleaseTests(TestCase):
    """
    A session closed for idleness with nothing owed is closed fully at once;
    only owed replies still going out keep it, and only while its client
    takes them.
    """

    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.factory.idleTimeout = TIMEOUT
        self.session, self.transport, self.socket, _ = sessionOnSocket(self.factory)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def wait(self, seconds: float) -> None:
        """Let C{seconds} pass, the clock's calls running as a reactor's would."""
        wait(self.clock, seconds)

    def owe(self, count: int) -> None:
        """
        The client sends a message whose replies it does not take: its
        session is closed for idleness a timeout after the next tick.
        """
        self.socket.room = 0
        self.session.dataReceived(b"^" + b"a" * count)

    def test_a_silent_client_owed_nothing_is_closed_fully_at_once(self) -> None:
        self.wait(TIMEOUT)
        # Closing, not half-closing and reading on.
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport._writeDisconnecting)
        self.assertNotIn("_lingering", vars(self.session))
        self.transport.connectionLost(Failure(self.transport.doWrite()))
        self.assertTrue(self.socket.closed)
        # Never half-closed: shut both ways as it closes.
        self.assertEqual(self.socket.shutdowns, [socket.SHUT_RDWR])
        self.assertEqual(self.session.lostCount, 1)
        self.assertIn(
            "127.0.0.1:40000 sent nothing for 5.0s: closing", messages(self.logged)
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_silent_client_owed_replies_is_closed_once_it_takes_them(
        self,
    ) -> None:
        self.owe(3)
        self.wait(TIMEOUT + TICK)
        self.assertIn(
            "127.0.0.1:40000 sent nothing for 5.0s: closing once its 3 owed "
            "bytes are taken",
            messages(self.logged),
        )
        self.assertFalse(self.socket.closed)
        self.wait(3)
        self.socket.room = None
        self.transport.doWrite()
        self.assertEqual(b"".join(self.socket.sent), GREETING + b"bbb")
        # Half-closed once everything went, then closed at once.
        self.assertEqual(self.socket.shutdowns[0], socket.SHUT_WR)
        self.assertTrue(self.socket.closed)
        self.assertEqual(self.session.lostCount, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_owed_replies_taken_slowly_keep_the_connection_until_taken(
        self,
    ) -> None:
        self.owe(20)
        self.wait(TIMEOUT + TICK)
        for _ in range(19):
            self.wait(4.5)
            self.socket.room = 1
            self.transport.doWrite()
        self.assertFalse(self.transport._aborting)
        self.assertFalse(self.socket.closed)
        self.socket.room = 1
        self.transport.doWrite()
        self.assertTrue(self.socket.closed)
        self.assertFalse(self.transport._aborting)

    def test_owed_replies_not_taken_within_the_timeout_are_abandoned(
        self,
    ) -> None:
        self.owe(3)
        self.wait(TIMEOUT + TICK)
        assertEndsAtTimeout(self, lambda: self.transport._aborting, self.wait)
        self.assertIn(
            "127.0.0.1:40000 did not take its replies for 5.0s after being "
            "closed for idleness: aborting with 3 bytes unsent",
            messages(self.logged),
        )

    def test_a_client_sending_on_after_idle_close_is_still_cut_off(self) -> None:
        """What it sends is dropped, and is no progress: only taking is."""
        noted = []
        self.patch(self.factory.idleWheel, "noteProgress", noted.append)
        self.owe(3)
        self.wait(TIMEOUT + TICK)
        for _ in range(3):
            self.wait(2)
            self.session.dataReceived(b"^more")
        self.assertTrue(self.transport._aborting)
        # Only the read before the close told the wheel.
        self.assertEqual(noted, [self.session])

    def test_an_idle_close_during_a_drain_closes_what_owes_nothing(self) -> None:
        """
        A session that a stopping service ended, lingering for its client
        to close, and then silent, is closed like any other silent one.
        """
        self.session.finish()
        self.transport.doWrite()
        self.assertEqual(self.socket.shutdowns, [socket.SHUT_WR])
        self.wait(TIMEOUT)
        self.assertTrue(self.socket.closed)


class WheelTests(TestCase):
    """The factory's one timer for every session."""

    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.factory.idleTimeout = TIMEOUT

    def test_thousands_of_sessions_share_one_timer(self) -> None:
        randomness = random.Random(18)
        sessions = []
        lastRead = {}
        for port in range(5000):
            self.clock.advance(randomness.uniform(0, 0.0002))
            session, transport = connect(self.factory, port=port)
            sessions.append((session, transport))
            lastRead[session] = self.clock.seconds()
        for _ in range(4):
            wait(self.clock, 1)
            for session, _transport in randomness.sample(sessions, 1000):
                session.dataReceived(b"^a")
                lastRead[session] = self.clock.seconds()
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        closedAt = {}
        while self.clock.getDelayedCalls():
            [call] = self.clock.getDelayedCalls()
            self.clock.advance(call.getTime() - self.clock.seconds())
            for session, transport in sessions:
                if transport.disconnecting and session not in closedAt:
                    closedAt[session] = self.clock.seconds()
                    # The transport is gone once closed, here at once.
                    session.connectionLost()
        self.assertEqual(len(closedAt), 5000)
        for session, _transport in sessions:
            due = lastRead[session] + TIMEOUT
            self.assertTrue(
                due <= closedAt[session] < due + TICK, (due, closedAt[session])
            )
        self.assertEqual(len(self.factory.idleWheel), 0)

    def test_a_shorter_timeout_applies_to_every_session_at_once(self) -> None:
        session, transport = connect(self.factory)
        self.clock.advance(1)
        session.dataReceived(b"^a")
        self.factory.idleTimeout = 2.0
        self.clock.advance(1.99)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(granularityFor(2.0))
        self.assertTrue(transport.disconnecting)

    def test_a_longer_timeout_applies_to_every_session_at_once(self) -> None:
        _session, transport = connect(self.factory)
        self.factory.idleTimeout = 100.0
        self.clock.advance(99.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_turning_the_timeout_off_leaves_no_timer(self) -> None:
        session, transport = connect(self.factory)
        session.dataReceived(b"^a")
        self.factory.idleTimeout = None
        self.assertEqual(self.clock.getDelayedCalls(), [])
        session.dataReceived(b"b")
        self.clock.advance(10**6)
        self.assertFalse(transport.disconnecting)

    def test_turning_the_timeout_on_counts_from_then(self) -> None:
        self.factory.idleTimeout = None
        _session, transport = connect(self.factory)
        self.clock.advance(1000)
        self.factory.idleTimeout = TIMEOUT
        assertEndsAtTimeout(self, lambda: transport.disconnecting, self.clock.advance)

    def test_reads_are_counted_once_the_timeout_is_turned_on(self) -> None:
        """
        A session that read while it was not timed tells the wheel of its
        first read once it is.
        """
        self.factory.idleTimeout = None
        session, transport = connect(self.factory)
        session.dataReceived(b"^a")
        self.factory.idleTimeout = TIMEOUT
        wait(self.clock, 4)
        session.dataReceived(b"b")
        assertEndsAtTimeout(
            self,
            lambda: transport.disconnecting,
            partial(wait, self.clock),
        )

    def test_a_stopped_service_leaves_no_timer(self) -> None:
        service = CaretService([], self.factory)
        service.startService()
        sessions = [connect(self.factory, port=port)[0] for port in range(10)]
        sessions[0].pauseProducing()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        stopped = service.stopService()
        for session in sessions:
            session.connectionLost()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessions_left_by_a_drain_are_still_timed(self) -> None:
        """
        A factory's stop does not end its connections (a service's drain
        does), so it does not stop timing them either.
        """
        _session, transport = connect(self.factory)
        self.factory.doStart()
        self.factory.doStop()
        self.clock.advance(TIMEOUT)
        self.assertTrue(transport.disconnecting)
