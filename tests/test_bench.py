"""
caret-bench against the real server on an ephemeral port: it counts what it
measures, and any wrong byte from the server is an error.  The runs are a
fraction of a second; nothing here asserts a speed.

caret-bench expects the replies L{caretproto.rules} gives, as the server
sends them; so that a wrong rule cannot pass unseen, the server's first bytes
are checked against the tests' model (L{tests.modelserver}), and the broken
servers break the model's replies, which the tests know.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from collections import Counter
from importlib.machinery import ModuleSpec
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import TestCase

from caretproto import benchrun
from caretproto.bench import (
    BODY_PATTERN,
    Load,
    Tally,
    message,
)
from caretproto.benchrun import Params, endpointFor, parseParams, report, run, summary
from caretproto.reference import REFERENCE_SCRIPT
from caretproto.rules import replyTo
from caretproto.server import CaretFactory, CaretProtocol
from tests import childEnvironment
from tests.model import referenceReplies
from tests.modelserver import (
    GREETING,
    TAPPED_BYTES,
    ModelAnswers,
    Tap,
    TappedFactory,
    TappedProtocol,
)
from tests.workedexample import REFERENCE_REPLIES

SHORT_SCRIPT = tuple((sent, 0.01) for sent, _ in REFERENCE_SCRIPT)
"""The reference session with its waits cut to 10 ms."""

REPLY_TO_16_BYTES = bytes(range(1, 15))
"""
The reply to caret-bench's default 16-byte message, whose body is the bytes 0
to 13: written out, not computed by the rules caret-bench uses.
"""


class CorruptsTheFifthReply(ModelAnswers):
    """A broken server: its fifth reply has one wrong byte, the rest are right."""

    replies = 0

    def dataReceived(self, data: bytes) -> None:
        self.replies += 1
        if self.replies == 5:
            # The message's last body byte, before its '$', read as another.
            wrong = b"?" if data[-2:-1] != b"?" else b"!"
            data = data[:-2] + wrong + data[-1:]
        super().dataReceived(data)


class DropsBytes(ModelAnswers):
    """A broken server: answers only the first half of each read."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data[: max(1, len(data) // 2)])


class GreetsOnlyTwo(TappedProtocol):
    """A server that serves two clients at once and keeps the rest waiting."""

    def connectionMade(self) -> None:
        if len(self.factory.sessions) < 2:
            super().connectionMade()


class ServerMixin:
    """Serves a factory on 127.0.0.1, port 0, for one test."""

    served: TappedFactory

    def serve(self: Any, protocol: type[CaretProtocol] = TappedProtocol) -> Params:
        factory = self.served = TappedFactory()
        factory.protocol = protocol
        port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, factory, interface="127.0.0.1"
        )
        # Stop listening, then wait for the server's side of every connection
        # to be gone, so that no test leaves a socket behind.
        self.addCleanup(factory.whenIdle)
        self.addCleanup(port.stopListening)
        return Params(host="127.0.0.1", port=port.getHost().port)  # type: ignore[attr-defined]


def bench(params: Params, **changes: Any) -> Deferred[Tally]:
    return Deferred.fromCoroutine(
        run(reactor, Params(**{**params.__dict__, **changes}))
    )


class RoundTripTests(ServerMixin, TestCase):
    async def test_rr_counts_rounds_and_checks_them(self) -> None:
        params = self.serve()
        tally = await bench(params, mode="rr", connections=3, duration=0.2)
        self.assertEqual(tally.errors, 0, tally.errorSamples)
        self.assertGreater(self.served.assertAnsweredAsTheModel(), 0)
        self.assertGreater(tally.rounds, 3)
        self.assertEqual(sum(tally.latencyMicros.values()), tally.rounds)
        self.assertEqual(tally.bytes, tally.rounds * 14)
        self.assertGreaterEqual(tally.elapsed, 0.19)
        self.assertEqual(tally.held, 3)

    async def test_rr_wrong_byte_is_an_error(self) -> None:
        params = self.serve(CorruptsTheFifthReply)
        tally = await bench(params, mode="rr", connections=2, duration=0.2)
        self.assertEqual(tally.errors, 2)
        self.assertIn(
            f"expected the reply {REPLY_TO_16_BYTES!r}", tally.errorSamples[0]
        )
        # Each connection's first four rounds were right and counted.
        self.assertEqual(tally.rounds, 2 * 4)

    async def test_rr_large_messages_arrive_in_several_reads(self) -> None:
        params = self.serve()
        tally = await bench(params, mode="rr", size=300_000, duration=0.2)
        self.assertEqual(tally.errors, 0, tally.errorSamples)
        self.assertGreater(tally.rounds, 0)
        self.assertGreater(self.served.assertAnsweredAsTheModel(), 0)

    async def test_hold_holds_every_connection_then_does_one_round_each(
        self,
    ) -> None:
        params = self.serve()
        tally = await bench(params, mode="hold", connections=50, duration=0.1)
        self.assertEqual((tally.held, tally.rounds, tally.errors), (50, 50, 0))
        self.assertGreater(self.served.assertAnsweredAsTheModel(), 0)

    async def test_connections_never_greeted_are_errors_and_the_rest_run(
        self,
    ) -> None:
        params = self.serve(GreetsOnlyTwo)
        tally = await bench(
            params, mode="hold", connections=5, duration=0.1, greetingTimeout=0.2
        )
        self.assertEqual((tally.held, tally.rounds, tally.errors), (2, 2, 3))
        self.assertIn("no greeting within 0.2s", tally.errorSamples[0])
        self.assertGreater(self.served.assertAnsweredAsTheModel(), 0)

    async def test_unreachable_server_is_an_error_per_connection(self) -> None:
        params = self.serve()
        port: IListeningPort = reactor.listenTCP(0, CaretFactory())  # type: ignore[attr-defined]
        closed = port.getHost().port  # type: ignore[attr-defined]
        await port.stopListening()
        tally = await bench(params, port=closed, connections=3, duration=0.1)
        self.assertEqual((tally.errors, tally.rounds), (3, 0))
        self.assertIn("cannot connect", tally.errorSamples[0])


