"""
Tests for L{caretproto.client}: the client protocol on a StringTransport, and
the client against the real service over loopback.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from caretproto.client import (
    CaretClientProtocol,
    ConnectionClosed,
    GreetingError,
    connect,
)
from caretproto.tap import Options, makeService
from tests.model import referenceReply
from tests.tempfolder import shortTempPath
from tests.wire import HalfCloseableTransport


def connected(transport: StringTransport | None = None) -> CaretClientProtocol:
    client = CaretClientProtocol()
    client.makeConnection(transport or StringTransport())
    return client


def greetedClient() -> CaretClientProtocol:
    client = connected()
    client.dataReceived(b"*")
    return client


def results(deferreds):
    """The results of Deferreds that have fired."""
    return [TestCase().successResultOf(d) for d in deferreds]


bodies = st.lists(
    st.binary(max_size=20).map(lambda body: body.replace(b"$", b"")),
    min_size=1,
    max_size=8,
)


class GreetingTests(TestCase):
    def test_greeted_fires_with_the_protocol_on_the_caret_greeting(self) -> None:
        client = connected()
        self.assertNoResult(client.greeted)
        client.dataReceived(b"*")
        self.assertIs(self.successResultOf(client.greeted), client)

    def test_anything_but_the_greeting_fails_greeted_and_closes(self) -> None:
        client = connected()
        client.dataReceived(b"hello")
        failure = self.failureResultOf(client.greeted, GreetingError)
        self.assertIn("b'hello'", str(failure.value))
        self.assertTrue(client.transport.disconnecting)

    def test_bytes_after_a_wrong_greeting_are_ignored(self) -> None:
        client = connected()
        client.dataReceived(b"x")
        client.dataReceived(b"*more")
        self.failureResultOf(client.greeted, GreetingError)

    def test_closing_before_the_greeting_fails_greeted(self) -> None:
        client = connected()
        client.connectionLost()
        failure = self.failureResultOf(client.greeted, GreetingError)
        self.assertIn("before the greeting", str(failure.value))
        self.assertIsNone(self.successResultOf(client.closed))

    def test_replies_in_the_greetings_read_are_replies(self) -> None:
        client = connected()
        reply = client.request(b"ab")
        client.dataReceived(b"*bc")
        self.assertEqual(self.successResultOf(reply), b"bc")


class RequestTests(TestCase):
    def test_request_sends_the_body_as_one_message(self) -> None:
        client = greetedClient()
        client.request(b"abc")
        self.assertEqual(client.transport.value(), b"^abc$")

    def test_a_body_containing_the_end_of_message_byte_is_a_value_error(
        self,
    ) -> None:
        client = greetedClient()
        self.assertRaises(ValueError, client.request, b"ab$c")
        self.assertEqual(client.transport.value(), b"")

    @given(bodies, st.data())
    def test_pipelined_requests_get_their_own_replies_however_they_are_cut(
        self, bodies: list[bytes], data: st.DataObject
    ) -> None:
        client = greetedClient()
        replies = [client.request(body) for body in bodies]
        stream = b"".join(referenceReply(body) for body in bodies)
        cuts = sorted(
            data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
        )
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            if end > start:
                client.dataReceived(stream[start:end])
        self.assertEqual(results(replies), [referenceReply(body) for body in bodies])
        self.assertEqual(client.owed, 0)

    def test_a_reply_split_byte_by_byte_fires_once_whole(self) -> None:
        client = greetedClient()
        reply = client.request(b"hello")
        for byte in b"ifmmp"[:-1]:
            client.dataReceived(bytes([byte]))
            self.assertNoResult(reply)
        client.dataReceived(b"p")
        self.assertEqual(self.successResultOf(reply), b"ifmmp")

    def test_an_empty_body_is_answered_by_nothing_in_turn(self) -> None:
        client = greetedClient()
        first = client.request(b"a")
        empty = client.request(b"")
        self.assertNoResult(empty)
        client.dataReceived(b"b")
        self.assertEqual(results([first, empty]), [b"b", b""])

    def test_an_empty_body_with_nothing_owed_fires_at_once(self) -> None:
        client = greetedClient()
        self.assertEqual(self.successResultOf(client.request(b"")), b"")

    def test_replies_to_raw_sends_are_counted_ahead_of_requests(self) -> None:
        client = greetedClient()
        client.send(b"x^ab")
        reply = client.request(b"cd")
        # The raw send left a message open: its ^ is answered as "_".
        client.dataReceived(b"bc_de")
        self.assertEqual(self.successResultOf(reply), b"_de")

    def test_losing_the_connection_fails_requests_still_owed(self) -> None:
        client = greetedClient()
        reply = client.request(b"abc")
        client.dataReceived(b"b")
        client.connectionLost()
        failure = self.failureResultOf(reply, ConnectionClosed)
        self.assertIn("2 bytes short", str(failure.value))

    def test_reply_received_sees_every_read_but_not_the_greeting(self) -> None:
        client = connected()
        seen: list[bytes] = []
        client.replyReceived = seen.append  # type: ignore[method-assign]
        client.send(b"^abc$")
        client.dataReceived(b"*b")
        client.dataReceived(b"cd")
        self.assertEqual(seen, [b"b", b"cd"])


class CloseTests(TestCase):
    def test_close_half_closes_a_transport_that_can(self) -> None:
        transport = HalfCloseableTransport()
        client = connected(transport)
        client.close()
        self.assertTrue(transport.writeClosed)
        self.assertFalse(transport.disconnecting)

    def test_close_closes_a_transport_that_cannot_half_close(self) -> None:
        client = connected()
        client.close()
        self.assertTrue(client.transport.disconnecting)


class LoopbackTests(TestCase):
    """The client against the real caret service, over real sockets."""

    def serve(self, port: str) -> None:
        options = Options()
        options.parseOptions(["--port", port])
        service = makeService(options)
        service.startService()
        self.addCleanup(service.stopService)
        self.caret = service.getServiceNamed("caret")

    def serveTCP(self) -> str:
        self.serve("tcp:0:interface=127.0.0.1")
        return f"tcp:host=127.0.0.1:port={self.caret.ports[0].getHost().port}"

    async def test_request_gets_the_reply_over_tcp(self) -> None:
        client = await connect(reactor, self.serveTCP())
        await client.greeted
        reply = await client.request(b"abc")
        self.assertEqual(reply, b"bcd")
        client.close()
        await client.closed

    async def test_a_large_reply_arrives_whole_however_the_network_cuts_it(
        self,
    ) -> None:
        client = await connect(reactor, self.serveTCP())
        body = bytes(range(36)) * 30_000
        seen: list[bytes] = []
        client.replyReceived = seen.append
        reply = await client.request(body)
        self.assertEqual(reply, referenceReply(body))
        self.assertGreater(len(seen), 1, "one read: the test cut nothing")
        client.close()
        await client.closed

    async def test_pipelined_requests_over_tcp(self) -> None:
        client = await connect(reactor, self.serveTCP())
        bodies = [b"x" * n for n in range(200)]
        replies = await gatherResults([client.request(body) for body in bodies])
        self.assertEqual(replies, [referenceReply(body) for body in bodies])
        client.close()
        await client.closed

    async def test_close_lets_the_server_deliver_what_it_owes(self) -> None:
        client = await connect(reactor, self.serveTCP())
        received: list[bytes] = []
        client.replyReceived = received.append
        client.send(b"^" + b"a" * 100_000)
        client.close()
        await client.closed
        self.assertEqual(b"".join(received), b"b" * 100_000)

    async def test_request_over_a_unix_socket(self) -> None:
        path = shortTempPath(self, "caret.sock")
        self.serve(f"unix:{path}")
        client = await connect(reactor, f"unix:path={path}")
        reply = await client.request(b"unix")
        self.assertEqual(reply, b"vojy")
        client.close()
        await client.closed

    async def test_a_server_that_does_not_greet_fails_greeted(self) -> None:
        class Impostor(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\n")
                self.transport.loseConnection()

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Impostor)
        )
        self.addCleanup(port.stopListening)
        client = await connect(
            reactor, f"tcp:host=127.0.0.1:port={port.getHost().port}"
        )
        failure = await self.assertFailure(client.greeted, GreetingError)
        self.assertIn("HTTP/1.1", str(failure))
        await client.closed

    async def test_a_refused_connection_fails_connect(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        number = port.getHost().port
        await port.stopListening()
        await self.assertFailure(
            connect(reactor, f"tcp:host=127.0.0.1:port={number}"),
            ConnectionRefusedError,
        )
