"""
The installed program, for real: C{twistd -n caret} and C{twistd -ny} with the
example C{.tac}, started as subprocesses and spoken to over loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.session import REFERENCE_SCRIPT, runSessions
from tests.rawclient import connect

REPO = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")
TWIST = str(Path(sys.executable).parent / "twist")
LISTENING = re.compile(rb"caret listening on (\S+):(\d+)")


def shortTempPath(testCase: TestCase, name: str) -> str:
    """
    An absolute path in a fresh temporary folder, short enough for a UNIX
    socket (trial's own temporary paths can pass the 108-byte limit).
    """
    folder = tempfile.mkdtemp(prefix="caret-")
    testCase.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return os.path.join(folder, name)


class Twistd(ProcessProtocol):
    """A twistd subprocess whose log is read as it comes."""

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[list[str]] = Deferred()
        self.ended: Deferred[ProcessDone | ProcessTerminated] = Deferred()
        self._addresses: list[str] = []
        self._waiting: list[tuple[re.Pattern[bytes], int, Deferred[list[Any]]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        found = [
            f"{h.decode()}:{p.decode()}" for h, p in LISTENING.findall(self.output)
        ]
        if found and not self.listening.called:
            self.listening.callback(found)
        waiting, self._waiting = self._waiting, []
        for pattern, count, waiter in waiting:
            matches = pattern.findall(self.output)
            if len(matches) >= count:
                waiter.callback(matches)
            else:
                self._waiting.append((pattern, count, waiter))

    errReceived = outReceived

    def logged(self, pattern: bytes, count: int = 1) -> Deferred[list[Any]]:
        """
        Fires with every match of C{pattern} in the log (as
        L{re.Pattern.findall} gives them) once there are C{count}.
        """
        waiter: Deferred[list[Any]] = Deferred()
        self._waiting.append((re.compile(pattern), count, waiter))
        self.outReceived(b"")
        return waiter

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(AssertionError(self.output.decode()))
        for _, _, waiter in self._waiting:
            waiter.errback(AssertionError(self.output.decode()))
        self.ended.callback(reason.value)

    @classmethod
    def start(
        cls,
        testCase: TestCase,
        *argv: str,
        runner: list[str] | None = None,
        env: dict[str, str] | None = None,
        childFDs: dict[int, int | str] | None = None,
    ) -> Twistd:
        """
        Start C{twistd -n} (or C{runner}) with C{argv}, in C{env} (default:
        this process's environment), with C{childFDs} as for
        C{spawnProcess} (default: standard input, output and error).
        """
        process = cls()
        command = runner or [TWISTD, "-n", "--pidfile="]
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            process,
            command[0],
            [*command, *argv],
            env=dict(os.environ) if env is None else env,
            path=str(REPO),
            childFDs=childFDs,
        )

        def stop() -> Deferred[ProcessDone | ProcessTerminated]:
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            return process.ended

        testCase.addCleanup(stop)
        process.transport = transport
        return process


class TwistdCaretTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_worked_example_against_twistd_caret_then_sigterm(self) -> Any:
        twistd = Twistd.start(self, "caret", "--port", "tcp:0:interface=127.0.0.1")
        [address] = yield twistd.listening
        client = yield connect(f"tcp:{address}")
        yield client.receivedAtLeast(1)
        total = 1
        for sent, answered in [
            (b"^abc$de^abte$f", b"bcdbcuf"),
            (b"xyz^123", b"234"),
            (b"25$^ab$abab", b"36bc"),
        ]:
            client.transport.write(sent)
            total += len(answered)
            yield client.receivedAtLeast(total)
        client.transport.loseWriteConnection()
        received = yield client.done
        self.assertEqual(received, b"*bcdbcuf23436bc")

        twistd.transport.signalProcess(signal.SIGTERM)
        ended = yield twistd.ended
        # twistd shuts down cleanly, then ends by the signal that stopped it.
        self.assertEqual(ended.signal, signal.SIGTERM)
        log = twistd.output.decode()
        self.assertIn("Server Shut Down.", log)
        self.assertRegex(log, r"127\.0\.0\.1:\d+ connected")
        self.assertRegex(
            log,
            r"127\.0\.0\.1:\d+ disconnected after [\d.]+s: 32 bytes in, "
            r"15 bytes out, 4 messages",
        )

    @inlineCallbacks
    def test_listens_on_every_port_given(self) -> Any:
        socket = shortTempPath(self, "caret.sock")
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--port",
            f"unix:{socket}",
        )
        yield twistd.listening
        for description in [f"unix:{socket}"]:
            client = yield connect(description)
            self.assertEqual((yield client.receivedAtLeast(1)), b"*")
            client.transport.loseConnection()

    @inlineCallbacks
    def test_twist_caret_serves_too(self) -> Any:
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            "tcp:0:interface=127.0.0.1",
            runner=[TWIST, "--log-format", "text"],
        )
        [address] = yield twistd.listening
        client = yield connect(f"tcp:{address}")
        client.transport.write(b"^\xff^$")
        self.assertEqual((yield client.receivedAtLeast(3)), b"*\x00_")
        client.transport.loseConnection()

    @inlineCallbacks
    def test_a_bad_option_is_a_usage_error_not_a_traceback(self) -> Any:
        twistd = Twistd.start(self, "caret", "--port", "tcp:notaport")
        yield self.assertFailure(twistd.listening, AssertionError)
        ended = yield twistd.ended
        self.assertNotEqual(ended.exitCode, 0)
        log = twistd.output.decode()
        self.assertIn("--port 'tcp:notaport'", log)
        self.assertNotIn("Traceback", log)


WORKER_LISTENING = (
    rb"\[worker (\d+) pid (\d+) caretproto\.service\.CaretService#info\] "
    rb"caret listening on"
)
WORKER_SERVED = (
    rb"\[worker \d+ pid (\d+) caretproto\.server\.CaretProtocol#info\] "
    rb"127\.0\.0\.1:\d+ connected"
)
QUICK_SCRIPT = [(data, 0.05) for data, _ in REFERENCE_SCRIPT]


class WorkersTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def sessions(self, address: str, count: int) -> Any:
        """The reference session, its pauses shortened, C{count} at once."""
        host, port = address.rsplit(":", 1)
        report = yield runSessions(
            reactor,
            TCP4ClientEndpoint(reactor, host, int(port)),
            count,
            Logger(observer=lambda event: None),
            QUICK_SCRIPT,
            timeout=30,
        )
        self.assertIsNone(report.summary())

    @inlineCallbacks
    def test_workers_serve_together_are_replaced_and_drain_on_sigterm(
        self,
    ) -> Any:
        twistd = Twistd.start(
            self, "caret", "--workers", "2", "--port", "tcp:0:interface=127.0.0.1"
        )
        address = (yield twistd.listening)[0]
        pids = {pid for _, pid in (yield twistd.logged(WORKER_LISTENING, 2))}
        self.assertEqual(len(pids), 2)

        # Which worker accepts is up to the kernel: enough sessions and both
        # have served.
        for _ in range(5):
            yield self.sessions(address, 20)
            served = set(re.findall(WORKER_SERVED, twistd.output))
            if served == pids:
                break
        self.assertEqual(served, pids)

        victim = min(pids)
        os.kill(int(victim), signal.SIGKILL)
        yield twistd.logged(
            rb"worker \d \(pid %s\) died after [\d.]+s: SIGKILL; starting another"
            % victim
        )
        listening = yield twistd.logged(WORKER_LISTENING, 3)
        [replacement] = {pid for _, pid in listening} - pids
        self.assertNotEqual(replacement, victim)
        yield self.sessions(address, 20)

        # A session in progress goes on through the drain, and ends as its
        # client ends it.
        client = yield connect(f"tcp:{address}")
        client.transport.write(b"^abc")
        yield client.receivedAtLeast(4)
        twistd.transport.signalProcess(signal.SIGTERM)
        yield twistd.logged(rb"sessions in progress: 1, given up to 10.0s to end")
        client.transport.write(b"de$^f")
        yield client.receivedAtLeast(7)
        client.transport.loseWriteConnection()
        self.assertEqual((yield client.done), b"*bcdefg")
        ended = yield twistd.ended
        self.assertEqual(ended.signal, signal.SIGTERM)
        log = twistd.output.decode()
        self.assertRegex(log, r"worker 1 \(pid \d+\) ended: SIGTERM")
        self.assertRegex(log, r"worker 2 \(pid \d+\) ended: SIGTERM")
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)

    @inlineCallbacks
    def test_workers_on_a_port_they_cannot_share_is_a_usage_error(self) -> Any:
        twistd = Twistd.start(self, "caret", "--workers", "2", "--port", "stdio:")
        yield self.assertFailure(twistd.listening, AssertionError)
        ended = yield twistd.ended
        self.assertNotEqual(ended.exitCode, 0)
        log = twistd.output.decode()
        self.assertIn("--port 'stdio:' cannot be shared by --workers", log)
        self.assertNotIn("Traceback", log)


class TacTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_the_example_tac_serves_caret_beside_a_web_site(self) -> Any:
        tac = Path(shortTempPath(self, "example.tac"))
        web = shortTempPath(self, "web.sock")
        text = (REPO / "examples" / "caret-and-web.tac").read_text()
        self.assertIn('"tcp:9090"', text)
        self.assertIn('"tcp:8080"', text)
        tac.write_text(
            text.replace('"tcp:9090"', '"tcp:0:interface=127.0.0.1"').replace(
                '"tcp:8080"', f'"unix:{web}"'
            )
        )
        twistd = Twistd.start(self, "-oy", str(tac))
        [address] = yield twistd.listening
        caret = yield connect(f"tcp:{address}")
        self.assertEqual((yield caret.receivedAtLeast(1)), b"*")
        caret.transport.loseConnection()
        http = yield connect(f"unix:{web}")
        http.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        page = yield http.done
        self.assertIn(b"caret is on port 9090", page)
