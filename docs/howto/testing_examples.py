"""
The examples of docs/howto/testing.rst: tests of the caret server and
client with Twisted's test doubles, no socket and no real time.

The page includes each class below; tests/test_howto.py runs them, under
trial and under pytest alike.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from caretproto.client import CaretClientProtocol, connect
from caretproto.server import CaretFactory, CaretProtocol

PEER = IPv4Address("TCP", "192.0.2.7", 40000)


# start-string-transport
class StringTransportTests(SynchronousTestCase):
    """A session on a StringTransport: bytes in, replies out, no network."""

    def session(self, factory: CaretFactory) -> tuple[CaretProtocol, StringTransport]:
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_a_message_is_answered_with_successors(self) -> None:
        protocol, transport = self.session(CaretFactory(clock=Clock()))
        protocol.dataReceived(b"^ab")
        protocol.dataReceived(b"c$de")
        self.assertEqual(transport.value(), b"*bcd")

    def test_closing_the_sending_side_closes_the_session(self) -> None:
        protocol, transport = self.session(CaretFactory(clock=Clock()))
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)


# end-string-transport


# start-clock
class IdleTimeoutTests(SynchronousTestCase):
    """The idle timeout, on a task.Clock instead of the reactor's time."""

    def test_a_silent_client_is_closed_after_the_idle_timeout(self) -> None:
        clock = Clock()
        factory = CaretFactory(clock=clock)
        factory.idleTimeout = 5.0
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_a_timeout_set_later_applies_to_sessions_already_connected(
        self,
    ) -> None:
        clock = Clock()
        factory = CaretFactory(clock=clock)
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        clock.advance(60)  # no timeout yet: nothing ends it
        self.assertFalse(transport.disconnecting)
        factory.idleTimeout = 5.0  # for a session that had none: from now
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)


# end-clock


# start-memory-reactor
class MemoryReactorTests(SynchronousTestCase):
    """Code that connects, on a MemoryReactorClock that records connections."""

    def test_connect_goes_where_the_description_says(self) -> None:
        reactor = MemoryReactorClock()
        connecting = connect(reactor, "tcp:host=192.0.2.1:port=9090")
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("192.0.2.1", 9090))
        # Play the network's part: make the connection, then greet.
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        client = self.successResultOf(connecting)
        self.assertIsInstance(client, CaretClientProtocol)
        self.assertNoResult(client.greeted)
        client.dataReceived(b"*")
        self.assertIs(self.successResultOf(client.greeted), client)


# end-memory-reactor


# start-iosim
class ClientAndServerTests(SynchronousTestCase):
    """The real client against the real server, joined in memory by iosim."""

    def test_pipelined_requests_get_their_own_replies(self) -> None:
        clock = Clock()
        factory = CaretFactory(clock=clock)
        client, server, pump = iosim.connectedServerAndClient(
            ServerClass=lambda: factory.buildProtocol(PEER),
            ClientClass=CaretClientProtocol,
            clock=clock,
        )
        first = client.request(b"abc")
        second = client.request(b"HAL")
        pump.flush()
        self.assertEqual(self.successResultOf(first), b"bcd")
        self.assertEqual(self.successResultOf(second), b"IBM")
        self.assertEqual(server.messages, 2)

    def test_the_server_closes_a_silent_client(self) -> None:
        clock = Clock()
        factory = CaretFactory(clock=clock)
        factory.idleTimeout = 30.0
        client, _, pump = iosim.connectedServerAndClient(
            ServerClass=lambda: factory.buildProtocol(PEER),
            ClientClass=CaretClientProtocol,
            clock=clock,
        )
        closed: Deferred[None] = client.closed
        pump.advanceClock = False
        clock.advance(30)
        pump.flush()
        self.successResultOf(closed)
        self.assertEqual(factory.sessions, set())


# end-iosim
