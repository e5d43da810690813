"""
The service from L{caretproto.tap.makeService} on a real loopback socket: many
concurrent clients with their own random streams, half-close, and a client
that resets mid-message.  These are the tests whose subject is the network.
"""

from __future__ import annotations

import random
from itertools import pairwise

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from caretproto import tap
from caretproto.server import CaretFactory
from caretproto.service import CaretService
from tests.model import referenceReplies
from tests.rawclient import RawClient, connect


def randomStream(seed: int) -> tuple[bytes, list[bytes]]:
    """A random caret stream from C{seed}, and the reads to send it in."""
    rng = random.Random(seed)
    pieces = [
        rng.choice(
            [b"^", b"$", b"\xff", bytes([rng.randrange(256)]) * rng.randrange(1, 50)]
        )
        for _ in range(rng.randrange(1, 60))
    ]
    stream = b"".join(pieces)
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(6)))
    bounds = [0, *cuts, len(stream)]
    return stream, [stream[a:b] for a, b in pairwise(bounds)]


class LoopbackTests(TestCase):
    def setUp(self) -> Deferred[None] | None:
        options = tap.Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
        self.top = tap.makeService(options)
        self.top.startService()
        caret = self.top.getServiceNamed("caret")  # type: ignore[attr-defined]
        assert isinstance(caret, CaretService)
        self.caret = caret
        self.port = caret.ports[0].getHost().port  # type: ignore[attr-defined]
        return None

    def tearDown(self) -> Deferred[None]:
        return self.top.stopService()  # type: ignore[return-value]

    def connect(self) -> Deferred[RawClient]:
        return connect(self.port)

    async def session(self, seed: int) -> tuple[bytes, bytes]:
        """One client: its stream in random reads, then half-close."""
        stream, reads = randomStream(seed)
        client = await self.connect()
        await client.sendInReads(reads)
        client.transport.loseWriteConnection()
        received = await client.done
        return received, b"*" + referenceReplies(stream)

    async def test_many_concurrent_clients_each_get_exactly_their_replies(self) -> None:
        results = await gatherResults(
            [Deferred.fromCoroutine(self.session(seed)) for seed in range(200)]
        )
        for received, expected in results:
            self.assertEqual(received, expected)

    async def test_half_close_inside_a_message_still_delivers_every_reply(self) -> None:
        client = await self.connect()
        client.transport.write(b"^" + b"a" * 300_000)
        client.transport.loseWriteConnection()
        received = await client.done
        self.assertEqual(received, b"*" + b"b" * 300_000)

    async def test_a_client_reset_mid_message_leaves_the_others_unharmed(self) -> None:
        # Under way before the victim connects, as Deferreds are at once.
        others = [Deferred.fromCoroutine(self.session(seed)) for seed in range(20)]
        victim = await self.connect()
        victim.transport.write(b"^abc" * 1000)
        # A reply means the server is inside the victim's message.
        await victim.receivedAtLeast(len(b"*bcd"))
        victim.transport.abortConnection()
        results = await gatherResults(others)
        for received, expected in results:
            self.assertEqual(received, expected)
        await self.caret.factory.whenIdle()

    async def test_stopping_the_service_ends_sessions_after_the_shutdown_timeout(
        self,
    ) -> None:
        clock = Clock()
        self.caret.clock = clock
        client = await self.connect()
        client.transport.write(b"^abc")
        # The session is under way, inside a message, when the service stops.
        await client.receivedAtLeast(len(b"*bcd"))
        stopping = self.top.stopService()
        clock.advance(self.caret.shutdownTimeout)
        await stopping
        received = await client.done
        self.assertEqual(received, b"*bcd")
        self.top.startService()


class BareFactoryTests(TestCase):
    async def test_caret_factory_serves_on_any_endpoint_without_the_service(
        self,
    ) -> None:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            CaretFactory()
        )
        self.addCleanup(port.stopListening)
        client = await connect(port)
        client.transport.write(b"^abc$")
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, b"*bcd")
