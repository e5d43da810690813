# -*- test-case-name: tests.test_idle_wheel -*-
"""
Idle deadlines for many connections on one timer: a timing wheel, and a way
to see whether a connection's client is taking its replies.

L{IdleWheel} keeps every tracked connection in a bucket by the tick of its
next check, and runs one reactor timer, set for the earliest bucket, for all
of them; with nothing tracked it has no timer at all.  A connection's own
bookkeeping stays its own: when its bucket comes round, the connection's
L{Idler.idleCheck} decides whether it is idle or says when to look again.
Per connection this costs two dict entries, where a timer each costs a
C{DelayedCall} and a place in the reactor's heap.

Nor does a read cost a look at the clock.  The first read after a tick tells
the wheel (L{IdleWheel.noteProgress}), and the next tick gives every
connection that did so the tick's time (L{Idler.progressed}): a time no
earlier than the read, read from the clock once for all of them, as nginx
and HAProxy read it once per turn of their event loops.

Deadlines are rounded up to the next tick, so a check happens no earlier
than asked and less than a tick later; and a read counts from the next tick,
no earlier than the read and less than a tick after it.  So a connection is
ended no earlier than its timeout after its last read, and less than two
ticks later (and a connection that never read, less than one), plus however
late the reactor runs its timers.  L{granularityFor} gives the tick of a
timeout, a thirty-second of it and never more than half a second: two ticks
are a sixteenth of the timeout, and never more than a second.

L{unsentBytes} tells how many bytes a transport still holds unsent, which
a session samples while it waits for its client to take replies: a figure
that shrinks is a client reading.

This module is not what decides idleness (L{caretproto.server.CaretProtocol}
does) nor a general scheduler: use the reactor's C{callLater} for anything
that must happen at an exact moment.
"""

from __future__ import annotations

import math
from heapq import heappop, heappush
from typing import Any, Protocol

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

TICKS_PER_TIMEOUT = 32
"""A timeout's tick is this fraction of it (L{granularityFor})."""

LONGEST_TICK = 0.5
"""The longest tick, in seconds, whatever the timeout."""


def granularityFor(timeout: float) -> float:
    """
    The tick of an L{IdleWheel} for C{timeout}: a thirty-second of it, and
    never more than half a second, so that a connection is ended less than
    two ticks after its deadline (one for its last read to be counted, one
    for the deadline's own): a sixteenth of the timeout, and never more
    than a second (with caret's default of 300 s).

    @param timeout: the idle timeout, in seconds.
    @return: the tick, in seconds.
    """
    return min(timeout / TICKS_PER_TIMEOUT, LONGEST_TICK)


class Idler(Protocol):
    """What an L{IdleWheel} tracks: something that can check itself."""

    def idleCheck(self, now: float) -> float | None:
        """
        The time for this to be checked has come: act, and say when to
        check again.

        @param now: the time, on the wheel's clock.
        @return: when to check again, on that clock, or C{None} to be
            forgotten.  A time not after C{now} means the next tick.
        """

    def progressed(self, now: float) -> None:
        """
        This made progress (a read) since the last tick, and told the wheel
        with L{IdleWheel.noteProgress}: count its idle time from C{now}.

        @param now: the tick's time, on the wheel's clock: no earlier than
            the progress.
        """


