"""
Tests for caret over TLS: C{twistd caret --port ssl:...} with certificates made
by trustme, and the client side in L{caretproto.endpoints}.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from typing import Any

import pytest
import trustme
from OpenSSL.SSL import Error as TLSError
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from caretproto.endpoints import clientEndpoint
from caretproto.server import CaretFactory
from caretproto.tap import Options, makeService
from tests import childEnvironment
from tests.rawclient import RawClient
from tests.tempfolder import shortTempPath, tempFolder
from tests.test_caretclient import repliesIn
from tests.twistd import Twistd
from tests.workedexample import (
    REFERENCE_REPLIES,
    WORKED_EXAMPLE_ANSWER,
    runWorkedExample,
)


async def turns(count: int) -> None:
    """Let the reactor run C{count} times."""
    for _ in range(count):
        await deferLater(reactor, 0, lambda: None)


class Certificates:
    """
    A certificate authority and a server certificate it signed for
    127.0.0.1 and localhost, as PEM files in a temporary folder; and another
    authority that signed nothing.
    """

    def __init__(self, testCase: TestCase) -> None:
        folder = tempFolder(testCase)
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        self.key = os.path.join(folder, "key.pem")
        self.cert = os.path.join(folder, "cert.pem")
        self.ca = os.path.join(folder, "ca.pem")
        self.otherCA = os.path.join(folder, "other-ca.pem")
        issued.private_key_pem.write_to_path(self.key)
        issued.cert_chain_pems[0].write_to_path(self.cert)
        ca.cert_pem.write_to_path(self.ca)
        trustme.CA().cert_pem.write_to_path(self.otherCA)

    def port(self) -> str:
        """C{--port} for a TLS server on an ephemeral loopback port."""
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"


class TLSServerTests(TestCase):
    """
    A caret server on an C{ssl:} endpoint, as C{twistd caret} builds it, and
    clients made by L{clientEndpoint} that trust the test's CA.
    """

    timeout = 60

    def setUp(self) -> None:
        self.certificates = Certificates(self)
        self.ca = self.certificates.ca
        options = Options()
        options.parseOptions(["--port", self.certificates.port()])
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        caret = top.getServiceNamed("caret")
        self.factory: CaretFactory = caret.factory
        self.port = caret.ports[0].getHost().port

    async def test_worked_example_over_tls(self) -> None:
        endpoint = clientEndpoint(reactor, "127.0.0.1", self.port, tls=True, ca=self.ca)
        self.assertEqual(await runWorkedExample(endpoint), WORKED_EXAMPLE_ANSWER)

    async def test_a_host_name_is_checked_against_the_certificate(self) -> None:
        endpoint = clientEndpoint(reactor, "localhost", self.port, tls=True, ca=self.ca)
        self.assertEqual(await runWorkedExample(endpoint), WORKED_EXAMPLE_ANSWER)

    async def test_server_signed_by_an_untrusted_ca_is_refused(self) -> None:
        endpoint = clientEndpoint(
            reactor, "127.0.0.1", self.port, tls=True, ca=self.certificates.otherCA
        )
        with self.assertRaises(TLSError):
            await runWorkedExample(endpoint)

    async def test_flow_control_stops_reading_a_client_that_does_not_read(
        self,
    ) -> None:
        endpoint = clientEndpoint(reactor, "127.0.0.1", self.port, tls=True, ca=self.ca)
        client = await connectProtocol(endpoint, RawClient())
        # Stop reading only once greeted: a TLS client that stops reading
        # before its handshake is done never finishes it.
        await client.receivedAtLeast(1)
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
        await client.receivedAtLeast(len(sent))
        self.assertFalse(session.paused)
        self.assertEqual(session.bytesReceived, len(sent))
        self.assertEqual(len(client.received), len(sent))
        self.assertTrue(client.received == b"*" + b"b" * (len(sent) - 1))
        transport.loseConnection()
        await self.factory.whenIdle()


class ClientEndpointTests(TestCase):
    async def test_without_tls_it_connects_in_the_clear(self) -> None:
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        port = top.getServiceNamed("caret").ports[0].getHost().port
        endpoint = clientEndpoint(reactor, "127.0.0.1", port)
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        self.assertEqual(await runWorkedExample(endpoint), WORKED_EXAMPLE_ANSWER)

    def test_ca_without_tls_is_refused(self) -> None:
        error = self.assertRaises(
            ValueError, clientEndpoint, reactor, "127.0.0.1", 9090, ca="ca.pem"
        )
        self.assertIn("only used with TLS", str(error))

    def test_missing_ca_file_is_named(self) -> None:
        missing = shortTempPath(self, "ca.pem")
        error = self.assertRaises(
            ValueError, clientEndpoint, reactor, "127.0.0.1", 1, tls=True, ca=missing
        )
        self.assertIn(repr(missing), str(error))
        self.assertIn("No such file", str(error))

    def test_ca_file_that_is_not_pem_is_named(self) -> None:
        path = shortTempPath(self, "ca.pem")
        with open(path, "w") as notPEM:
            notPEM.write("not a certificate\n")
        error = self.assertRaises(
            ValueError, clientEndpoint, reactor, "127.0.0.1", 1, tls=True, ca=path
        )
        self.assertIn(repr(path), str(error))
        self.assertIn("not a PEM certificate", str(error))


CLIENT = [sys.executable, "-m", "caretproto.caretclient"]


@pytest.mark.process
class CaretClientTLSTests(TestCase):
    """C{caret-client --tls --ca FILE HOST PORT} against C{twistd caret}."""

    timeout = 30

    async def test_reference_session_over_tls(self) -> None:
        certificates = Certificates(self)
        twistd = Twistd.start(self, "caret", "--port", certificates.port())
        [address] = await twistd.listening
        host, port = address.rsplit(":", 1)
        out, err, status = await getProcessOutputAndValue(
            CLIENT[0],
            [*CLIENT[1:], "--tls", "--ca", certificates.ca, host, port],
            env=childEnvironment(),
        )
        self.assertEqual((err, status), (b"", 0), out)
        self.assertIn(b":conn1 disconnecting", out)
        self.assertEqual(repliesIn(out.decode()), {"conn1": REFERENCE_REPLIES})

    async def test_an_unreadable_ca_is_a_usage_error(self) -> None:
        missing = shortTempPath(self, "ca.pem")
        _, err, status = await getProcessOutputAndValue(
            CLIENT[0],
            [*CLIENT[1:], "--tls", "--ca", missing, "127.0.0.1", "9"],
            env=childEnvironment(),
        )
        self.assertEqual(status, 1)
        self.assertIn(f"--ca: cannot read the CA certificate {missing!r}", err.decode())
        self.assertNotIn(b"Traceback", err)


BENCH = [sys.executable, "-m", "caretproto.benchrun"]


@pytest.mark.process
class CaretBenchTLSTests(TestCase):
    """
    C{caret-bench --endpoint tls:...}, as C{caret-client --endpoint} takes
    it, and C{caret-bench --tls --ca FILE HOST PORT}, against a caret server
    on an C{ssl:} endpoint, in worker processes too.
    """

    timeout = 60

    def setUp(self) -> None:
        self.certificates = Certificates(self)
        # A tls: endpoint trusts the certificates in a folder: the CA alone.
        self.trusted = tempFolder(self)
        shutil.copy(self.certificates.ca, self.trusted)
        options = Options()
        options.parseOptions(["--port", self.certificates.port()])
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        self.port = top.getServiceNamed("caret").ports[0].getHost().port

    async def caretBench(self, *argv: str) -> dict[str, Any]:
        out, err, status = await getProcessOutputAndValue(
            BENCH[0],
            [*BENCH[1:], "-d", "0.3", "-c", "2", "--json", *argv],
            env=childEnvironment(),
        )
        self.assertEqual((err, status), (b"", 0), out)
        figures: dict[str, Any] = json.loads(out)
        return figures

    async def test_a_tls_endpoint_checks_replies_as_over_tcp(self) -> None:
        endpoint = f"tls:localhost:{self.port}:trustRoots={self.trusted}"
        for processes in ["1", "2"]:
            figures = await self.caretBench("--endpoint", endpoint, "-P", processes)
            self.assertEqual(
                (figures["endpoint"], figures["errors"], figures["processes"]),
                (endpoint, 0, int(processes)),
            )
            self.assertGreater(figures["rounds"], 2)

    async def test_tls_to_host_and_port_with_a_ca_file(self) -> None:
        figures = await self.caretBench(
            "--tls", "--ca", self.certificates.ca, "localhost", str(self.port)
        )
        self.assertEqual((figures["tls"], figures["errors"]), (True, 0))
        self.assertGreater(figures["rounds"], 2)

    async def test_a_server_the_endpoint_does_not_trust_is_an_error(self) -> None:
        untrusted = tempFolder(self)
        shutil.copy(self.certificates.otherCA, untrusted)
        out, _, status = await getProcessOutputAndValue(
            BENCH[0],
            [
                *BENCH[1:],
                "-d",
                "0.2",
                "--endpoint",
                f"tls:localhost:{self.port}:trustRoots={untrusted}",
            ],
            env=childEnvironment(),
        )
        self.assertEqual(status, 1, out)
        self.assertIn(b"errors   1", out)
