"""
Caret behind a load balancer: the PROXY protocol (C{--port haproxy:tcp:9090}).

Behind a balancer every connection comes from the balancer; the PROXY protocol
header it sends first names the real client.  Twisted parses that header
(L{twisted.protocols.haproxy}); this module changes only I{when} the caret
session starts.  Twisted's wrapper starts the wrapped protocol as soon as the
balancer connects, so a session would greet, and log its peer, before the
header has named the client (Twisted issue #12501).  The PROXY protocol
specification says that a receiver must not start processing a connection
before the whole header has arrived, above all for a protocol where the server
speaks first, as caret's greeting does.  Here a session starts once the header
has come, so C{transport.getPeer()} is the real client from its first line of
log on.  The wrapper also passes the client's half-close on to the session
(Twisted's protocol wrappers do not), so that a client that sends and closes
still gets every reply it is owed (PROTOCOL.md, rule 5).

This module is not a PROXY protocol parser (Twisted's is used), and it does
not decide whom to trust: only the balancer should be able to reach a
C{haproxy:} port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

# Twisted exports only proxyEndpoint; the wrapper is extended here rather than
# its parser copied.  tests/test_proxy.py pins what this relies on.
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from caretproto.server import describeAddress

PREFIX = "haproxy"
"""The endpoint description prefix that puts the PROXY protocol in front."""

HEADER_TIMEOUT = 10.0
"""
Seconds a connection may take to send its PROXY header.  The specification
asks for at least 3, to cover a TCP retransmission; a balancer sends the
header at once.  A connection without one is no session yet, so no session
limit or idle timeout applies to it: this one does.
"""


@implementer(IHalfCloseableProtocol)
class _HeaderFirst(HAProxyProtocolWrapper, TimeoutMixin):
    """
    Twisted's PROXY protocol wrapper, except that the wrapped session starts
    once the header has named the client, and hears of a half-close.
    """

    factory: ProxyProtocolFactory
    transport: ITransport
    _log = Logger()
    _header: ProxyInfo | None = None

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection, but the wrapped session waits for
        # the header (see _proxyInfo below).
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.setTimeout(self.factory.headerTimeout)

    @property
    def _proxyInfo(self) -> ProxyInfo | None:
        return self._header

    @_proxyInfo.setter
    def _proxyInfo(self, header: ProxyInfo | None) -> None:
        # Twisted's wrapper stores the parsed header here, then passes on any
        # bytes that followed it: the moment to start the session.
        self._header = header
        if header is not None:
            self.setTimeout(None)
            # The wrapper is the session's transport, as in ProtocolWrapper.
            self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        return self.factory.clock.callLater(period, func)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._header is None and self.disconnecting:
            self._log.warn(
                "{peer} sent no PROXY protocol header: closed",
                peer=describeAddress(self.transport.getPeer()),
            )

    def timeoutConnection(self) -> None:
        self._log.warn(
            "{peer} sent no PROXY protocol header in {timeout}s: closed",
            peer=describeAddress(self.transport.getPeer()),
            timeout=self.factory.headerTimeout,
        )
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def readConnectionLost(self) -> None:
        session = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if self._header is not None and session is not None:
            session.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        session = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if self._header is not None and session is not None:
            session.writeConnectionLost()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.setTimeout(None)
        if self._header is not None:
            super().connectionLost(reason)
            return
        self.factory.unregisterProtocol(self)
        self.wrappedProtocol = None  # type: ignore[assignment]


class ProxyProtocolFactory(HAProxyWrappingFactory):
    """
    Wraps each of C{wrappedFactory}'s protocols so that it starts behind a
    PROXY protocol header.
    """

    protocol = _HeaderFirst  # type: ignore[assignment]

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
        headerTimeout: float = HEADER_TIMEOUT,
    ) -> None:
        super().__init__(wrappedFactory)
        from twisted.internet import reactor

        self.clock: IReactorTime = reactor if clock is None else clock
        self.headerTimeout = headerTimeout


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """
    Listens on C{wrapped}, expecting a PROXY protocol header first on every
    connection.
    """

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self.wrapped = wrapped

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.wrapped.listen(ProxyProtocolFactory(protocolFactory))


def serverFromString(
    reactor: Any,
    description: str,
    parse: Callable[[Any, str], IStreamServerEndpoint] = endpoints.serverFromString,
) -> IStreamServerEndpoint:
    """
    The server endpoint for C{description}, as Twisted's
    L{endpoints.serverFromString} makes it, except that C{haproxy:DESCRIPTION}
    is a L{ProxyProtocolEndpoint} in front of C{DESCRIPTION}'s endpoint.
    C{parse} makes the endpoint under the PROXY protocol.
    """
    kind, _, wrapped = description.partition(":")
    if kind == PREFIX:
        return ProxyProtocolEndpoint(serverFromString(reactor, wrapped, parse))
    return parse(reactor, description)
