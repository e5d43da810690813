"""
The load generator behind C{caret-bench}: connections that drive a caret
server and check every byte it answers against L{caretproto.rules}.

A L{Load} is one process's share of the connections; L{caretproto.benchrun}
spreads a run over processes, merges their L{Tally}s and reports.  This module
is built to cost the client as little as possible per message: the reply a
round expects is computed once, a read is checked with one comparison in the
common case, and nothing is logged per message.  It is not a client API (a
program that wants to talk caret uses L{caretproto.client}) and it asserts no
speed.

Modes:
  - C{rr}: rounds of one message of C{size} bytes and its reply, one round in
    flight per connection (no pipelining), as fast as the server answers;
  - C{bulk}: each connection opens one message and streams its body without
    end, under flow control; the replies are checked and counted;
  - C{hold}: the connections are opened and held idle, then each does one
    round;
  - C{sessions}: the reference client session (docs/protocol.rst) on every
    connection at once; what counts is the elapsed time.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.reference import (
    REFERENCE_SCRIPT,
    Script,
    ScriptRunner,
    expectedReplies,
)
from caretproto.rules import GREETING, MSG_END, MSG_START, State, feed, replyTo
from caretproto.writenow import writeNow

MODES = ("rr", "bulk", "hold", "sessions")
"""What a load can run, as C{--mode} names it (the module's docstring says
what each is)."""

BODY_PATTERN = bytes(b for b in range(256) if b != MSG_END[0])
"""Every byte a message body may hold, once: 255 bytes."""

BULK_WRITE = BODY_PATTERN * 257
"""One write of the endless bulk message: 65,535 bytes, whole periods."""

CONNECTING_AT_ONCE = 500
"""
Connection attempts in flight at once in the modes that set connections up
before measuring: enough to open thousands in seconds, few enough not to
overflow the server's listen backlog into SYN retransmissions.
"""

ERROR_SAMPLES = 5
"""Error descriptions kept for the report; the rest are only counted."""

GRACE = 10.0
"""Seconds a connection has to finish its round once the window closed."""


def message(size: int) -> bytes:
    """
    A message of C{size} bytes on the wire: C{^}, C{size - 2} body, C{$}.

    @param size: the message's length, C{^} and C{$} included: at least 2.
    @return: the message; its body is L{BODY_PATTERN}, repeated and cut
        to length.
    """
    return (
        MSG_START
        + (BODY_PATTERN * (size // len(BODY_PATTERN) + 1))[: size - 2]
        + MSG_END
    )


@dataclass
class Tally:
    """
    What one process measured.  L{merge} adds tallies of processes that ran
    side by side.

    @ivar rounds: rounds (rr, hold) or sessions completed in the window.
    @ivar bytes: reply bytes checked in the window.
    @ivar errors: wrong bytes, failed connections and unasked-for closes,
        counted.
    @ivar elapsed: the window, in seconds: C{duration} for rr and bulk, the
        round on every connection for hold, start to the last close for
        sessions.
    @ivar latencyMicros: round (or session) durations, in microseconds, counted.
    @ivar connections: connections asked for.
    @ivar held: connections greeted and still open when the window began.
    @ivar connectSeconds: seconds to open and greet every connection.
    @ivar errorSamples: the first few errors' descriptions (at most
        L{ERROR_SAMPLES}).
    """

    rounds: int = 0
    bytes: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencyMicros: Counter[int] = field(default_factory=Counter)
    connections: int = 0
    held: int = 0
    connectSeconds: float = 0.0
    errorSamples: list[str] = field(default_factory=list)

    def toJSON(self) -> dict[str, Any]:
        """
        This tally as a load process sends it to the runner.

        @return: a dictionary that C{json.dumps} takes, and L{fromJSON}
            turns back into an equal tally.
        """
        return {
            "rounds": self.rounds,
            "bytes": self.bytes,
            "errors": self.errors,
            "elapsed": self.elapsed,
            "latency_us": {str(k): v for k, v in self.latencyMicros.items()},
            "connections": self.connections,
            "held": self.held,
            "connect_s": self.connectSeconds,
            "error_samples": self.errorSamples,
        }

    @classmethod
    def fromJSON(cls, data: dict[str, Any]) -> Tally:
        """
        The tally that L{toJSON} described.

        @param data: what L{toJSON} returned, through JSON.
        @return: the tally.
        """
        return cls(
            rounds=data["rounds"],
            bytes=data["bytes"],
            errors=data["errors"],
            elapsed=data["elapsed"],
            latencyMicros=Counter({int(k): v for k, v in data["latency_us"].items()}),
            connections=data["connections"],
            held=data["held"],
            connectSeconds=data["connect_s"],
            errorSamples=list(data["error_samples"]),
        )

    def merge(self, other: Tally) -> Tally:
        """
        Two shares run side by side, as one: counts add, windows overlap.

        @param other: the other share's tally.
        @return: a new tally; neither is changed.
        """
        return Tally(
            rounds=self.rounds + other.rounds,
            bytes=self.bytes + other.bytes,
            errors=self.errors + other.errors,
            elapsed=max(self.elapsed, other.elapsed),
            latencyMicros=self.latencyMicros + other.latencyMicros,
            connections=self.connections + other.connections,
            held=self.held + other.held,
            connectSeconds=max(self.connectSeconds, other.connectSeconds),
            errorSamples=(self.errorSamples + other.errorSamples)[:ERROR_SAMPLES],
        )

    def percentileMs(self, fraction: float) -> float | None:
        """
        The round duration below which C{fraction} of rounds fell, in ms.

        @param fraction: from 0 to 1: C{0.5} for the median, C{0.99} for the
            99th percentile.
        @return: the duration, to the microsecond; C{None} if no round was
            counted.
        @raise AssertionError: if the counts do not add up to their total,
            which a tally of this module's never does.
        """
        total = sum(self.latencyMicros.values())
        if not total:
            return None
        rank = fraction * total
        seen = 0
        for micros in sorted(self.latencyMicros):
            seen += self.latencyMicros[micros]
            if seen >= rank:
                return micros / 1000
        raise AssertionError("unreachable: ranks are within the total")


class ILoadTransport(ITCPTransport, IConsumer):
    """
    What a load connection needs of its transport: TCP's half-close and
    abort, and a producer slot for bulk's flow control.  TLS transports are
    such too.
    """


class _Connection(Protocol):
    """
    One load connection: checks the greeting, then hands every read to
    C{replyReceived}.  Any byte that is not what the rules say, or a close
    the load did not ask for, is an error and ends the connection.

    @ivar load: the load this connection is part of.
    @ivar transport: the connection, once made: TCP, or TLS over it.
    @ivar isReady: whether the greeting has come.
    @ivar ended: whether the connection failed, or was lost unasked.
    @ivar closing: whether the load has closed it.
    """

    load: Load
    transport: ILoadTransport
    isReady = False
    ended = False
    closing = False

    def connectionMade(self) -> None:
        """Tell the load that this connection is open."""
        self.load.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        """
        Check the greeting, then hand every read to C{replyReceived}.

        @param data: bytes from the server, as cut by the network.
        """
        if self.isReady:
            self.replyReceived(data)
            return
        # The client sends nothing before the greeting, so the first read
        # must be exactly the greeting.
        if data != GREETING:
            self.fail(f"expected the greeting {GREETING!r}, got {data[:40]!r}")
            return
        self.load.greeted(self)

    def replyReceived(self, data: bytes) -> None:
        """
        Check reply bytes against what the mode expects.

        @param data: reply bytes, after the greeting, as cut by the network.
        @raise NotImplementedError: always, here; each mode's connection
            checks its own replies.
        """
        raise NotImplementedError

    def begin(self) -> None:
        """The measurement starts: do what the mode does."""

    def close(self) -> None:
        """The load is done with this connection."""
        self.closing = True
        self.transport.loseConnection()

    def fail(self, reason: str) -> None:
        """
        Count an error, once, and drop the connection.

        @param reason: what went wrong, for the report.
        """
        if self.ended:
            return
        self.ended = True
        self.load.error(reason)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Count a close that neither the load nor a failure asked for as an
        error, and tell the load the connection is gone.

        @param reason: why the connection was lost.
        """
        if not (self.closing or self.ended):
            self.ended = True
            self.load.error(f"server closed the connection: {reason.getErrorMessage()}")
        self.load.connectionLost(self)


