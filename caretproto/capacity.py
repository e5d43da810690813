"""
What the server does about its file descriptors: every connection is one.

L{OpenFilesLimit} raises the process's open-files soft limit to its hard
limit at start-up (with L{caretproto.openfiles}), so that a server started
from a shell with the common default of 1024 can still hold thousands of
connections.  L{DescriptorShortage}
is what a L{caretproto.service.CaretService} does when C{accept} fails for
lack of descriptors (C{EMFILE}, C{ENFILE}): stop accepting, say so once, and
accept again when a session ends or after C{retryDelay}.  The clients that
arrive meanwhile wait in the listen backlog.

Twisted's own answer to C{EMFILE} (a reserved descriptor released to accept
and at once close every waiting client, with a log line for each) and to
C{ENFILE} (a log line and a return, which a level-triggered reactor turns
into a busy loop) both write a line per attempt; L{guardListener} takes the
listening socket's C{accept} errors before Twisted sees them.  This module is
not the place for a connection limit chosen by the operator.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger

from caretproto.connections import IAcceptor
from caretproto.openfiles import raiseOpenFilesLimit

_log = Logger()

SHORTAGE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE})
"""C{accept} errors that mean: no descriptor for a new connection."""


class OpenFilesLimit(Service):
    """
    At start-up, raise the open-files soft limit to the hard limit and log
    both.  Start it before the services that listen.  twistd starts services
    in two steps, C{twist} in one; either way it is done once, first.

    @ivar raised: whether it has been done (or tried: a failure is logged as
        a warning, and the server goes on with the limit it has).
    """

    raised = False

    def privilegedStartService(self) -> None:
        """
        Raise the limit now, before twistd drops privileges and before the
        ports listen.
        """
        Service.privilegedStartService(self)
        self._raise()

    def startService(self) -> None:
        """
        Raise the limit now, unless L{privilegedStartService} has.
        """
        Service.startService(self)
        self._raise()

    def _raise(self) -> None:
        if self.raised:
            return
        self.raised = True
        try:
            before, after = raiseOpenFilesLimit()
        except OSError as error:
            _log.warn("open files limit not raised: {error}", error=error)
            return
        if after > before:
            _log.info(
                "open files limit raised from {before} to the hard limit, {after}",
                before=before,
                after=after,
            )
        else:
            _log.info("open files limit is {limit}", limit=after)


class DescriptorShortage:
    """
    One process's shortages of descriptors, as seen by C{accept}.

    The first failed C{accept} stops C{acceptor} accepting and logs a warning;
    accepting resumes when the next session ends (C{sessionEnds} fires,
    freeing a descriptor) or after C{retryDelay} seconds (descriptors freed
    elsewhere), whichever comes first.  Further failures in the same
    shortage are counted, not logged.  The shortage is over when the waiting
    clients have all been accepted (C{accept} finds none left): that is
    logged with the count.

    @ivar acceptor: what stops and resumes accepting.
    @ivar clock: what times the retries.
    @ivar sessionEnds: returns a C{Deferred} that fires when a session next
        ends.
    @ivar since: when the shortage began, or C{None} when there is none.
    @ivar failures: failed C{accept} calls in this shortage.
    @cvar reason: the reason given to the acceptor's C{pauseAccepting}.
    @cvar retryDelay: seconds after which accepting is tried again, if no
        session has ended meanwhile.
    """

    reason = "descriptors"
    retryDelay = 1.0

    def __init__(
        self,
        acceptor: IAcceptor,
        clock: IReactorTime,
        sessionEnds: Callable[[], Deferred[None]],
    ) -> None:
        """
        @param acceptor: what stops and resumes accepting, such as a
            L{caretproto.service.CaretService}.
        @param clock: what times the retries.
        @param sessionEnds: returns a C{Deferred} that fires when a session
            next ends (L{caretproto.server.CaretFactory.whenSessionEnds}).
        """
        self.acceptor = acceptor
        self.clock = clock
        self.sessionEnds = sessionEnds
        self.since: float | None = None
        self.failures = 0
        self._retryCall: IDelayedCall | None = None
        self._sessionEnd: Deferred[None] | None = None
        self._backlogCheck: IDelayedCall | None = None

    def failed(self, code: int) -> None:
        """
        C{accept} failed for lack of descriptors: stop accepting until a
        session ends or L{retryDelay} passes, and log the first failure of a
        shortage.

        @param code: the C{errno}, one of L{SHORTAGE_ERRORS}.
        """
        self.failures += 1
        if self.since is None:
            self.since = self.clock.seconds()
            _log.warn(
                "cannot accept connections: {error} ({strerror}); new clients "
                "wait until descriptors free up",
                error=errno.errorcode[code],
                strerror=os.strerror(code),
            )
        self.acceptor.pauseAccepting(self.reason)
        if self._retryCall is None:
            self._retryCall = self.clock.callLater(self.retryDelay, self.retry)
        if self._sessionEnd is None:
            self._sessionEnd = self.sessionEnds()
            self._sessionEnd.addCallback(self._sessionEnded)

    def _sessionEnded(self, _: None) -> None:
        self._sessionEnd = None
        self.retry()

    def accepted(self, listener: socket.socket) -> None:
        """
        C{accept} on C{listener} succeeded during a shortage.  Whether that
        emptied the backlog is asked of the socket once the port is done with
        this wake-up: a Twisted port accepts at most C{numberAccepts} clients
        per wake-up and then sets it to how many it accepted, so it may stop
        exactly when the backlog empties and never see C{EAGAIN}, the other
        sign that the shortage is over.

        @param listener: the listening socket.
        """
        if self._backlogCheck is None:
            self._backlogCheck = self.clock.callLater(0, self._checkBacklog, listener)

    def _checkBacklog(self, listener: socket.socket) -> None:
        self._backlogCheck = None
        if listener.fileno() >= 0 and not _clientsWaiting(listener):
            self.caughtUp()

    def caughtUp(self) -> None:
        """No client is left waiting to be accepted."""
        if self.since is None:
            return
        _log.info(
            "accepting connections again after {duration:.1f}s short of "
            "descriptors ({failures} accept attempts failed)",
            duration=self.clock.seconds() - self.since,
            failures=self.failures,
        )
        self.since = None
        self.failures = 0

    def retry(self) -> None:
        """A descriptor may be free: try accepting again."""
        if self._retryCall is not None:
            if self._retryCall.active():
                self._retryCall.cancel()
            self._retryCall = None
        self.acceptor.resumeAccepting(self.reason)

    def stop(self) -> None:
        """No more retries: the ports are closing."""
        for call in (self._retryCall, self._backlogCheck):
            if call is not None and call.active():
                call.cancel()
        self._retryCall = self._backlogCheck = None


def _clientsWaiting(listener: socket.socket) -> bool:
    """Whether a client waits in C{listener}'s backlog, asked without blocking."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    return bool(poller.poll(0))


