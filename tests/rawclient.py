"""
A raw caret client for the server's own tests: it sends bytes as told and
keeps every byte it receives, knowing nothing of the protocol, so that what
the server sends is checked against the reference model and not against
another implementation of the rules.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


class RawClient(Protocol):
    """
    @ivar done: fires with all received bytes when the connection is gone.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()
        self._waiting: list[tuple[int, Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        ready = [w for count, w in self._waiting if len(self.received) >= count]
        self._waiting = [(c, w) for c, w in self._waiting if w not in ready]
        for waiter in ready:
            waiter.callback(bytes(self.received))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for _, waiter in self._waiting:
            waiter.errback(reason)
        self._waiting = []
        self.done.callback(bytes(self.received))

    def receivedAtLeast(self, count: int) -> Deferred[bytes]:
        """Fires with everything received once C{count} bytes have come."""
        if len(self.received) >= count:
            return succeed(bytes(self.received))
        waiter: Deferred[bytes] = Deferred()
        self._waiting.append((count, waiter))
        return waiter

    @inlineCallbacks
    def sendInReads(self, reads: list[bytes]) -> Any:
        """Write each read in its own reactor turn."""
        for read in reads:
            self.transport.write(read)  # type: ignore[union-attr]
            yield deferLater(reactor, 0, lambda: None)


def connect(description: str) -> Deferred[RawClient]:
    """Connect a L{RawClient} to a client endpoint description."""
    return connectProtocol(clientFromString(reactor, description), RawClient())
