"""
Caret behind the PROXY protocol (L{caretproto.proxy}): a session starts once
the header has named the client, and its peer, in the log too, is that client.
On a L{StringTransport} first, then over loopback with C{--port haproxy:tcp:0}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto import tap
from caretproto.proxy import (
    ProxyProtocolEndpoint,
    ProxyProtocolFactory,
    TrustedProxies,
)
from caretproto.server import CaretFactory, CaretProtocol
from tests.fakes import listenedAs
from tests.rawclient import connect, portNumbers, startCommand

BALANCER = IPv4Address("TCP", "10.0.0.5", 51000)
HEADER = b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n"
V2_HEADER = bytes.fromhex(
    "0d0a0d0a000d0a515549540a"  # the v2 signature
    "21"  # version 2, PROXY
    "11"  # TCP over IPv4
    "000c"  # 12 address bytes
    "cb007107"  # 203.0.113.7
    "0a000009"  # 10.0.0.9
    "1092"  # 4242
    "2382"  # 9090
)


def logged(testCase: SynchronousTestCase) -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class HeaderFirstTests(SynchronousTestCase):
    def connect(self) -> tuple[ProtocolWrapper, StringTransport, CaretFactory]:
        self.clock = Clock()
        caret = CaretFactory()
        factory = ProxyProtocolFactory(
            caret,
            clock=self.clock,
            headerTimeout=10,
            trusted=TrustedProxies.fromStrings(["10.0.0.0/24"]),
        )
        wrapper = factory.buildProtocol(BALANCER)
        assert isinstance(wrapper, ProtocolWrapper)
        transport = StringTransport(peerAddress=BALANCER)
        wrapper.makeConnection(transport)
        return wrapper, transport, caret

    def session(self, caret: CaretFactory) -> CaretProtocol:
        [session] = caret.sessions
        return session

    def test_no_greeting_and_no_session_before_the_header(self) -> None:
        wrapper, transport, caret = self.connect()
        wrapper.dataReceived(HEADER[:20])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(caret.sessions, set())

    def test_the_session_starts_with_the_header_and_its_peer_is_the_client(
        self,
    ) -> None:
        events = logged(self)
        wrapper, transport, caret = self.connect()
        wrapper.dataReceived(HEADER)
        self.assertEqual(transport.value(), b"*")
        self.assertEqual(self.session(caret).peer, "203.0.113.7:4242")
        wrapper.connectionLost(Failure(ConnectionDone()))
        [ended] = [e for e in events if e.get("bytes_in") is not None]
        self.assertEqual(ended["peer"], "203.0.113.7:4242")

    def test_bytes_after_the_header_in_the_same_read_are_answered(self) -> None:
        wrapper, transport, _ = self.connect()
        wrapper.dataReceived(HEADER + b"^abc$")
        self.assertEqual(transport.value(), b"*bcd")

    def test_a_header_cut_into_reads_starts_the_session_when_complete(self) -> None:
        wrapper, transport, caret = self.connect()
        for byte in range(len(HEADER) - 1):
            wrapper.dataReceived(HEADER[byte : byte + 1])
        self.assertEqual(transport.value(), b"")
        wrapper.dataReceived(HEADER[-1:] + b"^a")
        self.assertEqual(transport.value(), b"*b")
        self.assertEqual(self.session(caret).peer, "203.0.113.7:4242")

    def test_the_wrapper_forwards_writes_unchanged_so_write_now_sees_through_it(
        self,
    ) -> None:
        # caretproto.writenow sends straight to the socket under a wrapper
        # whose write is ProtocolWrapper's.
        wrapper, _, _ = self.connect()
        self.assertIs(type(wrapper).write, ProtocolWrapper.write)

    def test_a_version_2_header_names_the_client_too(self) -> None:
        wrapper, transport, caret = self.connect()
        wrapper.dataReceived(V2_HEADER + b"^z$")
        self.assertEqual(transport.value(), b"*{")
        self.assertEqual(self.session(caret).peer, "203.0.113.7:4242")

    def test_an_ipv6_client_is_named_in_brackets(self) -> None:
        wrapper, _, caret = self.connect()
        wrapper.dataReceived(b"PROXY TCP6 2001:db8::7 2001:db8::9 4242 9090\r\n")
        self.assertEqual(self.session(caret).peer, "[2001:db8::7]:4242")
        self.assertIsInstance(wrapper.getPeer(), IPv6Address)

    def test_the_clients_half_close_reaches_the_session(self) -> None:
        wrapper, transport, _ = self.connect()
        wrapper.dataReceived(HEADER + b"^ab")
        wrapper.readConnectionLost()
        self.assertEqual(transport.value(), b"*bc")
        self.assertTrue(transport.disconnecting)

    def test_a_connection_that_is_not_proxy_protocol_is_closed_and_logged(
        self,
    ) -> None:
        events = logged(self)
        wrapper, transport, caret = self.connect()
        wrapper.dataReceived(b"^abc$ and more, but no header")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        wrapper.connectionLost(Failure(ConnectionError()))
        self.assertEqual(caret.sessions, set())
        self.assertIn(
            "10.0.0.5, a trusted proxy, sent a bad PROXY protocol header (no "
            "PROXY protocol signature but '^abc$ and more, but no header'): "
            "closing such connections ungreeted (first from 10.0.0.5:51000)",
            [e.get("log_format", "").format(**e) for e in events],
        )

    def test_a_connection_without_a_header_in_time_is_aborted(self) -> None:
        wrapper, transport, _ = self.connect()
        wrapper.dataReceived(HEADER[:10])
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_the_header_timeout_ends_with_the_header(self) -> None:
        wrapper, transport, _ = self.connect()
        wrapper.dataReceived(HEADER)
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_session_that_ends_after_starting_is_seen_to_end(self) -> None:
        wrapper, _, caret = self.connect()
        wrapper.dataReceived(HEADER)
        wrapper.connectionLost(Failure(ConnectionError()))
        self.assertEqual(caret.sessions, set())


class EndpointTests(SynchronousTestCase):
    def test_haproxy_prefix_puts_the_proxy_protocol_in_front_of_any_endpoint(
        self,
    ) -> None:
        options = tap.Options()
        options.parseOptions(
            [
                "--port",
                "haproxy:tcp:9090",
                "--port",
                "haproxy:unix:/tmp/c.sock",
                "--trusted-proxy",
                "10.0.0.5",
            ]
        )
        tcp, unix = options["endpoints"]
        self.assertIsInstance(tcp, ProxyProtocolEndpoint)
        self.assertIsInstance(tcp.wrapped, TCP4ServerEndpoint)
        [(port, _, backlog, _)] = listenedAs(
            self, "--port", "haproxy:tcp:9090", "--trusted-proxy", "10.0.0.5"
        )
        self.assertEqual((port, backlog), (9090, 4096))
        self.assertIsInstance(unix, ProxyProtocolEndpoint)
        self.assertIsInstance(unix.wrapped, UNIXServerEndpoint)


class LoopbackTests(TestCase):
    async def test_a_proxied_client_is_served_and_logged_as_the_real_client(
        self,
    ) -> None:
        events = logged(self)
        caret = startCommand(
            self,
            "--port",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxy",
            "::1",
            "--trusted-proxy",
            "127.0.0.1",
        )
        [port] = portNumbers(caret)

        client = await connect(port)
        client.transport.write(HEADER)
        self.assertEqual(await client.receivedAtLeast(1), b"*")
        [session] = caret.factory.sessions
        self.assertEqual(session.peer, "203.0.113.7:4242")
        client.transport.write(b"^abc$de^abte$f")
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, b"*bcdbcuf")
        await caret.factory.whenIdle()
        peers = [e["peer"] for e in events if "peer" in e]
        self.assertEqual(peers, ["203.0.113.7:4242"])
