"""
The caret protocol's rules, once.

This module is the single definition of what a caret server answers: a pure
function from a state and a received chunk to the new state and the reply
bytes.  The Twisted server, the client's expectation of a reply and the
benchmark's verifier all use it.  It imports nothing from Twisted and does no
I/O; it is not the place for limits, timeouts or flow control.

It works on whole chunks with bytes operations (C{find}, C{translate}): a 64 KiB
read inside a message costs one C{find} and one C{translate}, never a Python
loop over its bytes.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

GREETING = b"*"
"""The one byte a server sends when a client connects."""

MSG_START = b"^"
"""In WAIT_FOR_MSG, opens a message; inside a message, an ordinary byte."""

MSG_END = b"$"
"""Closes a message; never answered, and ignored outside a message."""

_SUCCESSOR = bytes(range(1, 256)) + b"\x00"


class State(enum.Enum):
    """
    The two states of a caret session (docs/protocol.rst, "States and
    transitions").
    """

    WAIT_FOR_MSG = "WAIT_FOR_MSG"
    IN_MSG = "IN_MSG"


Step: TypeAlias = tuple[State, bytes, int]
"""
What a server does with one received chunk, as L{feed} returns it: the
state after the chunk, the bytes to send back (possibly empty), and how many
messages the chunk ended (C{$} inside a message).  A plain tuple, to be
unpacked: built once per read, a named tuple cost more than the rest of
L{feed} on a small message.
"""


def replyTo(body: bytes) -> bytes:
    """
    The reply to the bytes of a message body: each byte C{b} answered with
    C{(b + 1) mod 256}.

    @param body: bytes inside a message; they must not contain C{$}.
    @return: the reply, as long as C{body}.
    """
    return body.translate(_SUCCESSOR)


_WAIT_FOR_MSG = State.WAIT_FOR_MSG
_IN_MSG = State.IN_MSG
# feed runs once per read, and an enum member looked up on its class costs
# more than the rest of feed on a small message: hence these shortcuts.
_START = MSG_START[0]


def feed(state: State, chunk: bytes) -> Step:
    """
    Apply the protocol's rules to one received chunk.

    The result depends only on C{state} and C{chunk}: feeding a stream in any
    cut, carrying the state from chunk to chunk, gives the same replies.

    @param state: the state before the chunk: C{WAIT_FOR_MSG} outside a
        message, C{IN_MSG} inside one.
    @param chunk: the bytes received, any number, in any cut of the stream.
    @return: the state after the chunk, the reply to send (possibly empty)
        and how many messages the chunk ended: a L{Step}.
    """
    end = len(chunk)
    # The commonest read by far is one whole message: answer it with one
    # find and one translate, building no list of spans.
    if state is _WAIT_FOR_MSG and end > 1 and chunk[0] == _START:
        stop = chunk.find(MSG_END, 1)
        if stop == end - 1:
            reply = chunk[1:stop].translate(_SUCCESSOR)
            return _WAIT_FOR_MSG, reply, 1
    pos = 0
    messages = 0
    spans: list[tuple[int, int]] = []
    while pos < end:
        if state is _WAIT_FOR_MSG:
            start = chunk.find(MSG_START, pos)
            if start < 0:
                break
            state = _IN_MSG
            pos = start + 1
        else:
            stop = chunk.find(MSG_END, pos)
            if stop < 0:
                spans.append((pos, end))
                break
            if stop > pos:
                spans.append((pos, stop))
            messages += 1
            state = _WAIT_FOR_MSG
            pos = stop + 1
    if not spans:
        return state, b"", messages
    if len(spans) == 1:
        first, last = spans[0]
        if first == 0 and last == end:
            return state, chunk.translate(_SUCCESSOR), messages
        reply = chunk[first:last].translate(_SUCCESSOR)
        return state, reply, messages
    # Many messages in one chunk: translate it once and join views of the
    # answered spans, rather than slicing and translating each message.
    translated = memoryview(chunk.translate(_SUCCESSOR))
    reply = b"".join([translated[first:last] for first, last in spans])
    return state, reply, messages
