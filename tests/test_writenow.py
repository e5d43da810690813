"""
Write at once (L{caretproto.writenow}): a reply goes to the socket in the
turn it is made when nothing waits before it; the rest goes through Twisted's
own buffer, so order, flow control and errors stay Twisted's.

Most tests run a session on a real L{twisted.internet.tcp.Server} whose
socket and reactor are fakes that record what is sent and what is registered.
The rest use real loopback connections in this process, for what only a
kernel shows: a socket that has room again while Twisted still holds the rest
of an earlier write, the fast path coming back once Twisted's buffer has
drained, TLS started on a connection, caret's own PROXY-protocol wrapper, and
a reset.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from typing import Any

import trustme
from twisted.internet import main, reactor, ssl, tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.proxy import _HeaderFirst
from caretproto.rules import GREETING
from caretproto.server import CaretFactory, CaretProtocol
from caretproto.writenow import replyNow, socketTransport, writeNow
from tests.fakes import clockedFactory
from tests.rawclient import (
    RawClient,
    connect,
    portNumbers,
    serve,
    settle,
    startCommand,
)


class FakeSocket:
    """
    A non-blocking socket that takes at most C{room} bytes per C{send}
    (everything if L{None}), or fails with C{error}.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.shutdowns: list[int] = []
        self.closed = False
        self.room: int | None = None
        self.error: int | None = None

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def shutdown(self, how: int) -> None:
        self.shutdowns.append(how)

    def close(self) -> None:
        self.closed = True

    def send(self, data: Any) -> int:
        if self.error is not None:
            raise OSError(self.error, errno.errorcode[self.error])
        data = bytes(data)
        taken = data if self.room is None else data[: self.room]
        if self.room is not None:
            self.room -= len(taken)
        if not taken and data:
            raise BlockingIOError(errno.EAGAIN, "full")
        if taken:
            self.sent.append(taken)
        return len(taken)


class FakeReactor:
    """Records which descriptors wait for readability and writability."""

    def __init__(self) -> None:
        self.readers: set[FileDescriptor] = set()
        self.writers: set[FileDescriptor] = set()
        self.writerRegistrations = 0

    def addReader(self, reader: FileDescriptor) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: FileDescriptor) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: FileDescriptor) -> None:
        self.writerRegistrations += 1
        self.writers.add(writer)

    def removeWriter(self, writer: FileDescriptor) -> None:
        self.writers.discard(writer)

    def callLater(self, delay: float, f: Any, *args: Any) -> None:
        """An aborted transport's connectionLost: not run here."""


class Lost(CaretProtocol):
    """A session that counts its connectionLost calls."""

    lostCount = 0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lostCount += 1
        super().connectionLost(reason)


def sessionOnSocket(
    factory: CaretFactory | None = None,
) -> tuple[Lost, tcp.Server, FakeSocket, FakeReactor]:
    """A greeted session on a TCP server transport over a fake socket."""
    if factory is None:
        factory = clockedFactory()[0]
    factory.protocol = Lost
    fake, fakeReactor = FakeSocket(), FakeReactor()
    session = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(session, Lost)
    transport = tcp.Server(
        fake,  # type: ignore[arg-type]
        session,
        ("127.0.0.1", 40000),
        _FakePort(),  # type: ignore[arg-type]
        1,
        fakeReactor,  # type: ignore[arg-type]
    )
    transport.startReading()
    session.makeConnection(transport)
    return session, transport, fake, fakeReactor


class _FakePort:
    """What L{tcp.Server} asks of its port."""

    _realPortNumber = 9090

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 9090)