class IdleWheel:
    """
    One timer for the idle checks of many connections.

    Entries live in buckets keyed by tick number (time over L{granularity},
    rounded up); a heap of the bucket keys gives the earliest, for which the
    one timer is set.  A tick checks every entry of every bucket that is due
    and files each again where its check says.

    @ivar clock: the clock the timer runs on.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, granularity: float) -> None:
        """
        @param clock: the clock for the timer.
        @param granularity: seconds per tick (L{granularityFor}).
        """
        self.clock = clock
        self._granularity = granularity
        # A bucket is a dict used as an ordered set: many thousands of
        # entries take from a half to a third of the memory of a set.  Each
        # entry maps to its bucket itself, not to the bucket's tick number,
        # so that it costs no number object of its own.
        self._buckets: dict[int, dict[Idler, None]] = {}
        self._keys: list[int] = []
        self._where: dict[Idler, dict[Idler, None]] = {}
        self._progressed: list[Idler] = []
        self._call: IDelayedCall | None = None
        self._callKey: int | None = None
        self._ticking = False
        self._current = self._tickAt(clock.seconds())

    def __len__(self) -> int:
        """
        @return: how many entries are tracked.
        """
        return len(self._where)

    def __contains__(self, entry: object) -> bool:
        """
        @param entry: anything.
        @return: whether C{entry} is tracked.
        """
        return entry in self._where

    @property
    def granularity(self) -> float:
        """
        Seconds per tick.  Set anew (the timeout changed), every entry is
        checked at the next tick, where it files itself by its own deadline.
        """
        return self._granularity

    @granularity.setter
    def granularity(self, granularity: float) -> None:
        """
        Tick every C{granularity} seconds from now on.
        """
        if granularity == self._granularity:
            return
        entries = self._forgetAllButProgress()
        self._granularity = granularity
        self._refile(entries)

    def setClock(self, clock: IReactorTime) -> None:
        """
        Run on C{clock} from now on, moving the pending tick to it.

        @param clock: the new clock.
        """
        entries = self._forgetAllButProgress()
        self.clock = clock
        self._refile(entries)

    def _forgetAllButProgress(self) -> list[Idler]:
        """
        Forget every entry, once those that made progress since the last
        tick have been given the time, the earliest to count it from now.

        @return: the entries forgotten, for L{_refile}.
        """
        self._stampProgress(self.clock.seconds())
        entries = list(self._where)
        self._forgetAll()
        return entries

    def _refile(self, entries: list[Idler]) -> None:
        """File C{entries}, forgotten, anew from now: each checked next tick."""
        now = self.clock.seconds()
        self._current = self._tickAt(now)
        for entry in entries:
            self.schedule(entry, now)

    def _tickAt(self, when: float) -> int:
        """The last tick at or before C{when}."""
        tick = math.floor(when / self._granularity)
        # Compare times as the timer computes them, so that a tick that is
        # due by the timer is due here too, whatever the rounding.
        while (tick + 1) * self._granularity <= when:
            tick += 1
        while tick * self._granularity > when:
            tick -= 1
        return tick

    def schedule(self, entry: Idler, when: float) -> None:
        """
        Check C{entry} at the first tick at or after C{when}, and not at any
        earlier time it was filed for; the next tick if C{when} has passed.

        @param entry: what to check.
        @param when: when, on the wheel's clock.
        """
        key = max(math.ceil(when / self._granularity), self._current + 1)
        bucket = self._buckets.get(key)
        old = self._where.get(entry)
        if old is not None:
            if old is bucket:
                return
            del old[entry]
        if bucket is None:
            bucket = self._buckets[key] = {}
            heappush(self._keys, key)
        self._where[entry] = bucket
        bucket[entry] = None
        if not self._ticking and (self._callKey is None or key < self._callKey):
            self._arm()

    def noteProgress(self, entry: Idler) -> None:
        """
        C{entry} made progress: at the next tick, before any check, the
        wheel calls its L{Idler.progressed} with the tick's time.  Once per
        tick is enough, so that a connection tells the wheel of its first
        read after a tick, and of none of the others.

        @param entry: a tracked entry; one forgotten by then is skipped.
        """
        progressed = self._progressed
        progressed.append(entry)
        # The first since the last tick sets the timer for the next tick;
        # the others find it set.  A tick under way sets it as it ends.
        if len(progressed) == 1 and not self._ticking:
            self._arm()

    def _stampProgress(self, now: float) -> None:
        """Give every entry that made progress since the last tick C{now}."""
        progressed, self._progressed = self._progressed, []
        where = self._where
        for entry in progressed:
            if entry in where:
                try:
                    entry.progressed(now)
                except Exception:
                    self._log.failure(
                        "noting progress of {entry!r} failed", entry=entry
                    )

    def discard(self, entry: Idler) -> None:
        """
        Stop tracking C{entry}, if tracked; with none left, stop the timer.

        @param entry: what to check no more.
        """
        bucket = self._where.pop(entry, None)
        if bucket is None:
            return
        del bucket[entry]
        if not self._where:
            self._forgetAll()

    def clear(self) -> None:
        """Track nothing, and stop the timer."""
        self._forgetAll()

    def _forgetAll(self) -> None:
        self._where.clear()
        self._progressed.clear()
        self._buckets.clear()
        self._keys.clear()
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._callKey = None

    def _arm(self) -> None:
        """
        Set the one timer for the earliest bucket with anything in it, or
        for the next tick if an entry made progress since the last.
        """
        keys, buckets = self._keys, self._buckets
        while keys and not buckets[keys[0]]:
            del buckets[heappop(keys)]
        if not keys:
            self._cancel()
            return
        now = self.clock.seconds()
        first = keys[0]
        if self._progressed:
            first = min(first, self._tickAt(now) + 1)
        if self._callKey == first:
            return
        self._cancel()
        delay = max(0.0, first * self._granularity - now)
        self._call = self.clock.callLater(delay, self._tick)
        self._callKey = first

    def _tick(self) -> None:
        self._call = None
        self._callKey = None
        now = self.clock.seconds()
        # Every check filed from here on goes to a later tick, so that an
        # entry that asks to be checked "now" is not checked again at once.
        self._current = current = self._tickAt(now)
        keys, buckets, where = self._keys, self._buckets, self._where
        self._ticking = True
        try:
            # Before the checks, so that a read since the last tick counts.
            self._stampProgress(now)
            while keys and keys[0] <= current:
                bucket = buckets.pop(heappop(keys))
                # A copy: a check may discard or refile another entry of
                # this bucket, which removes it from the bucket.
                for entry in list(bucket):
                    # Lost, or filed elsewhere, by another entry's check.
                    if where.get(entry) is not bucket:
                        continue
                    del where[entry]
                    try:
                        again = entry.idleCheck(now)
                    except Exception:
                        # One connection's failure must not stop the
                        # checks of all the others.
                        self._log.failure("idle check of {entry!r} failed", entry=entry)
                        continue
                    if again is not None and entry not in where:
                        self.schedule(entry, again)
        finally:
            self._ticking = False
        if where:
            self._arm()
        else:
            self._forgetAll()


def unsentBytes(transport: Any) -> int | None:
    """
    How many bytes written to C{transport} it still holds, not yet taken by
    the kernel: for a plain socket, Twisted's own buffers; under TLS, the
    socket's buffers (of encrypted bytes), what waits for the handshake and
    what waits a turn to be encrypted with the writes after it;
    through a wrapper that only forwards writes (the PROXY protocol's), what
    the transport under it holds.

    Between two samples with nothing written meanwhile, a smaller figure
    means the client took some replies.  It relies on attributes of
    C{twisted.internet.abstract.FileDescriptor} and
    C{twisted.protocols.tls.TLSMemoryBIOProtocol} that Twisted does not
    document; tests/test_idle_wheel.py pins them.

    @param transport: a session's transport.
    @return: the bytes held, or C{None} if C{transport} is none of these (a
        test's C{StringTransport}), so that nothing can be told.
    """
    held = 0
    while True:
        if isinstance(transport, FileDescriptor):
            if getattr(transport, "TLS", False):
                # TLS started on the socket itself: its buffers hold
                # encrypted bytes by another path.
                return None
            return (
                held
                + len(transport.dataBuffer)
                - transport.offset
                + transport._tempDataLen
            )
        if isinstance(transport, TLSMemoryBIOProtocol):
            held += sum(map(len, transport._appSendBuffer))
            # Small writes wait a turn to be encrypted together (Twisted's
            # BufferingTLSTransport, since 22.8).
            aggregator = getattr(transport, "_aggregator", None)
            held += sum(map(len, getattr(aggregator, "_buffer", ())))
        elif type(transport).write is not ProtocolWrapper.write:
            return None
        transport = transport.transport
