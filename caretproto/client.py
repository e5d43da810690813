"""
A Twisted client for the caret protocol, for tests and tools.

L{CaretClientProtocol} waits for the greeting, sends raw bytes or whole
messages, and matches the replies to the requests that asked for them.  It
knows what every byte it sends will be answered with from
L{caretproto.rules}, so raw sends and requests can be mixed and pipelined.
L{connect} opens one through any client endpoint description (C{tcp:},
C{unix:}, C{tls:}...).

It checks no reply against the rules: callers compare what they get with
what they expect, so that a client can report a wrong server rather than
hide it.  The reference client session of docs/protocol.rst
lives in L{caretproto.referenceclient}.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import cast

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IReactorCore,
    IStreamClientEndpoint,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from caretproto.rules import GREETING, MSG_END, MSG_START, State, feed
from caretproto.writenow import writeNow


class GreetingError(Exception):
    """The server said something other than the greeting C{*} first."""


class ConnectionClosed(Exception):
    """The connection was lost while replies were still owed."""


@dataclass
class _Owed:
    """
    Reply bytes owed for one send, in the order they were sent.

    @ivar remaining: reply bytes still to come for it.
    @ivar request: the request's Deferred, or C{None} for a raw send.
    @ivar parts: a request's reply bytes so far, as cut by the network.
    """

    remaining: int
    request: Deferred[bytes] | None = None
    parts: list[bytes] = field(default_factory=list)


class CaretClientProtocol(Protocol):
    """
    One client connection to a caret server.

    @ivar greeted: fires with this protocol when the greeting arrives; fails
        with L{GreetingError} if the server sends anything else first or
        closes before greeting.
    @ivar closed: fires when the connection is gone.
    @ivar lostReason: why it went, once it has.
    @ivar state: the server's state, as the bytes sent so far leave it.
    @ivar owed: reply bytes sent for but not yet received.
    @ivar transport: the connection, once made.
    """

    transport: ITransport
    state = State.WAIT_FOR_MSG
    owed = 0
    lostReason: Failure | None = None
    _greetingSeen = False

    def __init__(self) -> None:
        """
        A protocol not yet connected: L{greeted} and L{closed} are waiting.
        """
        self.greeted: Deferred[CaretClientProtocol] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._owedQueue: deque[_Owed] = deque()

    def send(self, data: bytes) -> None:
        """
        Send raw bytes: any part of any message, or none.  Their replies
        reach L{replyReceived} and are counted ahead of later requests.

        @param data: the bytes, as the server is to receive them.
        """
        self._expect(data)
        writeNow(self.transport, data)

    def request(self, body: bytes) -> Deferred[bytes]:
        """
        Send C{^body$} and fire with its reply, however it is cut into
        reads: C{len(body)} bytes, which a correct server makes
        L{caretproto.rules.replyTo}C{(body)}.  Requests may be pipelined;
        each fires in turn.  (Were a raw L{send} to leave a message open, the
        C{^} would be answered too, and the reply one byte longer.)

        @param body: the message's body, without its C{^} and C{$}.
        @return: fires with the reply's bytes; fails with L{ConnectionClosed}
            if the connection is lost before all have arrived.
        @raise ValueError: if C{body} contains C{$}, which would end the
            message early.
        """
        if MSG_END in body:
            raise ValueError(f"a request body cannot contain {MSG_END!r}: {body!r}")
        reply: Deferred[bytes] = Deferred()
        self._expect(MSG_START + body + MSG_END, reply)
        writeNow(self.transport, MSG_START + body + MSG_END)
        self._deliverEmpty()
        return reply

    def close(self) -> None:
        """
        End the session as docs/protocol.rst says ("Ending a session"): close
        our sending side and let the server deliver what it owes, then close.
        L{closed} fires then.  A transport that cannot half-close (TLS) is
        closed entirely.
        """
        if IHalfCloseableDescriptor.providedBy(self.transport):
            cast(ITCPTransport, self.transport).loseWriteConnection()
        else:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once, replies owed or not."""
        abortConnection = getattr(
            self.transport, "abortConnection", self.transport.loseConnection
        )
        abortConnection()

    def replyReceived(self, data: bytes) -> None:
        """
        Reply bytes arrived, as cut by the network.  Override to see them;
        requests receive theirs regardless.

        @param data: the bytes, after the greeting, in the order received.
        """

    def _expect(self, data: bytes, request: Deferred[bytes] | None = None) -> None:
        self.state, reply, _ = feed(self.state, data)
        if reply or request is not None:
            self.owed += len(reply)
            self._owedQueue.append(_Owed(len(reply), request))

    def dataReceived(self, data: bytes) -> None:
        """
        Check the greeting, then hand the bytes after it to L{replyReceived}
        and to the requests they answer, oldest first.  A first byte other
        than the greeting fails L{greeted} with L{GreetingError} and closes
        the connection; what comes after that is ignored.

        @param data: bytes from the server, as cut by the network.
        """
        if not self._greetingSeen:
            if self.greeted.called:
                # The greeting was wrong, or its waiter gave up: the
                # connection is closing and nothing it says matters.
                return
            if data[:1] != GREETING:
                self.transport.loseConnection()
                self.greeted.errback(
                    GreetingError(f"expected the greeting {GREETING!r}, got {data!r}")
                )
                return
            self._greetingSeen = True
            self.greeted.callback(self)
            data = data[1:]
            if not data:
                return
        self.replyReceived(data)
        self._match(data)

    def _match(self, data: bytes) -> None:
        """Hand received reply bytes to what they answer, oldest first."""
        start = 0
        while start < len(data) and self._owedQueue:
            owed = self._owedQueue[0]
            take = min(owed.remaining, len(data) - start)
            if owed.request is not None:
                owed.parts.append(data[start : start + take])
            owed.remaining -= take
            self.owed -= take
            start += take
            if owed.remaining == 0:
                self._owedQueue.popleft()
                if owed.request is not None:
                    owed.request.callback(b"".join(owed.parts))
        self._deliverEmpty()

    def _deliverEmpty(self) -> None:
        """Fire requests at the head that are owed nothing (empty bodies)."""
        while self._owedQueue and self._owedQueue[0].remaining == 0:
            owed = self._owedQueue.popleft()
            if owed.request is not None:
                owed.request.callback(b"".join(owed.parts))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Fail what still waits: L{greeted} with L{GreetingError} if the
        greeting never came, each unanswered request with
        L{ConnectionClosed}; then keep C{reason} as L{lostReason} and fire
        L{closed}.

        @param reason: why the connection was lost.
        """
        if not self.greeted.called:
            self.greeted.errback(
                GreetingError(
                    f"connection closed before the greeting: {reason.getErrorMessage()}"
                )
            )
        pending, self._owedQueue = self._owedQueue, deque()
        for owed in pending:
            if owed.request is not None:
                owed.request.errback(
                    ConnectionClosed(
                        f"connection closed {owed.remaining} bytes short of a "
                        f"reply: {reason.getErrorMessage()}"
                    )
                )
        self.lostReason = reason
        self.closed.callback(None)


class CaretClientFactory(Factory):
    """
    Builds L{CaretClientProtocol}s, quietly: a tool opening ten thousand
    connections does not want two log events for each.

    @cvar noisy: C{False}: no log event as each connection starts and stops.
    """

    protocol = CaretClientProtocol
    noisy = False


def connectEndpoint(
    endpoint: IStreamClientEndpoint,
    factory: Factory | None = None,
) -> Deferred[CaretClientProtocol]:
    """
    Connect to a caret server through C{endpoint}; fire with the protocol
    (a L{CaretClientProtocol}, built by C{factory}) once connected, before
    the greeting (see L{CaretClientProtocol.greeted}).

    @param endpoint: where the server is.
    @param factory: what builds the protocol; a L{CaretClientFactory} if
        C{None}.
    @return: fires with the connected protocol, or fails as
        C{endpoint.connect} does (C{ConnectionRefusedError}...).
    """
    connecting = endpoint.connect(factory or CaretClientFactory())
    return cast("Deferred[CaretClientProtocol]", connecting)


def connect(reactor: IReactorCore, description: str) -> Deferred[CaretClientProtocol]:
    """
    Connect to a caret server through a client endpoint description, like
    C{tcp:host=127.0.0.1:port=9090}, C{unix:path=/run/caret.sock} or
    C{tls:example.com:9443}.

    @param reactor: the reactor to connect with.
    @param description: where the server is, as Twisted's
        C{clientFromString} reads it.
    @return: as L{connectEndpoint}'s: fires with the connected protocol,
        before the greeting.
    @raise ValueError: if C{description} is not a client endpoint description.
    """
    return connectEndpoint(endpoints.clientFromString(reactor, description))