class WriteNowTests(TestCase):
    def test_reply_with_nothing_buffered_is_sent_without_registering_for_writing(
        self,
    ) -> None:
        session, transport, fake, fakeReactor = sessionOnSocket()
        session.dataReceived(b"^abc")
        self.assertEqual(fake.sent, [GREETING, b"bcd"])
        self.assertEqual(fakeReactor.writerRegistrations, 0)
        self.assertFalse(transport.dataBuffer or transport._tempDataLen)

    def test_partial_send_buffers_exactly_the_rest_and_keeps_the_order(
        self,
    ) -> None:
        session, transport, fake, fakeReactor = sessionOnSocket()
        fake.room = 2
        session.dataReceived(b"^abcde")
        self.assertEqual(fake.sent, [GREETING, b"bc"])
        self.assertEqual(transport._tempDataBuffer, [b"def"])
        self.assertIn(transport, fakeReactor.writers)
        session.dataReceived(b"fg")
        # Something waits, so the next reply queues behind it, unsent.
        self.assertEqual(fake.sent, [GREETING, b"bc"])
        fake.room = None
        transport.doWrite()
        self.assertEqual(b"".join(fake.sent), GREETING + b"bcdefgh")
        self.assertNotIn(transport, fakeReactor.writers)
        self.assertEqual(session.bytesSent, len(GREETING + b"bcdefgh"))

    def test_full_socket_buffer_still_pauses_the_session(self) -> None:
        session, transport, fake, fakeReactor = sessionOnSocket()
        fake.room = 0
        session.dataReceived(b"^" + b"a" * (transport.bufferSize + 1))
        self.assertTrue(session.paused)
        self.assertNotIn(transport, fakeReactor.readers)
        fake.room = None
        transport.doWrite()
        self.assertFalse(session.paused)
        self.assertIn(transport, fakeReactor.readers)

    def test_send_error_is_left_for_twisted_to_end_the_connection(self) -> None:
        """
        The reply is buffered and the transport registered for writing: its
        own attempt fails the same way and ends the connection, once.
        """
        session, transport, fake, fakeReactor = sessionOnSocket()
        fake.error = errno.ECONNRESET
        session.dataReceived(b"^abc")
        self.assertEqual(session.lostCount, 0)
        self.assertEqual(transport._tempDataBuffer, [b"bcd"])
        self.assertIn(transport, fakeReactor.writers)
        why = transport.doWrite()
        self.assertIsInstance(why, Exception)

    def test_after_loseConnection_writes_wait_for_twisted(self) -> None:
        _, transport, fake, _ = sessionOnSocket()
        transport.loseConnection()
        writeNow(transport, b"late")
        self.assertEqual(fake.sent, [GREETING])
        self.assertEqual(transport._tempDataBuffer, [b"late"])

    def test_after_abortConnection_nothing_more_is_sent(self) -> None:
        """
        Abort drops what is buffered and sets none of C{disconnecting} or
        the write flags: a reply made after it (a client's C{abort()} then
        C{send()}) goes nowhere, as Twisted's own C{write} would have it.
        """
        session, transport, fake, _ = sessionOnSocket()
        transport.abortConnection()
        writeNow(transport, b"late")
        session.dataReceived(b"^abc")
        self.assertEqual(fake.sent, [GREETING])


class ReplyNowTests(TestCase):
    """
    A session finds its socket once, at its first reply, and sends every
    later reply with L{replyNow}, which checks only what can change between
    two reads.  What makes the other checks needless, in Twisted, is pinned
    here.
    """

    def test_every_reply_after_the_first_goes_straight_to_the_socket(
        self,
    ) -> None:
        session, transport, fake, fakeReactor = sessionOnSocket()
        self.assertNotIn("_socket", vars(session))
        session.dataReceived(b"^abc$")
        self.assertIs(session._socket, transport)
        session.dataReceived(b"^def$")
        session.dataReceived(b"^g")
        self.assertEqual(fake.sent, [GREETING, b"bcd", b"efg", b"h"])
        self.assertEqual(fakeReactor.writerRegistrations, 0)

    def test_a_greeted_session_that_never_replied_keeps_no_socket(self) -> None:
        """Many thousands of idle sessions hold no reference each."""
        session, _, _, _ = sessionOnSocket()
        session.dataReceived(b"no message here")
        self.assertNotIn("_socket", vars(session))

    def test_after_finish_replies_take_writenow_s_checks_again(self) -> None:
        session, transport, fake, _ = sessionOnSocket()
        session.dataReceived(b"^abc")
        session._stopProducing()
        self.assertIsNone(session._socket)
        transport.abortConnection()
        session.dataReceived(b"def")
        self.assertEqual(fake.sent, [GREETING, b"bcd"])

    def test_abort_replaces_doRead_so_nothing_more_is_read(self) -> None:
        """
        Why replyNow need not check C{_aborting}: after C{abortConnection}
        the reactor's C{doRead} reads nothing, so no reply can follow.
        """
        session, transport, fake, _ = sessionOnSocket()
        session.dataReceived(b"^abc")
        transport.abortConnection()
        fake.recv = lambda size: b"def"  # type: ignore[attr-defined]
        self.assertIsNone(transport.doRead())
        self.assertEqual(session.bytesReceived, 4)
        self.assertEqual(fake.sent, [GREETING, b"bcd"])

    def test_a_reply_after_loseConnection_is_sent_before_the_close(self) -> None:
        """
        Why replyNow need not check C{disconnecting}: a read polled before
        the close was asked for is answered, as Twisted's own write would
        have sent the reply before closing.
        """
        session, transport, fake, _ = sessionOnSocket()
        session.dataReceived(b"^abc")
        transport.loseConnection()
        replyNow(transport, transport, b"def")
        self.assertEqual(fake.sent, [GREETING, b"bcd", b"def"])
        # Nothing left to send: the reactor is told to close it now.
        self.assertIs(transport.doWrite(), main.CONNECTION_DONE)

    def test_a_reply_after_the_sending_side_closed_is_dropped(self) -> None:
        """
        Why replyNow need not check C{_writeDisconnected}: the socket
        refuses the send (EPIPE), and Twisted's write drops the reply.
        """
        session, transport, fake, _ = sessionOnSocket()
        session.dataReceived(b"^abc")
        transport.loseWriteConnection()
        transport.doWrite()
        self.assertTrue(transport._writeDisconnected)
        fake.error = errno.EPIPE
        replyNow(transport, transport, b"def")
        self.assertEqual(fake.sent, [GREETING, b"bcd"])
        self.assertEqual((transport._tempDataLen, transport.dataBuffer), (0, b""))

    def test_tls_started_since_the_first_reply_takes_the_transport_s_write(
        self,
    ) -> None:
        _, transport, fake, _ = sessionOnSocket()
        transport.TLS = True
        written = StringTransport()
        replyNow(transport, written, b"over TLS")
        self.assertEqual(fake.sent, [GREETING])
        self.assertEqual(written.value(), b"over TLS")

    def test_bytes_waiting_keep_the_order(self) -> None:
        _, transport, fake, _ = sessionOnSocket()
        transport.write(b"first")
        replyNow(transport, transport, b"second")
        self.assertEqual(fake.sent, [GREETING])
        transport.doWrite()
        self.assertEqual(fake.sent, [GREETING, b"firstsecond"])