class _GuardedListener:
    """
    A listening socket whose C{accept} reports shortages to a
    L{DescriptorShortage} and, to Twisted, pretends that no client is
    waiting: the port then returns quietly, and the shortage has already
    stopped it reading.  Everything else is the socket's own.
    """

    def __init__(self, listener: socket.socket, shortage: DescriptorShortage) -> None:
        self._listener = listener
        self._shortage = shortage

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            client = self._listener.accept()
        except BlockingIOError:
            self._shortage.caughtUp()
            raise
        except OSError as error:
            if error.errno not in SHORTAGE_ERRORS:
                raise
            self._shortage.failed(error.errno)
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)) from None
        if self._shortage.since is not None:
            self._shortage.accepted(self._listener)
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


def guardListener(port: IListeningPort, shortage: DescriptorShortage) -> bool:
    """
    Route C{port}'s C{accept} errors through C{shortage}.

    Every stream port Twisted ships (TCP, UNIX, and those that TLS, PROXY
    and systemd endpoints build on them) accepts from its C{socket}
    attribute; a port without one is left alone.

    @param port: a listening port.
    @param shortage: what to tell of C{accept}'s failures for lack of
        descriptors.
    @return: whether C{port} is guarded (already, or now).
    """
    listener = getattr(port, "socket", None)
    if isinstance(listener, _GuardedListener):
        return True
    if not isinstance(listener, socket.socket):
        return False
    port.socket = _GuardedListener(listener, shortage)  # type: ignore[attr-defined]
    return True
