"""
Sessions on a L{StringTransport}, for unit tests: no sockets, no reactor;
time is a L{Clock} the test advances.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent

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
