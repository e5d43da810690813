# -*- test-case-name: tests.test_workers -*-
"""
A worker process's side of C{--workers}: listening on the sockets it
inherits from its parent, and stopping when the parent is gone.

L{inheritedEndpoint} listens on an inherited socket as the description's own
endpoint would (TLS for C{ssl:}, the PROXY protocol for C{haproxy:}), taking
one connection each time the shared socket is ready so that the workers share
a burst of clients; L{ParentLink} stops the worker when its parent is gone.

It is not the pool that starts the workers (L{caretproto.workers}) nor the
relay of their logs (L{caretproto.logrelay}).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints, fdesc, tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorFDSet,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto import proxy

ADOPTABLE = frozenset({"tcp", "tcp6", "unix", "ssl", "systemd"})
"""
Endpoint types whose listening socket a worker can take over, alone or
behind C{haproxy:}.  Each listens with C{listenTCP}, C{listenUNIX},
C{listenSSL} or C{adoptStreamPort}, which L{inheritedEndpoint} answers.
"""


def adoptable(description: str) -> bool:
    """
    Whether workers can share the socket that C{description} listens on.

    @param description: a server endpoint description.
    @return: whether its type, behind C{haproxy:} or not, is one of
        L{ADOPTABLE}.
    """
    kind, _, wrapped = description.partition(":")
    if kind == proxy.PREFIX:
        return adoptable(wrapped)
    return kind in ADOPTABLE


class _TakingTurns:
    """
    A listening socket shared with the other workers accepts one connection
    each time it is ready, where a Twisted port accepts all that are waiting:
    every worker wakes when clients connect, and taking one each spreads a
    burst of clients over the workers instead of giving it all to whichever
    woke first.
    """

    numberAccepts: int

    def doRead(self) -> None:
        self.numberAccepts = 1
        tcp.Port.doRead(self)  # type: ignore[arg-type]


class _SharedTCPPort(_TakingTurns, tcp.Port):
    """An inherited TCP socket (Twisted already leaves it as it found it)."""


class _SharedUNIXPort(_TakingTurns, unix.Port):
    """
    An inherited UNIX socket.  Twisted's UNIX port acts as the socket's owner
    even when it adopted it: stopped, it shuts the socket down, which ends it
    in every process that holds it, and removes its file.  The parent bound
    it; the parent does both.
    """

    _shouldShutdown = False

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)


class _AdoptingReactor:
    """
    What a worker's endpoint takes for the reactor: asked to listen, it
    adopts the inherited socket C{fd} instead of binding one, wrapping the
    factory as the real reactor would (TLS for C{listenSSL}).
    """

    def __init__(self, reactor: Any, fd: int, backlog: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._backlog = backlog

    def adopt(
        self, factory: IProtocolFactory, backlog: int | None = None
    ) -> IListeningPort:
        """Accept on the inherited socket with C{factory}."""
        fd = self._fd
        probe = socket.socket(fileno=fd)
        family, address = probe.family, probe.getsockname()
        probe.detach()
        port: tcp.Port
        if family == socket.AF_UNIX:
            unixPort = _SharedUNIXPort._fromListeningDescriptor(
                self._reactor, fd, factory
            )
            # unix.Port listens again and sets the file's mode as it starts:
            # keep what the parent set.
            unixPort.backlog = backlog or self._backlog
            if address and address[:1] not in (b"\0", "\0"):
                unixPort.mode = stat.S_IMODE(os.stat(address).st_mode)
            port = unixPort
        else:
            port = _SharedTCPPort._fromListeningDescriptor(
                self._reactor, fd, family, factory
            )
        port.startListening()
        os.close(fd)
        return port

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        return self.adopt(factory, backlog)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        return self.adopt(TLSMemoryBIOFactory(contextFactory, False, factory), backlog)

    def listenUNIX(
        self,
        address: str,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: bool = False,
    ) -> Any:
        return self.adopt(factory, backlog)

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: Any, factory: IProtocolFactory
    ) -> Any:
        return self.adopt(factory)


@implementer(IStreamServerEndpoint)
class _Inherited:
    """Listens on an inherited socket, putting nothing in front."""

    def __init__(self, adopting: _AdoptingReactor) -> None:
        self._adopting = adopting

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return defer.execute(self._adopting.adopt, protocolFactory)


def inheritedEndpoint(
    reactor: Any,
    description: str,
    fd: int,
    backlog: int,
    trusted: proxy.TrustedProxies | None = None,
) -> IStreamServerEndpoint:
    """
    The endpoint on which a worker serves C{description}: the listening
    socket the parent bound for it, inherited as C{fd}, with whatever the
    description puts in front (TLS for C{ssl:}, the PROXY protocol for
    C{haproxy:}, believing C{trusted} peers), done by the description's own
    endpoint.

    @param reactor: the reactor to accept with.
    @param description: the C{--port} endpoint description, as the parent
        listens on it.
    @param fd: the inherited listening socket.
    @param backlog: the listen queue size, for a description without
        C{backlog=} (a UNIX port listens again as it starts).
    @param trusted: whose PROXY protocol headers to believe, for a
        C{haproxy:} description.
    @return: the endpoint; it takes over C{fd} when it listens, closing
        this descriptor.
    """
    adopting = _AdoptingReactor(reactor, fd, backlog)

    def parse(_: Any, wrapped: str) -> IStreamServerEndpoint:
        if wrapped.partition(":")[0] == "systemd":
            # systemd's environment names the parent's descriptors, not a
            # worker's; a systemd endpoint puts nothing in front.
            return _Inherited(adopting)
        return endpoints.serverFromString(adopting, wrapped)

    return proxy.serverFromString(adopting, description, parse, trusted)


@implementer(IReadDescriptor)
class _ParentPipe:
    """The read end of the pipe a parent holds open for as long as it lives."""

    def __init__(self, fd: int, closed: Callable[[], None]) -> None:
        self._fd = fd
        self._closed = closed

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        self._closed()

    def logPrefix(self) -> str:
        return "parent"


class ParentLink(Service):
    """
    A worker's tie to its parent.  The worker stops, draining its sessions,
    when its parent is gone (its standard input, a pipe the parent holds,
    reaches its end), so that a parent killed outright leaves no workers
    serving on.  And it ignores SIGINT: Ctrl-C in a terminal reaches every
    process of the group, and the parent passes it on as SIGTERM.
    """

    _log = Logger()

    def __init__(self, reactor: Any = None, fd: int = 0) -> None:
        """
        @param reactor: the reactor to watch the pipe with and to stop; by
            default the reactor.
        @param fd: the pipe from the parent: standard input.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor: Any = reactor
        self._pipe = _ParentPipe(fd, self._parentGone)

    def startService(self) -> None:
        """
        Ignore SIGINT, and watch the pipe from the parent: when it reaches
        its end, stop the reactor, which stops the worker's services.
        """
        Service.startService(self)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fdesc.setNonBlocking(self._pipe.fileno())
        IReactorFDSet(self._reactor).addReader(self._pipe)

    def stopService(self) -> None:
        """
        Stop watching the pipe: the worker is stopping already.
        """
        Service.stopService(self)
        IReactorFDSet(self._reactor).removeReader(self._pipe)

    def _parentGone(self) -> None:
        if self.running:
            self._log.warn("the parent process is gone: stopping")
            IReactorCore(self._reactor).stop()