class WhichTransportsTests(TestCase):
    """
    Only writes that reach a plain socket unchanged are sent at once: what
    Twisted's attributes this relies on are checked here too.
    """

    def test_twisted_itself_is_unchanged_for_other_services(self) -> None:
        """
        Write at once is caret's protocols calling L{writeNow}, not a patch:
        a web site in the same process writes through Twisted's own method.
        """
        import caretproto.tap  # noqa: F401  (everything the server loads)

        for method in (
            tcp.Server.write,
            tcp.Server.writeSomeData,
            tcp.Server.doWrite,
            tcp.Server.startWriting,
        ):
            self.assertTrue(method.__module__.startswith("twisted."), method)

    def test_string_transport_has_no_socket(self) -> None:
        transport = StringTransport()
        self.assertIsNone(socketTransport(transport))
        writeNow(transport, b"x")
        self.assertEqual(transport.value(), b"x")

    def test_forwarding_wrapper_is_looked_through(self) -> None:
        session, transport, _, _ = sessionOnSocket()
        wrapper = HAProxyProtocolWrapper(WrappingFactory(None), session)  # type: ignore[arg-type]
        wrapper.transport = transport
        self.assertIs(socketTransport(wrapper), transport)

    def test_tls_is_left_to_twisted(self) -> None:
        self.assertIsNot(TLSMemoryBIOProtocol.write, ProtocolWrapper.write)

    def test_tls_started_on_a_tcp_connection_is_left_to_twisted(self) -> None:
        _, transport, _, _ = sessionOnSocket()
        transport.TLS = True
        self.assertIsNone(socketTransport(transport))

    def test_twisted_buffer_attributes_exist(self) -> None:
        _, transport, _, _ = sessionOnSocket()
        for name in (
            "connected",
            "disconnecting",
            "_aborting",
            "_writeDisconnecting",
            "_writeDisconnected",
            "_tempDataLen",
            "_tempDataBuffer",
            "dataBuffer",
            "socket",
        ):
            self.assertTrue(hasattr(transport, name), name)
        # TCP and UNIX transports, on either side, are socket connections.
        for transport in (tcp.Server, tcp.Client, unix.Server, unix.Client):
            self.assertTrue(issubclass(transport, tcp.Connection), transport)


