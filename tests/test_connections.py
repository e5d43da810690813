"""
Tests for L{caretproto.connections}: how a peer is named in the log, with
whatever a client chose escaped, and the interfaces the server's parts
meet each other through.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from caretproto.connections import IAcceptor, describeAddress, escapeForLog
from caretproto.logrelay import IRelayedWorker, IWorkerReports
from caretproto.metrics import WorkersMetrics
from caretproto.server import CaretFactory
from caretproto.service import CaretService
from caretproto.workers import WorkerPool, _Worker


class DescribeAddressTests(SynchronousTestCase):
    def test_ipv4_is_host_colon_port(self) -> None:
        self.assertEqual(
            describeAddress(IPv4Address("TCP", "192.0.2.7", 40123)),
            "192.0.2.7:40123",
        )

    def test_ipv6_host_is_bracketed(self) -> None:
        self.assertEqual(
            describeAddress(IPv6Address("TCP", "2001:db8::1", 9)), "[2001:db8::1]:9"
        )

    def test_unix_is_its_path_or_unix(self) -> None:
        self.assertEqual(
            describeAddress(UNIXAddress(b"/run/caret.sock")), "/run/caret.sock"
        )
        self.assertEqual(describeAddress(UNIXAddress(None)), "unix")

    def test_a_host_a_client_chose_cannot_start_a_line_or_colour_a_terminal(
        self,
    ) -> None:
        # A PROXY header's source address is whatever the client wrote.
        forged = IPv4Address("TCP", "1.2.3.4\n2026-12-04 [x#critical] \x1b[31m", 5)
        self.assertEqual(
            describeAddress(forged),
            "1.2.3.4\\n2026-12-04 [x#critical] \\x1b[31m:5",
        )

    def test_a_unix_path_that_is_not_utf8_or_printable_is_escaped(self) -> None:
        self.assertEqual(
            describeAddress(UNIXAddress(b"/tmp/a\rb\xff")), "/tmp/a\\rb\\xff"
        )


class EscapeForLogTests(SynchronousTestCase):
    def test_printable_text_is_unchanged(self) -> None:
        self.assertEqual(escapeForLog("192.0.2.7 ünïcode"), "192.0.2.7 ünïcode")

    def test_control_format_and_separator_characters_are_escaped(self) -> None:
        self.assertEqual(
            escapeForLog("a\r\n\x1b\x7f\u2028\u202eb"),
            "a\\r\\n\\x1b\\x7f\\u2028\\u202eb",
        )

    def test_a_backslash_is_doubled_so_an_escape_cannot_be_forged(self) -> None:
        self.assertEqual(escapeForLog("\\x0a"), "\\\\x0a")

    def test_a_limit_cuts_and_says_so(self) -> None:
        self.assertEqual(escapeForLog("a" * 10, limit=4), "aaaa\u2026")
        self.assertEqual(escapeForLog("aaaa", limit=4), "aaaa")

    @given(st.text())
    def test_nothing_unprintable_survives(self, text: str) -> None:
        escaped = escapeForLog(text)
        self.assertTrue(escaped.isprintable(), repr(escaped))


class InterfaceTests(SynchronousTestCase):
    """Each part provides the interface the others use it through."""

    def test_the_service_is_an_acceptor(self) -> None:
        verifyObject(IAcceptor, CaretService([], CaretFactory()))

    def test_the_workers_metrics_take_the_workers_reports(self) -> None:
        verifyObject(IWorkerReports, WorkersMetrics())

    def test_a_worker_is_what_the_relay_names(self) -> None:
        pool = WorkerPool(1, ["caret"], list, killAfter=1.0)
        verifyObject(IRelayedWorker, _Worker(pool, 0))
