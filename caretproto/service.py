"""
The caret service: listens on endpoints with a L{CaretFactory} and ends
gracefully.

L{CaretService} is an ordinary C{IService}: it can stand alone under twistd,
beside other services in a C{MultiService}, or in a C{.tac} file.  It owns the
listening ports, so that it can stop accepting when the process runs out of
descriptors, and stop listening at once on shutdown.  Stopped, it gives the
sessions in progress C{shutdownTimeout} seconds to end as their clients end
them, then ends the rest, each delivering every reply it owes.  It knows
nothing of the protocol's rules.  It accepts on behalf of its factory, which
pauses and resumes accepting to keep its session limit (C{--max-connections}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.capacity import DescriptorShortage, guardListener
from caretproto.connections import IAcceptor, describeAddress
from caretproto.server import CaretFactory
from caretproto.tcpserver import lighten

LISTENING = "caret listening on {address}"
"""
The format of the log event the service emits for each port it listens on,
whose C{address} field is the port's address as L{describeAddress} gives it;
L{caretproto.listening} reads it back.
"""


class CannotListen(Exception):
    """
    A L{CaretService} could not listen on one of its endpoints.

    @ivar index: which of its endpoints, counting from 0.
    @ivar reason: the exception that endpoint failed with.
    """

    def __init__(self, index: int, reason: BaseException) -> None:
        """
        @param index: which of the service's endpoints, counting from 0.
        @param reason: the exception that endpoint failed with.
        """
        super().__init__(index, reason)
        self.index = index
        self.reason = reason

    def __str__(self) -> str:
        """
        @return: which endpoint, and why.
        """
        return f"cannot listen on endpoint {self.index}: {self.reason}"


@implementer(IAcceptor)
class CaretService(Service):
    """
    Serve C{factory} on every endpoint in C{endpoints}.

    Why not a C{MultiService} of Twisted's C{StreamServerEndpointService}s,
    one per endpoint, plus a drain: those keep their listening port to
    themselves (it is only in a private Deferred), and caret needs every
    port by hand, to stop and resume accepting for the session limit and
    for descriptor shortage (L{IAcceptor}), to set how many connections a
    wake-up accepts, to guard C{accept}'s errors, and to share the sockets
    with worker processes (L{shareListening}).  What it does take from
    Twisted is the same: endpoints listen, and a failure to listen in
    C{privilegedStartService} stops the program, as that service's
    C{_raiseSynchronously} does.

    @ivar endpoints: the endpoints to listen on.
    @ivar factory: the factory of the sessions.
    @ivar clock: the factory's clock, which times the drain.
    @ivar ports: the listening ports, once listening.
    @ivar shutdownTimeout: seconds that sessions in progress get to end by
        themselves when the service stops; after that they are ended, and
        after as long again any whose client takes no replies is cut off.
    @ivar shortage: what happens when C{accept} runs out of descriptors.
    @ivar listenFailed: called with a L{CannotListen} when an endpoint fails
        to listen after L{privilegedStartService} or L{startService} has
        returned (one that listens asynchronously, such as an endpoint
        plugin that must first reach some other service); then none of the
        endpoints listens.  By default L{logListenFailure}; the C{caret}
        command stops the program (L{caretproto.tap.CaretCommand}).
    """

    _log = Logger()
    shutdownTimeout = 10.0

    def __init__(
        self,
        endpoints: Sequence[IStreamServerEndpoint],
        factory: CaretFactory | None = None,
    ) -> None:
        """
        @param endpoints: the endpoints to listen on, such as
            C{endpoints.serverFromString(reactor, "tcp:9090")} or
            L{caretproto.proxy.serverFromString}'s.
        @param factory: the factory of the sessions; by default a
            L{CaretFactory} with no session limit and no idle timeout.  The
            service accepts on its behalf from now on.
        """
        self.endpoints = list(endpoints)
        self.factory = factory if factory is not None else CaretFactory()
        self.ports: list[IListeningPort] = []
        self._listening: Deferred[list[IListeningPort]] | None = None
        self._acceptPausedFor: set[str] = set()
        self._acceptsPerWakeup: int | None = None
        self.clock: IReactorTime = self.factory.clock
        self.shortage = DescriptorShortage(
            self, self.clock, self.factory.whenSessionEnds
        )
        self._shutdownCall: IDelayedCall | None = None
        self.listenFailed: Callable[[CannotListen], None] = self.logListenFailure
        self.factory.acceptedBy(self)

    def privilegedStartService(self) -> None:
        """
        Listen now, so that a port below 1024 can be bound before twistd drops
        privileges, and so that a failure to listen (address in use, bad
        certificate) stops the program with its reason.

        @raise CannotListen: naming the endpoint that failed, and why.
        """
        Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        """
        Listen now, unless L{privilegedStartService} has (C{twist} and a
        plain C{startService} call start a service in this one step).

        @raise CannotListen: naming the endpoint that failed, and why, when
            it fails at once.
        """
        Service.startService(self)
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        attempts = [endpoint.listen(self.factory) for endpoint in self.endpoints]
        listening = gatherResults(attempts, consumeErrors=True)
        failedNow: list[CannotListen] = []
        late = False

        def failed(failure: Failure) -> None:
            cannot = _cannotListen(failure, attempts)
            if late:
                self.listenFailed(cannot)
            else:
                failedNow.append(cannot)

        listening.addCallbacks(self._gotPorts, failed)
        if failedNow:
            raise failedNow[0] from failedNow[0].reason
        # From here on a failure comes too late to be raised to the caller.
        late = True
        self._listening = listening

    def logListenFailure(self, cannot: CannotListen) -> None:
        """
        The default L{listenFailed}: log the failure, naming the endpoint.

        @param cannot: which endpoint failed, and why.
        """
        self._log.critical(
            "endpoint {index} ({endpoint!r}) cannot listen: {reason}",
            index=cannot.index,
            endpoint=self.endpoints[cannot.index],
            reason=cannot.reason,
        )

    def _gotPorts(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        self.ports = ports
        for port in ports:
            self._log.info(LISTENING, address=describeAddress(port.getHost()))
            guardListener(port, self.shortage)
            lighten(port)
            if self._acceptPausedFor:
                _acceptor(port).stopReading()
        if self._acceptsPerWakeup is not None:
            self.acceptAtMost(self._acceptsPerWakeup)
        return ports

    def pauseAccepting(self, reason: str) -> None:
        """
        Stop accepting connections, for C{reason}, without closing the
        listening ports: new clients wait in the listen backlog, as they do
        for a sequential server.  Accepting resumes when every reason given
        here has been withdrawn with L{resumeAccepting}.

        @param reason: why, such as C{descriptors}; giving one twice counts
            once.
        """
        if not self._acceptPausedFor:
            for port in self.ports:
                _acceptor(port).stopReading()
        self._acceptPausedFor.add(reason)

    def resumeAccepting(self, reason: str) -> None:
        """
        Withdraw C{reason} for not accepting; accept again if none is left
        and the service is running.

        @param reason: a reason given to L{pauseAccepting}.
        """
        self._acceptPausedFor.discard(reason)
        if not self._acceptPausedFor and self.running:
            for port in self.ports:
                _acceptor(port).startReading()

    def acceptAtMost(self, count: int) -> None:
        """
        Accept no more than C{count} connections the next time a listening
        socket is ready.  A Twisted port accepts up to its C{numberAccepts}
        connections per readiness event, and sets it anew after each; so this
        holds for the next event only, which is what a factory needs that
        asks before each resume for the places it has free.

        @param count: how many connections, at most.
        """
        self._acceptsPerWakeup = count
        for port in self.ports:
            if isinstance(port, tcp.Port):
                port.numberAccepts = count

    @property
    def accepting(self) -> bool:
        """Whether the ports accept new connections now."""
        return not self._acceptPausedFor

    def stopService(self) -> Deferred[None]:
        """
        Stop listening at once, so that new clients are refused, and let the
        sessions in progress go on for up to C{shutdownTimeout} seconds.
        Then end the rest: each stops reading, delivers the replies it owes
        and closes; any whose client takes no replies for as long again is
        cut off.

        @return: a C{Deferred} that fires when the ports have stopped
            listening and every connection is gone.
        """
        Service.stopService(self)
        self.shortage.stop()
        ports, self.ports = self.ports, []
        self._listening = None
        self.factory.dropWaiting()
        stopped: list[Deferred[Any]] = [
            maybeDeferred(port.stopListening) for port in ports
        ]
        sessions = self.factory.whenIdle()
        if not self.factory.idle:
            # A connection accepted just now may not be a session yet (its
            # PROXY header is on its way): its client is connected all the
            # same, and is drained like the rest.
            self._log.info(
                "shutting down: accepting no more connections; sessions in "
                "progress: {count}, given up to {timeout}s to end",
                count=len(self.factory.sessions) + len(self.factory.arriving),
                timeout=self.shutdownTimeout,
            )
            self._shutdownCall = self.clock.callLater(
                self.shutdownTimeout, self._finishSessions
            )
            sessions.addCallback(self._sessionsEnded)
        stopped.append(sessions)
        return gatherResults(stopped).addCallback(lambda _: None)

    def _finishSessions(self) -> None:
        self._log.info(
            "sessions still in progress after {timeout}s: {count}; ending them",
            count=len(self.factory.sessions),
            timeout=self.shutdownTimeout,
        )
        # The last resort first: a session that fails to finish must not
        # leave the rest, and the process, running until it is killed.
        self._shutdownCall = self.clock.callLater(
            self.shutdownTimeout, self._abortSessions
        )
        for session in list(self.factory.sessions):
            try:
                session.finish()
            except Exception:
                self._log.failure("{peer} could not be ended", peer=session.peer)

    def _abortSessions(self) -> None:
        self._shutdownCall = None
        for session in list(self.factory.sessions):
            self._log.warn(
                "{peer} took no replies for {timeout}s after being ended: aborting",
                peer=session.peer,
                timeout=self.shutdownTimeout,
            )
            session.transport.abortConnection()
        # A connection still arriving this late has outlived its wrapper's
        # own timeout (the PROXY header's) unseen: whatever it was, it must
        # not keep the process from ending.
        self.factory.forgetArriving()

    def hurry(self) -> None:
        """
        End a drain now, for an operator who will not wait for it (a second
        SIGINT or SIGTERM, see L{caretproto.tap.CaretCommand}): abort every
        connection still open, replies owed and all, and give up on those
        still arriving, so that the service stops at once.  Nothing to do if
        the service is not draining.
        """
        if self._shutdownCall is None:
            return
        self._shutdownCall.cancel()
        self._shutdownCall = None
        self._log.warn(
            "ending the drain now: connections still open: {count}; aborting them",
            count=len(self.factory.sessions) + len(self.factory.arriving),
        )
        for session in list(self.factory.sessions):
            session.transport.abortConnection()
        self.factory.forgetArriving()

    def _sessionsEnded(self, _: None) -> None:
        if self._shutdownCall is not None and self._shutdownCall.active():
            self._shutdownCall.cancel()
        self._shutdownCall = None

    def shareListening(self) -> list[int]:
        """
        The listening sockets' file descriptors, for other processes to
        accept on too.  From now on, stopping closes them in this process
        only: shutting a listening socket down would end it in every process
        that holds it and reset the clients waiting in its queue.

        @return: the descriptors, in the order of L{endpoints}; empty before
            the service listens.
        """
        shared = []
        for port in self.ports:
            acceptor = _acceptor(port)
            # twisted.internet.tcp.Port's own switch, which it turns off for
            # the sockets it adopts.
            acceptor._shouldShutdown = False  # type: ignore[attr-defined]
            shared.append(acceptor.fileno())
        return shared


def _acceptor(port: IListeningPort) -> FileDescriptor:
    """
    The listening socket behind C{port}, as the reactor sees it.  Every
    stream endpoint Twisted ships (tcp, unix, ssl, haproxy, systemd) listens
    with a port that is its own file descriptor; reading from it is accepting.
    """
    if not isinstance(port, FileDescriptor):
        raise TypeError(f"cannot pause accepting on {port!r}")
    return port


def _cannotListen(
    failure: Failure, attempts: Sequence[Deferred[IListeningPort]]
) -> CannotListen:
    """
    The first endpoint that failed, from C{gatherResults}' C{failure}; the
    ports of the others stop listening once they listen, for the service
    will not be serving them.
    """
    first = failure.value
    assert isinstance(first, FirstError)
    for attempt in attempts:
        attempt.addCallback(_stopListening)
    reason = first.subFailure.value
    assert reason is not None
    return CannotListen(first.index, reason)


def _stopListening(port: IListeningPort | None) -> object:
    # A failed attempt's result is None: gatherResults consumed its error.
    return None if port is None else port.stopListening()
