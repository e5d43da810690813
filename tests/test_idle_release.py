"""
Idle timeouts against a real C{twistd -n caret}, seen from the client side
and in the server's log: clients that stop reading are released, paused or
not, and a silent client is closed fully at one timeout, not two.

The unit tests of the same rules, on a clock, are in
L{tests.test_idle_timeout}; these check that real sockets, with an
Internet-sized segment and small buffers, behave as the fakes there do.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from caretproto.endpoints import clientEndpoint
from caretproto.idle import granularityFor
from caretproto.rules import GREETING
from tests import childEnvironment
from tests.fakes import messages
from tests.rawclient import RawClient, portNumbers, settle, startCommand
from tests.tempfolder import shortTempPath
from tests.test_caretclient import repliesIn
from tests.test_tls import Certificates
from tests.twistd import LOOPBACK, Twistd
from tests.workedexample import REFERENCE_REPLIES

CLIENT = [sys.executable, "-m", "caretproto.caretclient"]

SEGMENT = 1460
"""An Internet-sized TCP segment (loopback's is 64 KiB)."""

SMALL_BUFFER = 4096
"""The non-readers' socket buffers: what they neither read nor send waits."""

SENT = 4 * 1024 * 1024
"""What each non-reader sends after C{^}: replies it will never take."""


TCP_ESTABLISHED = 1
"""Linux's C{TCP_ESTABLISHED} state: neither side has closed."""
TCP_CLOSE = 7
"""Linux's C{TCP_CLOSE} state: the connection is gone, a reset received."""


def tcpState(handle: socket.socket) -> int:
    """The kernel's state of a TCP socket (Linux's C{tcp_info.tcpi_state})."""
    return handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


class NonReader(Protocol):
    """
    Opens a message, sends L{SENT} bytes of it and never reads a byte.

    @ivar gone: fires with the time its connection was lost.
    """

    def __init__(self) -> None:
        self.gone: Deferred[float] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.transport.write(b"^" + b"a" * SENT)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone.callback(time.monotonic())


def nonReader(port: int) -> tuple[NonReader, int]:
    """
    A L{NonReader} connected to C{port} on 127.0.0.1 from a socket whose
    segment size and buffers were set before it connected, as a client
    across the Internet has them; and its own port number.
    """
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SEGMENT)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        raw.connect(("127.0.0.1", port))
        raw.setblocking(False)
        protocol = NonReader()
        factory = Factory.forProtocol(lambda: protocol)
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            raw.fileno(), socket.AF_INET, factory
        )
        return protocol, raw.getsockname()[1]
    finally:
        # The reactor holds its own duplicate of the descriptor.
        raw.close()


@implementer(IHalfCloseableProtocol)
class SilentClient(Protocol):
    """
    Takes its greeting, then sends nothing, and keeps its own side open
    when the server closes: as a client that has gone away without a
    word, or C{nc} left running, does.

    @ivar greeted: fires when the greeting has come.
    @ivar closed: fires with the time the server's close (EOF) came.
    """

    def __init__(self) -> None:
        self.greeted: Deferred[None] = Deferred()
        self.closed: Deferred[float] = Deferred()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == GREETING:
            self.greeted.callback(None)

    def readConnectionLost(self) -> None:
        self.closed.callback(time.monotonic())

    def writeConnectionLost(self) -> None:
        pass


@pytest.mark.process
class NonReaderTests(TestCase):
    timeout = 60

    async def test_clients_that_stop_reading_are_released_by_the_idle_timeout(
        self,
    ) -> None:
        """
        Five clients open a message, send 4 MiB with a small segment and
        small buffers, and never read: the server stops reading them (flow
        control), sees that they take none of their replies, and aborts
        them, all within 12 s with C{--idle-timeout 3}; a reference client
        on the same server is served meanwhile.
        """
        twistd = Twistd.start(self, "caret", "--port", LOOPBACK, "--idle-timeout", "3")
        port = await twistd.serving()
        started = time.monotonic()
        clients = [nonReader(port) for _ in range(5)]
        gone = gatherResults([client.gone for client, _clientPort in clients])
        gone.addTimeout(12, reactor)
        reference = getProcessOutputAndValue(
            CLIENT[0], [*CLIENT[1:], "127.0.0.1", str(port)], env=dict(os.environ)
        )
        out, err, status = await reference
        self.assertEqual((err, status), (b"", 0), out)
        self.assertEqual(repliesIn(out.decode()), {"conn1": REFERENCE_REPLIES})
        releasedAt = await gone
        self.assertLess(max(releasedAt) - started, 12)
        for _protocol, clientPort in clients:
            [abort] = await twistd.logged(
                rf"127\.0\.0\.1:{clientPort} did not take its replies for 3\.0s "
                r"while its reading was paused: aborting with (\d+) bytes unsent"
            )
            self.assertGreater(int(abort[1]), 0)
            await twistd.logged(rf"127\.0\.0\.1:{clientPort} disconnected after")


