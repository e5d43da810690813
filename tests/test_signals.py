"""
SIGTERM and SIGINT on a real C{twistd -n caret}: stop listening at once, let
the sessions in progress finish within C{--shutdown-timeout}, exit; a second
signal ends the drain at once.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
from twisted.internet import reactor, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from tests.rawclient import connect
from tests.twistd import LOOPBACK, TWISTD, WORKER_LISTENING, Twistd
from tests.workedexample import REFERENCE_REPLIES


async def refused(port: int) -> bool:
    """
    Whether connecting to C{port} is refused, within a second: a connect that
    races the closing of the listening socket may be completed by the kernel
    first, but it must then be closed without a greeting.
    """
    for _ in range(20):
        try:
            client = await connect(port)
        except ConnectionRefusedError:
            return True
        if await client.done:
            return False
        await task.deferLater(reactor, 0.05)
    return False


# The reference client session of docs/protocol.rst: what to send, and how
# long to wait after it; and its replies, worked out by hand.
REFERENCE = [(b"^abc$de^abte$f", 1.0), (b"xyz^123", 1.0), (b"25$^ab0000$abab", 0.2)]


@pytest.mark.process
class SignalTests(TestCase):
    timeout = 60

    async def test_sigterm_lets_a_reference_session_finish(self) -> None:
        child = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--shutdown-timeout", "30"
        )
        port = await child.serving()
        client = await connect(port)
        await client.receivedAtLeast(len(GREETING))
        expected = GREETING + REFERENCE_REPLIES
        signalled = False
        for data, wait in REFERENCE:
            client.transport.write(data)  # type: ignore[union-attr]
            if not signalled:
                child.signal(signal.SIGTERM)
                signalled = True
                await child.logged("sessions in progress: 1, given up to 30.0s")
                await child.logged(f"TCP Port {port} Closed")
                self.assertTrue(await refused(port), child.output)
            await task.deferLater(reactor, wait)
        await client.receivedAtLeast(len(expected))
        client.transport.loseConnection()  # type: ignore[union-attr]
        self.assertEqual(await client.done, expected)
        # It exits as the session ends: long before the shutdown timeout,
        # which would be logged.
        self.assertEqual(await child.ended, -signal.SIGTERM)
        self.assertEqual(child.count("sessions still in progress"), 0)

    async def test_sigint_without_sessions_exits_at_once(self) -> None:
        # A server that waited for the shutdown timeout would outlast the
        # test's own timeout.
        child = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--shutdown-timeout", "3600"
        )
        await child.serving()
        child.signal(signal.SIGINT)
        self.assertEqual(await child.ended, -signal.SIGINT)
        self.assertEqual(child.count("Received SIGINT"), 1)
        self.assertEqual(child.count("sessions still in progress"), 0)

    async def test_session_left_at_the_timeout_gets_its_replies_then_eof(
        self,
    ) -> None:
        child = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--shutdown-timeout", "1"
        )
        port = await child.serving()
        client = await connect(port)
        client.transport.write(b"^abc")  # type: ignore[union-attr]
        await client.receivedAtLeast(len(GREETING + b"bcd"))
        child.signal(signal.SIGTERM)
        self.assertEqual(await client.done, GREETING + b"bcd")
        self.assertEqual(await child.ended, -signal.SIGTERM)
        self.assertEqual(child.count("sessions still in progress after 1.0s: 1;"), 1)

    async def second(self, first: int, second: int, *argv: str) -> Twistd:
        """
        A session held open, then signals C{first} and C{second}: the server
        ends the drain at once, though the shutdown timeout is an hour, and
        exits by the first signal without a traceback.
        """
        child = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--shutdown-timeout", "3600", *argv
        )
        port = await child.serving()
        client = await connect(port)
        client.transport.write(b"^abc")  # type: ignore[union-attr]
        await client.receivedAtLeast(len(GREETING + b"bcd"))
        child.signal(first)
        await child.logged("given up to 3600.0s to end")
        started = reactor.seconds()
        child.signal(second)
        await client.done
        self.assertEqual(await child.ended, -first)
        self.assertLess(reactor.seconds() - started, 10)
        self.assertIn("while stopping: ending the drain now", child.output)
        self.assertNotIn("Traceback", child.output)
        self.assertNotIn("ReactorNotRunning", child.output)
        return child

    async def test_a_second_sigint_ends_the_drain_at_once(self) -> None:
        child = await self.second(signal.SIGINT, signal.SIGINT)
        self.assertIn("connections still open: 1; aborting them", child.output)

    async def test_sigterm_after_sigint_does_too(self) -> None:
        await self.second(signal.SIGINT, signal.SIGTERM)

    async def test_a_second_sigterm_kills_the_workers(self) -> None:
        child = await self.second(signal.SIGTERM, signal.SIGTERM, "--workers", "2")
        self.assertEqual(child.count("ending the drain now"), 1)
        # The worker that held the session, and the other if it had not
        # ended by itself yet.
        self.assertGreaterEqual(child.count(r"\) ended: SIGKILL"), 1)

    async def test_a_sigterm_to_the_process_group_is_one_signal(self) -> None:
        # As systemd stops a service: every process of it gets SIGTERM, and
        # the workers get it from their parent as well.
        child = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--shutdown-timeout", "3600",
            "--workers", "2",
            runner=[sys.executable, "-c", _NEW_SESSION, TWISTD, "-n", "--pidfile="],
        )  # fmt: skip
        port = await child.serving()
        await child.logged(WORKER_LISTENING, count=2)
        client = await connect(port)
        client.transport.write(b"^abc")  # type: ignore[union-attr]
        await client.receivedAtLeast(len(GREETING + b"bcd"))
        assert child.transport is not None
        os.killpg(child.transport.pid, signal.SIGTERM)  # type: ignore[attr-defined]
        await child.logged("given up to 3600.0s to end")
        client.transport.write(b"xyz$")  # type: ignore[union-attr]
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.assertEqual(await client.done, GREETING + b"bcdyz{")
        self.assertEqual(await child.ended, -signal.SIGTERM)
        self.assertEqual(child.count("ending the drain now"), 0)


# Runs a program in a process group of its own, which a test may signal whole.
_NEW_SESSION = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
