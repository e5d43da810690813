"""
Sessions on a L{StringTransport}, for unit tests: no sockets, no reactor;
time is a L{Clock} the test advances.  And what C{--port} endpoints ask of
a L{MemoryReactor} when they listen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import twisted.internet
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from caretproto.server import CaretFactory, CaretProtocol


def clockedFactory() -> tuple[CaretFactory, Clock]:
    """A factory whose timers run on a fresh L{Clock}."""
    clock = Clock()
    return CaretFactory(clock=clock), clock


def connect(
    factory: CaretFactory, peer: IAddress | str = "127.0.0.1", port: int = 40000
) -> tuple[CaretProtocol, StringTransport]:
    """A session of C{factory} on a L{StringTransport} from C{peer}."""
    address = IPv4Address("TCP", peer, port) if isinstance(peer, str) else peer
    transport = StringTransport(peerAddress=address)
    session = factory.buildProtocol(address)
    assert isinstance(session, CaretProtocol)
    session.makeConnection(transport)
    return session, transport


def messages(events: Iterable[LogEvent]) -> list[str]:
    """The formatted text of captured log events."""
    return [formatEvent(event) for event in events]


def listenedAs(case: SynchronousTestCase, *argv: str) -> list[tuple[Any, ...]]:
    """
    What the endpoints of C{twistd caret ARGV}'s C{--port}s ask of a reactor
    when they listen: L{MemoryReactor.tcpServers}' C{(port, factory,
    backlog, interface)} each.  The options build their endpoints on the
    global reactor, which is a L{MemoryReactor} while they are parsed here.
    """
    from caretproto.tap import Options

    memory = MemoryReactor()
    case.patch(twisted.internet, "reactor", memory)
    options = Options()
    options.parseOptions(list(argv))
    for endpoint in options["endpoints"]:
        endpoint.listen(Factory())
    return memory.tcpServers


def unstartedReactor(test: SynchronousTestCase, kind: type[Any]) -> Any:
    """
    A reactor of C{kind} (an epoll reactor), never run, whose descriptors
    (its epoll object and its waker) C{test} closes when it ends.
    """
    reactor = kind()
    poller = reactor._poller

    def close() -> None:
        # A test may have put a fake in its place.
        reactor._poller = poller
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        poller.close()

    test.addCleanup(close)
    return reactor
