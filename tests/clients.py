"""
Clients for tests that talk to real servers.

L{ScriptedClient} speaks caret: it sends buffers one at a time, each once the
replies owed for the previous ones have arrived, then closes.  What is owed
comes from L{caretproto.rules}, so the client checks nothing itself: a test
compares what it received with what it expected.  L{get} fetches a page, for
scraping metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IAgent, IResponse

from caretproto.rules import GREETING, State, feed

WORKED_EXAMPLE = [b"^abc$de^abte$f", b"xyz^123", b"25$^ab$abab"]
"""The three buffers of PROTOCOL.md's worked example."""

WORKED_EXAMPLE_ANSWER = b"*bcdbcuf23436bc"
"""All that a server sends for L{WORKED_EXAMPLE}, the greeting included."""


class ScriptedClient(Protocol):
    """
    Send C{buffers} in turn, waiting after each for its replies; close when
    the last replies are in.

    @ivar done: fires with every byte received once the connection is closed.
    @ivar reason: why the connection closed, once it has.
    """

    reason: Failure

    def __init__(self, buffers: Iterable[bytes]) -> None:
        self._buffers = list(buffers)
        self._state = State.WAIT_FOR_MSG
        self._owed = len(GREETING)
        self._closing = False
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._sendWhenAnswered()

    def _sendWhenAnswered(self) -> None:
        while len(self.received) >= self._owed and not self._closing:
            if not self._buffers:
                self._closing = True
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            buffer = self._buffers.pop(0)
            self._state, reply, _ = feed(self._state, buffer)
            self._owed += len(reply)
            self.transport.write(buffer)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.done.callback(self.received)


class _Body(Protocol):
    def __init__(self) -> None:
        self.body = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.body += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(self.body)
        else:
            self.done.errback(reason)


async def get(agent: IAgent, url: bytes) -> tuple[IResponse, bytes]:
    """
    GET C{url}: the response and its whole body.  (Not C{readBody}, which
    warns that it cannot abort the connection of a response already read.)
    """
    response = await agent.request(b"GET", url)
    body = _Body()
    response.deliverBody(body)
    return response, await body.done
