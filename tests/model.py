"""
A plain, per-byte reference model of the caret rules, for the tests only.

It is deliberately the dullest possible reading of docs/protocol.rst
("States and transitions"), so that the
fast chunk-wise rules in L{caretproto.rules} can be checked against it.
"""

from __future__ import annotations

from typing import NamedTuple

CARET = 0x5E
DOLLAR = 0x24


class Outcome(NamedTuple):
    replies: bytes
    messages: int
    inMessage: bool


def reference(stream: bytes, inMessage: bool = False) -> Outcome:
    """What a server does with C{stream}, worked out one byte at a time."""
    replies = bytearray()
    messages = 0
    for byte in stream:
        if not inMessage:
            inMessage = byte == CARET
        elif byte == DOLLAR:
            inMessage = False
            messages += 1
        else:
            replies.append((byte + 1) % 256)
    return Outcome(bytes(replies), messages, inMessage)


def referenceReplies(stream: bytes) -> bytes:
    """Every reply a server owes a client that sent C{stream}."""
    return reference(stream).replies


def referenceReply(body: bytes) -> bytes:
    """The reply to one message whose body is C{body}."""
    return reference(bytes([CARET]) + body + bytes([DOLLAR])).replies
