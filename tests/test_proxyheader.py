"""
The PROXY protocol header, read and checked (L{caretproto.proxyheader}):
each fault of issue 16's table and of version 2 is a L{HeaderFault} whose
message is safe to log, a valid header is read whatever it is cut into, and
a client-chosen string reaches a log escaped and bounded.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from caretproto.proxyheader import (
    MOST,
    V1_MOST,
    V2_SIGNATURE,
    HeaderFault,
    ProxyHeader,
    printable,
    readHeader,
)

V1 = b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n"


def v2(command: int = 0x21, family: int = 0x11, body: bytes = b"") -> bytes:
    """A version 2 header whose length field is C{body}'s."""
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


IPV4_BODY = bytes([203, 0, 113, 7, 10, 0, 0, 9]) + struct.pack("!HH", 4242, 9090)
IPV6_BODY = (
    bytes.fromhex("20010db8000000000000000000000007")
    + bytes.fromhex("20010db8000000000000000000000009")
    + struct.pack("!HH", 4242, 9090)
)

TABLE = {
    "source address not UTF-8": b"PROXY TCP4 1.2.3.\xff 10.0.0.9 4242 9090\r\n",
    "port not a number": b"PROXY TCP4 1.2.3.4 10.0.0.9 five 9090\r\n",
    "address not an address": b"PROXY TCP4 not-an-ip 10.0.0.9 1 9090\r\n",
    "port -7": b"PROXY TCP4 1.2.3.4 10.0.0.9 -7 9090\r\n",
    "port over 65535": b"PROXY TCP4 1.2.3.4 10.0.0.9 65536 9090\r\n",
    "200 B line": b"PROXY TCP4 " + b"1" * 187 + b"\r\n",
    "60,000 B line": b"PROXY TCP4 " + b"1" * 59987 + b"\r\n",
    "address with CR": b"PROXY TCP4 1.2.3.4\rX 10.0.0.9 1 9090\r\n",
    "address with ESC": b"PROXY TCP4 \x1b[31m1.2.3.4 10.0.0.9 1 9090\r\n",
    "address with LF": b"PROXY TCP4 1.2.3.4\n2026-12-04T00:00:00+0000 "
    b"[x#critical] forged 10.0.0.9 1 9090\r\n",
}
"""Issue 16's hostile headers, from a trusted proxy; each of them is refused."""

BAD_V1 = {
    **TABLE,
    "TCP4 with IPv6 addresses": b"PROXY TCP4 ::1 ::1 4242 9090\r\n",
    "TCP6 with IPv4 addresses": b"PROXY TCP6 1.2.3.4 10.0.0.9 4242 9090\r\n",
    "an address with a scope": b"PROXY TCP6 fe80::1%eth0 ::1 4242 9090\r\n",
    "an IPv4 address with leading zeros": b"PROXY TCP4 01.2.3.4 10.0.0.9 1 2\r\n",
    "a port with a sign": b"PROXY TCP4 1.2.3.4 10.0.0.9 +7 9090\r\n",
    "a port with an underscore": b"PROXY TCP4 1.2.3.4 10.0.0.9 1_0 9090\r\n",
    "a port in Arabic-Indic digits": "PROXY TCP4 1.2.3.4 10.0.0.9 ٣ 9090\r\n".encode(),
    "a port of six digits": b"PROXY TCP4 1.2.3.4 10.0.0.9 000001 9090\r\n",
    "UDP4": b"PROXY UDP4 1.2.3.4 10.0.0.9 4242 9090\r\n",
    "too few fields": b"PROXY TCP4 1.2.3.4 10.0.0.9 4242\r\n",
    "too many fields": b"PROXY TCP4 1.2.3.4 10.0.0.9 4242 9090 7\r\n",
    "two spaces": b"PROXY TCP4  1.2.3.4 10.0.0.9 4242 9090\r\n",
    "LF for CRLF": b"PROXY TCP4 1.2.3.4 10.0.0.9 4242 9090\n",
    "no protocol": b"PROXY \r\n",
    "not a header": b"GET / HTTP/1.1\r\n",
    "caret bytes": b"^abc$",
}

BAD_V2 = {
    "version 1 in a version 2 header": v2(command=0x11, body=IPV4_BODY),
    "an unknown command": v2(command=0x22, body=IPV4_BODY),
    "an unknown family": v2(family=0x41, body=IPV4_BODY),
    "an unknown transport": v2(family=0x13, body=IPV4_BODY),
    "family without transport": v2(family=0x10, body=IPV4_BODY),
    "IPv4 with too few address bytes": v2(body=IPV4_BODY[:11]),
    "IPv6 with IPv4's address bytes": v2(family=0x21, body=IPV4_BODY),
    "UNIX with too few address bytes": v2(family=0x31, body=bytes(100)),
    "longer than nginx takes": v2(body=IPV4_BODY + bytes(MOST)),
    "a length of 65535": V2_SIGNATURE + b"\x21\x11\xff\xff" + IPV4_BODY,
}


