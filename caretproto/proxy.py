# -*- test-case-name: tests.test_proxy,tests.test_trusted_proxy -*-
"""
Caret behind a load balancer: the PROXY protocol (C{--port haproxy:tcp:9090}).

Behind a balancer every connection comes from the balancer; the PROXY protocol
header it sends first names the real client.  A session starts only once the
whole header has come and been checked, so C{transport.getPeer()} is the real
client from its first line of log on: the PROXY protocol specification says
that a receiver must not start processing a connection before the whole
header has arrived, above all for a protocol where the server speaks first,
as caret's greeting does.  (Twisted's wrapper starts the wrapped protocol as
soon as the balancer connects: Twisted issue #12501.)  The wrapper also passes
the client's half-close on to the session (Twisted's protocol wrappers do
not), so that a client that sends and closes still gets every reply it is
owed (docs/protocol.rst, "Ending a session").

The header is read by L{caretproto.proxyheader}, not by Twisted's parser
(C{twisted.protocols.haproxy}), which closes a connection whose header comes
in pieces, raises out of C{dataReceived} (an C{Unhandled Error} and a
traceback) for an address that is not UTF-8 or a port that is not a number,
and believes any text for an address; that module's docstring has the list.
A header that is wrong is refused: the connection is closed ungreeted, and
the fault logged as a warning naming the proxy, once per burst.

Whom to believe is L{TrustedProxies}: a header names whatever client its
sender likes, so only the balancers' own connections may send one.  Any other
connection to a C{haproxy:} port is closed before a byte of it is read, as
HAProxy's documentation asks of every listener that accepts the header (see
docs/exposing.rst for the default, which trusts nobody).

This module is not a PROXY protocol parser (L{caretproto.proxyheader} is).
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
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from caretproto.connections import RefusalLog, describeAddress, peerHost
from caretproto.proxyheader import (
    HeaderFault,
    ProxyHeader,
    printable,
    quoted,
    readHeader,
)

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
"""An IP network, IPv4 or IPv6, as C{ipaddress.ip_network} gives it."""


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
        """
        @param networks: the networks to trust.
        @param everyone: whether to trust every peer.
        """
        self.networks = tuple(networks)
        self.everyone = everyone

    @classmethod
    def fromStrings(cls, given: Iterable[str]) -> TrustedProxies:
        """
        The proxies that C{given} names, each an address (C{10.0.0.5},
        C{::1}), a network in CIDR form (C{10.0.0.0/8}, C{fd00::/8}) or
        L{ANY}.

        @param given: the C{--trusted-proxy} values.
        @return: the proxies; none but UNIX socket peers if C{given} is
            empty.
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
        """
        Whether a header from C{address} is believed.  An IPv4 peer of a
        dual-stack C{tcp6:} port, seen as C{::ffff:a.b.c.d}, is matched as
        the IPv4 address it is.

        @param address: a peer's C{IAddress}.
        @return: whether it is trusted.
        """
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
        """
        The trusted networks, or C{any}, or C{none}.

        @return: C{<TrustedProxies 10.0.0.0/8 ::1/128>} and the like.
        """
        named = [ANY] if self.everyone else [str(n) for n in self.networks]
        return f"<TrustedProxies {' '.join(named) or 'none'}>"


@implementer(IHalfCloseableProtocol)
class _HeaderFirst(ProtocolWrapper, TimeoutMixin):
    """
    The PROXY protocol in front of one session: reads and checks the header,
    then starts the session, whose peer is the client the header names and
    which hears of a half-close.

    @ivar header: the header, once it has come.
    """

    factory: ProxyProtocolFactory
    transport: ITransport
    header: ProxyHeader | None = None
    _received = b""
    _untrusted = False
    _refused = False

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection, but the wrapped session waits for
        # the header (see dataReceived below), and only a trusted proxy's
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

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        return self.factory.clock.callLater(period, func)

    def dataReceived(self, data: bytes) -> None:
        if self.header is not None:
            # Once the session runs, a read costs one attribute test and a
            # call (benchmarks/micro.py, behind_the_proxy_protocol).
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        # A header is at most proxyheader.MOST bytes, so what is kept of
        # one arriving in pieces is bounded.
        self._received += data
        try:
            header = readHeader(self._received)
        except HeaderFault as fault:
            self._refuse(str(fault))
            return
        if header is not None:
            rest = self._received[header.length :]
            self._received = b""
            self._start(header)
            if rest:
                self.wrappedProtocol.dataReceived(rest)

    def _start(self, header: ProxyHeader) -> None:
        self.setTimeout(None)
        self.header = header
        # The wrapper is the session's transport, as in ProtocolWrapper.
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]

    def _refuse(self, fault: str) -> None:
        """Close the connection ungreeted, for C{fault}, already printable."""
        self._refused = True
        self.setTimeout(None)
        self.factory.badHeader(self.transport.getPeer(), fault)
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def getPeer(self) -> Any:
        if self.header is not None and self.header.source is not None:
            return self.header.source
        return self.transport.getPeer()

    def getHost(self) -> Any:
        if self.header is not None and self.header.destination is not None:
            return self.header.destination
        return self.transport.getHost()

    def timeoutConnection(self) -> None:
        self._refuse(
            f"no whole header in {self.factory.headerTimeout:g}s; {self._comeSoFar()}"
        )

    def _comeSoFar(self) -> str:
        if not self._received:
            return "nothing came"
        return f"{len(self._received)} bytes came: {quoted(self._received)}"

    def readConnectionLost(self) -> None:
        session = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if self.header is not None and session is not None:
            session.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        session = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if self.header is not None and session is not None:
            session.writeConnectionLost()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.setTimeout(None)
        if self.header is not None:
            super().connectionLost(reason)
            return
        if self._received and not self._refused:
            # The proxy went away half way through a header.
            self.factory.badHeader(
                self.transport.getPeer(),
                f"the connection ended inside a header; {self._comeSoFar()}",
            )
        # The session never started: its factory, which counted the
        # connection as arriving since the port accepted it, learns that it
        # will not.
        abandoned = getattr(self.factory.wrappedFactory, "connectionAbandoned", None)
        if abandoned is not None:
            abandoned(self.wrappedProtocol)
        if not self._untrusted:
            self.factory.unregisterProtocol(self)
        self.wrappedProtocol = None  # type: ignore[assignment]


