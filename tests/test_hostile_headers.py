"""
Hostile PROXY protocol headers from a trusted address (issue 16): each is
refused ungreeted and logged once per burst, as a warning naming the proxy
and the fault, escaped; never an error or a traceback.  A valid header is
served however it is cut into reads, if it is whole within the header
timeout.

On a L{StringTransport} with a L{Clock} first, then against a real
C{twistd -n caret} over loopback.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto.proxy import ProxyProtocolFactory, TrustedProxies
from caretproto.server import CaretFactory
from tests.rawclient import RawClient, connect
from tests.strategies import cuts
from tests.test_proxyheader import BAD_V1, BAD_V2, TABLE, V1, validHeaders
from tests.twistd import Twistd

BALANCER = IPv4Address("TCP", "10.0.0.5", 51000)

FORGED = re.compile(r"^2026-12-04T00:00:00\+0000", re.MULTILINE)
"""The start of the log line that L{TABLE}'s LF header would forge."""

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
"""A raw control character: any but the LF that ends a log line."""


class Connections:
    """
    Connections from the trusted balancer to a C{haproxy:} endpoint's
    wrapper, on L{StringTransport}s, with a L{Clock} and the log captured.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.caret = CaretFactory(clock=self.clock)
        self.factory = ProxyProtocolFactory(
            self.caret,
            clock=self.clock,
            headerTimeout=10,
            trusted=TrustedProxies.fromStrings(["10.0.0.0/24"]),
        )
        self.events: list[LogEvent] = []

    def connect(self) -> tuple[ProtocolWrapper, StringTransport]:
        wrapper = self.factory.buildProtocol(BALANCER)
        assert isinstance(wrapper, ProtocolWrapper)
        transport = StringTransport(peerAddress=BALANCER)
        wrapper.makeConnection(transport)
        return wrapper, transport

    def send(self, reads: list[bytes]) -> tuple[ProtocolWrapper, StringTransport]:
        """A connection that sent C{reads}, one at a time."""
        wrapper, transport = self.connect()
        for read in reads:
            if transport.disconnecting:
                break
            wrapper.dataReceived(read)
        return wrapper, transport

    def warnings(self) -> list[LogEvent]:
        return [e for e in self.events if e["log_level"] == LogLevel.warn]

    def complaints(self) -> list[str]:
        """Anything logged as worse than a warning, or with a failure."""
        return [
            formatEvent(e)
            for e in self.events
            if "log_failure" in e
            or e["log_level"] in (LogLevel.error, LogLevel.critical)
        ]


class HeaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connections = Connections()
        globalLogPublisher.addObserver(self.connections.events.append)
        self.addCleanup(
            globalLogPublisher.removeObserver, self.connections.events.append
        )

    def assertRefused(self, transport: StringTransport) -> None:
        self.assertTrue(transport.disconnected, "not closed")
        self.assertEqual(transport.value(), b"", "greeted")
        self.assertEqual(self.connections.caret.sessions, set())

    def test_each_header_of_the_table_is_refused_ungreeted_and_logged_once(
        self,
    ) -> None:
        for name, header in TABLE.items():
            with self.subTest(name):
                connections = Connections()
                globalLogPublisher.addObserver(connections.events.append)
                try:
                    wrapper, transport = connections.send([header + b"^abc$"])
                    self.assertTrue(transport.disconnected, name)
                    self.assertEqual(transport.value(), b"", name)
                    wrapper.connectionLost(Failure(ConnectionError()))
                    connections.clock.advance(60)
                finally:
                    globalLogPublisher.removeObserver(connections.events.append)
                self.assertEqual(connections.caret.sessions, set())
                [warning] = connections.warnings()
                self.assertEqual(warning["host"], "10.0.0.5")
                self.assertEqual(warning["peer"], "10.0.0.5:51000")
                text = formatEvent(warning)
                self.assertIn("10.0.0.5, a trusted proxy, sent a bad PROXY", text)
                self.assertIsNone(CONTROL.search(text), text)
                self.assertNotIn("\n", text)
                self.assertLess(len(text), 400)
                self.assertEqual(connections.complaints(), [])

    def test_the_log_says_what_was_wrong(self) -> None:
        self.connections.send([TABLE["port not a number"]])
        [warning] = self.connections.warnings()
        self.assertEqual(
            formatEvent(warning),
            "10.0.0.5, a trusted proxy, sent a bad PROXY protocol header (source "
            "port 'five' is not a number from 0 to 65535): closing such "
            "connections ungreeted (first from 10.0.0.5:51000)",
        )

    def test_a_forged_log_line_stays_on_the_line_that_quotes_it(self) -> None:
        self.connections.send([TABLE["address with LF"]])
        [warning] = self.connections.warnings()
        text = formatEvent(warning)
        self.assertNotIn("\n", text)
        self.assertIsNone(FORGED.search(text))
        self.assertIn("1.2.3.4\\n2026-12-04T00:00:00", text)

    def test_a_burst_of_bad_headers_is_logged_once_then_counted(self) -> None:
        headers = [*TABLE.values(), *BAD_V1.values(), *BAD_V2.values()]
        for header in headers:
            _, transport = self.connections.send([header])
            self.assertRefused(transport)
        self.assertEqual(len(self.connections.warnings()), 1)
        self.connections.clock.advance(60)
        [_, counted] = self.connections.warnings()
        self.assertEqual(
            formatEvent(counted),
            f"10.0.0.5: closed {len(headers)} connections with a bad PROXY "
            "protocol header in 0.0s",
        )
        self.assertEqual(self.connections.complaints(), [])

    def test_a_long_line_is_refused_once_107_bytes_have_come_without_crlf(
        self,
    ) -> None:
        line = b"PROXY TCP4 " + b"1" * 200
        wrapper, transport = self.connections.send([line[:106]])
        self.assertFalse(transport.disconnecting)
        wrapper.dataReceived(line[106:107])
        self.assertRefused(transport)
        self.assertIn(
            "a version 1 header longer than 107 bytes",
            formatEvent(self.connections.warnings()[0]),
        )

    def test_a_long_line_is_refused_with_its_crlf_in_the_same_read(self) -> None:
        for name in ("200 B line", "60,000 B line"):
            _, transport = self.connections.send([TABLE[name]])
            self.assertRefused(transport)

    def test_a_bad_version_2_header_is_refused_once_its_fixed_part_has_come(
        self,
    ) -> None:
        for name, header in BAD_V2.items():
            _, transport = self.connections.send([header[:16]])
            self.assertTrue(transport.disconnected, name)

    def test_a_truncated_header_is_logged_when_its_connection_ends(self) -> None:
        wrapper, transport = self.connections.send([V1[:20]])
        self.assertFalse(transport.disconnecting)
        wrapper.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(Failure(ConnectionError()))
        [warning] = self.connections.warnings()
        self.assertIn(
            "the connection ended inside a header; 20 bytes came: "
            "'PROXY TCP4 203.0.113'",
            formatEvent(warning),
        )
        self.assertEqual(transport.value(), b"")

    def test_a_connection_that_ends_before_sending_anything_is_not_logged(
        self,
    ) -> None:
        wrapper, _ = self.connections.connect()
        wrapper.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.connections.warnings(), [])

    def test_a_header_that_is_not_whole_in_time_is_refused(self) -> None:
        _, transport = self.connections.send([V1[:1]])
        self.connections.clock.advance(10)
        self.assertRefused(transport)
        self.assertIn(
            "no whole header in 10s; 1 bytes came: 'P'",
            formatEvent(self.connections.warnings()[0]),
        )

    def test_a_header_arriving_one_byte_at_a_time_within_the_timeout_is_served(
        self,
    ) -> None:
        wrapper, transport = self.connections.connect()
        for index in range(len(V1)):
            self.connections.clock.advance(9.9 / len(V1))
            wrapper.dataReceived(V1[index : index + 1])
        self.assertEqual(transport.value(), b"*")
        wrapper.dataReceived(b"^abc$")
        self.assertEqual(transport.value(), b"*bcd")
        [session] = self.connections.caret.sessions
        self.assertEqual(session.peer, "203.0.113.7:4242")
        self.connections.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    @given(validHeaders().flatmap(lambda v: st.tuples(st.just(v), cuts(v[0]))))
    def test_any_cut_of_a_valid_header_is_served(self, case: Any) -> None:
        (_, said), reads = case
        connections = Connections()
        wrapper, transport = connections.send([*reads, b"^a$"])
        self.assertEqual(transport.value(), b"*b")
        self.assertEqual(wrapper.getPeer(), said.source)
        self.assertFalse(transport.disconnecting)

    @given(
        st.sampled_from([*BAD_V1.values(), *BAD_V2.values()]).flatmap(
            lambda header: st.tuples(st.just(header), cuts(header))
        )
    )
    def test_any_cut_of_a_bad_header_is_refused_and_logged_once(
        self, case: tuple[bytes, list[bytes]]
    ) -> None:
        _, reads = case
        connections = Connections()
        globalLogPublisher.addObserver(connections.events.append)
        try:
            wrapper, transport = connections.send([*reads, b"^abc$"])
            self.assertTrue(transport.disconnected)
            wrapper.connectionLost(Failure(ConnectionError()))
        finally:
            globalLogPublisher.removeObserver(connections.events.append)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(connections.caret.sessions, set())
        [warning] = connections.warnings()
        self.assertIsNone(CONTROL.search(formatEvent(warning)))
        self.assertEqual(connections.complaints(), [])


@pytest.mark.process
class TwistdTests(TestCase):
    """Issue 16's experiment, against a real C{twistd -n caret}."""

    timeout = 60

    async def test_hostile_headers_get_nothing_and_a_split_valid_one_is_served(
        self,
    ) -> None:
        server = Twistd.start(
            self,
            "caret",
            "--port",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxy",
            "127.0.0.1",
        )
        [address] = await server.listening
        port = int(address.rsplit(":", 1)[1])

        for name, header in TABLE.items():
            client: RawClient = await connect(port)
            client.transport.write(header + b"^abc$")
            self.assertEqual((await client.done), b"", name)
        await server.logged(r"a trusted proxy, sent a bad PROXY protocol header")

        client = await connect(port)
        # Without Nagle's algorithm, each write its own segment.
        client.transport.setTcpNoDelay(True)
        await client.sendInReads([V1[i : i + 1] for i in range(len(V1))])
        self.assertEqual((await client.receivedAtLeast(1)), b"*")
        client.transport.write(b"^abc$de^abte$f")
        client.transport.loseWriteConnection()
        self.assertEqual((await client.done), b"*bcdbcuf")
        await server.logged(r"203\.0\.113\.7:4242 disconnected")

        # The burst ends, counted, once the balancer has been quiet a while.
        await server.logged(
            rf"127\.0\.0\.1: closed {len(TABLE)} connections with a bad PROXY"
        )
        log = server.output
        self.assertEqual(server.count("a trusted proxy, sent a bad PROXY"), 1)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
        self.assertIsNone(CONTROL.search(log), repr(CONTROL.search(log)))
        # Nor a byte that is not UTF-8 (which the log reader shows as this).
        self.assertNotIn("\ufffd", log)
        self.assertIsNone(FORGED.search(log))
        self.assertNotIn("1" * 200, log)