def refusal(data: bytes) -> str:
    """What L{readHeader} says is wrong with C{data}."""
    try:
        header = readHeader(data)
    except HeaderFault as fault:
        return str(fault)
    raise AssertionError(f"{data!r} was not refused, but read as {header}")


def isPrintable(text: str) -> bool:
    return all(" " <= c <= "~" or c == "…" for c in text)


class VersionOneTests(SynchronousTestCase):
    def test_a_header_names_the_client_and_the_address_it_reached(self) -> None:
        self.assertEqual(
            readHeader(V1 + b"^abc"),
            ProxyHeader(
                IPv4Address("TCP", "203.0.113.7", 4242),
                IPv4Address("TCP", "10.0.0.9", 9090),
                len(V1),
            ),
        )

    def test_an_ipv6_address_is_given_one_spelling(self) -> None:
        header = readHeader(b"PROXY TCP6 2001:DB8:0::7 ::1 0 65535\r\n")
        assert header is not None
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::7", 0))
        self.assertEqual(header.destination, IPv6Address("TCP", "::1", 65535))

    def test_unknown_keeps_the_balancers_address_whatever_follows(self) -> None:
        self.assertEqual(
            readHeader(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"),
            ProxyHeader(None, None, 31),
        )

    def test_the_longest_headers_the_specification_allows_are_read(self) -> None:
        longest = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        tcp6 = b"PROXY TCP6 %s %s 65535 65535\r\n" % (longest, longest)
        unknown = tcp6.replace(b"TCP6", b"UNKNOWN")
        self.assertEqual(len(unknown), V1_MOST)
        self.assertEqual(readHeader(unknown), ProxyHeader(None, None, V1_MOST))
        header = readHeader(tcp6)
        assert header is not None
        self.assertEqual(header.source, IPv6Address("TCP", longest.decode(), 65535))

    def test_a_line_is_refused_once_107_bytes_have_come_without_crlf(self) -> None:
        start = b"PROXY TCP4 " + b"1" * 200
        self.assertIsNone(readHeader(start[:106]))
        self.assertIn("longer than 107 bytes", refusal(start[:107]))

    def test_a_cr_as_the_107th_byte_cannot_end_a_header_in_time(self) -> None:
        start = b"PROXY TCP4 " + b"1" * 95 + b"\r"
        self.assertEqual(len(start), 107)
        self.assertIn("longer than 107 bytes", refusal(start))

    def test_a_long_line_is_refused_with_its_crlf_too(self) -> None:
        self.assertIn("longer than 107 bytes", refusal(TABLE["200 B line"]))
        self.assertIn("longer than 107 bytes", refusal(TABLE["60,000 B line"]))

    def test_an_unfinished_header_waits(self) -> None:
        for end in range(len(V1)):
            self.assertIsNone(readHeader(V1[:end]), V1[:end])

    def test_each_fault_says_what_and_quotes_it_escaped(self) -> None:
        cases = {
            "source address not UTF-8": "source address '1.2.3.\\xff' is not an "
            "IPv4 address",
            "port not a number": "source port 'five' is not a number from 0 to 65535",
            "address not an address": "source address 'not-an-ip' is not an IPv4 "
            "address",
            "port -7": "source port '-7' is not a number from 0 to 65535",
            "port over 65535": "source port '65536' is not a number from 0 to 65535",
            "address with CR": "a CR without an LF in a version 1 header: "
            "'PROXY TCP4 1.2.3.4\\rX 10.0.0.9 1 9090\\r\\n'",
            "address with ESC": "source address '\\x1b[31m1.2.3.4' is not an IPv4 "
            "address",
            "address with LF": "an LF without a CR in a version 1 header: "
            "'PROXY TCP4 1.2.3.4\\n2026-12-04T00:00:00+0…'",
        }
        for name, said in cases.items():
            self.assertEqual(refusal(TABLE[name]), said)

    def test_every_bad_header_is_refused_in_printable_words(self) -> None:
        for name, data in BAD_V1.items():
            said = refusal(data)
            self.assertTrue(isPrintable(said), (name, said))
            self.assertLess(len(said), 250, name)


class VersionTwoTests(SynchronousTestCase):
    def test_an_ipv4_header_names_the_client(self) -> None:
        data = v2(body=IPV4_BODY)
        self.assertEqual(
            readHeader(data + b"^a"),
            ProxyHeader(
                IPv4Address("TCP", "203.0.113.7", 4242),
                IPv4Address("TCP", "10.0.0.9", 9090),
                len(data),
            ),
        )

    def test_an_ipv6_header_names_the_client(self) -> None:
        header = readHeader(v2(family=0x21, body=IPV6_BODY))
        assert header is not None
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::7", 4242))

    def test_tlvs_after_the_addresses_are_skipped(self) -> None:
        tlv = b"\x02\x00\x0bexample.com"
        data = v2(body=IPV4_BODY + tlv)
        header = readHeader(data + b"^")
        assert header is not None
        self.assertEqual(header.length, len(data))

    def test_local_and_unsupported_families_keep_the_balancers_address(
        self,
    ) -> None:
        for data in [
            v2(command=0x20, family=0x00),
            v2(command=0x20, family=0x11, body=IPV4_BODY),
            v2(family=0x00),
            v2(family=0x12, body=IPV4_BODY),
            v2(family=0x31, body=b"/tmp/\x1b[31m\n".ljust(216, b"\x00")),
        ]:
            self.assertEqual(readHeader(data), ProxyHeader(None, None, len(data)))

    def test_an_unfinished_header_waits(self) -> None:
        data = v2(body=IPV4_BODY)
        for end in range(len(data)):
            self.assertIsNone(readHeader(data[:end]), data[:end])

    def test_a_bad_length_or_family_is_refused_before_the_addresses_come(
        self,
    ) -> None:
        for name, data in BAD_V2.items():
            said = refusal(data[:16])
            self.assertTrue(isPrintable(said), (name, said))

    def test_each_fault_says_what(self) -> None:
        self.assertEqual(
            refusal(BAD_V2["an unknown family"]),
            "unknown family 0x41 in a version 2 header",
        )
        self.assertEqual(
            refusal(BAD_V2["IPv6 with IPv4's address bytes"]),
            "a version 2 header with 12 bytes of TCP over IPv6 addresses, not 36",
        )
        self.assertEqual(
            refusal(BAD_V2["a length of 65535"]),
            "a version 2 header of 65551 bytes, longer than 4096",
        )
        self.assertEqual(
            refusal(BAD_V2["an unknown command"]),
            "version and command 0x22 in a version 2 header, not 0x20 (LOCAL) "
            "or 0x21 (PROXY)",
        )


@st.composite
def validHeaders(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A valid header, either version, and what it says."""
    version6 = draw(st.booleans())
    addresses = st.ip_addresses(v=6 if version6 else 4)
    source, destination = draw(addresses), draw(addresses)
    ports = st.integers(0, 65535)
    sourcePort, destinationPort = draw(ports), draw(ports)
    kind = IPv6Address if version6 else IPv4Address
    if draw(st.booleans()):
        data = b"PROXY %s %s %s %d %d\r\n" % (
            b"TCP6" if version6 else b"TCP4",
            str(source).encode(),
            str(destination).encode(),
            sourcePort,
            destinationPort,
        )
    else:
        data = v2(
            family=0x21 if version6 else 0x11,
            body=source.packed
            + destination.packed
            + struct.pack("!HH", sourcePort, destinationPort)
            + draw(st.binary(max_size=64)),
        )
    return data, ProxyHeader(
        kind("TCP", str(source), sourcePort),
        kind("TCP", str(destination), destinationPort),
        len(data),
    )


class PropertyTests(SynchronousTestCase):
    @given(validHeaders(), st.binary(max_size=20), st.data())
    def test_any_prefix_of_a_valid_header_waits_and_the_whole_is_read(
        self, valid: tuple[bytes, ProxyHeader], after: bytes, data: st.DataObject
    ) -> None:
        header, said = valid
        end = data.draw(st.integers(0, len(header) - 1))
        self.assertIsNone(readHeader(header[:end]))
        self.assertEqual(readHeader(header + after), said)

    @given(st.binary(max_size=200))
    def test_any_bytes_are_a_header_its_start_or_a_printable_fault(
        self, data: bytes
    ) -> None:
        try:
            readHeader(data)
        except HeaderFault as fault:
            self.assertTrue(isPrintable(str(fault)), str(fault))


class PrintableTests(SynchronousTestCase):
    def test_control_characters_and_backslashes_are_escaped(self) -> None:
        self.assertEqual(
            printable(b"a\r\n\x1b[31m\x7f\xff\\"), "a\\r\\n\\x1b[31m\\x7f\\xff\\\\"
        )

    def test_text_is_escaped_beyond_ascii_too(self) -> None:
        self.assertEqual(printable("a\u2028b\x9bc"), "a\\u2028b\\x9bc")

    def test_long_text_is_cut_with_an_ellipsis(self) -> None:
        self.assertEqual(printable(b"x" * 60000, 10), "x" * 10 + "…")
        self.assertEqual(printable(b"x" * 10, 10), "x" * 10)