class BulkTests(ServerMixin, TestCase):
    async def test_bulk_counts_reply_bytes_and_checks_them(self) -> None:
        params = self.serve()
        tally = await bench(params, mode="bulk", connections=2, duration=0.2)
        # No errors means every reply byte that came was checked and that,
        # once the window closed, every byte sent was answered.  How many
        # come in 0.2 s is a speed, for benchmarks/: the run once seen with
        # 196,606 bytes was not a stall but starvation (on a loaded machine
        # the bytes moved follow the CPU time the process got: about 100 kB
        # per millisecond, down to 7 ms in a 0.2 s window).
        self.assertEqual(tally.errors, 0, tally.errorSamples)
        self.assertGreater(tally.bytes, 0)
        self.assertGreater(self.served.assertAnsweredAsTheModel(), 0)

    async def test_bulk_missing_replies_are_errors(self) -> None:
        params = self.serve(DropsBytes)
        tally = await bench(params, mode="bulk", duration=0.2)
        self.assertEqual(tally.errors, 1)
        self.assertIn("wrong byte in the bulk replies", tally.errorSamples[0])


class SessionTests(ServerMixin, TestCase):
    async def test_sessions_time_every_session(self) -> None:
        params = self.serve()
        load = Load(
            reactor, endpointFor(reactor, params), "sessions", 20, script=SHORT_SCRIPT
        )
        await load.connect()
        tally = await load.start()
        self.assertEqual((tally.rounds, tally.errors), (20, 0))
        self.assertEqual(tally.bytes, 20 * len(REFERENCE_REPLIES))
        self.assertGreaterEqual(min(tally.latencyMicros), 30_000)
        self.assertEqual(
            {bytes(tap.sent) for tap in self.served.taps},
            {GREETING + REFERENCE_REPLIES},
        )

    async def test_sessions_wrong_byte_is_an_error(self) -> None:
        params = self.serve(CorruptsTheFifthReply)
        script = (*SHORT_SCRIPT, (b"^a$", 0.01), (b"^b$", 0.01))
        load = Load(reactor, endpointFor(reactor, params), "sessions", 3, script=script)
        await load.connect()
        tally = await load.start()
        self.assertEqual((tally.rounds, tally.errors), (0, 3))
        self.assertIn(
            f"expected the replies {REFERENCE_REPLIES + b'bc'!r}", tally.errorSamples[0]
        )


class TLSTests(TestCase):
    async def test_tls_with_a_ca_file_checks_replies_as_over_tcp(self) -> None:
        from twisted.internet.endpoints import serverFromString

        from tests.test_tls import Certificates

        certificates = Certificates(self)
        factory = TappedFactory()
        port = await serverFromString(reactor, certificates.port()).listen(factory)
        self.addCleanup(factory.whenIdle)
        self.addCleanup(port.stopListening)
        params = Params(
            host="localhost",
            port=port.getHost().port,
            tls=True,
            ca=certificates.ca,
        )
        tally = await bench(params, mode="rr", connections=2, duration=0.2)
        self.assertEqual(tally.errors, 0, tally.errorSamples)
        self.assertGreater(tally.rounds, 2)
        self.assertGreater(factory.assertAnsweredAsTheModel(), 0)


