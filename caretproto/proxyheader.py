# -*- test-case-name: tests.test_proxyheader -*-
"""
The PROXY protocol header, read and checked: the line (version 1) or the
binary block (version 2) with which a balancer names, before anything else
on a connection, the client it connects for.  L{readHeader} takes the bytes
that have come so far and says whether they are a whole header, the start of
one, or no header at all, and in the last case what is wrong, in words that
may go into a log as they are.

Caret reads the header itself rather than with Twisted's parser
(C{twisted.protocols.haproxy}, as of Twisted 26.10), because of what that
parser does with a header from a trusted balancer that is wrong:

  - a first read shorter than 8 bytes (16 for version 2) closes the
    connection, though a header may come in pieces (Twisted issue #8287);
  - an address that is not UTF-8 or a port that is not a number raises
    C{UnicodeDecodeError} or C{ValueError} out of C{dataReceived}: an
    C{Unhandled Error} with a traceback in the log;
  - any text is taken for an address (C{not-an-ip}, or one with a CR, LF or
    terminal escape in it, which then reaches the log raw) and any integer
    for a port (C{-7}, C{99999});
  - the 107-byte bound on a version 1 line holds only while no CRLF has
    come: a 60 KB line that ends in one is accepted.

Here an address must be an address of the header's family, a port a decimal
number from 0 to 65535, a version 1 header at most 107 bytes with its CRLF
(refused as soon as 107 bytes have come without one), and a version 2 header
at most L{MOST} bytes, as in nginx.  Where the specification lets a receiver
choose, caret does what HAProxy does: the C{UNKNOWN} protocol (version 1),
the C{LOCAL} command and the unspecified, UDP and UNIX families (version 2)
are accepted, and the connection keeps the balancer's own address.

This module is not a protocol and knows nothing of connections:
L{caretproto.proxy} feeds it a connection's first bytes, and decides what to
do and what to log.  It reads no TLVs (version 2's extensions): they are
skipped.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address

from caretproto.connections import escapeForLog

V1_SIGNATURE = b"PROXY "
"""How a version 1 header begins."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""How a version 2 header begins."""

V1_MOST = 107
"""The longest version 1 header, its CRLF included (the specification's)."""

MOST = 4096
"""
The longest version 2 header, TLVs included: nginx's bound.  Addresses take
at most 232 bytes; the rest is TLVs, which caret does not read.
"""

_V2_FIXED = 16
"""Bytes of a version 2 header before its addresses: up to its length."""

_LOCAL, _PROXY = 0x20, 0x21
_TCP4, _TCP6 = 0x11, 0x21
_ADDRESS_BYTES = {
    0x00: ("UNSPEC", 0),
    _TCP4: ("TCP over IPv4", 12),
    0x12: ("UDP over IPv4", 12),
    _TCP6: ("TCP over IPv6", 36),
    0x22: ("UDP over IPv6", 36),
    0x31: ("UNIX stream", 216),
    0x32: ("UNIX datagram", 216),
}
"""
The families of version 2, and what the addresses and ports of each take at
least.  The specification has receivers reject any other.
"""

_LINE_END = re.compile(b"[\r\n]")

ADDRESS = IPv4Address | IPv6Address
"""What a header names a client or a destination as: a TCP address."""


class HeaderFault(Exception):
    """
    Bytes that are not a PROXY protocol header, nor the start of one.  Its
    message says what is wrong, with anything quoted from the header
    L{printable}, so that it may be logged as it is.
    """


@dataclass(frozen=True)
class ProxyHeader:
    """
    A PROXY protocol header, read and checked.

    @ivar source: the client the balancer connects for, or C{None} if the
        header does not say (C{UNKNOWN}, C{LOCAL} and the families caret
        does not take addresses from): the balancer's own address stands.
    @ivar destination: the address the client connected to, or C{None}
        likewise.
    @ivar length: how many bytes the header took; what follows is the
        client's.
    """

    source: ADDRESS | None
    destination: ADDRESS | None
    length: int


def readHeader(data: bytes) -> ProxyHeader | None:
    """
    The PROXY protocol header at the start of C{data}, if it is whole.

    @param data: a connection's first bytes, as many as have come.
    @return: the header, whose C{length} says where the client's bytes
        begin; or C{None} if C{data} is the start of a header yet to be
        completed.
    @raise HeaderFault: if C{data} cannot begin a valid header.
    """
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        return _version2(data) if len(data) >= _V2_FIXED else None
    if V1_SIGNATURE.startswith(data[: len(V1_SIGNATURE)]):
        return _version1(data)
    raise HeaderFault(f"no PROXY protocol signature but {quoted(data)}")


