"""
The caret server: a thin Twisted shell around L{caretproto.rules}.

L{CaretProtocol} holds one session's state and applies L{caretproto.rules.feed}
to each chunk it reads; L{CaretFactory} builds one per connection, knows the
sessions in progress and, given C{maxSessions}, lets no more than that many run
at once.  Listening and shutdown belong to L{caretproto.service}; this module
never opens a socket.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.rules import GREETING, State, feed


def describe_address(address: IAddress | None) -> str:
    """
    A short, loggable form of a peer address: C{host:port} for IP,
    C{[host]:port} for IPv6, the path (or C{unix}) for a UNIX socket.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return "unix" if address is not None else "unknown"


class ISessionTransport(ITransport, IConsumer, IPushProducer):
    """
    What a caret session needs of its transport: to write, to take a producer,
    and to stop and resume reading.  TCP, UNIX, TLS and PROXY-protocol
    transports all are.
    """


@implementer(IHalfCloseableProtocol, IPushProducer)
class CaretProtocol(Protocol):
    """
    One caret session: greets, answers every chunk with one write, and carries
    the state from read to read.

    It registers itself as its transport's streaming producer, so that when
    unsent replies back up past the transport's high-water mark, Twisted calls
    L{pauseProducing} and the session stops reading until they drain.

    A connection is not a session until L{greet}: the factory may first
    L{hold} it, unread and ungreeted, until a session ends.

    @ivar state: WAIT_FOR_MSG or IN_MSG.
    @ivar peer: the peer address, as logged.
    @ivar greeted: whether the session has started.
    @ivar bytesReceived: every byte read.
    @ivar bytesSent: every byte written, the greeting included.
    @ivar messages: messages ended by C{$}.
    @ivar pauses: how often flow control stopped reading.
    """

    factory: CaretFactory
    transport: ISessionTransport
    _log = Logger()

    state = State.WAIT_FOR_MSG
    peer = "unknown"
    bytesReceived = 0
    bytesSent = 0
    messages = 0
    pauses = 0
    paused = False
    greeted = False
    held = False
    startedAt = 0.0

    def connectionMade(self) -> None:
        self.peer = describe_address(self.transport.getPeer())
        self.transport.registerProducer(self, True)
        self.factory.sessionArrived(self)

    def hold(self) -> None:
        """
        Keep this connection waiting for a free session: nothing is read
        from it and it is not greeted, so that to the client (and to the
        bytes it sends meanwhile) it is as if it were still in the listen
        backlog.
        """
        self.held = True
        self.transport.pauseProducing()
        self._log.info("{peer} waiting for a free session", peer=self.peer)

    def greet(self) -> None:
        """Start the session: send the greeting and read what follows."""
        if self.held:
            self.held = False
            self.transport.resumeProducing()
        self.greeted = True
        self.startedAt = time.monotonic()
        self._log.info("{peer} connected", peer=self.peer)
        self.factory.sessionStarted(self)
        self.transport.write(GREETING)
        self.bytesSent = len(GREETING)

    def dataReceived(self, data: bytes) -> None:
        self.bytesReceived += len(data)
        self.state, reply, ended = feed(self.state, data)
        self.messages += ended
        if reply:
            self.bytesSent += len(reply)
            self.transport.write(reply)

    def finish(self) -> None:
        """
        End the session as the protocol ends it: stop reading, deliver every
        reply already owed, then close.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        """
        The client closed its sending side: PROTOCOL.md rule 5, send what is
        owed and close too.
        """
        self.finish()

    def writeConnectionLost(self) -> None:
        """
        The server never half-closes; nothing to do.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.greeted:
            self.factory.sessionAbandoned(self)
            self._log.info(
                "{peer} disconnected while waiting for a free session",
                peer=self.peer,
                reason=reason.getErrorMessage(),
            )
            return
        self.factory.sessionEnded(self)
        self._log.info(
            "{peer} disconnected after {duration:.3f}s: {bytes_in} bytes in, "
            "{bytes_out} bytes out, {messages} messages",
            peer=self.peer,
            duration=time.monotonic() - self.startedAt,
            bytes_in=self.bytesReceived,
            bytes_out=self.bytesSent,
            messages=self.messages,
            reason=reason.getErrorMessage(),
        )

    # IPushProducer: called by the transport, which is the consumer of our
    # replies.

    def pauseProducing(self) -> None:
        """Unsent replies passed the high-water mark: stop reading."""
        self.paused = True
        self.pauses += 1
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The replies drained: read again."""
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The transport is gone; L{connectionLost} does the bookkeeping.
        """


