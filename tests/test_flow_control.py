"""
Flow control: a client that sends without reading makes the server stop
reading from it, not buffer its replies without bound; nothing is dropped.
"""

from __future__ import annotations

import socket

from twisted.internet.abstract import FileDescriptor
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from caretproto.server import CaretFactory, CaretProtocol
from tests.fakes import clockedFactory, connect
from tests.model import referenceReplies
from tests.rawclient import RawClient, serve, settle
from tests.rawclient import connect as connectTo

# Small socket buffers on both ends, so that a few MiB are enough to fill
# everything the kernel would otherwise absorb (loopback autotuning goes
# to tens of MiB).
SOCKET_BUFFER = 64 * 1024

# One message of this many body bytes, none of them '$'.
BODY = 6 * 1024 * 1024


def oneLongMessage(size: int = BODY) -> bytes:
    body = bytes(b for b in range(256) if b != ord("$")) * (size // 255 + 1)
    return b"^" + body[:size] + b"$"


def unsent(transport: FileDescriptor) -> int:
    """Reply bytes the server process holds for a TCP transport, not yet sent."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def shrinkBuffers(transport: object) -> None:
    handle = transport.getHandle()  # type: ignore[attr-defined]
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)


class FlowControlDecisionTests(TestCase):
    """
    What the session does when its transport says that replies back up or
    drain.
    """

    def test_session_is_its_transports_streaming_producer_once_it_owes_a_reply(
        self,
    ) -> None:
        """Not before: see tests/test_protocol.py and tests/test_tls.py."""
        session, transport = connect(clockedFactory()[0])
        session.dataReceived(b"^a")
        self.assertIs(transport.producer, session)
        self.assertTrue(transport.streaming)

    def test_pause_stops_reading_and_resume_reads_again(self) -> None:
        session, transport = connect(clockedFactory()[0])
        session.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertTrue(session.paused)
        session.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(session.paused)
        self.assertEqual(session.pauses, 1)

    def test_bytes_read_while_paused_are_still_answered(self) -> None:
        session, transport = connect(clockedFactory()[0])
        session.pauseProducing()
        session.dataReceived(b"^ab")
        self.assertEqual(transport.value(), GREETING + b"bc")

    def test_finish_while_paused_unregisters_before_closing(self) -> None:
        """
        A TCP transport does not close while a producer is registered, so a
        paused session that is finished must let go of it.
        """
        session, transport = connect(clockedFactory()[0])
        session.dataReceived(b"^a")
        self.assertIs(transport.producer, session)
        session.pauseProducing()
        session.finish()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)

    def test_client_half_close_finishes_the_session(self) -> None:
        session, transport = connect(clockedFactory()[0])
        session.dataReceived(b"^a")
        self.assertIs(transport.producer, session)
        session.readConnectionLost()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)


class FlowControlLoopbackTests(TestCase):
    """
    A real client that sends one long message without reading, over
    loopback.
    """

    timeout = 60

    async def floodWithoutReading(
        self, factory: CaretFactory
    ) -> tuple[RawClient, CaretProtocol, bytes]:
        port = await serve(self, factory)
        client = await connectTo(port)
        self.addCleanup(client.transport.loseConnection)  # type: ignore[union-attr]
        await client.receivedAtLeast(len(GREETING))
        (session,) = factory.sessions
        shrinkBuffers(client.transport)
        shrinkBuffers(session.transport)
        client.transport.pauseProducing()  # type: ignore[union-attr]
        payload = oneLongMessage()
        client.transport.write(payload)  # type: ignore[union-attr]

        seen = [-1]

        def stalled() -> bool:
            stillReading = session.bytesReceived != seen[0]
            seen[0] = session.bytesReceived
            return session.paused and not stillReading

        await settle(stalled, interval=0.1)
        return client, session, payload

    async def test_server_stops_reading_a_client_that_does_not_read(self) -> None:
        factory = CaretFactory()
        client, session, payload = await self.floodWithoutReading(factory)
        self.assertLess(session.bytesReceived, len(payload) // 2)
        transport = session.transport
        assert isinstance(transport, FileDescriptor)
        self.assertLessEqual(unsent(transport), 2 * transport.bufferSize)

        client.transport.resumeProducing()  # type: ignore[union-attr]
        expected = GREETING + referenceReplies(payload)
        await client.receivedAtLeast(len(expected))
        self.assertEqual(bytes(client.received), expected)
        self.assertEqual(session.bytesReceived, len(payload))
        self.assertGreater(session.pauses, 0)

    async def test_half_close_while_paused_still_delivers_every_reply(self) -> None:
        factory = CaretFactory()
        client, _session, payload = await self.floodWithoutReading(factory)
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        client.transport.resumeProducing()  # type: ignore[union-attr]
        received = await client.done
        self.assertEqual(received, GREETING + referenceReplies(payload))
        self.assertEqual(factory.sessions, set())

    async def test_finish_while_paused_delivers_what_is_owed_then_closes(
        self,
    ) -> None:
        factory = CaretFactory()
        client, session, payload = await self.floodWithoutReading(factory)
        session.finish()
        read = session.bytesReceived
        client.transport.resumeProducing()  # type: ignore[union-attr]
        received = await client.done
        self.assertEqual(received, GREETING + referenceReplies(payload[:read]))
        # The server closes once the client has: see CaretProtocol.finish.
        await factory.whenIdle()
        self.assertEqual(factory.sessions, set())
