"""
C{twistd -n caret} as a child process, for the tests whose subject is the
process: signals, descriptor limits.  It listens on an ephemeral loopback
port, which it reads back from the log; its log lines are kept in order.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.rules import GREETING
from tests.loopback import connect

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# Sets the open-files limit of the child, then becomes twistd.
_LAUNCH = """\
import os, resource, sys
soft, hard = int(sys.argv[1]), int(sys.argv[2])
if hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
os.execv(sys.argv[3], sys.argv[3:])
"""

_LISTENING = re.compile(r"caret listening on 127\.0\.0\.1:(\d+)")


class Twistd(ProcessProtocol):
    """
    A running C{twistd -n caret}.

    @ivar lines: its log, line by line, as far as it has come.
    @ivar ended: fires with the exit status as L{subprocess} gives it: the
        exit code, or minus the number of the signal that ended it.  twistd
        stopped by a signal ends by that signal, as Unix programs do.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended: Deferred[int] = Deferred()
        self._partial = b""
        self._waiting: list[tuple[re.Pattern[str], Deferred[re.Match[str]]]] = []
        self.pid = 0

    def outReceived(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            waiting, self._waiting = self._waiting, []
            for pattern, waiter in waiting:
                match = pattern.search(line)
                if match:
                    waiter.callback(match)
                else:
                    self._waiting.append((pattern, waiter))

    errReceived = outReceived

    def whenLogged(self, pattern: str) -> Deferred[re.Match[str]]:
        """Fires with the match of the first log line, past or future, that
        matches C{pattern}."""
        compiled = re.compile(pattern)
        waiter: Deferred[re.Match[str]] = Deferred()
        for line in self.lines:
            match = compiled.search(line)
            if match:
                waiter.callback(match)
                return waiter
        self._waiting.append((compiled, waiter))
        return waiter

    def count(self, pattern: str) -> int:
        """How many log lines so far match C{pattern}."""
        compiled = re.compile(pattern)
        return sum(1 for line in self.lines if compiled.search(line))

    def signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def processEnded(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for pattern, waiter in waiting:
            waiter.errback(
                AssertionError(
                    f"twistd ended without logging {pattern.pattern!r}:\n"
                    + "\n".join(self.lines)
                )
            )
        if reason.check(ProcessDone, ProcessTerminated):
            code = reason.value.exitCode
            self.ended.callback(-reason.value.signal if code is None else code)
        else:
            self.ended.errback(reason)


async def start(
    case: TestCase, *options: str, openFiles: tuple[int, int] | None = None
) -> tuple[Twistd, int]:
    """
    Start C{twistd -n caret} with C{options} on an ephemeral loopback port,
    with the open-files limit C{openFiles} (soft, hard) if given, and wait
    until it listens.  It is killed when C{case} ends, if still running.

    @return: the process and the port it listens on.
    """
    child = Twistd()
    soft, hard = openFiles or (0, 0)
    argv = [
        sys.executable,
        "-c",
        _LAUNCH,
        str(soft),
        str(hard),
        TWISTD,
        "-n",
        "--pidfile=",
        "--logfile=-",
        "caret",
        "--port",
        "tcp:0:interface=127.0.0.1",
        *options,
    ]
    directory = case.mktemp()
    os.makedirs(directory)
    transport = reactor.spawnProcess(  # type: ignore[attr-defined]
        child, sys.executable, argv, env=os.environ.copy(), path=directory
    )
    child.pid = transport.pid

    def killIfRunning() -> Deferred[int] | None:
        if child.ended.called:
            return None
        child.signal(signal.SIGKILL)
        return child.ended

    case.addCleanup(killIfRunning)
    port = int((await child.whenLogged(_LISTENING.pattern)).group(1))
    # twistd listens before its reactor runs and installs the handlers for
    # SIGTERM and SIGINT; a greeting shows that it runs.
    probe = await connect(port)
    await probe.receivedAtLeast(len(GREETING))
    probe.transport.loseConnection()  # type: ignore[union-attr]
    await probe.done
    return child, port
