"""
Tests for L{caretproto.reference.ScriptRunner}, the one implementation of
the reference session's steps (docs/protocol.rst, "The reference client
session") that C{caret-client} and C{caret-bench} share: on a L{Clock},
with a list for a connection.  The replies are literals, not computed by
the code under test.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from caretproto.reference import REFERENCE_SCRIPT, Script, ScriptRunner

SCRIPT = ((b"^ab", 0.5), (b"c$x", 0.25))
REPLIES = b"bcd"


class Recorder(ScriptRunner):
    """A runner whose hooks and sends are written down, in order."""

    def __init__(
        self, clock: Clock, script: Script = SCRIPT, follow: bool = False
    ) -> None:
        self.happened: list[tuple[str, object]] = []
        super().__init__(
            clock, lambda data: self.happened.append(("send", data)), script
        )
        self.followReplies = follow

    def sending(self, data: bytes) -> None:
        self.happened.append(("sending", data))

    def scriptEnded(self) -> None:
        self.happened.append(("ended", self.clock.seconds()))

    def repliesWrong(self) -> None:
        self.happened.append(("wrong", self.received))


class ScriptRunnerTests(TestCase):
    def test_the_reference_script_is_owed_its_literal_replies(self) -> None:
        runner = ScriptRunner(Clock(), lambda data: None, REFERENCE_SCRIPT)
        self.assertEqual(runner.expected, b"bcdbcuf23436bc1111")

    def test_each_buffer_is_sent_after_the_pause_before_it(self) -> None:
        clock = Clock()
        runner = Recorder(clock)
        runner.start()
        self.assertEqual(runner.happened, [("sending", b"^ab"), ("send", b"^ab")])
        clock.advance(0.49)
        self.assertEqual(len(runner.happened), 2)
        clock.advance(0.01)
        self.assertEqual(runner.happened[2:], [("sending", b"c$x"), ("send", b"c$x")])

    def test_without_following_replies_the_script_ends_at_its_last_pause(
        self,
    ) -> None:
        clock = Clock()
        runner = Recorder(clock)
        runner.start()
        runner.replyReceived(b"zz")
        clock.advance(0.5)
        clock.advance(0.25)
        self.assertEqual(runner.happened[-1], ("ended", 0.75))
        self.assertEqual(runner.received, b"zz")
        self.assertNotIn("wrong", [what for what, _ in runner.happened])

    def test_following_replies_the_script_waits_for_the_last_reply(self) -> None:
        clock = Clock()
        runner = Recorder(clock, follow=True)
        runner.start()
        runner.replyReceived(b"bc")
        clock.advance(0.5)
        clock.advance(0.25)
        self.assertNotIn("ended", [what for what, _ in runner.happened])
        clock.advance(3)
        runner.replyReceived(b"d")
        self.assertEqual(runner.happened[-1], ("ended", 3.75))
        self.assertTrue(runner.ended)

    def test_following_replies_a_byte_past_the_last_reply_is_wrong(self) -> None:
        clock = Clock()
        runner = Recorder(clock, follow=True)
        runner.start()
        runner.replyReceived(b"bcd")
        clock.advance(0.5)
        clock.advance(0.25)
        runner.replyReceived(b"e")
        self.assertEqual([what for what, _ in runner.happened][-2:], ["ended", "wrong"])

    def test_following_replies_all_in_before_the_last_pause_ends_at_it(
        self,
    ) -> None:
        clock = Clock()
        runner = Recorder(clock, follow=True)
        runner.start()
        clock.advance(0.5)
        runner.replyReceived(b"b")
        runner.replyReceived(b"cd")
        self.assertNotIn("ended", [what for what, _ in runner.happened])
        clock.advance(0.25)
        self.assertEqual(runner.happened[-1], ("ended", 0.75))

    def test_following_replies_the_first_wrong_byte_stops_the_script(
        self,
    ) -> None:
        clock = Clock()
        runner = Recorder(clock, follow=True)
        runner.start()
        runner.replyReceived(b"b")
        runner.replyReceived(b"x")
        runner.replyReceived(b"y")
        self.assertEqual(runner.happened[-1], ("wrong", b"bx"))
        clock.advance(10)
        self.assertEqual(
            [what for what, _ in runner.happened],
            ["sending", "send", "wrong"],
        )
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_stopped_runner_sends_nothing_more_and_ends_silently(self) -> None:
        clock = Clock()
        runner = Recorder(clock, follow=True)
        runner.start()
        runner.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        runner.replyReceived(b"bcd")
        self.assertEqual([what for what, _ in runner.happened], ["sending", "send"])