@pytest.mark.process
class ProcessesTests(ServerMixin, TestCase):
    """The command, as a person runs it, in load processes."""

    async def caretBench(self, params: Params, *args: str) -> tuple[int, str, str]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "caretproto.benchrun", params.host, str(params.port), *args],
            env=childEnvironment(),
        )
        return code, out.decode(), err.decode()

    async def test_processes_merge_into_one_json_report(self) -> None:
        params = self.serve()
        code, out, err = await self.caretBench(
            params, "-c", "3", "-d", "0.3", "--processes", "2", "--json"
        )
        self.assertEqual(code, 0, err)
        figures = json.loads(out)
        self.assertEqual(
            (figures["connections"], figures["processes"], figures["errors"]),
            (3, 2, 0),
        )
        self.assertGreater(figures["rounds"], 3)
        self.assertGreater(figures["rounds_per_s"], 0)
        self.assertGreater(figures["mb_per_s"], 0)
        self.assertLessEqual(figures["p50_ms"], figures["p99_ms"])
        self.assertGreater(self.served.assertAnsweredAsTheModel(), 0)

    async def test_wrong_byte_makes_the_exit_status_non_zero(self) -> None:
        params = self.serve(CorruptsTheFifthReply)
        code, out, err = await self.caretBench(params, "-d", "0.2", "-P", "2")
        self.assertEqual(code, 1, err)
        self.assertIn("errors   1", out)
        self.assertIn(f"expected the reply {REPLY_TO_16_BYTES!r}", out)


class OptionsTests(TestCase):
    def assertRefused(self, args: list[str], message: str) -> None:
        error = self.assertRaises(usage.UsageError, parseParams, args)
        self.assertEqual(str(error), message)

    def test_options_may_follow_host_and_port(self) -> None:
        params, printJSON = parseParams(
            ["localhost", "9090", "-m", "bulk", "-c", "7", "-d", "0.5", "--json"]
        )
        self.assertEqual(
            params,
            Params("localhost", 9090, "bulk", connections=7, duration=0.5),
        )
        self.assertTrue(printJSON)

    def test_an_endpoint_instead_of_host_and_port(self) -> None:
        params, _ = parseParams(["-P", "2", "--endpoint", "unix:path=/run/c.sock"])
        self.assertEqual(
            params, Params(None, None, processes=2, endpoint="unix:path=/run/c.sock")
        )

    def test_bad_values_are_refused_naming_the_option(self) -> None:
        self.assertRefused(
            ["localhost", "http"],
            "PORT must be a TCP port number, like 9090; got 'http'",
        )
        self.assertRefused(
            ["localhost", "9090", "-c", "0"],
            "--connections takes a positive number, like --connections 100; got '0'",
        )
        self.assertRefused(
            ["localhost", "9090", "--size", "2"],
            "--size takes at least 3 (^, one byte, $), like --size 16; got 2",
        )
        self.assertRefused(
            ["localhost", "9090", "-m", "ping"],
            "--mode takes one of rr, bulk, hold, sessions, like --mode rr; got 'ping'",
        )
        self.assertRefused(
            ["localhost", "9090", "--ca", "x.pem"], "--ca FILE is for --tls: give both"
        )
        self.assertRefused(
            ["--endpoint", "carrier-pigeon:coo"],
            "--endpoint 'carrier-pigeon:coo' is not a usable client endpoint "
            "(Unknown endpoint type: 'carrier-pigeon'); use a Twisted endpoint "
            "description, like tcp:host=127.0.0.1:port=9090, "
            "unix:path=/run/caret.sock, tls:example.com:9443",
        )

    def test_one_is_singular_in_the_summary(self) -> None:
        one = Params("h", 1, connections=1, processes=1)
        self.assertTrue(
            summary(report(one, Tally())).startswith(
                "caret-bench rr h:1: 1 connection, 16-byte rounds, 1 process\n"
            )
        )
        many = Params("h", 1, mode="hold", connections=1200, processes=2)
        text = summary(report(many, Tally(held=1200)))
        self.assertIn(": 1,200 connections, held, then", text)
        self.assertIn(", 2 processes\n", text)
        self.assertIn("held     1,200 connections", text)

    def test_the_summary_names_an_endpoint_as_given(self) -> None:
        params = Params(None, None, endpoint="unix:path=/run/c.sock")
        self.assertTrue(
            summary(report(params, Tally())).startswith(
                "caret-bench rr unix:path=/run/c.sock: 1 connection"
            )
        )

    def test_a_worker_is_this_module_run_in_the_same_environment(self) -> None:
        spawned: list[tuple[str, list[str], Any]] = []

        class Spawner:
            def spawnProcess(
                self, protocol: Any, executable: str, args: list[str], env: Any
            ) -> None:
                spawned.append((executable, args, env))

        params = Params("localhost", 9090, connections=3)
        benchrun.ProcessShare(Spawner(), params)
        [(executable, args, env)] = spawned
        self.assertEqual(
            args,
            [sys.executable, "-m", "caretproto.benchrun", "--load-process", args[-1]],
        )
        self.assertEqual(executable, sys.executable)
        self.assertIs(env, os.environ)
        self.assertEqual(Params(**json.loads(args[-1])), params)

    def test_connections_spread_over_processes_without_empty_shares(self) -> None:
        shares = Params("h", 1, connections=5, processes=3).shares()
        self.assertEqual([share.connections for share in shares], [2, 2, 1])
        self.assertEqual(len(Params("h", 1, connections=1, processes=4).shares()), 1)


