"""
Tests for C{--max-connections}: L{CaretFactory}'s session limit, the
service pausing and resuming accepting for it, and the option.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.trial.unittest import TestCase

from caretproto.client import CaretClientProtocol, connect
from caretproto.server import MAX_SESSIONS, CaretFactory, CaretProtocol
from caretproto.tap import Options, makeService


class RecordingAcceptor:
    """An acceptor that records what a factory asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def pauseAccepting(self, reason: str) -> None:
        self.calls.append(("pause", reason))

    def resumeAccepting(self, reason: str) -> None:
        self.calls.append(("resume", reason))

    def acceptAtMost(self, count: int) -> None:
        self.calls.append(("acceptAtMost", count))


def arrive(factory: CaretFactory) -> CaretProtocol:
    session = factory.buildProtocol(None)
    assert session is not None
    session.makeConnection(StringTransport())
    return session


def leave(session: CaretProtocol) -> None:
    session.connectionLost()


class SessionLimitTests(TestCase):
    def setUp(self) -> None:
        self.acceptor = RecordingAcceptor()
        self.factory = CaretFactory(maxSessions=1)
        self.factory.acceptedBy(self.acceptor)

    def test_the_acceptor_accepts_no_more_than_the_free_places(self) -> None:
        self.assertEqual(self.acceptor.calls, [("acceptAtMost", 1)])

    def test_reaching_the_limit_pauses_accepting(self) -> None:
        first = arrive(self.factory)
        self.assertEqual(first.transport.value(), b"*")
        self.assertEqual(self.acceptor.calls[-1], ("pause", MAX_SESSIONS))

    def test_a_connection_over_the_limit_is_held_ungreeted_and_unread(self) -> None:
        arrive(self.factory)
        second = arrive(self.factory)
        self.assertEqual(second.transport.value(), b"")
        self.assertEqual(second.transport.producerState, "paused")
        self.assertEqual(list(self.factory.waiting), [second])
        self.assertNotIn(second, self.factory.sessions)

    def test_held_connections_are_greeted_in_arrival_order_as_sessions_end(
        self,
    ) -> None:
        first, second, third = (arrive(self.factory) for _ in range(3))
        leave(first)
        self.assertEqual(second.transport.value(), b"*")
        self.assertEqual(second.transport.producerState, "producing")
        self.assertEqual(third.transport.value(), b"")
        leave(second)
        self.assertEqual(third.transport.value(), b"*")

    def test_accepting_resumes_only_when_no_one_is_held(self) -> None:
        first, second = arrive(self.factory), arrive(self.factory)
        leave(first)
        self.assertNotIn(("resume", MAX_SESSIONS), self.acceptor.calls)
        leave(second)
        self.assertEqual(
            self.acceptor.calls[-2:],
            [("acceptAtMost", 1), ("resume", MAX_SESSIONS)],
        )

    def test_a_held_connection_that_goes_away_is_forgotten(self) -> None:
        first, second, third = (arrive(self.factory) for _ in range(3))
        leave(second)
        self.assertEqual(list(self.factory.waiting), [third])
        leave(first)
        self.assertEqual(third.transport.value(), b"*")
        self.assertEqual(self.factory.sessions, {third})

    def test_drop_waiting_closes_held_connections_without_a_greeting(self) -> None:
        first, second = arrive(self.factory), arrive(self.factory)
        self.factory.dropWaiting()
        self.assertTrue(second.transport.disconnecting)
        self.assertEqual(second.transport.value(), b"")
        leave(second)
        leave(first)
        self.assertEqual(self.factory.sessions, set())

    def test_a_larger_limit_admits_that_many_at_once(self) -> None:
        factory = CaretFactory(maxSessions=3)
        sessions = [arrive(factory) for _ in range(4)]
        self.assertEqual(
            [session.transport.value() for session in sessions],
            [b"*", b"*", b"*", b""],
        )

    def test_without_a_limit_accepting_never_pauses(self) -> None:
        acceptor = RecordingAcceptor()
        factory = CaretFactory()
        factory.acceptedBy(acceptor)
        sessions = [arrive(factory) for _ in range(50)]
        for session in sessions:
            leave(session)
        self.assertEqual(acceptor.calls, [])


class MaxConnectionsOptionTests(TestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", *argv])
        return options

    def test_there_is_no_limit_by_default(self) -> None:
        service = makeService(self.parse()).getServiceNamed("caret")
        self.assertIsNone(service.factory.maxSessions)

    def test_the_option_sets_the_factorys_limit(self) -> None:
        options = self.parse("--max-connections", "2")
        service = makeService(options).getServiceNamed("caret")
        self.assertEqual(service.factory.maxSessions, 2)

    def test_a_limit_that_is_not_a_positive_number_is_a_usage_error(self) -> None:
        for bad in ["0", "-1", "many", "1.5"]:
            error = self.assertRaises(
                usage.UsageError, self.parse, "--max-connections", bad
            )
            self.assertIn("--max-connections", str(error))


class SequentialServerTests(TestCase):
    """C{--max-connections 1} over real sockets: the sequential server."""

    def setUp(self) -> None:
        options = Options()
        options.parseOptions(
            ["--port", "tcp:0:interface=127.0.0.1", "--max-connections", "1"]
        )
        top = makeService(options)
        top.startService()
        self.addCleanup(top.stopService)
        self.caret = top.getServiceNamed("caret")
        port = self.caret.ports[0].getHost().port
        self.description = f"tcp:host=127.0.0.1:port={port}"

    async def test_clients_wait_in_the_backlog_and_are_greeted_one_at_a_time(
        self,
    ) -> None:
        clients = await gatherResults(
            [connect(reactor, self.description) for _ in range(3)]
        )
        greetings: list[CaretClientProtocol] = []
        nextGreeting: list[Deferred[None]] = []

        def greeted(client: CaretClientProtocol) -> None:
            greetings.append(client)
            if nextGreeting:
                nextGreeting.pop().callback(None)

        for client in clients:
            client.greeted.addCallback(greeted)

        def waitForGreetings(count: int) -> Deferred[None]:
            waiting: Deferred[None] = Deferred()
            if len(greetings) >= count:
                waiting.callback(None)
            else:
                nextGreeting.append(waiting)
            return waiting

        await waitForGreetings(1)
        # All three are connected as far as their kernel is concerned, so
        # the listening socket was readable whenever the server has since
        # polled; a round trip through the session is such a poll, after
        # which a server that accepted the other two would count them.
        reply = await greetings[0].request(b"abc")
        self.assertEqual(reply, b"bcd")
        self.assertEqual(len(greetings), 1)
        factory = self.caret.factory
        self.assertEqual(len(factory.sessions), 1)
        self.assertEqual(len(factory.waiting), 0, "accepted and held, not backlog")
        self.assertFalse(self.caret.accepting)

        for served in range(1, 3):
            current = greetings[-1]
            reply = await current.request(b"abc")
            self.assertEqual(reply, b"bcd")
            self.assertEqual(len(greetings), served)
            current.close()
            await current.closed
            await waitForGreetings(served + 1)
        last = greetings[-1]
        last.close()
        await last.closed
        self.assertEqual(sorted(map(id, greetings)), sorted(map(id, clients)))