class ResetTests(TestCase):
    async def test_reset_during_the_send_is_one_clean_connection_lost(
        self,
    ) -> None:
        factory = CaretFactory()
        factory.protocol = Lost
        sessions: list[Lost] = []
        started = factory.sessionStarted

        def record(session: CaretProtocol) -> None:
            assert isinstance(session, Lost)
            sessions.append(session)
            started(session)

        factory.sessionStarted = record  # type: ignore[method-assign]
        port = await serve(self, factory)
        client = await connect(port)
        await client.receivedAtLeast(1)
        await settle(lambda: bool(sessions))
        session = sessions[0]
        # Stop the server reading, so it learns of the reset only by sending.
        session.transport.pauseProducing()
        handle = client.transport.getHandle()  # type: ignore[union-attr]
        # A zero linger time makes the close a reset.
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ended: Deferred[None] = factory.whenSessionEnds()
        client.transport.abortConnection()  # type: ignore[union-attr]
        await client.done
        session.dataReceived(b"^abc")
        await ended
        self.assertEqual(session.lostCount, 1)
        self.assertNotIn(session, factory.sessions)


class LingeringCloseTests(TestCase):
    """
    A session the server ends closes its sending side first and drops what
    the client still sends: closing with input unread would make the kernel
    reset the connection, throwing away replies not yet transmitted.
    """

    def test_finish_closes_the_sending_side_and_reads_on(self) -> None:
        session, transport, fake, fakeReactor = sessionOnSocket()
        session.pauseProducing()
        session.finish()
        transport.doWrite()
        self.assertEqual(fake.shutdowns, [socket.SHUT_WR])
        self.assertFalse(fake.closed)
        self.assertIn(transport, fakeReactor.readers)
        session.dataReceived(b"^abc")
        self.assertEqual(fake.sent, [GREETING])

    def test_the_client_closing_then_closes_the_connection(self) -> None:
        session, transport, fake, _ = sessionOnSocket()
        session.finish()
        transport.doWrite()
        session.readConnectionLost()
        self.assertTrue(fake.closed)
        self.assertEqual(session.lostCount, 1)

    def test_a_client_that_closed_first_is_closed_without_lingering(self) -> None:
        session, transport, fake, _ = sessionOnSocket()
        session.dataReceived(b"^abc")
        session.readConnectionLost()
        self.assertIsInstance(transport.doWrite(), ConnectionDone)
        self.assertEqual(fake.shutdowns, [])
        self.assertEqual(b"".join(fake.sent), GREETING + b"bcd")

    def test_a_client_sending_on_is_still_cut_off_by_the_idle_timeout(self) -> None:
        factory, clock = clockedFactory()
        factory.idleTimeout = 10
        session, transport, _, _ = sessionOnSocket(factory)
        clock.advance(10)
        transport.doWrite()
        for _ in range(3):
            clock.advance(4)
            session.dataReceived(b"^more")
        self.assertEqual(session.lostCount, 0)
        self.assertTrue(transport._aborting)


class Accepted(Protocol):
    """The server's side of a loopback connection: takes nothing, says nothing."""

    factory: AcceptingFactory

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.factory.accepted.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class AcceptingFactory(Factory):
    """Accepts one connection, and says so."""

    protocol = Accepted

    def __init__(self) -> None:
        self.accepted: Deferred[Accepted] = Deferred()


async def loopbackPair(case: TestCase) -> tuple[tcp.Server, RawClient]:
    """
    A real TCP connection on loopback: the server's transport, for the test
    to write to, and a L{RawClient} that keeps what it receives.  Both ends
    are gone when C{case} ends.
    """
    factory = AcceptingFactory()
    port = await serve(case, factory)  # type: ignore[arg-type]
    client = await connect(port)
    server = await factory.accepted
    transport = server.transport
    assert isinstance(transport, tcp.Server)

    async def close() -> None:
        transport.abortConnection()
        client.transport.abortConnection()  # type: ignore[union-attr]
        await server.lost
        await client.done

    # Trial before 24.3 does not await a coroutine given as a cleanup.
    case.addCleanup(lambda: Deferred.fromCoroutine(close()))
    return transport, client


def readUntilThereIsRoom(reader: socket.socket, writer: socket.socket) -> bytes:
    """
    Read from C{reader} until the kernel says C{writer}, its peer, may send
    again, and return what was read.  The reactor does not run meanwhile, so
    Twisted's buffer for C{writer} stays as it is.
    """
    received = bytearray()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            received += reader.recv(1 << 16)
        _, writable, _ = select.select([], [writer], [], 0.05)
        if writable:
            return bytes(received)
    raise AssertionError("the socket never had room again")