class DisplayTests(ServerMixin, TestCase):
    async def test_live_display_shows_progress_while_running(self) -> None:
        from io import StringIO

        from rich.console import Console

        from caretproto.benchrun import LiveDisplay

        screen = StringIO()
        display = LiveDisplay(Console(file=screen, force_terminal=True, width=80))
        params = self.serve()
        await run(reactor, Params(**{**params.__dict__, "duration": 0.6}), display)
        shown = screen.getvalue()
        self.assertIn("rounds/s", shown)
        self.assertIn("rr", shown)


class WithoutRichTests(TestCase):
    def test_without_rich_one_line_says_what_to_install(self) -> None:
        self.patch(importlib.util, "find_spec", lambda name: None)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            self.assertFalse(benchrun._canShowLive())
        self.assertEqual(
            stderr.getvalue(),
            "caret-bench: no live display without rich: "
            "pip install 'caretproto[live]'\n",
        )

    def test_with_rich_the_live_display_is_shown_and_nothing_is_said(self) -> None:
        """
        Whether rich is installed here or not: the check is what is tested,
        not this environment.
        """
        asked: list[str] = []

        def findSpec(name: str) -> ModuleSpec:
            asked.append(name)
            return ModuleSpec(name, None)

        self.patch(importlib.util, "find_spec", findSpec)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            self.assertTrue(benchrun._canShowLive())
        self.assertEqual((asked, stderr.getvalue()), (["rich"], ""))


class RulesUseTests(TestCase):
    def test_messages_are_sized_on_the_wire_and_answered_by_the_rules(self) -> None:
        sent = message(300)
        self.assertEqual((len(sent), sent[:1], sent[-1:]), (300, b"^", b"$"))
        # caret-bench expects the rules' answer, which must be the model's.
        self.assertEqual(replyTo(sent[1:-1]), referenceReplies(sent))
        self.assertNotIn(b"$", BODY_PATTERN)

    def test_tallies_of_processes_merge_and_give_percentiles(self) -> None:
        one = Tally(
            rounds=3, bytes=42, elapsed=1.0, latencyMicros=Counter({100: 2, 300: 1})
        )
        two = Tally(rounds=1, bytes=14, elapsed=1.2, latencyMicros=Counter({5000: 1}))
        merged = Tally.fromJSON(json.loads(json.dumps(one.toJSON()))).merge(two)
        self.assertEqual((merged.rounds, merged.bytes, merged.elapsed), (4, 56, 1.2))
        self.assertEqual(merged.percentileMs(0.5), 0.1)
        self.assertEqual(merged.percentileMs(0.99), 5.0)
        self.assertIsNone(Tally().percentileMs(0.5))


class ModelCheckTests(TestCase):
    """
    L{TappedFactory.assertAnsweredAsTheModel}, which the tests above lean
    on, compares everything both taps kept, not a common prefix.
    """

    def tapped(self, received: bytes, sent: bytes) -> TappedFactory:
        factory = TappedFactory()
        tap = Tap()
        tap.keepReceived(received)
        tap.keepSent(sent)
        factory.taps.append(tap)
        return factory

    def test_the_model_s_replies_pass_and_are_counted(self) -> None:
        factory = self.tapped(b"^abc$de^ab", GREETING + b"bcdbc")
        self.assertEqual(factory.assertAnsweredAsTheModel(), 5)

    def test_a_missing_last_reply_fails(self) -> None:
        factory = self.tapped(b"^abc$de^ab", GREETING + b"bcd")
        self.assertRaises(AssertionError, factory.assertAnsweredAsTheModel)

    def test_a_reply_too_many_fails(self) -> None:
        factory = self.tapped(b"^abc$", GREETING + b"bcdx")
        self.assertRaises(AssertionError, factory.assertAnsweredAsTheModel)

    def test_past_a_full_tap_only_what_both_kept_is_compared(self) -> None:
        body = b"a" * TAPPED_BYTES
        factory = self.tapped(b"^" + body, GREETING + b"b" * TAPPED_BYTES)
        self.assertEqual(factory.assertAnsweredAsTheModel(), TAPPED_BYTES - 1)
