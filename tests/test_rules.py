"""
The rules of docs/protocol.rst, as L{caretproto.rules} states them, checked against
the worked example and a per-byte reference model.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from caretproto.rules import GREETING, State, feed, replyTo
from tests.model import reference
from tests.strategies import streams, streams_and_cuts


def feedAll(
    reads: list[bytes], state: State = State.WAIT_FOR_MSG
) -> tuple[State, bytes]:
    replies = []
    for read in reads:
        state, reply, _ = feed(state, read)
        replies.append(reply)
    return state, b"".join(replies)


class WorkedExampleTests(SynchronousTestCase):
    def test_each_buffer_is_answered_as_the_worked_example_says(self) -> None:
        state = State.WAIT_FOR_MSG
        for sent, answered, after in [
            (b"^abc$de^abte$f", b"bcdbcuf", State.WAIT_FOR_MSG),
            (b"xyz^123", b"234", State.IN_MSG),
            (b"25$^ab$abab", b"36bc", State.WAIT_FOR_MSG),
        ]:
            state, reply, _ = feed(state, sent)
            self.assertEqual((reply, state), (answered, after))

    def test_greeting_is_one_star(self) -> None:
        self.assertEqual(GREETING, b"*")


class RuleTests(SynchronousTestCase):
    def test_bytes_outside_a_message_are_ignored(self) -> None:
        self.assertEqual(
            feed(State.WAIT_FOR_MSG, b"hello, world"), (State.WAIT_FOR_MSG, b"", 0)
        )

    def test_caret_starts_a_message_and_is_not_answered(self) -> None:
        self.assertEqual(feed(State.WAIT_FOR_MSG, b"^"), (State.IN_MSG, b"", 0))

    def test_bytes_in_a_message_are_answered_with_their_successor(self) -> None:
        self.assertEqual(feed(State.IN_MSG, b"abc"), (State.IN_MSG, b"bcd", 0))

    def test_caret_inside_message_is_echoed_as_underscore(self) -> None:
        self.assertEqual(feed(State.IN_MSG, b"^"), (State.IN_MSG, b"_", 0))

    def test_ff_wraps_to_zero(self) -> None:
        self.assertEqual(feed(State.IN_MSG, b"\xff"), (State.IN_MSG, b"\x00", 0))

    def test_dollar_ends_a_message_and_is_not_answered(self) -> None:
        self.assertEqual(feed(State.IN_MSG, b"$"), (State.WAIT_FOR_MSG, b"", 1))

    def test_dollar_outside_a_message_is_ignored(self) -> None:
        self.assertEqual(feed(State.WAIT_FOR_MSG, b"$$$"), (State.WAIT_FOR_MSG, b"", 0))

    def test_empty_messages_are_counted_and_answer_nothing(self) -> None:
        self.assertEqual(
            feed(State.WAIT_FOR_MSG, b"^$^$"), (State.WAIT_FOR_MSG, b"", 2)
        )

    def test_an_empty_read_changes_nothing(self) -> None:
        for state in State:
            self.assertEqual(feed(state, b""), (state, b"", 0))

    def test_every_byte_value_but_dollar_has_its_successor(self) -> None:
        body = bytes(b for b in range(256) if b != 0x24)
        self.assertEqual(replyTo(body), bytes((b + 1) % 256 for b in body))

    def test_a_message_may_span_reads(self) -> None:
        self.assertEqual(feedAll([b"^a", b"b", b"c$d"]), (State.WAIT_FOR_MSG, b"bcd"))


class PropertyTests(SynchronousTestCase):
    @given(streams_and_cuts)
    def test_any_cut_into_reads_gives_the_same_replies(
        self, streamAndCut: tuple[bytes, list[bytes]]
    ) -> None:
        stream, reads = streamAndCut
        self.assertEqual(feedAll(reads), feedAll([stream]))

    @given(streams, st.sampled_from(State))
    def test_a_read_framed_as_one_message_equals_the_reference_model(
        self, body: bytes, state: State
    ) -> None:
        # The shape of nearly every read: one whole message, which feed
        # answers on a shortcut of its own; inside the body, more carets and
        # dollars show where the shortcut must not apply.
        stream = b"^" + body + b"$"
        after, reply, messages = feed(state, stream)
        expected = reference(stream, state is State.IN_MSG)
        self.assertEqual((reply, messages, after is State.IN_MSG), expected)

    @given(streams, st.sampled_from(State))
    def test_replies_equal_the_per_byte_reference_model(
        self, stream: bytes, state: State
    ) -> None:
        after, reply, messages = feed(state, stream)
        expected = reference(stream, state is State.IN_MSG)
        self.assertEqual((reply, messages, after is State.IN_MSG), expected)
