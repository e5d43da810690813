"""
Trusted proxies (C{--trusted-proxy}, L{caretproto.proxy.TrustedProxies}): a
C{haproxy:} endpoint reads the PROXY header only of connections from the
balancers it was told of, and closes any other unread and ungreeted, logging
once per burst.  Nobody is trusted by default (docs/exposing.rst says why).

On a L{StringTransport} first, then the attack of issue 13 over loopback: a
client bound to 127.0.0.2 forging five headers, in this process and against
C{twistd caret --workers 2}.
"""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto import tap
from caretproto.proxy import (
    ProxyProtocolEndpoint,
    ProxyProtocolFactory,
    TrustedProxies,
)
from caretproto.server import CaretFactory
from tests.rawclient import RawClient, connect, portNumbers, startCommand
from tests.test_proxy import logged
from tests.twistd import Twistd

UNTRUSTED = "127.0.0.2"
"""A loopback address a test client binds to, that no test trusts."""


def forged(number: int, port: int) -> bytes:
    """The header of issue 13's experiment, naming 203.0.113.C{number}."""
    return f"PROXY TCP4 203.0.113.{number} 127.0.0.1 5000{number} {port}\r\n".encode()


async def attack(number: int, port: int) -> bytes:
    """
    Connect to C{port} on 127.0.0.1 from L{UNTRUSTED}, send a forged header
    and a message, and return what came back.
    """
    try:
        client = await connect(
            f"tcp:host=127.0.0.1:port={port}:bindAddress={UNTRUSTED}"
        )
    except ConnectError:
        # The server's reset can beat the client's reactor to the connect.
        return b""
    client.transport.write(forged(number, port) + b"^abc$")  # type: ignore[union-attr]
    return await client.done


def attacks(port: int) -> Deferred[list[bytes]]:
    """Issue 13's experiment: five forged headers at once."""
    return gatherResults(
        [Deferred.fromCoroutine(attack(number, port)) for number in range(5)]
    )


