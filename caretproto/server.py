"""
The caret server: a thin Twisted shell around L{caretproto.rules}.

L{CaretProtocol} holds one session's state and applies L{caretproto.rules.feed}
to each chunk it reads; L{CaretFactory} builds one per connection, knows the
sessions in progress and, given C{maxSessions}, lets no more than that many run
at once.  The limits that concern one connection live here too: flow control,
the idle timeout and the per-peer limit.  Listening, accepting and shutdown
belong to L{caretproto.service}; this module never opens a socket.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.rules import GREETING, State, feed
from caretproto.writenow import socketTransport, writeNow


def describeAddress(address: IAddress | None) -> str:
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


def peerHost(address: IAddress | None) -> str | None:
    """
    The host part of an IP peer address, which the per-peer limit counts;
    C{None} for a UNIX socket, whose peers have no address to tell apart.
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class ISessionTransport(ITransport, IConsumer, IPushProducer):
    """
    What a caret session needs of its transport: to write, to take a producer,
    and to stop and resume reading.  TCP, UNIX, TLS and PROXY-protocol
    transports all are.
    """

    def abortConnection() -> None:
        """Close at once, dropping whatever is unsent."""


@implementer(IHalfCloseableProtocol, IPushProducer)
class CaretProtocol(Protocol):
    """
    One caret session: greets, answers every chunk with one write, and carries
    the state from read to read.

    It registers itself as its transport's streaming producer, so that when
    unsent replies back up past the transport's high-water mark (its
    C{bufferSize}, 64 KiB for TCP), Twisted calls L{pauseProducing} and the
    session stops reading until they drain.  Nothing is dropped: the client's
    further bytes wait in the kernel, and TCP tells the client to wait too.
    It registers when it first has a reply to send, not on connect: a TLS
    transport pauses its producer while a write waits for the handshake, and
    to stop reading then would stall the handshake, and so the session,
    forever (Twisted issue 6385).  Until a reply is owed nothing can back up.

    With the factory's C{idleTimeout}, a session whose client sends nothing
    for that long is closed.  Only time spent reading counts: while flow
    control has stopped reading, the session cannot know whether its client
    is sending, so it is not idle.

    A connection is not a session until L{greet}: the factory may first
    L{hold} it, unread and ungreeted, until a session ends.

    @ivar state: WAIT_FOR_MSG or IN_MSG.
    @ivar greeted: whether the session has started.
    @ivar admitted: whether the per-peer limit let the connection stay; one
        that it refused is closed without a greeting.
    @ivar bytesReceived: every byte read.
    @ivar bytesSent: every byte written, the greeting included.
    @ivar messages: messages ended by C{$}.
    @ivar pauses: how often flow control stopped reading.
    """

    factory: CaretFactory
    transport: ISessionTransport
    _log = Logger()

    # Per-connection state lives in class-level defaults until it changes,
    # to keep each of many thousands of idle sessions small.
    state = State.WAIT_FOR_MSG
    bytesReceived = 0
    bytesSent = 0
    messages = 0
    pauses = 0
    paused = False
    greeted = False
    held = False
    admitted = False
    idleClosing = False
    startedAt = 0.0
    _producing = False
    _finishing = False
    _lingering = False
    _readClosed = False
    _idleCall: IDelayedCall | None = None
    _idlePeriod: float | None = None
    _lastRead = 0.0

    @property
    def peer(self) -> str:
        """
        The peer address, as logged.  It is described anew each time rather
        than kept: most sessions log it twice in their lives, and a string
        kept for each of many thousands of idle connections is memory spent
        on nothing.
        """
        transport = self.transport
        if transport is None:
            return "unknown"
        return describeAddress(transport.getPeer())

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        if not self.factory.peerArrived(address):
            self.transport.loseConnection()
            self.factory.connectionSettled(self)
            return
        self.admitted = True
        self.factory.sessionArrived(self)
        self.factory.connectionSettled(self)

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
        self._setIdleTimeout(self.factory.idleTimeout)
        writeNow(self.transport, GREETING)
        self.bytesSent = len(GREETING)

    def dataReceived(self, data: bytes) -> None:
        self.bytesReceived += len(data)
        if self._lingering:
            # Dropped, and no reason to keep the session: see finish.
            return
        if self._idleCall is not None:
            self._lastRead = self.factory.clock.seconds()
        self.state, reply, ended = feed(self.state, data)
        self.messages += ended
        if reply:
            if not self._producing and not self._finishing:
                self._producing = True
                self.transport.registerProducer(self, True)
            self.bytesSent += len(reply)
            writeNow(self.transport, reply)

    def finish(self) -> None:
        """
        End the session as the protocol ends it: answer nothing more, deliver
        every reply already owed, then close.

        If the client may still be sending (the server ends the session: idle
        timeout, shutdown), a session on a plain socket closes only its
        sending side, then reads and drops whatever the client sends until
        the client closes too.  Closing a socket whose input is unread makes
        the kernel reset the connection and throw away the replies it has
        not transmitted yet; a client flooding a paused session lost the
        last few KiB of its replies that way.  The timeouts that end a
        session (C{idleTimeout}, the shutdown timeout) still abort a client
        that never closes.
        """
        # No producer from now on: a transport closes only once its producer
        # is gone (TLS would otherwise never send its close).
        self._finishing = True
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        connection = socketTransport(self.transport)
        if self._readClosed or not self.greeted or connection is None:
            self.transport.loseConnection()
            return
        self._lingering = True
        connection.loseWriteConnection()
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def readConnectionLost(self) -> None:
        """
        The client closed its sending side: as docs/protocol.rst says in
        "Ending a session", send what is owed and close too.
        """
        self._readClosed = True
        if self._lingering:
            self.transport.loseConnection()
        else:
            self.finish()

    def writeConnectionLost(self) -> None:
        """
        Every owed reply has gone after L{finish}: the client closes next.
        """

    def _setIdleTimeout(self, period: float | None) -> None:
        """
        Count idle time from now, closing the session after C{period} seconds
        without a read; or, given C{None}, stop counting.

        A read only notes its time; the timer, when it fires, sets itself
        again for what is left since the last read.  Twisted's
        C{TimeoutMixin} instead reschedules its timer on every read: with it
        the server spent 12.34 µs of CPU time a round, with this 11.89 (rr on
        100 connections with benchmarks/cload.c, the default idle timeout,
        medians of seven interleaved runs of 1.5 s, 2-core machine).  The
        session is closed at the same moment either way: C{idleTimeout}
        after its last read.
        """
        if self._idleCall is not None:
            if self._idleCall.active():
                self._idleCall.cancel()
            self._idleCall = None
        self._idlePeriod = period
        if period is not None:
            self._lastRead = self.factory.clock.seconds()
            self._idleCall = self.factory.clock.callLater(period, self._idleCheck)

    def _idleCheck(self) -> None:
        """The idle timer fired: close the session, or wait out the rest."""
        assert self._idlePeriod is not None
        clock = self.factory.clock
        due = self._lastRead + self._idlePeriod
        now = clock.seconds()
        if due > now:
            self._idleCall = clock.callLater(due - now, self._idleCheck)
            return
        self._idleCall = None
        self.timeoutConnection()

    def timeoutConnection(self) -> None:
        """
        The client sent nothing for C{idleTimeout} seconds: end the session
        as the protocol does, delivering what is owed.  A client that does
        not even take those replies within another C{idleTimeout} is cut off.
        """
        if self.idleClosing:
            self._log.info(
                "{peer} did not take its replies within {timeout}s of being "
                "closed for idleness: aborting",
                peer=self.peer,
                timeout=self.factory.idleTimeout,
            )
            self.transport.abortConnection()
            return
        self._log.info(
            "{peer} sent nothing for {timeout}s: closing",
            peer=self.peer,
            timeout=self.factory.idleTimeout,
        )
        self.idleClosing = True
        self.finish()
        self._setIdleTimeout(self.factory.idleTimeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.factory.arriving:
            # Lost before it started (a subclass may not start every one).
            self.factory.connectionSettled(self)
        if not self.admitted:
            return
        self._setIdleTimeout(None)
        self.factory.peerLeft(self.transport.getPeer())
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
        """
        Unsent replies passed the high-water mark: stop reading, and stop
        counting idle time, which only reading can refute.
        """
        self.paused = True
        self.pauses += 1
        self._setIdleTimeout(None)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The replies drained: read again, and count idle time from now."""
        self.paused = False
        self._setIdleTimeout(self.factory.idleTimeout)
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


if TYPE_CHECKING:
    _ServerFactory = ServerFactory[CaretProtocol]
else:
    # Twisted's factories are generic only since 26.4; setup.cfg claims
    # older ones, where subscripting the class fails at import.
    _ServerFactory = ServerFactory


class CaretFactory(_ServerFactory):
    """
    Builds a L{CaretProtocol} per connection and keeps the set of sessions in
    progress, so that a service can limit, count or drain them.

    It works with any endpoint or C{twisted.application.strports.service}.

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

    @ivar maxSessions: the most sessions at once, or C{None} for no limit.
    @ivar sessions: the sessions in progress (greeted, not yet gone).
    @ivar arriving: connections accepted whose protocol has not started yet:
        a wrapping endpoint starts it later than the port accepts (C{haproxy:}
        once the PROXY header has come).  To the client, and to a balancer
        that will not send it elsewhere, such a connection is already its
        session, so a draining service waits for it as for one.
    @ivar waiting: connections held for a free session, oldest first.
    @ivar acceptor: what accepts this factory's connections, once known.
    @ivar idleTimeout: seconds a session may go without receiving a byte
        before it is closed, or C{None} (the default) for no limit.
    @ivar maxPerPeer: the most connections one IP address may hold at once
        (sessions and held connections alike), or C{None} (the default) for
        no limit.
    @ivar connectionsByPeer: with C{maxPerPeer}, the connections each IP
        address holds.
    @ivar clock: the timer for idle timeouts and the per-peer log.
    @ivar endObservers: callables given each session as it ends, after it has
        left C{sessions} and with its counters final; how metrics learn of
        ended sessions without a subclass.
    """

    protocol = CaretProtocol
    idleTimeout: float | None = None
    maxPerPeer: int | None = None

    def __init__(
        self, maxSessions: int | None = None, clock: IReactorTime | None = None
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.maxSessions = maxSessions
        self.sessions: set[CaretProtocol] = set()
        self.arriving: set[CaretProtocol] = set()
        self.waiting: deque[CaretProtocol] = deque()
        self.acceptor: Acceptor | None = None
        self.connectionsByPeer: Counter[str] = Counter()
        self._refusals = RefusalLog(
            clock,
            "{host} is at the per-peer limit of {limit} sessions: refusing "
            "its further connections",
            "{host}: refused {count} connections over the per-peer limit "
            "of {limit} in {duration:.1f}s",
            Logger(f"{type(self).__module__}.{type(self).__qualname__}", self),
        )
        self.endObservers: list[Callable[[CaretProtocol], object]] = []
        self._idleWaiters: list[Deferred[None]] = []
        self._endWaiters: list[Deferred[None]] = []

    def peerArrived(self, address: IAddress | None) -> bool:
        """
        A connection from C{address} was made: whether it may stay.  Not when
        its host already holds C{maxPerPeer} connections; refusals are logged
        once per burst.  A connection that stays must be given back with
        L{peerLeft}.
        """
        host = peerHost(address)
        if self.maxPerPeer is None or host is None:
            return True
        if self.connectionsByPeer[host] >= self.maxPerPeer:
            self._refusals.refused(host, limit=self.maxPerPeer)
            return False
        self.connectionsByPeer[host] += 1
        return True

    def peerLeft(self, address: IAddress | None) -> None:
        """A connection that L{peerArrived} let stay is gone."""
        host = peerHost(address)
        if host is not None and host in self.connectionsByPeer:
            self.connectionsByPeer[host] -= 1
            if not self.connectionsByPeer[host]:
                del self.connectionsByPeer[host]

    def buildProtocol(self, addr: IAddress | None) -> CaretProtocol | None:
        """
        A connection was accepted: its protocol counts among L{arriving}
        until it starts (L{connectionSettled}) or its connection is lost
        before (L{connectionAbandoned}).
        """
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.arriving.add(protocol)
        return protocol

    def connectionSettled(self, protocol: CaretProtocol) -> None:
        """
        C{protocol}'s connection has started: it is a session, held, or
        refused, and no longer L{arriving}.
        """
        self.arriving.discard(protocol)
        self._checkIdle()

    def connectionAbandoned(self, protocol: CaretProtocol) -> None:
        """
        The connection C{protocol} was built for is gone before the protocol
        started (a wrapping endpoint closed it: no PROXY header, or not from
        a trusted proxy).
        """
        self.connectionSettled(protocol)

    def forgetArriving(self) -> None:
        """
        Count no connection as L{arriving} any more: a drain that has
        waited as long as it may gives up on them.
        """
        self.arriving.clear()
        self._checkIdle()

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
        for observer in self.endObservers:
            observer(session)
        if self.maxSessions is not None:
            self._admit()
        ended, self._endWaiters = self._endWaiters, []
        for waiter in ended:
            waiter.callback(None)
        self._checkIdle()

    def _checkIdle(self) -> None:
        if not self.idle:
            return
        waiters, self._idleWaiters = self._idleWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def idle(self) -> bool:
        """Whether no session is in progress and none is L{arriving}."""
        return not self.sessions and not self.arriving

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
        """
        A Deferred that fires when no session is in progress and none is
        L{arriving}.
        """
        if self.idle:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        return waiter

    def whenSessionEnds(self) -> Deferred[None]:
        """A Deferred that fires when the next session ends."""
        waiter: Deferred[None] = Deferred()
        self._endWaiters.append(waiter)
        return waiter

    def stopFactory(self) -> None:
        """The last port stopped listening: close the refusal log's books."""
        self._refusals.flush()

    def __repr__(self) -> str:
        return f"<CaretFactory sessions={len(self.sessions)}>"

    def logPrefix(self) -> str:
        return "caret"


class RefusalLog:
    """
    The log of connections refused for one reason: one line when a host's
    burst of refused connections begins, and one that counts them when it
    ends, after C{quiet} seconds without a refusal.  A client that retries
    in a loop would otherwise write a line per attempt.  Its lines are
    logged with C{logger}, to name whoever refused.

    @ivar began: the format of the first line of a burst; its fields are
        C{host} and those given to L{refused}.
    @ivar ended: the format of the closing line, logged only if the burst
        held more than one refusal; its fields are those of C{began} and
        C{count} and C{duration}.
    """

    quiet = 5.0
    _log = Logger()

    def __init__(
        self, clock: IReactorTime, began: str, ended: str, logger: Logger | None = None
    ) -> None:
        if logger is not None:
            self._log = logger
        self.clock = clock
        self.began = began
        self.ended = ended
        self._bursts: dict[str, _Burst] = {}

    def refused(self, host: str, **fields: object) -> None:
        """
        A connection from C{host} was refused; C{fields} go into the log
        event, the first of its burst's only.
        """
        now = self.clock.seconds()
        burst = self._bursts.get(host)
        if burst is not None:
            burst.count += 1
            burst.last = now
            burst.quietCall.reset(self.quiet)
            return
        self._log.warn(self.began, host=host, **fields)
        quietCall = self.clock.callLater(self.quiet, self._burstEnded, host)
        self._bursts[host] = _Burst(now, quietCall, fields)

    def _burstEnded(self, host: str) -> None:
        burst = self._bursts.pop(host)
        if burst.count > 1:
            self._log.warn(
                self.ended,
                host=host,
                count=burst.count,
                duration=burst.last - burst.began,
                **burst.fields,
            )

    def flush(self) -> None:
        """End every burst in progress now, logging its count."""
        for host, burst in list(self._bursts.items()):
            burst.quietCall.cancel()
            self._burstEnded(host)


class _Burst:
    """Refusals for one host, close together."""

    def __init__(
        self, began: float, quietCall: IDelayedCall, fields: dict[str, object]
    ) -> None:
        self.began = self.last = began
        self.quietCall = quietCall
        self.fields = fields
        self.count = 1