class _RoundTrips(_Connection):
    """rr and hold: send a message, wait for its whole reply, check it."""

    def setUp(self, message: bytes, reply: bytes) -> None:
        self.message = message
        self.reply = reply
        self.got = 0
        self.sentAt = 0.0

    def begin(self) -> None:
        self.sentAt = time.perf_counter()
        writeNow(self.transport, self.message)

    def replyReceived(self, data: bytes) -> None:
        # The common case, a whole reply in one read, is one comparison; a
        # reply cut into reads is checked piece by piece where it falls.
        if self.got or data != self.reply:
            end = self.got + len(data)
            if data != self.reply[self.got : end] or end > len(self.reply):
                self.fail(
                    f"expected the reply {self.reply[:40]!r}, got "
                    f"{data[:40]!r} after {self.got} right bytes"
                )
                return
            if end < len(self.reply):
                self.got = end
                return
            self.got = 0
        now = time.perf_counter()
        self.load.latencies.append(now - self.sentAt)
        if self.load.measuring:
            self.sentAt = now
            writeNow(self.transport, self.message)
        else:
            self.close()


@implementer(IPushProducer)
class _Stream(_Connection):
    """
    bulk: one endless message, written whenever the transport can take more
    (this connection is its transport's streaming producer), its replies
    checked as they come.
    """

    def setUp(self, expected: bytes) -> None:
        # expected holds the reply stream from any phase of the pattern for
        # at least one read's length.
        self.expected = expected
        self.phase = 0
        self.sent = 0
        self.received = 0
        self.producing = False

    def begin(self) -> None:
        self.transport.registerProducer(self, True)
        self.transport.write(MSG_START)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.producing = True
        write = self.transport.write
        # write() calls pauseProducing once the transport's buffer is full.
        while self.producing and self.load.measuring:
            write(BULK_WRITE)
            self.sent += len(BULK_WRITE)

    def pauseProducing(self) -> None:
        self.producing = False

    def stopProducing(self) -> None:
        self.producing = False

    def end(self) -> None:
        """Stop sending; the server then sends what it owes and closes."""
        self.producing = False
        self.closing = True
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()

    def replyReceived(self, data: bytes) -> None:
        phase = self.phase
        if len(data) + phase <= len(self.expected):
            right = data == self.expected[phase : phase + len(data)]
        else:
            right = self._checkLongRead(data)
        if not right:
            self.fail(f"wrong byte in the bulk replies after {self.received} bytes")
            return
        self.received += len(data)
        self.phase = self.received % len(BODY_PATTERN)

    def _checkLongRead(self, data: bytes) -> bool:
        """Check a read longer than C{expected}, piece by piece."""
        piece = len(self.expected) - len(BODY_PATTERN)
        for at in range(0, len(data), piece):
            phase = (self.received + at) % len(BODY_PATTERN)
            chunk = data[at : at + piece]
            if chunk != self.expected[phase : phase + len(chunk)]:
                return False
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Every body byte sent (all but the opening ^) is owed a reply.
        if self.closing and not self.ended and self.received != self.sent:
            self.ended = True
            self.load.error(
                f"server closed after {self.received} of {self.sent} reply bytes"
            )
        super().connectionLost(reason)


