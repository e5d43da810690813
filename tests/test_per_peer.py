"""
The per-peer limit: at most C{maxPerPeer} sessions from one IP address; an
extra connection is closed at once without a greeting, and the refusals are
logged once per burst.
"""

from __future__ import annotations

from twisted.internet.address import UNIXAddress
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from tests.fakes import clockedFactory, connect, messages

STARTED = (
    "192.0.2.7 is at the per-peer limit of 2 sessions: refusing its further connections"
)


class PerPeerLimitTests(TestCase):
    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.factory.maxPerPeer = 2
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_extra_connection_is_closed_at_once_without_greeting(self) -> None:
        connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        extra, transport = connect(self.factory, "192.0.2.7", 3)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertNotIn(extra, self.factory.sessions)
        self.assertEqual(len(self.factory.sessions), 2)

    def test_refused_connection_leaves_no_trace_when_it_ends(self) -> None:
        connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        extra, _ = connect(self.factory, "192.0.2.7", 3)
        extra.connectionLost()
        self.assertEqual(self.factory.connectionsByPeer["192.0.2.7"], 2)

    def test_other_hosts_are_not_limited(self) -> None:
        connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        _, transport = connect(self.factory, "192.0.2.8", 1)
        self.assertEqual(transport.value(), GREETING)

    def test_host_is_admitted_again_when_one_of_its_sessions_ends(self) -> None:
        first, _ = connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        first.connectionLost()
        _, transport = connect(self.factory, "192.0.2.7", 3)
        self.assertEqual(transport.value(), GREETING)

    def test_unix_socket_peers_are_not_limited(self) -> None:
        for _ in range(5):
            _, transport = connect(self.factory, UNIXAddress(None))
            self.assertEqual(transport.value(), GREETING)

    def test_no_limit_by_default(self) -> None:
        self.factory.maxPerPeer = None
        for port in range(100):
            _, transport = connect(self.factory, "192.0.2.7", port)
            self.assertEqual(transport.value(), GREETING)

    def test_burst_of_refusals_is_logged_once_then_counted(self) -> None:
        connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        for port in range(100, 150):
            self.clock.advance(0.1)
            connect(self.factory, "192.0.2.7", port)
        refusals = [m for m in messages(self.logged) if "per-peer" in m]
        self.assertEqual(refusals, [STARTED])
        self.clock.advance(5)
        refusals = [m for m in messages(self.logged) if "per-peer" in m]
        self.assertEqual(
            refusals,
            [
                STARTED,
                "192.0.2.7: refused 50 connections over the per-peer limit of "
                "2 in 4.9s",
            ],
        )

    def test_refusal_after_a_quiet_interval_starts_a_new_burst(self) -> None:
        connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        connect(self.factory, "192.0.2.7", 3)
        self.clock.advance(60)
        connect(self.factory, "192.0.2.7", 4)
        refusals = [m for m in messages(self.logged) if "per-peer" in m]
        self.assertEqual(refusals, [STARTED, STARTED])

    def test_stopping_the_factory_logs_the_burst_in_progress(self) -> None:
        connect(self.factory, "192.0.2.7", 1)
        connect(self.factory, "192.0.2.7", 2)
        connect(self.factory, "192.0.2.7", 3)
        connect(self.factory, "192.0.2.7", 4)
        self.factory.stopFactory()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn(
            "192.0.2.7: refused 2 connections over the per-peer limit of 2 in 0.0s",
            messages(self.logged),
        )

    def test_connections_held_by_max_connections_count_for_their_peer(
        self,
    ) -> None:
        self.factory.maxSessions = 1
        connect(self.factory, "192.0.2.7", 1)
        held, heldTransport = connect(self.factory, "192.0.2.7", 2)
        _, refusedTransport = connect(self.factory, "192.0.2.7", 3)
        self.assertTrue(held.held)
        self.assertFalse(heldTransport.disconnecting)
        self.assertTrue(refusedTransport.disconnecting)
        held.connectionLost()
        self.assertEqual(self.factory.connectionsByPeer["192.0.2.7"], 1)
