"""
L{CaretProtocol} and L{CaretFactory} on a L{StringTransport}: every rule of
docs/protocol.rst as the server applies it, with no sockets and no reactor.
"""

from __future__ import annotations

from hypothesis import given
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from caretproto.rules import State
from caretproto.server import CaretFactory, CaretProtocol
from tests.model import referenceReplies
from tests.strategies import streams_and_cuts

PEER = IPv4Address("TCP", "192.0.2.7", 40123)


def connect(
    factory: CaretFactory | None = None,
) -> tuple[CaretProtocol, StringTransport, CaretFactory]:
    factory = factory or CaretFactory()
    protocol = factory.buildProtocol(PEER)
    assert isinstance(protocol, CaretProtocol)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport, factory


class GreetingTests(SynchronousTestCase):
    def test_server_sends_one_star_on_connect_and_waits_for_a_message(self) -> None:
        protocol, transport, _ = connect()
        self.assertEqual(transport.value(), b"*")
        self.assertIs(protocol.state, State.WAIT_FOR_MSG)

    def test_factory_knows_the_session_until_its_connection_is_lost(self) -> None:
        protocol, _, factory = connect()
        self.assertEqual(factory.sessions, {protocol})
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(factory.sessions, set())

    def test_when_idle_fires_when_the_last_session_ends(self) -> None:
        first, _, factory = connect()
        second, _, _ = connect(factory)
        idle = factory.whenIdle()
        first.connectionLost(Failure(ConnectionError()))
        self.assertNoResult(idle)
        second.connectionLost(Failure(ConnectionError()))
        self.successResultOf(idle)

    def test_when_idle_fires_at_once_without_sessions(self) -> None:
        self.successResultOf(CaretFactory().whenIdle())


class ReplyTests(SynchronousTestCase):
    def replies(self, *reads: bytes) -> bytes:
        protocol, transport, _ = connect()
        transport.clear()
        for read in reads:
            protocol.dataReceived(read)
        return transport.value()

    def test_worked_example(self) -> None:
        protocol, transport, _ = connect()
        for sent, answered in [
            (b"^abc$de^abte$f", b"*bcdbcuf"),
            (b"xyz^123", b"*bcdbcuf234"),
            (b"25$^ab$abab", b"*bcdbcuf23436bc"),
        ]:
            protocol.dataReceived(sent)
            self.assertEqual(transport.value(), answered)

    def test_bytes_outside_a_message_are_ignored(self) -> None:
        self.assertEqual(self.replies(b"abc", b"xyz$"), b"")

    def test_caret_inside_message_is_echoed_as_underscore(self) -> None:
        self.assertEqual(self.replies(b"^a^b$"), b"b_c")

    def test_ff_is_answered_with_zero(self) -> None:
        self.assertEqual(self.replies(b"^\xff\xfe$"), b"\x00\xff")

    def test_empty_messages_answer_nothing(self) -> None:
        self.assertEqual(self.replies(b"^$^$", b"^", b"$"), b"")

    def test_dollar_outside_a_message_is_ignored(self) -> None:
        self.assertEqual(self.replies(b"$$^a$$b"), b"b")

    def test_state_carries_from_read_to_read(self) -> None:
        self.assertEqual(self.replies(b"x^a", b"b", b"c$d", b"^", b"e"), b"bcdf")

    def test_one_read_is_answered_with_at_most_one_write(self) -> None:
        protocol, transport, _ = connect()
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        protocol.dataReceived(b"^ab$cd^ef$^gh$")
        protocol.dataReceived(b"no message here")
        self.assertEqual(writes, [b"bcfghi"])

    @given(streams_and_cuts)
    def test_any_cut_into_reads_gives_the_reference_replies(
        self, streamAndCut: tuple[bytes, list[bytes]]
    ) -> None:
        stream, reads = streamAndCut
        self.assertEqual(self.replies(*reads), referenceReplies(stream))


class CountingTests(SynchronousTestCase):
    def test_counts_bytes_both_ways_greeting_included_and_messages(self) -> None:
        protocol, _, _ = connect()
        protocol.dataReceived(b"^abc$de^abte$f")
        protocol.dataReceived(b"xyz^123")
        self.assertEqual(
            (protocol.bytesReceived, protocol.bytesSent, protocol.messages),
            (21, 1 + 7 + 3, 2),
        )

    def test_end_of_session_is_logged_with_peer_and_counts(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, _, _ = connect()
        protocol.dataReceived(b"^ab$")
        # A session is logged once, when it ends.
        self.assertEqual([e for e in events if e.get("peer") == "192.0.2.7:40123"], [])
        protocol.connectionLost(Failure(ConnectionError()))
        [ended] = [e for e in events if e.get("peer") == "192.0.2.7:40123"]
        self.assertEqual(
            (ended["bytes_in"], ended["bytes_out"], ended["messages"]), (4, 3, 1)
        )


class EndOfSessionTests(SynchronousTestCase):
    def test_is_half_close_aware(self) -> None:
        self.assertTrue(IHalfCloseableProtocol.providedBy(CaretProtocol()))

    def test_client_closing_its_side_makes_the_server_close_after_replies(
        self,
    ) -> None:
        protocol, transport, _ = connect()
        protocol.dataReceived(b"^abc")
        protocol.readConnectionLost()
        # Replies already written stay in the transport's buffer, which a
        # real transport flushes before closing.
        self.assertEqual(transport.value(), b"*bcd")
        self.assertTrue(transport.disconnecting)

    def test_closing_unregisters_the_producer_so_the_transport_can_close(
        self,
    ) -> None:
        protocol, transport, _ = connect()
        protocol.dataReceived(b"^a")
        self.assertIs(transport.producer, protocol)
        protocol.finish()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

    def test_closing_before_any_reply_needs_no_producer(self) -> None:
        protocol, transport, _ = connect()
        protocol.finish()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

    def test_replies_after_closing_register_no_producer(self) -> None:
        """
        A transport that still delivers data after C{loseConnection} (TLS
        does, until the peer's close) must not get a producer again: it
        would wait for it to go before closing.
        """
        protocol, transport, _ = connect()
        protocol.finish()
        protocol.dataReceived(b"^a")
        self.assertEqual(transport.value(), b"*b")
        self.assertIsNone(transport.producer)


class FlowControlTests(SynchronousTestCase):
    def test_session_becomes_its_transports_streaming_producer_at_its_first_reply(
        self,
    ) -> None:
        """
        Not before: a TLS transport pauses its producer while the greeting
        waits for the handshake, and a session that stopped reading then
        would stall the handshake (tests/test_tls.py has it for real).
        """
        protocol, transport, _ = connect()
        self.assertIsNone(transport.producer)
        protocol.dataReceived(b"^")
        self.assertIsNone(transport.producer)
        protocol.dataReceived(b"a")
        self.assertTrue(IPushProducer.providedBy(protocol))
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)

    def test_pausing_stops_reading_and_resuming_reads_again(self) -> None:
        protocol, transport, _ = connect()
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual((protocol.paused, protocol.pauses), (True, 1))
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(protocol.paused)