class _SessionSteps(ScriptRunner):
    """
    The reference session's steps on one load connection, checked read by
    read and ended at the last reply (L{ScriptRunner.followReplies}).
    """

    followReplies = True

    def __init__(
        self, session: _Session, reactor: IReactorTime, script: Script, expected: bytes
    ) -> None:
        super().__init__(reactor, session.send, script, expected)
        self.session = session

    def scriptEnded(self) -> None:
        self.session.finish()

    def repliesWrong(self) -> None:
        self.session.fail(
            f"expected the replies {self.expected!r}, got {self.received!r}"
        )


class _Session(_Connection):
    """The reference client session of docs/protocol.rst, timed."""

    def setUp(self, reactor: IReactorTime, script: Script, expected: bytes) -> None:
        self.steps = _SessionSteps(self, reactor, script, expected)

    def send(self, data: bytes) -> None:
        writeNow(self.transport, data)

    def begin(self) -> None:
        self.steps.start()

    def replyReceived(self, data: bytes) -> None:
        self.steps.replyReceived(data)

    def finish(self) -> None:
        self.load.latencies.append(time.perf_counter() - self.load.startedAt)
        self.close()

    def fail(self, reason: str) -> None:
        self.steps.stop()
        super().fail(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.steps.stop()
        super().connectionLost(reason)


class _LoadFactory(Factory):
    noisy = False

    def __init__(self, load: Load) -> None:
        self.load = load

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.load.newConnection()


class Load:
    """
    One process's share of a run: C{connections} connections of C{mode}.
    C{script} is the session that C{sessions} runs (the reference session of
    L{caretproto.reference}, unless a test wants it shorter).

    Call L{connect}, then L{start} once it has fired; L{start} fires with the
    L{Tally} when every connection is closed.

    Its connections call it back as they go (L{newConnection},
    L{connectionMade}, L{greeted}, L{error}, L{connectionLost}).

    @ivar reactor: what connects, and what the window is timed on.
    @ivar mode: one of L{MODES}.
    @ivar connections: how many connections the share opens.
    @ivar size: bytes of each rr or hold message on the wire.
    @ivar duration: seconds of the window (rr, bulk) or of holding (hold).
    @ivar greetingTimeout: seconds every connection has to be greeted.
    @ivar factory: the factory the connections are built by, through
        L{newConnection}.
    @ivar latencies: round (or session) durations in seconds, in the order
        they completed.
    @ivar measuring: whether the window is open.
    @ivar startedAt: when the window (or, for hold, the round on each
        connection) began, on C{time.perf_counter}'s clock.
    @ivar tally: the figures, as they are counted.
    @ivar open: the connections open now.
    @ivar ready: the connections greeted before the window opened.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        mode: str,
        connections: int,
        size: int = 16,
        duration: float = 10.0,
        script: Script = REFERENCE_SCRIPT,
        greetingTimeout: float = 10.0,
    ) -> None:
        """
        A load with no connection yet: L{connect} opens them.

        @param reactor: the reactor: an C{IReactorTime} that the endpoint
            connects with.
        @param endpoint: where the server is; every connection opens it.
        @param mode: what to run, one of L{MODES}.
        @param connections: how many connections.
        @param size: bytes of each rr or hold message on the wire, C{^} and
            C{$} included.
        @param duration: seconds to measure (rr, bulk) or to hold (hold).
        @param script: the session that sessions runs.
        @param greetingTimeout: seconds every connection has to be greeted,
            in the modes that connect before measuring.
        @raise ValueError: C{mode} is not one of L{MODES}.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}: {mode!r}")
        self.reactor = reactor
        self._endpoint = endpoint
        self.mode = mode
        self.connections = connections
        self.size = size
        self.duration = duration
        self.greetingTimeout = greetingTimeout
        self.factory = _LoadFactory(self)
        self.latencies: list[float] = []
        self.measuring = False
        self.startedAt = 0.0
        self.tally = Tally(connections=connections)
        self.open: set[_Connection] = set()
        self.ready: list[_Connection] = []
        self._attempts = 0
        self._settled = 0
        self._ending = False
        self._connectStarted = 0.0
        self._connected: Deferred[None] | None = None
        self._attemptsConnecting: list[Deferred[IProtocol]] = []
        self._waitingForGreetings: IDelayedCall | None = None
        self._done: Deferred[Tally] = Deferred()
        self._windowEnd: float | None = None
        self._givingUp: IDelayedCall | None = None
        self._message = message(size)
        _, self._reply, _ = feed(State.WAIT_FOR_MSG, self._message)
        periods = 2 * len(BULK_WRITE) // len(BODY_PATTERN) + 2
        self._bulkReplies = replyTo(BODY_PATTERN * periods)
        self._script = script
        self._sessionReplies = expectedReplies(script)

    def progress(self) -> dict[str, Any]:
        """
        What the load has done so far, for a live display.

        @return: counts of connections C{ready} and C{open}, of C{rounds}
            completed, of reply C{bytes} checked, and of C{errors}.
        """
        rounds = len(self.latencies)
        if self.mode == "bulk":
            replyBytes = self.tally.bytes + sum(
                c.received for c in self.open if isinstance(c, _Stream)
            )
        else:
            replyBytes = rounds * len(self._reply)
        return {
            "ready": len(self.ready),
            "open": len(self.open),
            "rounds": rounds,
            "bytes": replyBytes,
            "errors": self.tally.errors,
        }

    # Setting up.

    def connect(self) -> Deferred[None]:
        """
        Open and greet the connections, C{CONNECTING_AT_ONCE} at a time.
        Fires when every attempt has been greeted or has failed; attempts not
        greeted within C{greetingTimeout} seconds fail (a sequential or
        thread-pool server greets only as many as it serves at once).  For
        sessions, whose first contact is part of what is timed, connecting
        waits for L{start} and this fires at once.

        @return: fires with C{None} once every attempt is settled; never
            fails, since a connection's failure is counted in the tally.
        """
        if self.mode == "sessions":
            return succeed(None)
        self._connectStarted = time.perf_counter()
        self._connected = Deferred()
        self._waitingForGreetings = self.reactor.callLater(
            self.greetingTimeout, self._stopWaitingForGreetings
        )
        for _ in range(min(CONNECTING_AT_ONCE, self.connections)):
            self._attempt()
        return self._connected

    def _attempt(self) -> None:
        self._attempts += 1
        attempt = self._endpoint.connect(self.factory)
        attempt.addErrback(self._connectFailed)
        if self._connected is not None and not attempt.called:
            self._attemptsConnecting.append(attempt)

    def _connectFailed(self, reason: Failure) -> None:
        self.error(f"cannot connect: {reason.getErrorMessage()}")
        self._settle()

    def _stopWaitingForGreetings(self) -> None:
        self._waitingForGreetings = None
        reason = f"no greeting within {self.greetingTimeout:g}s"
        neverTried = self.connections - self._attempts
        if neverTried:
            self._attempts = self.connections
            self._settled += neverTried
            for _ in range(neverTried):
                self.error(f"{reason} (not tried)")
        # An attempt that connected already (or failed) is not cancelled:
        # its connection is failed below, if it was not greeted.
        for attempt in self._attemptsConnecting:
            attempt.cancel()
        for connection in list(self.open):
            if not connection.isReady:
                connection.fail(reason)
        if self._settled == self.connections:
            self._allSettled()

    def _settle(self) -> None:
        """A connection attempt is over: greeted, failed, or (sessions) done."""
        self._settled += 1
        if self._connected is None:
            self._maybeDone()
        elif self._attempts < self.connections:
            self._attempt()
        elif self._settled == self.connections:
            self._allSettled()

    def _allSettled(self) -> None:
        if self._connected is None:
            return
        if self._waitingForGreetings is not None:
            self._waitingForGreetings.cancel()
            self._waitingForGreetings = None
        self._attemptsConnecting = []
        self.tally.connectSeconds = time.perf_counter() - self._connectStarted
        connected, self._connected = self._connected, None
        connected.callback(None)

    def newConnection(self) -> _Connection:
        """
        Build the protocol of one connection, as the mode has it.

        @return: the connection, set up with what its replies must be.
        """
        connection: _Connection
        if self.mode in ("rr", "hold"):
            connection = _RoundTrips()
            connection.setUp(self._message, self._reply)
        elif self.mode == "bulk":
            connection = _Stream()
            connection.setUp(self._bulkReplies)
        else:
            connection = _Session()
            connection.setUp(self.reactor, self._script, self._sessionReplies)
        connection.load = self
        return connection

    def connectionMade(self, connection: _Connection) -> None:
        """
        Count C{connection} as open.

        @param connection: a connection of this load, just connected.
        """
        self.open.add(connection)

    def greeted(self, connection: _Connection) -> None:
        """
        C{connection} was greeted: it is ready to measure, or, for sessions,
        it begins its session now.

        @param connection: a connection of this load.
        """
        connection.isReady = True
        if self.mode == "sessions":
            connection.begin()
            return
        self.ready.append(connection)
        self._settle()

    def error(self, reason: str) -> None:
        """
        Count an error; keep and log its description if it is one of the
        first few (L{ERROR_SAMPLES}).

        @param reason: what went wrong.
        """
        self.tally.errors += 1
        if len(self.tally.errorSamples) < ERROR_SAMPLES:
            self.tally.errorSamples.append(reason)
            self._log.error("caret-bench: {reason}", reason=reason)

    def connectionLost(self, connection: _Connection) -> None:
        """
        C{connection} is gone: that settles its attempt if it was never
        greeted (or, for sessions, its session), and may end the load.

        @param connection: a connection of this load.
        """
        self.open.discard(connection)
        if self.mode == "sessions" or not connection.isReady:
            self._settle()
        else:
            self._maybeDone()

    # Measuring.

    def start(self) -> Deferred[Tally]:
        """
        Open the window: rr and bulk measure on the connections greeted,
        hold waits L{duration} and then does one round on each, sessions
        connects and runs every session.

        @return: fires with the L{Tally} once every connection has closed.
        """
        self.startedAt = time.perf_counter()
        if self.mode == "sessions":
            self.measuring = True
            self._ending = True
            for _ in range(self.connections):
                self._attempt()
        elif self.mode == "hold":
            self.reactor.callLater(self.duration, self._roundOnEach)
        else:
            self.tally.held = len(self.open)
            self.measuring = True
            for connection in self.ready:
                if not connection.ended:
                    connection.begin()
            self.reactor.callLater(self.duration, self._closeWindow)
        return self._done

    def _roundOnEach(self) -> None:
        self.tally.held = len(self.open)
        self.startedAt = time.perf_counter()
        self._endWithin(GRACE)
        for connection in list(self.open):
            connection.begin()

    def _closeWindow(self) -> None:
        self.measuring = False
        self._windowEnd = time.perf_counter()
        self.tally.rounds = len(self.latencies)
        self._endWithin(GRACE)
        if self.mode == "bulk":
            for connection in list(self.open):
                assert isinstance(connection, _Stream)
                self.tally.bytes += connection.received
                connection.end()

    def _endWithin(self, grace: float) -> None:
        """From now on the load ends when no connection is open, or gives up
        on the stragglers after C{grace} seconds."""
        self._ending = True
        self._givingUp = self.reactor.callLater(grace, self._giveUp)
        self._maybeDone()

    def _giveUp(self) -> None:
        for connection in list(self.open):
            connection.fail(f"no reply within {GRACE:g}s of the end")

    def _maybeDone(self) -> None:
        if self._ending and not self.open and self._settled == self._attempts:
            if not self._done.called:
                self._finish()

    def _finish(self) -> None:
        tally = self.tally
        now = time.perf_counter()
        if self.mode in ("rr", "bulk"):
            assert self._windowEnd is not None
            tally.elapsed = self._windowEnd - self.startedAt
            samples = self.latencies[: tally.rounds]
        else:
            tally.elapsed = now - self.startedAt
            samples = self.latencies
            tally.rounds = len(samples)
        if self.mode in ("rr", "hold"):
            tally.bytes = tally.rounds * len(self._reply)
        elif self.mode == "sessions":
            tally.bytes = tally.rounds * len(self._sessionReplies)
        tally.latencyMicros = Counter(int(seconds * 1_000_000) for seconds in samples)
        if self._givingUp is not None and self._givingUp.active():
            self._givingUp.cancel()
        self._done.callback(tally)
