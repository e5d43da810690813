"""
Real sockets on 127.0.0.1, for the few tests whose subject is the network:
a caret server on an ephemeral port, and a client that records what it
receives and can stop reading.  Not a caret client API: it holds no rules
and checks nothing; the tests compare what it received with
L{caretproto.rules.feed}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.server import CaretFactory


async def serve(case: TestCase, factory: CaretFactory) -> IListeningPort:
    """Listen with C{factory} on an ephemeral loopback port until C{case} ends."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    case.addCleanup(port.stopListening)
    return port


class Recorder(Protocol):
    """
    A client that keeps every byte it receives and can stop and resume
    reading, as a client that sends without reading does.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.ready: Deferred[Recorder] = Deferred()
        self.closed: Deferred[bytes] = Deferred()
        self.reason: Failure | None = None
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        waiting, self._waiting = self._waiting, []
        for size, waiter in waiting:
            if len(self.received) >= size:
                waiter.callback(None)
            else:
                self._waiting.append((size, waiter))

    def whenReceived(self, size: int) -> Deferred[None]:
        """Fires once C{size} bytes in all have arrived."""
        waiter: Deferred[None] = Deferred()
        if len(self.received) >= size:
            waiter.callback(None)
        else:
            self._waiting.append((size, waiter))
        return waiter

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.closed.callback(bytes(self.received))


async def connect(port: IListeningPort) -> Recorder:
    """A L{Recorder} connected to C{port}."""
    address = port.getHost()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)  # type: ignore[attr-defined]
    client = await endpoint.connect(Factory.forProtocol(Recorder))
    return await client.ready


async def settle(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """
    Wait until C{condition()} holds, polling: for a state the network
    reaches in its own time (kernel buffers filling), where no event says so.
    """
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, interval)
        waited += interval
