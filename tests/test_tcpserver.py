"""
The lighter TCP transport (L{caretproto.tcpserver}): it describes itself as
Twisted's own does, keeps no description while nobody asks, and only a TCP
port with Twisted's own transport is given it.

These tests also pin the two Twisted internals it relies on: the C{transport}
class attribute of L{twisted.internet.tcp.Port}, and C{repstr}, where
L{twisted.internet.tcp.Server} keeps its description.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp, unix
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto import tcpserver


class Echo(Protocol):
    """A protocol for the transport to name."""


class FakePort:
    """The little of a L{tcp.Port} that a server transport reads."""

    _realPortNumber = 9090


def build(kind: type[tcp.Server], test: TestCase) -> tcp.Server:
    """A server transport of C{kind} on one end of a socket pair."""
    ours, theirs = socket.socketpair()
    test.addCleanup(theirs.close)
    test.addCleanup(ours.close)
    return kind(
        ours,
        Echo(),
        ("192.0.2.7", 4242),
        FakePort(),  # type: ignore[arg-type]
        12,
        MemoryReactor(),
    )


class ServerTests(TestCase):
    def test_describes_itself_as_twisteds_own_transport_does(self) -> None:
        self.assertEqual(
            repr(build(tcpserver.Server, self)), repr(build(tcp.Server, self))
        )
        self.assertEqual(repr(build(tcpserver.Server, self)), "<Echo #12 on 9090>")

    def test_keeps_no_description_of_its_own(self) -> None:
        # Twisted's transport keeps it under this name: if that changes, the
        # lighter transport would keep it again and this fails.
        self.assertIn("repstr", vars(build(tcp.Server, self)))
        self.assertNotIn("repstr", vars(build(tcpserver.Server, self)))

    def test_describes_itself_after_the_connection_is_lost(self) -> None:
        server = build(tcpserver.Server, self)
        server.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(repr(server), "<(lost) #12 on 9090>")

    def test_is_otherwise_twisteds_transport(self) -> None:
        server = build(tcpserver.Server, self)
        self.assertIsInstance(server, tcp.Server)
        self.assertEqual(server.getPeer().host, "192.0.2.7")
        self.assertEqual(server.logPrefix(), "Echo,12,192.0.2.7")


class LightenTests(TestCase):
    def listen(self) -> tcp.Port:
        from twisted.internet import reactor

        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return port

    def test_a_tcp_port_builds_the_lighter_transport(self) -> None:
        port = self.listen()
        # Twisted's ports build their transports from this attribute.
        self.assertIs(port.transport, tcp.Server)
        tcpserver.lighten(port)
        self.assertIs(port.transport, tcpserver.Server)

    def test_a_port_with_a_transport_of_its_own_keeps_it(self) -> None:
        class OwnServer(tcp.Server):
            pass

        port = self.listen()
        port.transport = OwnServer
        tcpserver.lighten(port)
        self.assertIs(port.transport, OwnServer)

    def test_a_unix_port_is_left_alone(self) -> None:
        port = unix.Port("unused", Factory.forProtocol(Protocol))
        tcpserver.lighten(port)
        self.assertIs(port.transport, unix.Server)
