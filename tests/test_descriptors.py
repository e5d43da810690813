"""
Running out of file descriptors: the open-files limit is raised at start-up,
and when C{accept} fails for lack of descriptors the server keeps serving,
says so once, and accepts again when descriptors free up.
"""

from __future__ import annotations

import errno
import signal
import socket
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from caretproto.capacity import DescriptorShortage, _GuardedListener
from caretproto.rules import GREETING
from caretproto.server import CaretFactory
from tests.fakes import connect, messages
from tests.rawclient import RawClient, settle
from tests.rawclient import connect as connectTo
from tests.twistd import LOOPBACK, Twistd


class Acceptor:
    """Records why accepting is paused, as L{CaretService} keeps it."""

    def __init__(self) -> None:
        self.pausedFor: set[str] = set()

    def pauseAccepting(self, reason: str) -> None:
        self.pausedFor.add(reason)

    def resumeAccepting(self, reason: str) -> None:
        self.pausedFor.discard(reason)


class Listener:
    """A listening socket whose C{accept} fails with each of C{errors}."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)

    def accept(self) -> tuple[Any, Any]:
        raise OSError(self.errors.pop(0), "no")

    def fileno(self) -> int:
        return 7


class DescriptorShortageTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = CaretFactory(clock=self.clock)
        self.acceptor = Acceptor()
        self.shortage = DescriptorShortage(
            self.acceptor, self.clock, self.factory.whenSessionEnds
        )
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_shortage_pauses_accepting_and_is_logged_once(self) -> None:
        for _ in range(3):
            self.shortage.failed(errno.EMFILE)
            self.clock.advance(self.shortage.retryDelay)
            self.assertEqual(self.acceptor.pausedFor, set())
        self.shortage.failed(errno.ENFILE)
        self.assertEqual(self.acceptor.pausedFor, {"descriptors"})
        self.assertEqual(
            messages(self.logged),
            [
                "cannot accept connections: EMFILE (Too many open files); new "
                "clients wait until descriptors free up"
            ],
        )

    def test_accepting_resumes_when_a_session_ends(self) -> None:
        session, _ = connect(self.factory)
        self.shortage.failed(errno.EMFILE)
        session.connectionLost()
        self.assertEqual(self.acceptor.pausedFor, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_accepting_resumes_after_the_retry_delay(self) -> None:
        self.shortage.failed(errno.EMFILE)
        self.clock.advance(self.shortage.retryDelay - 0.01)
        self.assertEqual(self.acceptor.pausedFor, {"descriptors"})
        self.clock.advance(0.01)
        self.assertEqual(self.acceptor.pausedFor, set())

    def test_end_of_shortage_is_logged_with_the_failures(self) -> None:
        self.shortage.failed(errno.EMFILE)
        self.clock.advance(2)
        self.shortage.failed(errno.EMFILE)
        self.clock.advance(1.5)
        self.shortage.caughtUp()
        self.shortage.caughtUp()
        self.assertEqual(
            messages(self.logged)[1:],
            [
                "accepting connections again after 3.5s short of descriptors "
                "(2 accept attempts failed)"
            ],
        )
        self.assertIsNone(self.shortage.since)

    def test_guarded_listener_reports_shortage_as_no_client_waiting(self) -> None:
        listener = _GuardedListener(
            Listener(errno.EMFILE, errno.ECONNABORTED),  # type: ignore[arg-type]
            self.shortage,
        )
        with self.assertRaises(BlockingIOError):
            listener.accept()
        self.assertEqual(self.acceptor.pausedFor, {"descriptors"})
        with self.assertRaises(OSError) as other:
            listener.accept()
        self.assertEqual(other.exception.errno, errno.ECONNABORTED)
        self.assertEqual(listener.fileno(), 7)
        self.shortage.stop()


class BacklogEmptiedTests(TestCase):
    """
    A shortage ends when accepting empties the backlog, even if the port
    never calls C{accept} again to see C{EAGAIN} (Twisted's port accepts at
    most C{numberAccepts} per wake-up, and may stop right at the last client).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.shortage = DescriptorShortage(
            Acceptor(), self.clock, CaretFactory(clock=self.clock).whenSessionEnds
        )
        self.addCleanup(self.shortage.stop)
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        self.addCleanup(server.close)
        self.address = server.getsockname()
        self.listener = _GuardedListener(server, self.shortage)

    def clientWaits(self) -> None:
        client = socket.create_connection(self.address)
        self.addCleanup(client.close)

    def acceptOne(self) -> None:
        accepted, _ = self.listener.accept()
        self.addCleanup(accepted.close)

    def test_the_last_waiting_client_accepted_ends_the_shortage(self) -> None:
        messages = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.shortage.failed(errno.EMFILE)
        self.clientWaits()
        self.clientWaits()
        self.acceptOne()
        self.clock.advance(0)
        self.assertIsNotNone(self.shortage.since)
        self.acceptOne()
        self.clock.advance(0)
        self.assertIsNone(self.shortage.since)
        self.assertEqual(
            [e["log_format"] for e in messages if "again" in e["log_format"]],
            [
                "accepting connections again after {duration:.1f}s short of "
                "descriptors ({failures} accept attempts failed)"
            ],
        )

    def test_a_later_shortage_is_logged_anew(self) -> None:
        messages = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.shortage.failed(errno.EMFILE)
        self.clientWaits()
        self.acceptOne()
        self.clock.advance(0)
        self.shortage.failed(errno.EMFILE)
        self.assertEqual(
            len([e for e in messages if "cannot accept" in e["log_format"]]), 2
        )


@pytest.mark.process
class OutOfDescriptorsTests(TestCase):
    """
    A real server whose open-files hard limit is a few dozen, and more
    clients than it can hold.
    """

    timeout = 60

    async def test_server_keeps_serving_and_accepts_again(self) -> None:
        child = Twistd.start(self, "caret", "--port", LOOPBACK, openFiles=(24, 40))
        port = await child.serving()
        clients: list[RawClient] = []
        for _ in range(45):
            clients.append(await connectTo(port))

        def greeted() -> list[RawClient]:
            return [client for client in clients if client.received]

        await child.logged("cannot accept connections: EMFILE")
        first = clients[0]
        await first.receivedAtLeast(len(GREETING))
        first.transport.write(b"^abc$")  # type: ignore[union-attr]
        await first.receivedAtLeast(len(GREETING + b"bcd"))
        served = greeted()
        self.assertLess(len(served), 40)

        for client in served[1:11]:
            client.transport.loseConnection()  # type: ignore[union-attr]
        await settle(lambda: len(greeted()) >= len(served) + 10)

        for client in greeted()[11:]:
            client.transport.loseConnection()  # type: ignore[union-attr]
        await settle(lambda: len(greeted()) == len(clients))
        await child.logged("accepting connections again")
        first.transport.write(b"^xyz$")  # type: ignore[union-attr]
        await first.receivedAtLeast(len(GREETING + b"bcdyz{"))

        for client in clients:
            client.transport.loseConnection()  # type: ignore[union-attr]
        child.signal(signal.SIGTERM)
        await child.ended
        self.assertEqual(
            child.count("open files limit raised from 24 to the hard limit, 40"), 1
        )
        self.assertEqual(child.count("cannot accept connections"), 1)
        self.assertEqual(child.count("accepting connections again"), 1)
        self.assertEqual(child.count("EMFILE encountered|Could not accept"), 0)
        [failed, *_] = await child.logged(r"\((\d+) accept attempts failed\)")
        failures = int(failed.group(1))
        self.assertLess(failures, 20)
