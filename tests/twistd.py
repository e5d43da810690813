"""
A program run as a child process, for the tests whose subject is the
process: C{twistd -n caret} (or C{twist}, or another server such as HAProxy)
started with a command line, an environment and descriptors, and the lines
it logs read as they come, so that a test can wait for them.

Not for testing the service itself: those tests run it in this process, on
L{tests.rawclient.serve} or L{caretproto.tap.makeService}.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.listening import listeningIn
from caretproto.processlines import LineProcessProtocol
from caretproto.rules import GREETING
from caretproto.service import LISTENING
from tests import childEnvironment
from tests.rawclient import connect
from tests.tempfolder import tempFolder

TWISTD = str(Path(sys.executable).parent / "twistd")
TWIST = str(Path(sys.executable).parent / "twist")
LOOPBACK = "tcp:0:interface=127.0.0.1"
"""C{--port} for an ephemeral port on loopback."""

WORKER_LISTENING = (
    r"\[worker (\d+) pid (\d+) caretproto\.service\.CaretService#info\] "
    + re.escape(LISTENING.format(address=""))
)
"""A worker of C{--workers} listening: its number and pid."""
WORKER_SERVED = (
    r"\[worker \d+ pid (\d+) caretproto\.server\.CaretProtocol#info\] "
    r"127\.0\.0\.1:\d+ disconnected after"
)
"""A worker of C{--workers} having served a session: its pid."""

# Sets the open-files limit of the child, then becomes the program.
_LAUNCH = """\
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
os.execv(sys.argv[3], sys.argv[3:])
"""


_Matches = list[re.Match[str]]


class Twistd(LineProcessProtocol):
    """
    A running child process whose standard output and error are its log.

    @ivar output: its log, in whole lines, as far as it has come.
    @ivar listening: fires with every IP address (C{"host:port"}) that the
        log says caret listens on (L{caretproto.listening.listeningIn}), as
        soon as it says so; fails if the process ends first.
    @ivar ended: fires with the exit status as L{subprocess} gives it: the
        exit code, or minus the number of the signal that ended it.  twistd
        stopped by a signal ends by that signal, as Unix programs do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.output = ""
        self.listening: Deferred[list[str]] = Deferred()
        self.ended: Deferred[int] = Deferred()
        # Each waiter of logged(), with the matching lines it has seen.
        self._waiting: list[tuple[re.Pattern[str], int, _Matches, Deferred[_Matches]]]
        self._waiting = []

    def lineReceived(self, childFD: int, line: str) -> None:
        # Only whole lines are matched: a pattern ending in (\d+) could match
        # the first digits of a line still on its way.
        self.output += line + "\n"
        if not self.listening.called:
            found = [
                port.address for port in listeningIn(line) if port.port is not None
            ]
            if found:
                self.listening.callback(found)
        waiting, self._waiting = self._waiting, []
        for pattern, count, matches, waiter in waiting:
            match = pattern.search(line)
            if match is not None:
                matches.append(match)
            if len(matches) >= count:
                waiter.callback(matches)
            else:
                self._waiting.append((pattern, count, matches, waiter))

    def _matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [
            match
            for match in map(pattern.search, self.output.splitlines())
            if match is not None
        ]

    def logged(self, pattern: str, count: int = 1) -> Deferred[list[re.Match[str]]]:
        """
        Fires once C{count} log lines, past or future, match C{pattern}, with
        the match in each line that does so far; fails if the process ends
        first.
        """
        compiled = re.compile(pattern)
        matches = self._matches(compiled)
        if len(matches) >= count:
            return succeed(matches)
        waiter: Deferred[list[re.Match[str]]] = Deferred()
        self._waiting.append((compiled, count, matches, waiter))
        return waiter

    def count(self, pattern: str) -> int:
        """How many log lines so far match C{pattern}."""
        return len(self._matches(re.compile(pattern)))

    def signal(self, number: int) -> None:
        assert self.transport is not None
        self.transport.signalProcess(number)

    async def serving(self) -> int:
        """
        Wait until caret serves on 127.0.0.1, and return the port: twistd
        listens before its reactor runs and installs its handlers for
        SIGTERM and SIGINT, and a greeting shows that it runs.
        """
        await self.listening
        [port, *_] = [
            listening.port
            for listening in listeningIn(self.output)
            if listening.host == "127.0.0.1" and listening.port is not None
        ] or [None]
        if port is None:
            raise AssertionError(f"not listening on 127.0.0.1:\n{self.output}")
        probe = await connect(port)
        await probe.receivedAtLeast(len(GREETING))
        assert probe.transport is not None
        probeAddress = probe.transport.getHost()
        probe.transport.loseConnection()
        await probe.done
        # The probe is gone only once the server says so: a signal sent
        # before that would find it still counted among the sessions.
        await self.logged(rf"127\.0\.0\.1:{probeAddress.port} disconnected")
        return port

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(AssertionError(self.output))
        waiting, self._waiting = self._waiting, []
        for pattern, _, _, waiter in waiting:
            waiter.errback(
                AssertionError(
                    f"ended without logging {pattern.pattern!r}:\n{self.output}"
                )
            )
        ended = reason.value
        if isinstance(ended, (ProcessDone, ProcessTerminated)):
            status = ended.exitCode
            if status is None:
                assert ended.signal is not None
                status = -ended.signal
            self.ended.callback(status)
        else:
            self.ended.errback(reason)

    @classmethod
    def start(
        cls,
        testCase: TestCase,
        *argv: str,
        runner: list[str] | None = None,
        env: dict[str, str] | None = None,
        childFDs: dict[int, int | str] | None = None,
        openFiles: tuple[int, int] | None = None,
    ) -> Twistd:
        """
        Start C{twistd -n} (or C{runner}) with C{argv}, in C{env} (default:
        this process's environment) with the C{caretproto} under test first
        on its C{PYTHONPATH} (L{tests.childEnvironment}), with C{childFDs} as for
        C{spawnProcess} (default: standard input, output and error), and the
        open-files limit C{openFiles} (soft, hard) if given.  It runs in a
        temporary folder, so that nothing it writes lands in the repository,
        and is killed when C{testCase} ends, if still running.
        """
        process = cls()
        command = [*(runner or [TWISTD, "-n", "--pidfile="]), *argv]
        if openFiles is not None:
            soft, hard = openFiles
            command = [sys.executable, "-c", _LAUNCH, str(soft), str(hard), *command]
        reactor.spawnProcess(
            process,
            command[0],
            command,
            env=childEnvironment(env),
            path=tempFolder(testCase),
            childFDs=childFDs,
        )

        def stop() -> Deferred[int] | None:
            if process.ended.called:
                return None
            try:
                process.signal(signal.SIGKILL)
            except ProcessExitedAlready:
                pass
            return process.ended

        testCase.addCleanup(stop)
        return process
