"""
Caret behind a load balancer: the PROXY protocol (C{--port haproxy:tcp:9090}).

Behind a balancer every connection comes from the balancer; the PROXY protocol
header it sends first names the real client.  Twisted parses that header
(C{twisted.protocols.haproxy}); this module changes only I{when} the caret
session starts.  Twisted's wrapper starts the wrapped protocol as soon as the
balancer connects, so a session would greet, and log its peer, before the
header has named the client (Twisted issue #12501).  The PROXY protocol
specification says that a receiver must not start processing a connection
before the whole header has arrived, above all for a protocol where the server
speaks first, as caret's greeting does.  Here a session starts once the header
has come, so C{transport.getPeer()} is the real client from its first line of
log on.  The wrapper also passes the client's half-close on to the session
(Twisted's protocol wrappers do not), so that a client that sends and closes
still gets every reply it is owed (docs/protocol.rst,
"Ending a session").

Whom to believe is L{TrustedProxies}: a header names whatever client its
sender likes, so only the balancers' own connections may send one.  Any other
connection to a C{haproxy:} port is closed before a byte of it is read, as
HAProxy's documentation asks of every listener that accepts the header (see
docs/exposing.rst for the default, which trusts nobody).

This module is not a PROXY protocol parser (Twisted's is used).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
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

from caretproto.connections import RefusalLog, describeAddress, peerHost

PREFIX = "haproxy"
"""The endpoint description prefix that puts the PROXY protocol in front."""

HEADER_TIMEOUT = 10.0
"""
Seconds a connection may take to send its PROXY header.  The specification
asks for at least 3, to cover a TCP retransmission; a balancer sends the
header at once.  A connection without one is no session yet, so no session
limit or idle timeout applies to it: this one does.
"""


ANY = "any"
"""The C{--trusted-proxy} keyword that believes every peer's header."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """
    The peers whose PROXY protocol headers are believed: addresses and
    networks, IPv4 and IPv6, or every peer (L{ANY}).

    A peer without an IP address, on a UNIX socket, is trusted: to connect
    at all it needs write permission on the socket file, which is that
    endpoint's access control.

    @ivar networks: the trusted networks; a single address is a network of
        one.
    @ivar everyone: whether every peer is trusted.
    """

    def __init__(self, networks: Iterable[_Network] = (), everyone: bool = False):
        self.networks = tuple(networks)
        self.everyone = everyone

    @classmethod
    def fromStrings(cls, given: Iterable[str]) -> TrustedProxies:
        """
        The proxies that C{given} names, each an address (C{10.0.0.5},
        C{::1}), a network in CIDR form (C{10.0.0.0/8}, C{fd00::/8}) or
        L{ANY}.

        @raise ValueError: for anything else, naming it.
        """
        networks = []
        everyone = False
        for text in given:
            if text.strip().lower() == ANY:
                everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{text!r} is not an address or network") from None
        return cls(networks, everyone)

    def trusts(self, address: Any) -> bool:
        """Whether a header from C{address}, a peer's C{IAddress}, is believed."""
        host = peerHost(address)
        if self.everyone or host is None:
            return True
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # A dual-stack tcp6: port sees IPv4 peers as ::ffff:a.b.c.d.
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        named = [ANY] if self.everyone else [str(n) for n in self.networks]
        return f"<TrustedProxies {' '.join(named) or 'none'}>"


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

    _untrusted = False

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection, but the wrapped session waits for
        # the header (see _proxyInfo below), and only a trusted proxy's
        # connection is read at all.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        peer = transport.getPeer()
        if not self.factory.trusted.trusts(peer):
            self._untrusted = True
            self.factory.untrusted(peer)
            # Nothing it sent is read: aborting drops it unread, where
            # loseConnection would first finish a TLS handshake.
            transport.abortConnection()  # type: ignore[attr-defined]
            return
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
        if self._header is not None:
            # What Twisted's wrapper does after the header, without its
            # property (above) and a call: the wrapper's cost per 16-byte
            # message fell from 0.57 to 0.27 µs (benchmarks/test_protocol.py,
            # behind_the_proxy_protocol beside one_per_read), of a round's
            # 12 µs of server CPU time.
            self.wrappedProtocol.dataReceived(data)
            return
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
        # The session never started: its factory, which counted the
        # connection as arriving since the port accepted it, learns that it
        # will not.
        abandoned = getattr(self.factory.wrappedFactory, "connectionAbandoned", None)
        if abandoned is not None:
            abandoned(self.wrappedProtocol)
        if not self._untrusted:
            self.factory.unregisterProtocol(self)
        self.wrappedProtocol = None  # type: ignore[assignment]