@pytest.mark.process
class SilentClientTests(TestCase):
    timeout = 60

    async def test_a_silent_client_is_closed_fully_at_one_timeout(self) -> None:
        """
        Nothing is owed to a client that only took its greeting: at the idle
        timeout the server closes the connection, not just its sending
        side, so the descriptor is free then, not a second timeout later.
        The client sees the close, and a byte it sends after it is answered
        with a reset: nobody reads on the server's side any more.
        """
        timeout = 2.0
        late = granularityFor(timeout) + 0.75  # a tick, and a loaded machine
        twistd = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--idle-timeout", str(timeout)
        )
        port = await twistd.serving()
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port), SilentClient()
        )
        await client.greeted
        greetedAt = time.monotonic()
        assert client.transport is not None
        clientPort = client.transport.getHost().port
        closedAt = await client.closed
        self.assertGreaterEqual(closedAt - greetedAt, timeout - 0.1)
        self.assertLess(closedAt - greetedAt, timeout + late)
        # The server's descriptor is closed: what the client sends now is
        # answered with a reset, which ends the connection in the kernel.
        client.transport.write(b"^late")
        handle = client.transport.getHandle()
        await settle(lambda: tcpState(handle) == TCP_CLOSE, timeout=late)
        self.assertLess(time.monotonic() - greetedAt, timeout + 2 * late)
        [line] = await twistd.logged(
            rf"127\.0\.0\.1:{clientPort} disconnected after (\d+\.\d+)s"
        )
        self.assertLess(float(line[1]), timeout + late)
        self.assertEqual(
            twistd.count(
                rf"127\.0\.0\.1:{clientPort} sent nothing for 2\.0s: closing$"
            ),
            1,
        )
        self.assertIsNone(re.search("did not take its replies", twistd.output))


HOSTILE = str(Path(__file__).parent.parent / "benchmarks" / "hostile.py")


@pytest.mark.process
class HostileScriptTests(TestCase):
    """C{benchmarks/hostile.py}, small: five clients of each kind."""

    timeout = 120

    async def test_help_starts_nothing(self) -> None:
        out, err, status = await getProcessOutputAndValue(
            sys.executable, [HOSTILE, "--help"], env=childEnvironment()
        )
        self.assertEqual((err, status), (b"", 0))
        self.assertIn(b"non-readers", out)
        self.assertNotIn(b"PASS", out)
        self.assertNotIn(b"FAIL", out)

    async def test_every_descriptor_comes_back(self) -> None:
        records = Path(shortTempPath(self, "benchmarks.json"))
        command = ["-n", "5", "--idle-timeout", "3", "--waves", "1"]
        out, err, status = await getProcessOutputAndValue(
            sys.executable,
            [HOSTILE, *command, "--write", "--records", str(records)],
            env=childEnvironment(),
        )
        self.assertEqual(status, 0, out + err)
        entry = json.loads(records.read_text())["records"]["hostile"]
        self.assertEqual(entry["notes"], [])
        figures = {name: f["median"] for name, f in entry["figures"].items()}
        before = figures["before.descriptors"]
        self.assertEqual(figures["w1.held.descriptors"], before + 10)
        self.assertEqual(figures["w1.after.descriptors"], before)
        self.assertEqual(figures["w1.log.aborted_while_paused"], 5)
        self.assertEqual(figures["w1.log.closed_silent"], 5)


class TLSTests(TestCase):
    """
    The same rules over TLS, in this process: what the session's transport
    holds unsent is then what waits in the TLS layer and under it in the
    socket's buffers, and a TLS close waits for the client's, which a silent
    client never sends.
    """

    timeout = 60

    LATE = 2 * granularityFor(2) + 0.5
    """
    How late an end may come: two ticks (the close of a TLS session that
    owes nothing, then its abort), and a loaded machine; well short of a
    second timeout.
    """

    def setUp(self) -> None:
        self.certificates = Certificates(self)
        self.caret = startCommand(
            self, "--port", self.certificates.port(), "--idle-timeout", "2"
        )
        [self.port] = portNumbers(self.caret)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    async def connect(self) -> RawClient:
        endpoint = clientEndpoint(
            reactor, "127.0.0.1", self.port, tls=True, ca=self.certificates.ca
        )
        client = await connectProtocol(endpoint, RawClient())
        await client.receivedAtLeast(len(GREETING))
        return client

    async def test_a_client_that_stops_reading_is_aborted(self) -> None:
        client = await self.connect()
        transport = client.transport
        assert transport is not None
        transport.pauseProducing()  # type: ignore[attr-defined]
        [session] = self.caret.factory.sessions
        # Small buffers, so that replies back up into the server's process.
        tcp = transport.transport  # type: ignore[attr-defined]
        tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        transport.write(b"^" + b"a" * SENT)
        await settle(lambda: session.paused)
        pausedAt = time.monotonic()
        await self.caret.factory.whenIdle()
        self.assertLess(time.monotonic() - pausedAt, 2 + self.LATE)
        # The client, reading nothing and with nothing left to write, learns
        # of the abort only from its kernel: the connection was reset.
        handle = tcp.getHandle()
        await settle(lambda: tcpState(handle) == TCP_CLOSE)
        transport.abortConnection()  # type: ignore[attr-defined]
        await client.done
        self.assertTrue(
            any(
                "did not take its replies for 2.0s while its reading was paused" in line
                for line in messages(self.logged)
            ),
            messages(self.logged),
        )

    async def test_a_silent_client_is_closed_at_one_timeout(self) -> None:
        """
        One that does not even read the server's TLS close, and so never
        answers it, is closed all the same, at the tick after it.
        """
        client = await self.connect()
        greetedAt = time.monotonic()
        transport = client.transport
        assert transport is not None
        transport.pauseProducing()  # type: ignore[attr-defined]
        await self.caret.factory.whenIdle()
        self.assertLess(time.monotonic() - greetedAt, 2 + self.LATE)
        self.assertFalse(any("did not take" in line for line in messages(self.logged)))
        handle = transport.transport.getHandle()  # type: ignore[attr-defined]
        await settle(lambda: tcpState(handle) != TCP_ESTABLISHED)
        transport.abortConnection()  # type: ignore[attr-defined]
        await client.done