class ProxyProtocolFactory(WrappingFactory):
    """
    Wraps each of C{wrappedFactory}'s protocols so that it starts behind a
    PROXY protocol header, from a C{trusted} peer only.

    @ivar trusted: the peers whose connections are read; by default none
        but UNIX socket peers.
    @ivar clock: what times the header deadline and the refusal logs.
    @ivar headerTimeout: seconds a connection gets to send its whole header.
    """

    protocol = _HeaderFirst

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
        headerTimeout: float = HEADER_TIMEOUT,
        trusted: TrustedProxies | None = None,
    ) -> None:
        """
        @param wrappedFactory: the factory of the sessions behind the
            header.
        @param clock: what times the header deadline; by default the
            reactor.
        @param headerTimeout: seconds a connection gets to send its whole
            header.
        @param trusted: whose headers to believe; by default nobody's but
            UNIX socket peers'.
        """
        super().__init__(wrappedFactory)
        from twisted.internet import reactor

        self.clock: IReactorTime = reactor if clock is None else clock
        self.headerTimeout = headerTimeout
        self.trusted = TrustedProxies() if trusted is None else trusted
        logger = Logger(f"{type(self).__module__}.{type(self).__qualname__}", self)
        self._refusals = RefusalLog(
            self.clock,
            "{host} is not a trusted proxy: closing its connections to a "
            "haproxy: endpoint unread (first from {peer}; see "
            "--trusted-proxy)",
            "{host}: closed {count} connections from an untrusted proxy "
            "in {duration:.1f}s",
            logger,
        )
        self._badHeaders = RefusalLog(
            self.clock,
            "{host}, a trusted proxy, sent a bad PROXY protocol header "
            "({fault}): closing such connections ungreeted (first from {peer})",
            "{host}: closed {count} connections with a bad PROXY protocol "
            "header in {duration:.1f}s",
            logger,
        )

    def logPrefix(self) -> str:
        """
        The wrapped factory's log prefix, saying the PROXY protocol is on.

        @return: C{caret (PROXY)} for a L{caretproto.server.CaretFactory}.
        """
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if inner is not None else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"

    def untrusted(self, address: Any) -> None:
        """
        A connection from C{address}, not a trusted proxy, is refused: log
        it, once per burst from its host.

        @param address: the peer's C{IAddress}.
        """
        self._refusals.refused(
            peerHost(address) or "unknown", peer=describeAddress(address)
        )

    def badHeader(self, address: Any, fault: str) -> None:
        """
        A trusted proxy's connection from C{address} is refused for its
        header: log it, once per burst from its host.

        @param address: the peer's C{IAddress}.
        @param fault: what is wrong with the header, already printable
            (L{caretproto.proxyheader.printable}).
        """
        self._badHeaders.refused(
            peerHost(address) or printable(describeAddress(address)),
            peer=printable(describeAddress(address)),
            fault=fault,
        )

    def stopFactory(self) -> None:
        """The last port stopped listening: close the refusal logs' books."""
        self._refusals.flush()
        self._badHeaders.flush()
        super().stopFactory()


@implementer(IStreamServerEndpoint)
class ProxyProtocolEndpoint:
    """
    Listens on C{wrapped}, expecting a PROXY protocol header first on every
    connection, and reading only those from C{trusted} peers.

    @ivar wrapped: the endpoint that listens.
    @ivar trusted: whose headers to believe, or C{None} for nobody's but
        UNIX socket peers'.
    """

    def __init__(
        self, wrapped: IStreamServerEndpoint, trusted: TrustedProxies | None = None
    ) -> None:
        """
        @param wrapped: the endpoint that listens.
        @param trusted: whose headers to believe.
        """
        self.wrapped = wrapped
        self.trusted = trusted

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen on the wrapped endpoint with a L{ProxyProtocolFactory} in
        front of C{protocolFactory}.

        @param protocolFactory: the factory of the sessions.
        @return: a C{Deferred} that fires with the listening port, or fails
            as the wrapped endpoint fails.
        """
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
    believing C{trusted} peers only.

    @param reactor: the reactor, as C{endpoints.serverFromString} takes it.
    @param description: a server endpoint description, with C{haproxy:} in
        front or not.
    @param parse: what makes the endpoint of a description without
        C{haproxy:}; by default C{endpoints.serverFromString}.
    @param trusted: whose PROXY headers to believe; by default nobody's but
        UNIX socket peers'.
    @return: the endpoint, not yet listening.
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

    @param description: a server endpoint description.
    @return: whether C{--trusted-proxy} is needed for it.
    """
    kind, _, wrapped = description.partition(":")
    return kind == PREFIX and wrapped.partition(":")[0] != "unix"
