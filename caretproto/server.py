"""
The caret server: a thin Twisted shell around L{caretproto.rules}.

L{CaretProtocol} holds one session's state and applies L{caretproto.rules.feed}
to each chunk it reads; L{CaretFactory} builds one per connection and knows the
sessions in progress.  Listening, limits and shutdown belong to
L{caretproto.service}; this module never opens a socket.
"""

from __future__ import annotations

import time

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

    @ivar state: WAIT_FOR_MSG or IN_MSG.
    @ivar peer: the peer address, as logged.
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
    startedAt = 0.0

    def connectionMade(self) -> None:
        self.peer = describe_address(self.transport.getPeer())
        self.startedAt = time.monotonic()
        self.transport.registerProducer(self, True)
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


class CaretFactory(ServerFactory["CaretProtocol"]):
    """
    Builds a L{CaretProtocol} per connection and keeps the set of sessions in
    progress, so that a service can limit, count or drain them.

    It works with any endpoint or L{twisted.application.strports.service}.
    """

    protocol = CaretProtocol

    def __init__(self) -> None:
        self.sessions: set[CaretProtocol] = set()
        self._idleWaiters: list[Deferred[None]] = []

    def sessionStarted(self, session: CaretProtocol) -> None:
        """A session was greeted.  Override to observe it (call up)."""
        self.sessions.add(session)

    def sessionEnded(self, session: CaretProtocol) -> None:
        """A session's connection is gone.  Override to observe it (call up)."""
        self.sessions.discard(session)
        if not self.sessions:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

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