class RealSocketTests(TestCase):
    """
    L{writeNow} on real loopback connections: what the fakes above cannot
    show, because only a kernel decides when a socket has room.
    """

    async def test_a_socket_with_room_again_does_not_let_a_reply_jump_the_queue(
        self,
    ) -> None:
        """
        After a partial send Twisted holds the rest (in C{_tempDataBuffer},
        not C{dataBuffer}) until the reactor says the socket is writable.  If
        the client reads in between, the socket has room again when the next
        reply is made: that reply must still go after the rest.  (A client
        got C{*bcghdef} for C{*bcdefgh} when it did not.)
        """
        transport, client = await loopbackPair(self)
        clientSocket = client.transport.getHandle()  # type: ignore[union-attr]
        # The test reads for the client, in this reactor turn.
        client.transport.stopReading()  # type: ignore[union-attr]
        clientSocket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        first, second = b"d" * (1 << 16), b"g" * 16

        writeNow(transport, first)
        self.assertIn(transport, reactor.getWriters())  # type: ignore[attr-defined]
        readFirst = readUntilThereIsRoom(clientSocket, transport.socket)
        writeNow(transport, second)

        # The rest at loopback speed, not a small window's.
        clientSocket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.transport.startReading()  # type: ignore[union-attr]
        rest = await client.receivedAtLeast(len(first) + len(second) - len(readFirst))
        received = readFirst + rest
        # Lengths and where the second reply starts, not a 64 KiB diff.
        self.assertEqual(
            (len(received), received.find(second)),
            (len(first) + len(second), len(first)),
        )

    async def test_the_fast_path_comes_back_once_the_buffer_has_drained(
        self,
    ) -> None:
        """
        Once Twisted has sent all it held, a reply goes straight to the
        socket again: nothing held, nothing registered for writing.
        """
        transport, client = await loopbackPair(self)
        clientSocket = client.transport.getHandle()  # type: ignore[union-attr]
        clientSocket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        first = b"d" * (1 << 16)
        writeNow(transport, first)
        self.assertIn(transport, reactor.getWriters())  # type: ignore[attr-defined]
        clientSocket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        await client.receivedAtLeast(len(first))
        self.assertNotIn(transport, reactor.getWriters())  # type: ignore[attr-defined]

        writeNow(transport, b"again")
        # Handed to the kernel in this turn: nothing held, nothing registered.
        self.assertNotIn(transport, reactor.getWriters())  # type: ignore[attr-defined]
        self.assertEqual((transport._tempDataLen, transport.dataBuffer), (0, b""))
        self.assertEqual(await client.receivedAtLeast(len(first) + 5), first + b"again")

    async def test_tls_started_on_the_connection_keeps_replies_off_the_socket(
        self,
    ) -> None:
        """
        C{startTLS} sets C{TLS} on the connection: from then on a reply goes
        through OpenSSL, so a TLS client reads it.  Sent straight to the
        socket, it would arrive in the clear and break the handshake.
        """
        transport, client = await loopbackPair(self)
        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1")
        serverOptions = ssl.PrivateCertificate.loadPEM(
            issued.private_key_and_cert_chain_pem.bytes()
        ).options()
        trusted = ssl.Certificate.loadPEM(authority.cert_pem.bytes())
        clientOptions = ssl.optionsForClientTLS("127.0.0.1", trustRoot=trusted)

        transport.startTLS(serverOptions)
        client.transport.startTLS(clientOptions)  # type: ignore[union-attr]
        self.assertTrue(transport.TLS)
        self.assertIsNone(socketTransport(transport))
        writeNow(transport, b"over TLS")
        self.assertEqual(await client.receivedAtLeast(8), b"over TLS")

    async def test_caret_s_proxy_protocol_wrapper_is_walked_to_the_socket(
        self,
    ) -> None:
        """
        A session behind C{haproxy:} writes to caret's own wrapper, which
        only forwards: its replies still go straight to the socket.
        """
        caret = startCommand(
            self,
            "--port",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxy",
            "127.0.0.1",
        )
        [port] = portNumbers(caret)
        client = await connect(port)
        client.transport.write(b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n")  # type: ignore[union-attr]
        await client.receivedAtLeast(len(GREETING))
        [session] = caret.factory.sessions
        wrapper = session.transport
        self.assertIsInstance(wrapper, _HeaderFirst)
        connection = wrapper.transport  # type: ignore[union-attr]
        self.assertIsInstance(connection, tcp.Server)
        self.assertIs(socketTransport(wrapper), connection)

        writeNow(wrapper, b"direct")  # type: ignore[arg-type]
        self.assertNotIn(connection, reactor.getWriters())  # type: ignore[attr-defined]
        self.assertEqual(connection._tempDataLen, 0)
        self.assertEqual(
            await client.receivedAtLeast(len(GREETING) + 6), GREETING + b"direct"
        )
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.done
        await caret.factory.whenIdle()