class ProxyProtocolFactory(HAProxyWrappingFactory):
    """
    Wraps each of C{wrappedFactory}'s protocols so that it starts behind a
    PROXY protocol header, from a C{trusted} peer only.

    @ivar trusted: the peers whose connections are read; by default none
        but UNIX socket peers.
    """

    protocol = _HeaderFirst  # type: ignore[assignment]

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
        headerTimeout: float = HEADER_TIMEOUT,
        trusted: TrustedProxies | None = None,
    ) -> None:
        super().__init__(wrappedFactory)
        from twisted.internet import reactor

        self.clock: IReactorTime = reactor if clock is None else clock
        self.headerTimeout = headerTimeout
        self.trusted = TrustedProxies() if trusted is None else trusted
        self._refusals = RefusalLog(
            self.clock,
            "{host} is not a trusted proxy: closing its connections to a "
            "haproxy: endpoint unread (first from {peer}; see "
            "--trusted-proxy)",
            "{host}: closed {count} connections from an untrusted proxy "
            "in {duration:.1f}s",
            Logger(f"{type(self).__module__}.{type(self).__qualname__}", self),
        )

    def untrusted(self, address: Any) -> None:
        """A connection from C{address}, not a trusted proxy, is refused."""
        self._refusals.refused(
            peerHost(address) or "unknown", peer=describeAddress(address)
        )

    def stopFactory(self) -> None:
        """The last port stopped listening: close the refusal log's books."""
        self._refusals.flush()
        super().stopFactory()


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """
    Listens on C{wrapped}, expecting a PROXY protocol header first on every
    connection, and reading only those from C{trusted} peers.
    """

    def __init__(
        self, wrapped: IStreamServerEndpoint, trusted: TrustedProxies | None = None
    ) -> None:
        self.wrapped = wrapped
        self.trusted = trusted

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.wrapped.listen(
            ProxyProtocolFactory(protocolFactory, trusted=self.trusted)
        )


def serverFromString(
    reactor: Any,
    description: str,
    parse: Callable[[Any, str], IStreamServerEndpoint] = endpoints.serverFromString,
    trusted: TrustedProxies | None = None,
) -> IStreamServerEndpoint:
    """
    The server endpoint for C{description}, as Twisted's
    C{endpoints.serverFromString} makes it, except that C{haproxy:DESCRIPTION}
    is a L{ProxyProtocolEndpoint} in front of C{DESCRIPTION}'s endpoint,
    believing C{trusted} peers only.  C{parse} makes the endpoint under the
    PROXY protocol.
    """
    kind, _, wrapped = description.partition(":")
    if kind == PREFIX:
        return ProxyProtocolEndpoint(
            serverFromString(reactor, wrapped, parse, trusted), trusted
        )
    return parse(reactor, description)


def needsTrustedProxies(description: str) -> bool:
    """
    Whether C{description} is a C{haproxy:} endpoint whose peers have IP
    addresses, so that whom it trusts must be said: not over a UNIX socket,
    whose file permissions decide who may connect.
    """
    kind, _, wrapped = description.partition(":")
    return kind == PREFIX and wrapped.partition(":")[0] != "unix"