def _version1(data: bytes) -> ProxyHeader | None:
    end = _LINE_END.search(data, 0, V1_MOST)
    if end is None:
        if len(data) >= V1_MOST:
            raise HeaderFault(
                f"a version 1 header longer than {V1_MOST} bytes: {quoted(data)}"
            )
        return None
    at = end.start()
    if data[at] == ord("\n"):
        raise HeaderFault(f"an LF without a CR in a version 1 header: {quoted(data)}")
    if at + 2 > V1_MOST:
        raise HeaderFault(
            f"a version 1 header longer than {V1_MOST} bytes: {quoted(data)}"
        )
    if len(data) == at + 1:
        return None
    if data[at + 1] != ord("\n"):
        raise HeaderFault(f"a CR without an LF in a version 1 header: {quoted(data)}")
    fields = data[:at].split(b" ")
    protocol = fields[1]
    if protocol == b"UNKNOWN":
        # The specification: whatever follows UNKNOWN is to be ignored.
        return ProxyHeader(None, None, at + 2)
    if protocol not in (b"TCP4", b"TCP6"):
        raise HeaderFault(f"unknown protocol {quoted(protocol)} in a version 1 header")
    if len(fields) != 6:
        raise HeaderFault(
            f"a version 1 {protocol.decode()} header of {len(fields)} fields, "
            f"not 6: {quoted(data[:at])}"
        )
    version = 4 if protocol == b"TCP4" else 6
    source = _address(fields[2], version, "source")
    destination = _address(fields[3], version, "destination")
    sourcePort = _port(fields[4], "source")
    destinationPort = _port(fields[5], "destination")
    kind = IPv4Address if version == 4 else IPv6Address
    return ProxyHeader(
        kind("TCP", source, sourcePort),
        kind("TCP", destination, destinationPort),
        at + 2,
    )


def _address(field: bytes, version: int, role: str) -> str:
    """
    The text of the IP address of C{version} that C{field} spells, in the
    form C{ipaddress} gives, so that one address has one spelling.
    """
    try:
        address = ipaddress.ip_address(field.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        address = None
    # A scope (fe80::1%eth0) names an interface of the balancer's, not
    # anything of the client's, and is any text at all.
    if (
        address is None
        or address.version != version
        or getattr(address, "scope_id", None) is not None
    ):
        raise HeaderFault(
            f"{role} address {quoted(field)} is not an IPv{version} address"
        )
    return str(address)


def _port(field: bytes, role: str) -> int:
    # bytes.isdigit is ASCII digits only: no sign, space, underscore or
    # other script's digit, all of which int() takes.
    if not (field.isdigit() and len(field) <= 5 and int(field) <= 0xFFFF):
        raise HeaderFault(
            f"{role} port {quoted(field)} is not a number from 0 to 65535"
        )
    return int(field)


def _version2(data: bytes) -> ProxyHeader | None:
    command, family, size = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if command not in (_LOCAL, _PROXY):
        raise HeaderFault(
            f"version and command 0x{command:02x} in a version 2 header, "
            "not 0x20 (LOCAL) or 0x21 (PROXY)"
        )
    if family not in _ADDRESS_BYTES:
        raise HeaderFault(f"unknown family 0x{family:02x} in a version 2 header")
    length = _V2_FIXED + size
    if length > MOST:
        raise HeaderFault(f"a version 2 header of {length} bytes, longer than {MOST}")
    name, needed = _ADDRESS_BYTES[family]
    if command == _PROXY and size < needed:
        raise HeaderFault(
            f"a version 2 header with {size} bytes of {name} addresses, not {needed}"
        )
    if len(data) < length:
        return None
    if command == _LOCAL or family not in (_TCP4, _TCP6):
        # HAProxy keeps the connection's own addresses for these too.
        return ProxyHeader(None, None, length)
    width = 4 if family == _TCP4 else 16
    source, destination, sourcePort, destinationPort = struct.unpack_from(
        f"!{width}s{width}sHH", data, _V2_FIXED
    )
    return ProxyHeader(
        _packed(source, sourcePort), _packed(destination, destinationPort), length
    )


def _packed(address: bytes, port: int) -> ADDRESS:
    """The TCP address of packed IP C{address}, 4 bytes or 16, and C{port}."""
    if len(address) == 4:
        return IPv4Address("TCP", str(ipaddress.IPv4Address(address)), port)
    return IPv6Address("TCP", str(ipaddress.IPv6Address(address)), port)


def printable(text: bytes | str, most: int = 40) -> str:
    """
    C{text}, which a client chose, as it may go into a log: at most C{most}
    characters of it, escaped by L{caretproto.connections.escapeForLog}.
    Bytes that are not ASCII are shown as C{\\xff}.

    @param text: what came, bytes or text.
    @param most: the most characters kept; a longer C{text} is cut there
        and ends with an ellipsis.
    @return: the printable text.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "surrogateescape")
    return escapeForLog(text, most)


def quoted(text: bytes | str, most: int = 40) -> str:
    """
    L{printable}, in quotes, for a log line or a L{HeaderFault}.

    @param text: what came, bytes or text.
    @param most: the most characters kept.
    @return: the printable text, in single quotes.
    """
    return f"'{printable(text, most)}'"
