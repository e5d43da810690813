"""
Slow C{--metrics} clients: a connection that has not sent a whole request
within L{caretproto.metrics.REQUEST_TIMEOUT} seconds, from when it connects
or its last response ends, is cut off, however it trickles its bytes.  On a
clock and a L{StringTransport}, then once on a real socket.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto import metrics
from caretproto.metrics import REQUEST_TIMEOUT, metricsSite
from tests.rawclient import connect

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"


class RequestTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = metricsSite(CollectorRegistry(), self.clock)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, host: str = "192.0.2.7") -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def warnings(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.warn
        ]

    def test_a_client_that_sends_nothing_is_cut_off(self) -> None:
        _, transport = self.connect()
        self.clock.advance(REQUEST_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(
            self.warnings(),
            [
                "metrics client 192.0.2.7 sent no whole request within "
                f"{REQUEST_TIMEOUT}s: cut off"
            ],
        )

    def test_trickling_bytes_does_not_put_it_off(self) -> None:
        channel, transport = self.connect()
        for byte in SCRAPE[:-1][: int(REQUEST_TIMEOUT)]:
            channel.dataReceived(bytes([byte]))
            self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_a_whole_request_is_answered_and_the_next_awaited(self) -> None:
        channel, transport = self.connect()
        self.clock.advance(REQUEST_TIMEOUT - 1)
        channel.dataReceived(SCRAPE)
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        # A kept-alive connection gets as long again for its next request.
        self.clock.advance(REQUEST_TIMEOUT - 1)
        transport.clear()
        channel.dataReceived(SCRAPE)
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertFalse(transport.disconnected)
        self.clock.advance(REQUEST_TIMEOUT)
        self.assertTrue(transport.disconnected)

    def test_no_timer_is_left_once_the_connection_is_gone(self) -> None:
        channel, _ = self.connect()
        channel.dataReceived(SCRAPE)
        channel.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_burst_from_one_host_is_logged_once_then_counted(self) -> None:
        for _ in range(3):
            self.connect()
        self.connect("192.0.2.8")
        self.clock.advance(REQUEST_TIMEOUT)
        self.assertEqual(len(self.warnings()), 2)
        self.site.stopFactory()
        self.assertIn(
            "metrics clients from 192.0.2.7 cut off for sending no whole request "
            f"within {REQUEST_TIMEOUT}s: 3 in 0s",
            self.warnings(),
        )


class RealSocketTests(TestCase):
    async def test_a_client_sending_a_byte_now_and_then_is_cut_off(self) -> None:
        self.patch(metrics._MetricsChannel, "requestTimeout", 0.5)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            metricsSite(CollectorRegistry())
        )
        self.addCleanup(port.stopListening)
        started = reactor.seconds()
        client = await connect(port)
        assert client.transport is not None
        client.transport.write(b"G")
        self.assertEqual(await client.done, b"")
        self.assertGreaterEqual(reactor.seconds() - started, 0.5)
