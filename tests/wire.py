"""
Client and server protocols joined in memory, for tests that drive time
with a L{Clock}: a L{WiredEndpoint} connects each client it is asked for to
a new server protocol, and L{WiredEndpoint.pump} moves the bytes.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableDescriptor, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHalfCloseableDescriptor)
class HalfCloseableTransport(StringTransport):
    """A StringTransport that can close its writing side, as TCP can."""

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def writeConnectionLost(self, reason: object) -> None:
        """Part of IHalfCloseableDescriptor; unused here."""

    def readConnectionLost(self, reason: object) -> None:
        """Part of IHalfCloseableDescriptor; unused here."""


class Wire:
    """
    One connection: what each side writes reaches the other on L{pump}.
    The server reads nothing while its transport is paused, as a real one.
    """

    def __init__(self, client: Protocol, server: Protocol) -> None:
        self.client = client
        self.server = server
        self.clientTransport = HalfCloseableTransport()
        self.serverTransport = StringTransport()
        self.readClosed = False
        self.gone = False
        server.makeConnection(self.serverTransport)
        client.makeConnection(self.clientTransport)

    def pump(self) -> bool:
        """Move what is waiting; return whether anything happened."""
        if self.gone:
            return False
        moved = False
        if self.serverTransport.producerState != "paused":
            sent = self.clientTransport.value()
            if sent:
                self.clientTransport.clear()
                self.server.dataReceived(sent)
                moved = True
            if self.clientTransport.writeClosed and not self.readClosed:
                self.readClosed = True
                self.server.readConnectionLost()  # type: ignore[attr-defined]
                moved = True
        replied = self.serverTransport.value()
        if replied:
            self.serverTransport.clear()
            self.client.dataReceived(replied)
            moved = True
        if self.serverTransport.disconnecting or self.clientTransport.disconnecting:
            self.gone = True
            done = Failure(ConnectionDone())
            self.server.connectionLost(done)
            self.client.connectionLost(done)
            moved = True
        return moved


@implementer(IStreamClientEndpoint)
class WiredEndpoint:
    """Connects every client to a new protocol from C{serverFactory}."""

    def __init__(self, serverFactory: Factory) -> None:
        self.serverFactory = serverFactory
        self.wires: list[Wire] = []

    def connect(self, factory: Factory):  # type: ignore[no-untyped-def]
        client = factory.buildProtocol(None)
        server = self.serverFactory.buildProtocol(None)
        self.wires.append(Wire(client, server))
        return succeed(client)

    def pump(self) -> None:
        """Move bytes on every wire until none move."""
        while any([wire.pump() for wire in self.wires]):
            pass

    def runUntil(self, clock: Clock, done: object) -> None:
        """
        Pump, and advance C{clock} from one delayed call to the next, until
        C{done} (a Deferred) has fired.
        """
        while True:
            self.pump()
            if done.called:  # type: ignore[attr-defined]
                return
            calls = clock.getDelayedCalls()
            if not calls:
                raise AssertionError("nothing left to happen, and not done")
            clock.advance(min(call.getTime() for call in calls) - clock.seconds())