class TrustedProxiesTests(SynchronousTestCase):
    def trusts(self, given: list[str], host: str) -> bool:
        kind = IPv6Address if ":" in host else IPv4Address
        return TrustedProxies.fromStrings(given).trusts(kind("TCP", host, 4000))

    def test_nobody_is_trusted_by_default(self) -> None:
        self.assertFalse(TrustedProxies().trusts(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_an_address_trusts_itself_only(self) -> None:
        self.assertTrue(self.trusts(["10.0.0.5"], "10.0.0.5"))
        self.assertFalse(self.trusts(["10.0.0.5"], "10.0.0.6"))

    def test_a_network_trusts_its_addresses(self) -> None:
        self.assertTrue(self.trusts(["10.0.0.0/8"], "10.200.3.4"))
        self.assertFalse(self.trusts(["10.0.0.0/8"], "11.0.0.1"))

    def test_ipv6_addresses_and_networks(self) -> None:
        self.assertTrue(self.trusts(["::1"], "::1"))
        self.assertTrue(self.trusts(["fd00::/8"], "fd12:3456::1"))
        self.assertFalse(self.trusts(["fd00::/8"], "fe80::1"))
        self.assertFalse(self.trusts(["127.0.0.1"], "::1"))

    def test_an_ipv4_peer_of_a_dual_stack_port_is_matched_as_ipv4(self) -> None:
        self.assertTrue(self.trusts(["127.0.0.1"], "::ffff:127.0.0.1"))
        self.assertFalse(self.trusts(["127.0.0.1"], "::ffff:127.0.0.2"))

    def test_any_trusts_everyone(self) -> None:
        self.assertTrue(self.trusts(["any"], "198.51.100.1"))
        self.assertTrue(self.trusts(["ANY"], "2001:db8::1"))

    def test_a_unix_socket_peer_is_trusted(self) -> None:
        self.assertTrue(TrustedProxies().trusts(UNIXAddress(None)))

    def test_anything_else_is_an_error_naming_it(self) -> None:
        for given in ["10.0.0", "example.com", "10.0.0.0/33", "", "none"]:
            with self.assertRaises(ValueError) as raised:
                TrustedProxies.fromStrings([given])
            self.assertIn(repr(given), str(raised.exception))

    def test_host_bits_of_a_network_are_forgiven(self) -> None:
        [network] = TrustedProxies.fromStrings(["10.1.2.3/8"]).networks
        self.assertEqual(network, ipaddress.ip_network("10.0.0.0/8"))


class UntrustedConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.caret = CaretFactory(clock=self.clock)
        self.factory = ProxyProtocolFactory(
            self.caret,
            clock=self.clock,
            trusted=TrustedProxies.fromStrings(["10.0.0.5"]),
        )
        self.events = logged(self)

    def connect(self, host: str, port: int = 51000) -> StringTransport:
        address = IPv4Address("TCP", host, port)
        wrapper = self.factory.buildProtocol(address)
        assert isinstance(wrapper, ProtocolWrapper)
        transport = StringTransport(peerAddress=address)
        wrapper.makeConnection(transport)
        return transport

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"].name == "warn"]

    def test_an_untrusted_peer_is_closed_at_once_unread_and_ungreeted(
        self,
    ) -> None:
        transport = self.connect("10.0.0.6")
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.caret.sessions, set())
        self.assertEqual(self.factory.protocols, {})
        # No header timer runs for a connection already closed.
        self.clock.advance(60)
        self.assertNotIn("header", " ".join(self.warnings()))

    def test_a_trusted_peer_is_read(self) -> None:
        transport = self.connect("10.0.0.5")
        self.assertFalse(transport.disconnecting)
        [wrapper] = self.factory.protocols
        wrapper.dataReceived(b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n")
        self.assertEqual(transport.value(), b"*")

    def test_an_untrusted_connection_ending_leaves_no_trace(self) -> None:
        address = IPv4Address("TCP", "10.0.0.6", 1)
        wrapper = self.factory.buildProtocol(address)
        assert wrapper is not None
        wrapper.makeConnection(StringTransport(peerAddress=address))
        wrapper.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(self.factory.protocols, {})
        self.assertEqual(self.caret.sessions, set())

    def test_a_burst_of_refusals_is_logged_once_then_counted(self) -> None:
        for port in range(5):
            self.connect("10.0.0.6", 40000 + port)
        self.assertEqual(
            self.warnings(),
            [
                "10.0.0.6 is not a trusted proxy: closing its connections to a "
                "haproxy: endpoint unread (first from 10.0.0.6:40000; see "
                "--trusted-proxy)"
            ],
        )
        [first] = [e for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual((first["host"], first["peer"]), ("10.0.0.6", "10.0.0.6:40000"))
        self.clock.advance(60)
        self.assertEqual(
            self.warnings()[1:],
            ["10.0.0.6: closed 5 connections from an untrusted proxy in 0.0s"],
        )

    def test_stopping_ends_a_burst_in_progress(self) -> None:
        self.factory.doStart()
        self.connect("10.0.0.6", 1)
        self.connect("10.0.0.6", 2)
        self.factory.doStop()
        self.assertEqual(len(self.warnings()), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OptionTests(SynchronousTestCase):
    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_a_haproxy_endpoint_without_trusted_proxies_is_a_usage_error(
        self,
    ) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--port", "9091", "--port", "haproxy:tcp:9090")
        message = str(raised.exception)
        self.assertIn("--port 'haproxy:tcp:9090'", message)
        self.assertIn("--trusted-proxy 127.0.0.1", message)
        self.assertIn(tap.TRUSTED_PROXY_EXAMPLES, message)

    def test_a_haproxy_unix_socket_needs_no_trusted_proxies(self) -> None:
        """
        Accepted without C{--trusted-proxy}, and its peers are trusted all
        the same: the socket file's permissions are its access control.
        """
        options = self.parse("--port", "haproxy:unix:/tmp/caret-proxied.sock")
        [endpoint] = options["endpoints"]
        self.assertIsInstance(endpoint, ProxyProtocolEndpoint)
        self.assertIsInstance(endpoint.wrapped, UNIXServerEndpoint)
        self.assertEqual(endpoint.trusted.networks, ())
        self.assertTrue(endpoint.trusted.trusts(UNIXAddress(None)))

    def test_trusted_proxies_may_be_repeated(self) -> None:
        options = self.parse(
            "--port",
            "haproxy:tcp:9090",
            "--trusted-proxy",
            "10.0.0.5",
            "--trusted-proxy=fd00::/8",
        )
        trusted = options["trusted"]
        self.assertEqual(
            [str(n) for n in trusted.networks], ["10.0.0.5/32", "fd00::/8"]
        )
        self.assertFalse(trusted.everyone)
        [endpoint] = options["endpoints"]
        self.assertIs(endpoint.trusted, trusted)

    def test_a_bad_trusted_proxy_names_the_option_and_the_accepted_forms(
        self,
    ) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--trusted-proxy", "balancer.internal")
        self.assertEqual(
            str(raised.exception),
            "--trusted-proxy takes an IP address, a network in CIDR form or "
            f"any, like {tap.TRUSTED_PROXY_EXAMPLES}; got 'balancer.internal'",
        )

    def test_the_default_is_in_the_help(self) -> None:
        # Whatever line --help wraps it onto.
        helpText = " ".join(str(tap.Options()).split())
        self.assertIn("[default: none trusted]", helpText)


class ForgedHeadersTests(TestCase):
    """Issue 13's experiment, from an untrusted address and a trusted one."""

    async def test_forged_headers_from_an_untrusted_address_get_nothing(self) -> None:
        events = logged(self)
        caret = startCommand(
            self,
            "--port",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxy",
            "127.0.0.1",
            "--max-per-peer",
            "1",
        )
        [port] = portNumbers(caret)

        self.assertEqual(await attacks(port), [b""] * 5)

        client: RawClient = await connect(port)
        client.transport.write(b"PROXY TCP4 198.51.100.7 127.0.0.1 4242 9090\r\n^a$")
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, b"*b")
        await caret.factory.whenIdle()

        text = "\n".join(formatEvent(e) for e in events)
        self.assertNotIn("203.0.113", text)
        self.assertIn("198.51.100.7:4242 disconnected after", text)
        self.assertEqual(text.count(f"{UNTRUSTED} is not a trusted proxy"), 1)


@pytest.mark.process
class WorkersTests(TestCase):
    timeout = 60

    async def test_workers_close_untrusted_connections_and_serve_trusted_ones(
        self,
    ) -> None:
        server = Twistd.start(
            self,
            "caret",
            "--workers",
            "2",
            "--port",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxy",
            "127.0.0.1",
            "--max-per-peer",
            "1",
        )
        [address] = await server.listening
        port = int(address.rsplit(":", 1)[1])
        await server.logged(r"\[worker \d+ .*caret listening on", 2)

        self.assertEqual(await attacks(port), [b""] * 5)

        clients = await gatherResults([connect(port) for _ in range(4)])
        for number, client in enumerate(clients):
            client.transport.write(
                f"PROXY TCP4 198.51.100.{number} 127.0.0.1 4242 9090\r\n^a$".encode()
            )
            client.transport.loseWriteConnection()
        replies = await gatherResults([c.done for c in clients])
        self.assertEqual(replies, [b"*b"] * 4)
        await server.logged(r"198\.51\.100\.\d:4242 disconnected", 4)
        await server.logged(rf"{UNTRUSTED} is not a trusted proxy")
        self.assertNotIn("203.0.113", server.output)
        # Each worker that saw the attack logged it once, not once a connection.
        self.assertLessEqual(server.count(rf"{UNTRUSTED} is not a trusted proxy"), 2)
