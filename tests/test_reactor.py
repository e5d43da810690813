"""
caret's epoll reactor (L{caretproto.reactor}): each event is dispatched as
Twisted's own epoll reactor dispatches it, under the same log context, with
the same logging of what raises.

Most tests run one poll of both reactors on the same fake events and compare
what the descriptors saw and what was logged.  Twisted's own reactor tests
(TCP connections and ports, descriptors, timed calls, aborts) then run
against caret's reactor, and the Twisted internals it relies on are pinned.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.internet import epollreactor, main
from twisted.internet.test import test_core, test_fdset, test_tcp, test_time
from twisted.logger import globalLogPublisher
from twisted.python import context, log
from twisted.python.log import ILogContext
from twisted.trial.unittest import SynchronousTestCase

from caretproto import reactor as caretreactor
from tests.fakes import unstartedReactor

IN = epollreactor.EPOLLIN


class FakePoller:
    """What C{epoll} returns, once; the arguments it was polled with."""

    def __init__(self, events: list[tuple[int, int]] | OSError) -> None:
        self.events = events
        self.polled: list[tuple[float, int]] = []

    def register(self, fd: int, flags: int) -> None:
        pass

    modify = register

    def unregister(self, fd: int) -> None:
        pass

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        self.polled.append((timeout, most))
        if isinstance(self.events, OSError):
            raise self.events
        return self.events


class Descriptor:
    """
    A readable descriptor that notes the log context it is read in, and logs
    a line through the legacy log system while it is read.
    """

    def __init__(self, fd: int, seen: list[Any], prefix: Any = None) -> None:
        self.fd = fd
        self.seen = seen
        self.prefix = prefix if prefix is not None else f"Echo,{fd},127.0.0.1"
        self.read = 0

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        if isinstance(self.prefix, BaseException):
            raise self.prefix
        return str(self.prefix)

    def doRead(self) -> object:
        self.read += 1
        self.seen.append((self.fd, dict(context.get(ILogContext))))
        log.msg(f"read {self.fd}")
        return None

    def connectionLost(self, reason: object) -> None:
        pass


class Disconnecting(Descriptor):
    """
    A descriptor whose read ends it and whose C{connectionLost} raises: what
    Twisted's C{_doReadOrWrite} lets escape.
    """

    def doRead(self) -> object:
        super().doRead()
        return main.CONNECTION_DONE

    def connectionLost(self, reason: object) -> None:
        raise ZeroDivisionError("connectionLost")


def poll(
    test: SynchronousTestCase,
    kind: type[epollreactor.EPollReactor],
    descriptors: list[Descriptor],
    events: list[tuple[int, int]] | OSError | None = None,
    timeout: float | None = 0,
) -> tuple[list[tuple[str, Any]], FakePoller]:
    """
    One poll of a fresh reactor of C{kind} with C{descriptors} ready (or
    C{events}): what was logged meanwhile, as C{(system, text)}, and the
    fake poller.
    """
    reactor = unstartedReactor(test, kind)
    fake = FakePoller([(d.fd, IN) for d in descriptors] if events is None else events)
    reactor._poller = fake
    for descriptor in descriptors:
        reactor._selectables[descriptor.fd] = descriptor
        reactor._reads.add(descriptor.fd)
    logged: list[tuple[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        text = event.get("log_text") or event.get("log_format")
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None:
            text = repr(failure.value)
        logged.append((event.get("log_system"), text))

    globalLogPublisher.addObserver(observe)
    try:
        reactor.doPoll(timeout)
    finally:
        globalLogPublisher.removeObserver(observe)
    return logged, fake


class SameAsTwistedTests(SynchronousTestCase):
    """One poll of caret's reactor does what one of Twisted's does."""

    def both(
        self, make: Any, **kwargs: Any
    ) -> tuple[tuple[list[Any], list[Any]], tuple[list[Any], list[Any]]]:
        """
        The same poll, on Twisted's reactor and on caret's, with descriptors
        C{make(seen)} builds: for each, what the descriptors saw and what
        was logged.
        """
        found = []
        for kind in (epollreactor.EPollReactor, caretreactor.EPollReactor):
            seen: list[Any] = []
            logged, _ = poll(self, kind, make(seen), **kwargs)
            found.append((seen, logged))
        return found[0], found[1]

    def test_each_event_is_read_under_its_descriptor_s_prefix(self) -> None:
        twisted, caret = self.both(
            lambda seen: [Descriptor(fd, seen) for fd in (7, 8, 9)]
        )
        self.assertEqual(caret, twisted)
        seen, logged = caret
        self.assertEqual(
            [(fd, ctx["system"]) for fd, ctx in seen],
            [(7, "Echo,7,127.0.0.1"), (8, "Echo,8,127.0.0.1"), (9, "Echo,9,127.0.0.1")],
        )
        self.assertEqual(
            logged,
            [(f"Echo,{fd},127.0.0.1", f"read {fd}") for fd in (7, 8, 9)],
        )

    def test_the_context_in_effect_is_kept_beside_the_prefix(self) -> None:
        def inContext() -> tuple[Any, Any]:
            return self.both(lambda seen: [Descriptor(5, seen)])

        twisted, caret = log.callWithContext(
            {"system": "outer", "request": "r1"}, inContext
        )
        self.assertEqual(caret, twisted)
        [(_, seenContext)] = caret[0]
        self.assertEqual(seenContext["request"], "r1")
        self.assertEqual(seenContext["system"], "Echo,5,127.0.0.1")

    def test_a_prefix_that_raises_is_logged_and_the_event_still_read(
        self,
    ) -> None:
        twisted, caret = self.both(
            lambda seen: [
                Descriptor(3, seen, prefix=RuntimeError("no prefix")),
                Descriptor(4, seen),
            ]
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(caret, twisted)
        seen, logged = caret
        self.assertEqual([fd for fd, _ in seen], [3, 4])
        self.assertEqual(
            logged[:2],
            [
                (caretreactor.BUGGY_PREFIX, "RuntimeError('no prefix')"),
                (caretreactor.BUGGY_PREFIX, "read 3"),
            ],
        )

    def test_what_escapes_an_event_is_logged_and_the_next_is_read(self) -> None:
        twisted, caret = self.both(
            lambda seen: [Disconnecting(3, seen), Descriptor(4, seen)]
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual(caret, twisted)
        seen, logged = caret
        self.assertEqual([fd for fd, _ in seen], [3, 4])
        self.assertIn(
            ("Echo,3,127.0.0.1", "ZeroDivisionError('connectionLost')"), logged
        )

    def test_an_event_for_a_descriptor_no_longer_watched_is_skipped(
        self,
    ) -> None:
        twisted, caret = self.both(
            lambda seen: [Descriptor(3, seen)], events=[(99, IN), (3, IN)]
        )
        self.assertEqual(caret, twisted)
        self.assertEqual([fd for fd, _ in caret[0]], [3])

    def test_the_context_stack_is_as_it_was_after_a_poll(self) -> None:
        before = list(context.theContextTracker.currentContext().contexts)
        self.both(lambda seen: [Disconnecting(3, seen), Descriptor(4, seen)])
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(context.theContextTracker.currentContext().contexts, before)

    def test_a_keyboard_interrupt_from_a_prefix_stops_the_poll(self) -> None:
        for kind in (epollreactor.EPollReactor, caretreactor.EPollReactor):
            seen: list[Any] = []
            self.assertRaises(
                KeyboardInterrupt,
                poll,
                self,
                kind,
                [Descriptor(3, seen, prefix=KeyboardInterrupt()), Descriptor(4, seen)],
            )
            self.assertEqual(seen, [], kind)

    def test_poll_is_asked_as_twisted_asks_it(self) -> None:
        for timeout, asked in ((None, -1), (0.25, 0.25)):
            polled = [
                poll(self, kind, [Descriptor(3, [])], timeout=timeout)[1].polled
                for kind in (epollreactor.EPollReactor, caretreactor.EPollReactor)
            ]
            self.assertEqual(polled[1], polled[0])
            # Its waker and the one descriptor.
            self.assertEqual(polled[1], [(asked, 2)])

    def test_an_interrupted_poll_dispatches_nothing(self) -> None:
        seen: list[Any] = []
        logged, _ = poll(
            self,
            caretreactor.EPollReactor,
            [Descriptor(3, seen)],
            events=OSError(errno.EINTR, "interrupted"),
        )
        self.assertEqual((seen, logged), ([], []))

    def test_any_other_poll_error_is_raised(self) -> None:
        self.assertRaises(
            OSError,
            poll,
            self,
            caretreactor.EPollReactor,
            [Descriptor(3, [])],
            events=OSError(errno.EBADF, "bad"),
        )

    def test_another_context_tracker_gets_twisted_s_own_dispatch(self) -> None:
        class Tracker(context.ContextTracker):
            calls = 0

            def callWithContext(self, ctx: Any, func: Any, *a: Any, **kw: Any) -> Any:
                Tracker.calls += 1
                return super().callWithContext(ctx, func, *a, **kw)

        previous = context.theContextTracker
        context.installContextTracker(Tracker())
        self.addCleanup(context.installContextTracker, previous)
        seen: list[Any] = []
        poll(self, caretreactor.EPollReactor, [Descriptor(3, seen)])
        self.assertEqual(Tracker.calls, 1)
        self.assertEqual(seen[0][1]["system"], "Echo,3,127.0.0.1")


class TwistedInternalsTests(SynchronousTestCase):
    """What caret's reactor relies on that Twisted does not document."""

    def test_the_epoll_reactor_polls_its_selectables_through_poller(
        self,
    ) -> None:
        reactor = unstartedReactor(self, epollreactor.EPollReactor)
        self.assertTrue(hasattr(reactor._poller, "poll"))
        self.assertIsInstance(reactor._selectables, dict)
        self.assertTrue(callable(reactor._doReadOrWrite))
        self.assertIs(
            epollreactor.EPollReactor.doIteration, epollreactor.EPollReactor.doPoll
        )

    def test_twisted_s_tracker_keeps_a_stack_of_contexts(self) -> None:
        tracker = context.ThreadedContextTracker()
        stack = tracker.currentContext().contexts
        self.assertIsInstance(stack, list)
        stack.append({"k": "v"})
        self.assertEqual(tracker.getContext("k"), "v")
        self.assertIs(type(context.theContextTracker), context.ThreadedContextTracker)


class PluginTests(SynchronousTestCase):
    def test_twistd_and_twist_know_it_as_caret_epoll(self) -> None:
        [found] = [r for r in getReactorTypes() if r.shortName == "caret-epoll"]
        self.assertEqual(found.moduleName, "caretproto.reactor")
        self.assertTrue(callable(caretreactor.install))


# Twisted's own reactor tests, on caret's reactor.
# One of them, test_lostFileDescriptor, is skipped by Twisted itself for
# an epoll reactor, its own included: epoll cannot tell a closed descriptor
# from a new one of the same number.
ON_CARET = {"_reactors": ["caretproto.reactor.EPollReactor"]}


def onCaret(builder: type) -> dict[str, type]:
    """C{builder}'s tests, made for caret's reactor alone."""
    named = type(builder.__name__.replace("Builder", ""), (builder,), ON_CARET)
    return named.makeTestCaseClasses()  # type: ignore[attr-defined, no-any-return]


for _builder in (
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_fdset.ReactorFDSetTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_time.TimeTestsBuilder,
):
    globals().update(onCaret(_builder))
del _builder
