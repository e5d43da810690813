# -*- test-case-name: tests.test_session -*-
"""
The reference session of the specification (docs/protocol.rst): the buffers
the reference client sends, with their pauses, and the replies a caret server
owes for them.

This is the specification's data, kept beside the rules
(L{caretproto.rules}) that compute the replies, so that whatever runs the
session (C{caret-client} through L{caretproto.session}, C{caret-bench}'s
C{sessions} mode through L{caretproto.bench}) takes it from here without
loading the other.  It is not a client: it sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from caretproto.rules import State, feed

Script = Sequence[tuple[bytes, float]]

REFERENCE_SCRIPT: Script = (
    (b"^abc$de^abte$f", 1.0),
    (b"xyz^123", 1.0),
    (b"25$^ab0000$abab", 0.2),
)
"""
The buffers the reference client sends, each with the pause after it.  The
C{0000} in the last is answered C{1111}: a reader that has seen it knows all
replies have arrived.
"""


def expectedReplies(script: Script) -> bytes:
    """Every reply byte a caret server sends for C{script}, in order."""
    state = State.WAIT_FOR_MSG
    replies = []
    for data, _ in script:
        state, reply, _ = feed(state, data)
        replies.append(reply)
    return b"".join(replies)
