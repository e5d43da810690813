"""
Real sockets, for the tests whose subject is the network: a raw caret client,
a caret server on an ephemeral loopback port, and a way to wait for a state
that the network reaches in its own time.

The client sends bytes as told and keeps every byte it receives, knowing
nothing of the protocol, so that what the server sends is checked against the
reference model and not against another implementation of the rules.  Not for
unit tests: those use L{tests.fakes} or L{tests.wire}, on a StringTransport.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    clientFromString,
    connectProtocol,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from caretproto.server import CaretFactory
from caretproto.service import CaretService


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

    async def sendInReads(self, reads: list[bytes]) -> None:
        """Write each read in its own reactor turn."""
        for read in reads:
            self.transport.write(read)  # type: ignore[union-attr]
            await deferLater(reactor, 0, lambda: None)


def connect(to: str | int | IListeningPort) -> Deferred[RawClient]:
    """
    A L{RawClient} connected to C{to}: a client endpoint description, or a
    port (or its number) on 127.0.0.1.
    """
    if not isinstance(to, str):
        number = to if isinstance(to, int) else to.getHost().port  # type: ignore[attr-defined]
        to = f"tcp:127.0.0.1:{number}"
    return connectProtocol(clientFromString(reactor, to), RawClient())


async def serve(case: TestCase, factory: CaretFactory) -> IListeningPort:
    """Listen with C{factory} on an ephemeral loopback port until C{case} ends."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    case.addCleanup(port.stopListening)
    return port


def startCommand(case: TestCase, *argv: str) -> CaretService:
    """
    Start the service that C{twistd caret ARGV} runs, in this process, until
    C{case} ends; its C{caret} service, listening.
    """
    from caretproto.tap import Options, makeService

    options = Options()
    options.parseOptions(list(argv))
    top = makeService(options)
    top.startService()
    case.addCleanup(top.stopService)
    caret = top.getServiceNamed("caret")  # type: ignore[attr-defined]
    assert isinstance(caret, CaretService)
    return caret


def portNumbers(caret: CaretService) -> list[int]:
    """The port numbers C{caret} listens on, in C{--port} order."""
    return [port.getHost().port for port in caret.ports]  # type: ignore[attr-defined]


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
        await deferLater(reactor, interval)
        waited += interval
