# -*- test-case-name: tests.test_reference,tests.test_referenceclient -*-
"""
The reference session of the specification (docs/protocol.rst): the buffers
the reference client sends, with their pauses, the replies a caret server
owes for them, and L{ScriptRunner}, the one implementation of playing those
steps on a connection.

This is the specification's data and its steps, kept beside the rules
(L{caretproto.rules}) that compute the replies, so that whatever runs the
session (C{caret-client} through L{caretproto.referenceclient}, C{caret-bench}'s
C{sessions} mode through L{caretproto.bench}) takes it from here without
loading the other.  It opens no connection, logs nothing and keeps no
tally: a runner writes through the C{send} it is given, and its owner adds
what it needs (a log line per step, a session's duration) through hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from caretproto.rules import State, feed

Script = Sequence[tuple[bytes, float]]
"""
A session's steps: each buffer to send, with the seconds to pause after
it.
"""

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
    """
    Every reply byte a caret server sends for C{script}, in order.

    @param script: the buffers sent, from the state a session starts in.
    @return: the replies, as L{caretproto.rules.feed} computes them, joined.
    """
    state = State.WAIT_FOR_MSG
    replies = []
    for data, _ in script:
        state, reply, _ = feed(state, data)
        replies.append(reply)
    return b"".join(replies)


class ScriptRunner:
    """
    Plays a script on one greeted connection: sends each buffer through
    C{send}, waits its pause on C{clock}, and keeps the replies as they
    arrive.  Override the hooks (L{sending}, L{scriptEnded},
    L{repliesWrong}) to see the steps; the owner feeds it the replies
    (L{replyReceived}) and stops it (L{stop}) when the connection ends.

    @cvar followReplies: C{False}, the runner ends when the last pause has
        elapsed and leaves the replies for its owner to judge once the
        server has closed (C{caret-client}, which reports what came).
        C{True}, it checks each read as it arrives, calls L{repliesWrong} at
        the first wrong byte, and ends only once every reply has arrived as
        well: the handshake of docs/protocol.rst (C{caret-bench}, which
        times the session to its last reply).
    @ivar expected: every reply byte the script is owed.
    @ivar received: the reply bytes received so far.
    @ivar ended: whether L{scriptEnded} was called or the runner stopped.
    @ivar clock: what the pauses are waited on.
    @ivar send: what writes a buffer to the connection.
    @ivar script: the steps to play.
    """

    followReplies = False

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[bytes], object],
        script: Script = REFERENCE_SCRIPT,
        expected: bytes | None = None,
    ) -> None:
        """
        A runner that has sent nothing yet; L{start} sends the first buffer.

        @param clock: what the pauses are waited on: the reactor, or a
            test's C{Clock}.
        @param send: writes a buffer to the connection; what it returns is
            ignored.
        @param script: the steps to play.
        @param expected: the replies C{script} is owed, if the caller has
            computed them once for many runners; if C{None}, computed here.
        """
        self.clock = clock
        self.send = send
        self.script = script
        self.expected = expectedReplies(script) if expected is None else expected
        self.received = b""
        self.ended = False
        self._step = 0
        self._lastPauseOver = False
        self._stopped = False
        self._waiting: IDelayedCall | None = None

    def start(self) -> None:
        """The greeting has come: send the first buffer."""
        self._sendStep()

    def stop(self) -> None:
        """Send nothing more and call no hook: the connection has ended."""
        self.ended = self._stopped = True
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        self._waiting = None

    def replyReceived(self, data: bytes) -> None:
        """
        Reply bytes arrived, as cut by the network: keep them and, if
        L{followReplies}, check them.

        @param data: the bytes, in the order received.
        """
        self.received += data
        # Past the end, a byte is still checked: the script is owed no more.
        if not self.followReplies or self._stopped:
            return
        if not self.expected.startswith(self.received):
            self.stop()
            self.repliesWrong()
        elif self._lastPauseOver and len(self.received) == len(self.expected):
            self._end()

    def sending(self, data: bytes) -> None:
        """
        Hook: C{data} is about to be sent.

        @param data: the buffer of the step about to be played.
        """

    def scriptEnded(self) -> None:
        """Hook: the last pause has elapsed (and, if L{followReplies}, every
        reply has arrived).  The owner closes the connection."""

    def repliesWrong(self) -> None:
        """Hook, if L{followReplies}: L{received} is not what the script is
        owed.  The runner has stopped; the owner ends the connection."""

    def _sendStep(self) -> None:
        data, pause = self.script[self._step]
        self._step += 1
        self.sending(data)
        self.send(data)
        self._waiting = self.clock.callLater(pause, self._waited)

    def _waited(self) -> None:
        self._waiting = None
        if self._step < len(self.script):
            self._sendStep()
            return
        self._lastPauseOver = True
        if not self.followReplies or len(self.received) == len(self.expected):
            self._end()

    def _end(self) -> None:
        self.ended = True
        self.scriptEnded()
