"""
Tests for the C{caret-client} command: its options, its exit status, and
one real-time run of the reference session against a sequential and a
concurrent C{twistd caret}.
"""

from __future__ import annotations

import ast
import itertools
import re
import resource
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import TestCase

from caretproto.caretclient import Options
from tests import childEnvironment
from tests.twistd import LOOPBACK, Twistd
from tests.workedexample import REFERENCE_REPLIES

CLIENT = [sys.executable, "-m", "caretproto.caretclient"]


def refusedPort() -> int:
    """A loopback TCP port that nothing listens on (just now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OptionsTests(TestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_host_and_port(self) -> None:
        options = self.parse("-n", "3", "127.0.0.1", "9090")
        self.assertEqual(
            (options["connections"], options["host"], options["port"]),
            (3, "127.0.0.1", 9090),
        )

    def test_options_may_follow_host_and_port(self) -> None:
        options = self.parse("127.0.0.1", "9090", "-n", "3", "--timeout=5", "-q")
        self.assertEqual(
            (options["connections"], options["timeout"], options["quiet"]),
            (3, 5.0, 1),
        )
        self.assertEqual((options["host"], options["port"]), ("127.0.0.1", 9090))

    def test_after_a_double_dash_everything_is_an_argument(self) -> None:
        error = self.assertRaises(
            usage.UsageError, self.parse, "--", "-n", "3", "localhost", "9090"
        )
        self.assertIn("got -n 3 localhost 9090", str(error))

    def test_one_connection_by_default(self) -> None:
        self.assertEqual(self.parse("localhost", "9090")["connections"], 1)

    def test_an_endpoint_instead_of_host_and_port(self) -> None:
        options = self.parse("--endpoint", "unix:path=/run/caret.sock")
        self.assertEqual(options["endpoint"], "unix:path=/run/caret.sock")

    def test_bad_invocations_are_usage_errors_that_say_what_to_give(self) -> None:
        for argv, says in [
            ([], "HOST PORT"),
            (["localhost"], "HOST PORT"),
            (["localhost", "http"], "PORT must be a TCP port number"),
            (["localhost", "70000"], "PORT must be a TCP port number"),
            (["-n", "0", "localhost", "9090"], "--connections"),
            (["--timeout", "-1", "localhost", "9090"], "--timeout"),
            (["--endpoint", "tcp:x:1", "localhost", "9090"], "not both"),
            (["localhost", "9090", "--endpoint", "tcp:x:1"], "not both"),
            (["--ca", "ca.pem", "localhost", "9090"], "--ca FILE is for --tls"),
            (["--tls", "--endpoint", "tcp:x:1"], "give a tls: description"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertIn(says, str(error), argv)


@pytest.mark.process
class ExitStatusTests(TestCase):
    """The command's exit status and messages, run as a program."""

    def caretClient(
        self, *argv: str, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLIENT, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=childEnvironment(),
            **kwargs,  # type: ignore[call-overload]
        )

    def test_too_low_a_hard_limit_fails_at_once_without_a_traceback(self) -> None:
        def lowLimit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

        started = time.monotonic()
        result = self.caretClient("-n", "10000", "127.0.0.1", "9", preexec_fn=lowLimit)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(result.returncode, 1)
        self.assertIn("ulimit -n", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_refused_connections_exit_1_with_a_one_line_summary(self) -> None:
        result = self.caretClient("-n", "2", "127.0.0.1", str(refusedPort()))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.splitlines(),
            [
                "caret-client: 2 of 2 connections failed: 2 refused (first: conn1: "
                "Connection was refused by other side: 111: Connection refused.)"
            ],
        )
        self.assertRegex(result.stdout, r"ERROR:.*:conn1 refused: ")
        self.assertRegex(result.stdout, r"\nElapsed: \d+\.\d\d\n$")

    def test_a_usage_error_exits_1_without_a_traceback(self) -> None:
        result = self.caretClient("--endpoint", "carrier-pigeon:coo")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--endpoint 'carrier-pigeon:coo'", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


LINE = re.compile(
    r"^INFO:(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):(?P<conn>conn\d+) "
    r"(?P<what>.*)$"
)


def sessionTimes(log: str) -> list[tuple[float, float]]:
    """
    For each connection in a caret-client log, when it was greeted (its
    first send) and when it disconnected; in order of greeting.
    """
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for line in log.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        when = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match["what"].startswith("sending"):
            first.setdefault(match["conn"], when)
        elif match["what"] == "disconnecting":
            last[match["conn"]] = when
    return sorted((first[conn], last[conn]) for conn in first)


def repliesIn(log: str) -> dict[str, bytes]:
    """Every byte each connection of a caret-client log says it received."""
    replies: dict[str, bytes] = {}
    for line in log.splitlines():
        match = LINE.match(line)
        if match is not None and match["what"].startswith("received "):
            received = ast.literal_eval(match["what"].removeprefix("received "))
            replies[match["conn"]] = replies.get(match["conn"], b"") + received
    return replies


def elapsed(log: str) -> float:
    match = re.search(r"^Elapsed: (\d+\.\d\d)$", log, re.MULTILINE)
    assert match is not None, log
    return float(match[1])


@pytest.mark.process
class ReferenceRunTests(TestCase):
    """
    The comparison the protocol exists for (docs/protocol.rst, "What the
    session shows"), in real time: C{caret-client -n 3}
    against C{twistd caret --max-connections 1} and against the default, at
    the same time.
    """

    timeout = 60

    async def caretClientAgainst(self, *serverOptions: str) -> str:
        twistd = Twistd.start(self, "caret", "--port", LOOPBACK, *serverOptions)
        [address] = await twistd.listening
        host, port = address.rsplit(":", 1)
        out, err, status = await getProcessOutputAndValue(
            CLIENT[0], [*CLIENT[1:], "-n", "3", host, port], env=childEnvironment()
        )
        self.assertEqual((err, status), (b"", 0))
        return out.decode()

    async def test_n_sessions_take_n_times_longer_on_a_sequential_server(self) -> None:
        sequential, concurrent = await gatherResults(
            [
                Deferred.fromCoroutine(
                    self.caretClientAgainst("--max-connections", "1")
                ),
                Deferred.fromCoroutine(self.caretClientAgainst()),
            ]
        )
        # Lower bounds only, which no load can break: a session waits 2.2 s
        # in all, so three one after the other take three times that.  That
        # the concurrent run is not sequential is shown by the overlap below.
        self.assertGreaterEqual(elapsed(sequential), 6.5, sequential)
        self.assertGreaterEqual(elapsed(concurrent), 2.1, concurrent)
        # caret-client checks replies with caretproto's rules; these are
        # the specification's, written out.
        for log in [sequential, concurrent]:
            self.assertEqual(
                repliesIn(log),
                dict.fromkeys(["conn1", "conn2", "conn3"], REFERENCE_REPLIES),
            )

        sessions = sessionTimes(sequential)
        self.assertEqual(len(sessions), 3)
        for (_, endedAt), (greetedAt, _) in itertools.pairwise(sessions):
            self.assertGreaterEqual(greetedAt, endedAt, sequential)

        sessions = sessionTimes(concurrent)
        self.assertEqual(len(sessions), 3)
        self.assertLess(
            max(greeted for greeted, _ in sessions),
            min(ended for _, ended in sessions),
            concurrent,
        )
