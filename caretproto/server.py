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

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.connections import IAcceptor, RefusalLog, describeAddress, peerHost
from caretproto.idle import LONGEST_TICK, IdleWheel, granularityFor, unsentBytes
from caretproto.rules import GREETING, State, feed
from caretproto.writenow import replyNow, socketTransport, writeNow


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

    With the factory's C{idleTimeout}, a session whose client neither sends
    anything nor takes any of its replies for that long is ended: one that
    sent nothing while reading is closed (at once if nothing is owed, or
    once what is owed is taken); one that flow control paused, and whose
    client takes none of the replies holding it up, is aborted.  The
    factory's L{IdleWheel} does the timing, on one timer for every session.

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
    _idleTracked = False
    _lastProgress = 0.0
    _unheard = True
    _owed: int | None = None
    _socket: Connection | None = None

    @property
    def peer(self) -> str:
        """
        The peer address, as logged.  It is described anew each time rather
        than kept: most sessions log it once in their lives, and a string
        kept for each of many thousands of idle connections is memory spent
        on nothing.
        """
        transport = self.transport
        if transport is None:
            return "unknown"
        return describeAddress(transport.getPeer())

    def connectionMade(self) -> None:
        """
        A connection was accepted: if the per-peer limit lets it stay, it
        becomes a session now or is held for a free one
        (L{CaretFactory.sessionArrived}); if not, it is closed unread and
        ungreeted.
        """
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
        """
        Start the session: send the greeting and read what follows.

        Nothing is logged here: a session is logged once, when it ends
        (L{connectionLost}), with its peer, duration and counts, as HAProxy
        and nginx log a session or a request.  A line for each start as
        well cost enough, under a burst of thousands of connects, to slow
        accepting until the listen queue overflowed and clients waited a
        second to retransmit their SYNs (docs/benchmarks.rst).
        """
        if self.held:
            self.held = False
            self.transport.resumeProducing()
        self.greeted = True
        self.startedAt = time.monotonic()
        self.factory.sessionStarted(self)
        self._watchIdle()
        writeNow(self.transport, GREETING)
        self.bytesSent = len(GREETING)

    def dataReceived(self, data: bytes) -> None:
        """
        Answer a chunk as L{caretproto.rules.feed} says, in one write.  The
        first read after each tick of the idle wheel tells the wheel
        (L{_firstRead}); after L{finish}, what comes is dropped.

        This runs once per round, so it does no more than that: the first
        reply owed (L{_startReplying}) registers the session as its
        transport's streaming producer and finds the socket under the
        transport once, and each reply after it goes to that socket with
        L{caretproto.writenow.replyNow}.

        @param data: the bytes read, in whatever cut the network made.
        """
        self.bytesReceived += len(data)
        if self._unheard and self._firstRead():
            # Dropped, and no reason to keep the session: see finish.
            return
        self.state, reply, ended = feed(self.state, data)
        self.messages += ended
        if reply:
            self.bytesSent += len(reply)
            connection = self._socket
            if connection is None:
                self._startReplying(reply)
            else:
                replyNow(connection, self.transport, reply)

    def _firstRead(self) -> bool:
        """
        The first read since the idle wheel last said it had counted one
        (L{progressed}), or since the session started: tell the wheel,
        which counts idle time from its next tick; later reads need not.
        The idle timeout is so kept with no look at the clock on a read.
        After L{finish}, every read comes here, to be dropped.

        @return: whether to drop the read.
        """
        if self._lingering:
            return True
        self._unheard = False
        if self._idleTracked:
            self.factory.idleWheelOnClock().noteProgress(self)
        return False

    def progressed(self, now: float) -> None:
        """
        The idle wheel's tick after a read (L{_firstRead}): count idle time
        from C{now}, and have the next read tell the wheel again.

        @param now: the tick's time, after the read.
        """
        self._lastProgress = now
        self._unheard = True

    def _startReplying(self, reply: bytes) -> None:
        """
        Send a reply on a session with no socket found yet: the first reply,
        or any on a transport with no socket under it (TLS, a test's
        C{StringTransport}), or after L{finish}.
        """
        if not self._producing and not self._finishing:
            self._producing = True
            self.transport.registerProducer(self, True)
            self._socket = socketTransport(self.transport)
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
        self._stopProducing()
        connection = socketTransport(self.transport)
        if self._readClosed or not self.greeted or connection is None:
            self.transport.loseConnection()
            return
        self._lingering = self._unheard = True
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
        One closed for idleness, which is not likely to, is closed at once.
        """
        if self.idleClosing:
            self.transport.loseConnection()

    def _stopProducing(self) -> None:
        """
        Answer nothing more.  No producer from now on: a transport closes
        only once its producer is gone (TLS would otherwise never send its
        close).
        """
        self._finishing = True
        # From now on every write goes through writeNow's checks.
        self._socket = None
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _watchIdle(self) -> None:
        """
        Count idle time from now, if the factory has an C{idleTimeout}: the
        session is filed on the factory's L{IdleWheel} for its deadline.

        A read costs no timer reset, nor even a look at the clock: the first
        read after a tick tells the wheel (L{_firstRead}), whose next tick
        gives the session its time (L{progressed}); when the deadline's
        tick comes, L{idleCheck} files the session again for what is left
        since the last read.  Twisted's C{TimeoutMixin} instead reschedules a
        timer per connection on every read, which costs CPU time on every
        round (docs/benchmarks.rst) and a C{DelayedCall} per connection.
        """
        timeout = self.factory.idleTimeout
        if timeout is None:
            return
        now = self.factory.clock.seconds()
        self._idleTracked = True
        self._lastProgress = now
        if not self._unheard:
            # Read before, untimed: the next read must tell the wheel.
            self._unheard = True
        self.factory.idleWheelOnClock().schedule(self, now + timeout)

    def _unwatchIdle(self) -> None:
        """Stop counting idle time."""
        if self._idleTracked:
            self._idleTracked = False
            self.factory.idleWheel.discard(self)

    def idleCheck(self, now: float) -> float | None:
        """
        The factory's idle wheel asks whether the session is idle at C{now}:
        end it if it is, and say when to look again (C{None}: never).

        Reading, the session is idle once C{idleTimeout} has passed since
        its last read.  Paused by flow control, or closed for idleness with
        replies still owed, it cannot read (or drops what it reads), so the
        only progress left is its client taking replies: it samples, each
        tick, what its transport holds unsent
        (L{caretproto.idle.unsentBytes}), and is idle once that has not
        shrunk for C{idleTimeout}.  On a transport that
        cannot tell (neither a socket nor TLS over one), nothing counts as
        taken: a paused session gets C{idleTimeout} to drain entirely.

        @param now: the wheel's clock's time.
        @return: when to look again, in the clock's time, or C{None} when
            the session needs no more looking at.
        """
        timeout = self.factory.idleTimeout
        if timeout is None:
            self._idleTracked = False
            return None
        if not (self.paused or self.idleClosing):
            due = self._lastProgress + timeout
            if due > now:
                return due
            self.timeoutConnection()
            return now if self._idleTracked else None
        owed = unsentBytes(self.transport)
        if owed is not None:
            if self._owed is not None and owed < self._owed:
                self._lastProgress = now
            self._owed = owed
            if owed == 0 and self.idleClosing:
                # Everything owed is the kernel's to deliver now, and a TLS
                # close would wait for the client's: nothing is lost here.
                self._idleTracked = False
                self.transport.abortConnection()
                return None
        if now - self._lastProgress < timeout:
            return now
        self._idleTracked = False
        # What is abandoned, when the transport can tell.
        unsent = "" if owed is None else " with {owed} bytes unsent"
        if self.idleClosing:
            why = "after being closed for idleness"
        else:
            why = "while its reading was paused"
        self._log.info(
            "{peer} did not take its replies for {timeout}s {why}: aborting" + unsent,
            peer=self.peer,
            timeout=timeout,
            why=why,
            owed=owed,
        )
        self.transport.abortConnection()
        return None

    def timeoutConnection(self) -> None:
        """
        The client sent nothing for C{idleTimeout} seconds: end the session.

        If every reply owed has been handed to the kernel, the connection is
        closed at once, fully: its client sent nothing for so long that no
        unread input can make the kernel reset it, and what the kernel holds
        it still delivers.  Otherwise the session ends as the protocol ends
        it, delivering what is owed, and is closed once that has gone; a
        client that takes none of it for another C{idleTimeout} is cut off
        (L{idleCheck}).
        """
        timeout = self.factory.idleTimeout
        self.idleClosing = True
        self._owed = owed = unsentBytes(self.transport)
        # What is still owed, when the transport can tell.
        waiting = " once its {owed} owed bytes are taken" if owed else ""
        self._log.info(
            "{peer} sent nothing for {timeout}s: closing" + waiting,
            peer=self.peer,
            timeout=timeout,
            owed=owed,
        )
        if owed == 0:
            self._stopProducing()
            self.transport.loseConnection()
            return
        # The second period, for the owed replies, counts from now.
        self._lastProgress = self.factory.clock.seconds()
        if not self._finishing:
            self.finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection is gone: stop timing it, give its place back to the
        per-peer limit and to the session limit, and log the session's
        figures (bytes in and out, messages) with its peer.

        @param reason: why it ended.
        """
        if self in self.factory.arriving:
            # Lost before it started (a subclass may not start every one).
            self.factory.connectionSettled(self)
        if not self.admitted:
            return
        self._unwatchIdle()
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
        Unsent replies passed the high-water mark: stop reading.  From now
        on only the client taking replies shows progress, which the idle
        wheel looks for each tick (L{idleCheck}).
        """
        self.paused = True
        self.pauses += 1
        if self._idleTracked:
            self._owed = unsentBytes(self.transport)
            now = self.factory.clock.seconds()
            self.factory.idleWheelOnClock().schedule(self, now)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The replies drained: read again, and count idle time from now."""
        self.paused = False
        if self._idleTracked:
            self._lastProgress = self.factory.clock.seconds()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The transport is gone; L{connectionLost} does the bookkeeping.
        """


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
    @ivar idleWheel: the one timer of every session's idle timeout, ticking
        only while a session is tracked; see L{caretproto.idle}.
    @ivar maxPerPeer: the most connections one IP address may hold at once
        (sessions and held connections alike), or C{None} (the default) for
        no limit.
    @ivar connectionsByPeer: with C{maxPerPeer}, the connections each IP
        address holds.
    @ivar clock: the timer for idle timeouts and the per-peer log; the idle
        wheel moves to a new one when it next files a session.
    @ivar endObservers: callables given each session as it ends, after it has
        left C{sessions} and with its counters final; how metrics learn of
        ended sessions without a subclass.
    """

    protocol = CaretProtocol
    _idleTimeout: float | None = None
    maxPerPeer: int | None = None

    def __init__(
        self, maxSessions: int | None = None, clock: IReactorTime | None = None
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.idleWheel = IdleWheel(clock, LONGEST_TICK)
        self.maxSessions = maxSessions
        self.sessions: set[CaretProtocol] = set()
        self.arriving: set[CaretProtocol] = set()
        self.waiting: deque[CaretProtocol] = deque()
        self.acceptor: IAcceptor | None = None
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

    @property
    def idleTimeout(self) -> float | None:
        """
        Seconds a session may go neither receiving a byte nor having its
        client take a reply before it is ended, or C{None} (the default)
        for no limit.  Set anew, it applies at once to every session,
        counted from its last read (from now, for sessions that had no
        limit); set to C{None}, no session is timed any more.
        """
        return self._idleTimeout

    @idleTimeout.setter
    def idleTimeout(self, timeout: float | None) -> None:
        was, self._idleTimeout = self._idleTimeout, timeout
        if timeout is None:
            for session in self.sessions:
                session._idleTracked = False
            self.idleWheel.clear()
            return
        self.idleWheelOnClock().granularity = granularityFor(timeout)
        if was is None:
            for session in self.sessions:
                session._watchIdle()

    def idleWheelOnClock(self) -> IdleWheel:
        """
        L{idleWheel}, on the factory's L{clock}, whichever it is now.

        @return: the wheel.
        """
        wheel = self.idleWheel
        if wheel.clock is not self.clock:
            wheel.setClock(self.clock)
        return wheel

    def peerArrived(self, address: IAddress | None) -> bool:
        """
        A connection from C{address} was made: whether it may stay.  Not when
        its host already holds C{maxPerPeer} connections; refusals are logged
        once per burst.  A connection that stays must be given back with
        L{peerLeft}.

        @param address: the peer's address.
        @return: whether the connection may stay.
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
        """
        A connection that L{peerArrived} let stay is gone.

        @param address: the peer's address, as given to L{peerArrived}.
        """
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

        @param addr: the peer's address.
        @return: the connection's L{CaretProtocol}.
        """
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.arriving.add(protocol)
        return protocol

    def connectionSettled(self, protocol: CaretProtocol) -> None:
        """
        C{protocol}'s connection has started: it is a session, held, or
        refused, and no longer L{arriving}.

        @param protocol: the connection's protocol.
        """
        self.arriving.discard(protocol)
        self._checkIdle()

    def connectionAbandoned(self, protocol: CaretProtocol) -> None:
        """
        The connection C{protocol} was built for is gone before the protocol
        started (a wrapping endpoint closed it: no PROXY header, or not from
        a trusted proxy).

        @param protocol: the protocol built for it.
        """
        self.connectionSettled(protocol)

    def forgetArriving(self) -> None:
        """
        Count no connection as L{arriving} any more: a drain that has
        waited as long as it may gives up on them.
        """
        self.arriving.clear()
        self._checkIdle()

    def acceptedBy(self, acceptor: IAcceptor) -> None:
        """
        Let C{acceptor} accept this factory's connections: with
        C{maxSessions}, it is paused whenever that many sessions run.

        @param acceptor: what accepts, a L{caretproto.service.CaretService}.
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

        @param session: its protocol, admitted by the per-peer limit.
        """
        if self._full():
            self.waiting.append(session)
            session.hold()
        else:
            session.greet()

    def sessionStarted(self, session: CaretProtocol) -> None:
        """
        A session was greeted.  Override to observe it (call up).

        @param session: the session.
        """
        self.sessions.add(session)
        if self.acceptor is not None and self._full():
            self.acceptor.pauseAccepting(MAX_SESSIONS)

    def sessionEnded(self, session: CaretProtocol) -> None:
        """
        A session's connection is gone.  Override to observe it (call up).

        @param session: the session, its counters final.
        """
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
        """
        A held connection was lost before it was greeted.

        @param session: its protocol.
        """
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

        @return: a Deferred that fires with C{None}, at once if idle now.
        """
        if self.idle:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        return waiter

    def whenSessionEnds(self) -> Deferred[None]:
        """
        A Deferred that fires when the next session ends.

        @return: a Deferred that fires with C{None}.
        """
        waiter: Deferred[None] = Deferred()
        self._endWaiters.append(waiter)
        return waiter

    def stopFactory(self) -> None:
        """The last port stopped listening: close the refusal log's books."""
        self._refusals.flush()

    def __repr__(self) -> str:
        return f"<CaretFactory sessions={len(self.sessions)}>"

    def logPrefix(self) -> str:
        """
        What Twisted's legacy log calls this factory's port.

        @return: C{caret}.
        """
        return "caret"