class Acceptor(TypingProtocol):
    """
    What a L{CaretFactory} with a session limit needs of whatever accepts
    its connections: L{caretproto.service.CaretService} is one.
    """

    def pauseAccepting(self, reason: str) -> None:
        """Leave new clients in the listen backlog, for C{reason}."""

    def resumeAccepting(self, reason: str) -> None:
        """Withdraw C{reason} for not accepting."""

    def acceptAtMost(self, count: int) -> None:
        """Accept no more than C{count} connections at the next wake-up."""


MAX_SESSIONS = "max-connections"
"""The reason a factory gives its acceptor for pausing while it is full."""


class CaretFactory(ServerFactory["CaretProtocol"]):
    """
    Builds a L{CaretProtocol} per connection and keeps the set of sessions in
    progress, so that a service can limit, count or drain them.

    It works with any endpoint or L{twisted.application.strports.service}.

    With C{maxSessions}, at most that many sessions run at once: a
    sequential server when it is 1.  While that many run, the factory's
    L{acceptor} stops accepting, so further clients wait in the listen
    backlog, neither refused nor accepted and ignored.  Stopping is not
    instantaneous: a port may already have accepted more connections in the
    same wake-up (Twisted's ports accept up to C{numberAccepts} per
    readiness event), and a wrapping endpoint (C{haproxy:}, TLS) may start a
    session later than it accepted its connection.  Such surplus
    connections are held, ungreeted and unread, in L{waiting}, and greeted
    first, in arrival order, as sessions end; so the limit is exact, and a
    held client cannot tell that it was not in the backlog.  Asking the
    acceptor to accept no more than the free places per wake-up keeps that
    surplus to nothing with one listening port.

    @ivar maxSessions: the most sessions at once, or L{None} for no limit.
    @ivar sessions: the sessions in progress (greeted, not yet gone).
    @ivar waiting: connections held for a free session, oldest first.
    @ivar acceptor: what accepts this factory's connections, once known.
    """

    protocol = CaretProtocol

    def __init__(self, maxSessions: int | None = None) -> None:
        self.maxSessions = maxSessions
        self.sessions: set[CaretProtocol] = set()
        self.waiting: deque[CaretProtocol] = deque()
        self.acceptor: Acceptor | None = None
        self._idleWaiters: list[Deferred[None]] = []

    def acceptedBy(self, acceptor: Acceptor) -> None:
        """
        Let C{acceptor} accept this factory's connections: with
        C{maxSessions}, it is paused whenever that many sessions run.
        """
        self.acceptor = acceptor
        if self.maxSessions is not None:
            acceptor.acceptAtMost(self.maxSessions - len(self.sessions))

    def _full(self) -> bool:
        return self.maxSessions is not None and len(self.sessions) >= self.maxSessions

    def sessionArrived(self, session: CaretProtocol) -> None:
        """
        A connection was made: greet it, or hold it while C{maxSessions}
        sessions run.
        """
        if self._full():
            self.waiting.append(session)
            session.hold()
        else:
            session.greet()

    def sessionStarted(self, session: CaretProtocol) -> None:
        """A session was greeted.  Override to observe it (call up)."""
        self.sessions.add(session)
        if self.acceptor is not None and self._full():
            self.acceptor.pauseAccepting(MAX_SESSIONS)

    def sessionEnded(self, session: CaretProtocol) -> None:
        """A session's connection is gone.  Override to observe it (call up)."""
        self.sessions.discard(session)
        if self.maxSessions is not None:
            self._admit()
        if not self.sessions:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def sessionAbandoned(self, session: CaretProtocol) -> None:
        """A held connection was lost before it was greeted."""
        if session in self.waiting:
            self.waiting.remove(session)

    def _admit(self) -> None:
        """
        Fill the free places: first with held connections, then by accepting
        again from the backlog.
        """
        while self.waiting and not self._full():
            self.waiting.popleft().greet()
        if self.acceptor is not None and self.maxSessions is not None:
            free = self.maxSessions - len(self.sessions)
            if free > 0:
                self.acceptor.acceptAtMost(free)
                self.acceptor.resumeAccepting(MAX_SESSIONS)

    def dropWaiting(self) -> None:
        """
        Close every held connection without a greeting, as closing a
        listening socket drops the clients in its backlog.
        """
        waiting, self.waiting = self.waiting, deque()
        for session in waiting:
            session.finish()

    def whenIdle(self) -> Deferred[None]:
        """A Deferred that fires when no session is in progress."""
        if not self.sessions:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        return waiter

    def __repr__(self) -> str:
        return f"<CaretFactory sessions={len(self.sessions)}>"

    def logPrefix(self) -> str:
        return "caret"
