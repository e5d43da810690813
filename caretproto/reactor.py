# -*- test-case-name: tests.test_reactor -*-
"""
Twisted's epoll reactor, with each event's log context built for less:
C{twistd --reactor=caret-epoll}, or C{twist --reactor=caret-epoll}.

Every Twisted reactor hands each ready descriptor to
C{twisted.python.log.callWithLogger}, which asks the descriptor for its log
prefix, copies the log context in effect, pushes the copy for the duration of
the call and catches what escapes.  That keeps the C{[CaretProtocol,3,
127.0.0.1]} of a line logged through the legacy C{twisted.python.log} from
inside C{dataReceived}; but it goes through five layers of calls and two
copies, and it costs more per event than the read itself.  For a server whose
every round is one event (caret's rr load), it is the largest share of
the CPU time Twisted adds per round over plain asyncio.  Twisted has had this
on its tracker since 2007 (tickets 2534 and 6789): the second removed the
context, and could not land because the prefix went missing from the logs.

L{EPollReactor} keeps the context, and builds it the way ticket 2534 proposes:
the log context in effect is read once per poll, not once per event (the
reactor polls with the same context throughout), and each event's context is
pushed straight onto the context stack of the thread, without the calls in
between.  Everything else is Twisted's: what C{epoll} returns, how each
event becomes a C{doRead} or a C{doWrite} or a disconnection, and what is
logged when something raises.  What an event sees is the same: the same
log context, with C{system} set to its descriptor's prefix; a prefix that
raises logged as Twisted logs it, under C{"(buggy logPrefix method)"}; an
exception escaping the event logged under the prefix, outside the event's
context, and the next event dispatched.

It relies on things Twisted does not document: the epoll reactor's
C{_poller}, C{_selectables} and C{_doReadOrWrite}, and the C{contexts} stack
of Twisted's own context tracker.  If another context tracker is installed
(C{twisted.python.context.installContextTracker}), every poll is Twisted's
own.  tests/test_reactor.py pins all of it, and runs Twisted's own reactor
tests (TCP, descriptors, timed calls) against this reactor.

It is a reactor to choose, as Twisted's are: the reactor belongs to the
process, not to one of its services, so C{twistd caret} does not pick it for
you.  What it is worth is measured in docs/benchmarks.rst.
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.python import context, log
from twisted.python.log import ILogContext

BUGGY_PREFIX = "(buggy logPrefix method)"
"""The prefix Twisted logs under when a descriptor's C{logPrefix} raises."""


class EPollReactor(epollreactor.EPollReactor):
    """
    Twisted's epoll reactor, dispatching each event under the same log
    context as Twisted's, built once per poll instead of once per event.
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for events and dispatch each, as Twisted's C{doPoll} does.

        @param timeout: seconds to wait at most; C{None} to wait until an
            event comes.
        """
        tracker = context.theContextTracker
        if type(tracker) is not context.ThreadedContextTracker:
            # A context tracker of someone else's: Twisted's own dispatch.
            super().doPoll(timeout)
            return
        try:
            events = self._poller.poll(
                -1 if timeout is None else timeout, len(self._selectables)
            )
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        stack = tracker.currentContext().contexts
        outer = tracker.getContext(ILogContext)
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:
                prefix = BUGGY_PREFIX
                log.err(system=prefix)
            try:
                stack.append({ILogContext: {**outer, "system": prefix}})
                try:
                    dispatch(selectable, fd, event)
                finally:
                    stack.pop()
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=prefix)

    doIteration = doPoll


def install() -> None:
    """Install an L{EPollReactor} as the process's reactor."""
    installReactor(EPollReactor())


__all__ = ["EPollReactor", "install"]
