"""
Tests for caret over TLS: C{twistd caret --port ssl:...} with certificates made
by trustme, and the client side in L{caretproto.endpoints}.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import trustme
from OpenSSL.SSL import Error as TLSError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from caretproto.endpoints import clientEndpoint
from caretproto.server import CaretFactory
from caretproto.tap import Options, makeService
from tests.clients import WORKED_EXAMPLE, WORKED_EXAMPLE_ANSWER, ScriptedClient


async def turns(count: int) -> None:
    """Let the reactor run C{count} times."""
    for _ in range(count):
        await deferLater(reactor, 0, lambda: None)


class Hoarder(Protocol):
    """A client that keeps what it receives: a test stops it reading."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._waiting: tuple[int, Deferred[None]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiting is not None and len(self.received) >= self._waiting[0]:
            waiter = self._waiting[1]
            self._waiting = None
            waiter.callback(None)

    def whenReceived(self, count: int) -> Deferred[None]:
        """Fires once C{count} bytes in all have arrived."""
        waiter: Deferred[None] = Deferred()
        self._waiting = (count, waiter)
        self.dataReceived(b"")
        return waiter


class TLSServerTests(TestCase):
    """
    A caret server on an C{ssl:} endpoint, as C{twistd caret} builds it, and
    clients made by L{clientEndpoint} that trust the test's CA.
    """

    timeout = 60

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        key = os.path.join(directory, "key.pem")
        cert = os.path.join(directory, "cert.pem")
        self.ca = os.path.join(directory, "ca.pem")
        issued.private_key_pem.write_to_path(key)
        issued.cert_chain_pems[0].write_to_path(cert)
        ca.cert_pem.write_to_path(self.ca)
        self.otherCA = os.path.join(directory, "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(self.otherCA)

        options = Options()
        options.parseOptions(
            [
                "--port",
                f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            ]
        )
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        caret = top.getServiceNamed("caret")
        self.factory: CaretFactory = caret.factory
        self.port = caret.ports[0].getHost().port

    async def test_worked_example_over_tls(self) -> None:
        client = ScriptedClient(WORKED_EXAMPLE)
        endpoint = clientEndpoint(reactor, "127.0.0.1", self.port, tls=True, ca=self.ca)
        await connectProtocol(endpoint, client)
        self.assertEqual(await client.done, WORKED_EXAMPLE_ANSWER)

    async def test_host_name_is_checked_against_the_certificate(self) -> None:
        client = ScriptedClient(WORKED_EXAMPLE)
        endpoint = clientEndpoint(reactor, "localhost", self.port, tls=True, ca=self.ca)
        await connectProtocol(endpoint, client)
        self.assertEqual(await client.done, WORKED_EXAMPLE_ANSWER)

    async def test_server_signed_by_an_untrusted_ca_is_refused(self) -> None:
        client = ScriptedClient(WORKED_EXAMPLE)
        endpoint = clientEndpoint(
            reactor, "127.0.0.1", self.port, tls=True, ca=self.otherCA
        )
        await connectProtocol(endpoint, client)
        self.assertEqual(await client.done, b"")
        self.assertTrue(client.reason.check(TLSError), client.reason)

    async def test_flow_control_stops_reading_a_client_that_does_not_read(
        self,
    ) -> None:
        client = Hoarder()
        endpoint = clientEndpoint(reactor, "127.0.0.1", self.port, tls=True, ca=self.ca)
        await connectProtocol(endpoint, client)
        # Stop reading only once greeted: a TLS client that stops reading
        # before its handshake is done never finishes it.
        await client.whenReceived(1)
        transport = client.transport
        assert transport is not None
        transport.pauseProducing()  # type: ignore[attr-defined]
        [session] = self.factory.sessions
        # Small socket buffers on both sides, so that a few hundred KB of
        # replies back up rather than the many MB loopback autotuning allows.
        # (The TLS transport's handle is the OpenSSL connection: the sockets
        # are those of the TCP transports.)
        tcp = transport.transport  # type: ignore[attr-defined]
        tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        session.transport.socket.setsockopt(  # type: ignore[attr-defined]
            socket.SOL_SOCKET, socket.SO_SNDBUF, 65536
        )

        sent = b"^" + b"a" * 4 * 2**20
        transport.write(sent)
        steadyTurns = 0
        lastRead = -1
        for _ in range(2000):
            await turns(1)
            steady = session.paused and session.bytesReceived == lastRead
            steadyTurns = steadyTurns + 1 if steady else 0
            lastRead = session.bytesReceived
            if steadyTurns == 20:
                break
        self.assertTrue(session.paused)
        self.assertLess(session.bytesReceived, len(sent) // 2)

        transport.resumeProducing()  # type: ignore[attr-defined]
        await client.whenReceived(len(sent))
        self.assertFalse(session.paused)
        self.assertEqual(session.bytesReceived, len(sent))
        self.assertEqual(len(client.received), len(sent))
        self.assertTrue(client.received == b"*" + b"b" * (len(sent) - 1))
        transport.loseConnection()
        await self.factory.whenIdle()


class ClientEndpointTests(TestCase):
    def test_ip_addresses_are_connected_to_without_a_lookup(self) -> None:
        self.assertIsInstance(
            clientEndpoint(reactor, "127.0.0.1", 9090), TCP4ClientEndpoint
        )
        self.assertIsInstance(clientEndpoint(reactor, "::1", 9090), TCP6ClientEndpoint)

    def test_names_are_resolved(self) -> None:
        self.assertIsInstance(
            clientEndpoint(reactor, "localhost", 9090), HostnameEndpoint
        )

    def test_ca_without_tls_is_refused(self) -> None:
        error = self.assertRaises(
            ValueError, clientEndpoint, reactor, "127.0.0.1", 9090, ca="ca.pem"
        )
        self.assertIn("only used with TLS", str(error))

    def test_missing_ca_file_is_named(self) -> None:
        missing = os.path.join(self.mktemp(), "ca.pem")
        error = self.assertRaises(
            ValueError, clientEndpoint, reactor, "h", 1, tls=True, ca=missing
        )
        self.assertIn(repr(missing), str(error))
        self.assertIn("No such file", str(error))

    def test_ca_file_that_is_not_pem_is_named(self) -> None:
        path = self.mktemp()
        with open(path, "w") as notPEM:
            notPEM.write("not a certificate\n")
        error = self.assertRaises(
            ValueError, clientEndpoint, reactor, "h", 1, tls=True, ca=path
        )
        self.assertIn(repr(path), str(error))
        self.assertIn("not a PEM certificate", str(error))
