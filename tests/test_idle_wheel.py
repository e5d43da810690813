"""
The idle wheel (L{caretproto.idle}): many deadlines on one timer, each met
no earlier than asked and less than a tick later; progress given the next
tick's time; no timer when nothing is tracked; and the Twisted attributes
L{unsentBytes} reads, pinned.
"""

from __future__ import annotations

import random

import trustme
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase

from caretproto.idle import IdleWheel, granularityFor, unsentBytes
from caretproto.rules import GREETING
from caretproto.server import CaretProtocol
from tests.fakes import clockedFactory
from tests.test_writenow import FakeReactor, FakeSocket, _FakePort, sessionOnSocket


def tlsSessionOnSocket() -> tuple[
    CaretProtocol, TLSMemoryBIOProtocol, FakeSocket, Clock
]:
    """
    A greeted session over TLS, as an C{ssl:} endpoint builds it, on a TCP
    server transport over a fake socket; the client has sent nothing yet.
    """
    issued = trustme.CA().issue_cert("127.0.0.1")
    options = PrivateCertificate.loadPEM(
        issued.private_key_and_cert_chain_pem.bytes()
    ).options()
    clock = Clock()
    factory = TLSMemoryBIOFactory(options, False, clockedFactory()[0], clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    tls = factory.buildProtocol(address)
    assert isinstance(tls, TLSMemoryBIOProtocol)
    fake = FakeSocket()
    transport = tcp.Server(
        fake,  # type: ignore[arg-type]
        tls,
        ("127.0.0.1", 40000),
        _FakePort(),  # type: ignore[arg-type]
        1,
        FakeReactor(),  # type: ignore[arg-type]
    )
    tls.makeConnection(transport)
    session = tls.wrappedProtocol
    assert isinstance(session, CaretProtocol)
    return session, tls, fake, clock


class Entry:
    """
    Something on a wheel: asks to be checked at each of C{times} in turn,
    and records when it was.
    """

    def __init__(self, *times: float) -> None:
        self.times = list(times)
        self.checked: list[float] = []
        self.progress: list[float] = []

    def idleCheck(self, now: float) -> float | None:
        self.checked.append(now)
        return self.times.pop(0) if self.times else None

    def progressed(self, now: float) -> None:
        self.progress.append(now)


class Failing:
    def idleCheck(self, now: float) -> float | None:
        raise RuntimeError("broken check")

    def progressed(self, now: float) -> None:
        raise RuntimeError("broken note")


class IdleWheelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = IdleWheel(self.clock, 0.25)

    def test_an_empty_wheel_has_no_timer(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.wheel), 0)

    def test_an_entry_is_checked_at_its_time_on_a_tick(self) -> None:
        entry = Entry()
        self.wheel.schedule(entry, 1.0)
        self.clock.advance(0.99)
        self.assertEqual(entry.checked, [])
        self.clock.advance(0.01)
        self.assertEqual(entry.checked, [1.0])

    def test_a_time_between_ticks_is_met_at_the_next_tick(self) -> None:
        entry = Entry()
        self.wheel.schedule(entry, 1.1)
        self.clock.advance(1.1)
        self.assertEqual(entry.checked, [])
        self.clock.advance(0.15)
        self.assertEqual(entry.checked, [1.25])

    def test_the_timer_stops_when_the_last_entry_is_checked_for_good(
        self,
    ) -> None:
        self.wheel.schedule(Entry(), 1.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.wheel), 0)

    def test_the_timer_stops_when_the_last_entry_is_discarded(self) -> None:
        first, second = Entry(), Entry()
        self.wheel.schedule(first, 1.0)
        self.wheel.schedule(second, 5.0)
        self.wheel.discard(first)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.wheel.discard(second)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.wheel.discard(second)

    def test_the_timer_is_set_for_the_earliest_entry_only(self) -> None:
        """
        The one timer wakes for the earliest bucket with anything in it, not
        on every tick: a wheel of far deadlines sleeps until the first.
        """
        late, early = Entry(), Entry()
        self.wheel.schedule(late, 100.0)
        self.wheel.schedule(early, 10.0)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 10.0)
        self.wheel.discard(early)
        self.clock.advance(10.0)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 100.0)

    def test_an_entry_asking_to_be_checked_later_is_filed_again(self) -> None:
        entry = Entry(2.6, 7.0)
        self.wheel.schedule(entry, 1.0)
        self.clock.pump([0.25] * 40)
        self.assertEqual(entry.checked, [1.0, 2.75, 7.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_asking_for_now_means_the_next_tick_not_this_one(self) -> None:
        entry = Entry(0.0, 0.0)
        self.wheel.schedule(entry, 1.0)
        self.clock.pump([0.25] * 8)
        self.assertEqual(entry.checked, [1.0, 1.25, 1.5])

    def test_a_late_timer_checks_every_entry_due_once(self) -> None:
        """A reactor that wakes late meets every passed deadline, once."""
        entries = [Entry(0.0) for _ in range(10)]
        for index, entry in enumerate(entries):
            self.wheel.schedule(entry, index * 0.3)
        self.clock.advance(60)
        self.assertEqual([entry.checked for entry in entries], [[60.0]] * 10)
        self.clock.advance(0.25)
        self.assertEqual([entry.checked for entry in entries], [[60.0, 60.25]] * 10)

    def test_thousands_of_entries_share_one_timer_and_each_meets_its_time(
        self,
    ) -> None:
        randomness = random.Random(16)
        times = [randomness.uniform(0, 300) for _ in range(5000)]
        entries = [Entry() for _ in times]
        for entry, when in zip(entries, times, strict=True):
            self.wheel.schedule(entry, when)
        calls = 0
        while self.clock.getDelayedCalls():
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            [call] = self.clock.getDelayedCalls()
            self.clock.advance(call.getTime() - self.clock.seconds())
            calls += 1
        for entry, when in zip(entries, times, strict=True):
            [checked] = entry.checked
            self.assertTrue(when <= checked < when + 0.25, (when, checked))
        # One wake-up per tick with a deadline in it, not one per entry.
        self.assertLessEqual(calls, 300 / 0.25 + 1)

    def test_a_new_granularity_checks_every_entry_at_the_next_tick(self) -> None:
        entry = Entry(3.0)
        self.wheel.schedule(entry, 100.0)
        self.clock.advance(1.0)
        self.wheel.granularity = 0.5
        self.clock.advance(0.5)
        self.assertEqual(entry.checked, [1.5])
        self.clock.advance(1.5)
        self.assertEqual(entry.checked, [1.5, 3.0])

    def test_a_new_clock_takes_the_pending_tick(self) -> None:
        entry = Entry()
        self.wheel.schedule(entry, 1.0)
        other = Clock()
        self.wheel.setClock(other)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        other.advance(1.0)
        self.assertEqual(entry.checked, [1.0])

    def test_clear_forgets_everything_and_stops_the_timer(self) -> None:
        entry = Entry()
        self.wheel.schedule(entry, 1.0)
        self.wheel.clear()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(2)
        self.assertEqual(entry.checked, [])

    def test_an_entry_discarded_by_another_entrys_check_is_not_checked(
        self,
    ) -> None:
        """
        Whichever of two entries due at once is checked first ends the
        other (as one session's end can end another): the other is not
        checked.
        """
        wheel = self.wheel

        class Discarding(Entry):
            other: Entry

            def idleCheck(self, now: float) -> float | None:
                wheel.discard(self.other)
                return super().idleCheck(now)

        first, second = Discarding(), Discarding()
        first.other, second.other = second, first
        wheel.schedule(first, 1.0)
        wheel.schedule(second, 1.0)
        self.clock.advance(1.0)
        self.assertEqual(sorted([first.checked, second.checked]), [[], [1.0]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_progress_is_given_the_next_ticks_time(self) -> None:
        """
        An entry that made progress is told so at the next tick, with the
        tick's time: the timer wakes for it, though no check is due for
        long, and once, however many entries made progress.
        """
        entries = [Entry() for _ in range(3)]
        for entry in entries:
            self.wheel.schedule(entry, 100.0)
        self.clock.advance(1.1)
        for entry in entries:
            self.wheel.noteProgress(entry)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 1.25)
        self.clock.advance(0.15)
        self.assertEqual([entry.progress for entry in entries], [[1.25]] * 3)
        self.assertEqual([entry.checked for entry in entries], [[]] * 3)
        # Told once: the timer sleeps until the first check again.
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 100.0)

    def test_progress_of_many_entries_looks_at_the_clock_once(self) -> None:
        """
        Only the first entry to make progress since a tick sets the timer:
        a burst of sessions all reading, after a long quiet spell with no
        tick, costs one setting of the timer, not a look at the clock each.
        """
        entries = [Entry() for _ in range(1000)]
        for entry in entries:
            self.wheel.schedule(entry, 100.0)
        self.clock.advance(50.1)
        looks: list[float] = []
        seconds = self.clock.seconds

        def counted() -> float:
            looks.append(seconds())
            return seconds()

        self.clock.seconds = counted  # type: ignore[method-assign]
        try:
            for entry in entries:
                self.wheel.noteProgress(entry)
        finally:
            del self.clock.seconds
        # The wheel's, and the one the timer takes to set itself.
        self.assertEqual(len(looks), 2)
        self.clock.advance(0.15)
        self.assertEqual({tuple(entry.progress) for entry in entries}, {(50.25,)})

    def test_progress_is_given_before_the_ticks_checks(self) -> None:
        """
        Progress since the last tick is given its time before the tick's
        checks, so that a check sees it.
        """
        order: list[str] = []

        class Ordered(Entry):
            def idleCheck(self, now: float) -> float | None:
                order.append("check")
                return super().idleCheck(now)

            def progressed(self, now: float) -> None:
                order.append("progress")
                super().progressed(now)

        entry = Ordered()
        self.wheel.schedule(entry, 1.0)
        self.clock.advance(0.9)
        self.wheel.noteProgress(entry)
        self.clock.advance(0.1)
        self.assertEqual(order, ["progress", "check"])

    def test_progress_of_an_entry_discarded_since_is_dropped(self) -> None:
        entry, other = Entry(), Entry()
        self.wheel.schedule(entry, 1.0)
        self.wheel.schedule(other, 1.0)
        self.wheel.noteProgress(entry)
        self.wheel.discard(entry)
        self.clock.advance(1.0)
        self.assertEqual(entry.progress, [])

    def test_progress_is_given_its_time_when_the_granularity_changes(self) -> None:
        """
        Entries filed anew for a new granularity keep the progress they made
        before it: given the time of the change, which is after it.
        """
        entry = Entry(10.0)
        self.wheel.schedule(entry, 100.0)
        self.clock.advance(1.1)
        self.wheel.noteProgress(entry)
        self.wheel.granularity = 0.5
        self.assertEqual(entry.progress, [1.1])
        self.clock.advance(0.4)
        self.assertEqual(entry.checked, [1.5])

    def test_progress_is_given_its_time_on_the_old_clock_for_a_new_one(
        self,
    ) -> None:
        entry = Entry()
        self.wheel.schedule(entry, 1.0)
        self.clock.advance(0.6)
        self.wheel.noteProgress(entry)
        self.wheel.setClock(Clock())
        self.assertEqual(entry.progress, [0.6])

    def test_clear_forgets_progress(self) -> None:
        entry = Entry()
        self.wheel.schedule(entry, 1.0)
        self.wheel.noteProgress(entry)
        self.wheel.clear()
        self.wheel.schedule(entry, 1.0)
        self.clock.advance(1.0)
        self.assertEqual(entry.progress, [])

    def test_a_failing_progress_note_is_logged_and_the_others_still_run(
        self,
    ) -> None:
        failing, entry = Failing(), Entry()
        for one in (failing, entry):
            self.wheel.schedule(one, 100.0)
            self.wheel.noteProgress(one)
        self.clock.advance(0.25)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(entry.progress, [0.25])

    def test_a_failing_check_is_logged_and_the_others_still_run(self) -> None:
        entries = [Entry() for _ in range(3)]
        self.wheel.schedule(Failing(), 1.0)
        for entry in entries:
            self.wheel.schedule(entry, 1.0)
        later = Entry()
        self.wheel.schedule(later, 2.0)
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([entry.checked for entry in entries], [[1.0]] * 3)
        self.clock.advance(1.0)
        self.assertEqual(later.checked, [2.0])

    def test_the_granularity_is_a_32nd_of_the_timeout_and_at_most_half_a_second(
        self,
    ) -> None:
        self.assertEqual(granularityFor(2), 0.0625)
        self.assertEqual(granularityFor(16), 0.5)
        self.assertEqual(granularityFor(300), 0.5)


class UnsentBytesTests(SynchronousTestCase):
    """
    What a transport still holds: read from Twisted attributes that it does
    not document, pinned here.
    """

    def test_a_socket_transport_holds_its_buffers(self) -> None:
        session, transport, fake, _ = sessionOnSocket()
        self.assertEqual(unsentBytes(transport), 0)
        fake.room = 2
        session.dataReceived(b"^abcde")
        self.assertEqual(unsentBytes(transport), 3)
        session.dataReceived(b"fgh")
        self.assertEqual(unsentBytes(transport), 6)
        fake.room = 4
        transport.doWrite()
        # Twisted's two buffers, and its offset into the first.
        self.assertTrue(transport.dataBuffer and transport.offset)
        self.assertEqual(unsentBytes(transport), 2)

    def test_a_forwarding_wrapper_is_looked_through(self) -> None:
        session, transport, fake, _ = sessionOnSocket()
        fake.room = 0
        session.dataReceived(b"^abc")
        wrapper = HAProxyProtocolWrapper(WrappingFactory(None), session)
        wrapper.transport = transport
        self.assertEqual(unsentBytes(wrapper), 3)

    def test_tls_counts_what_waits_for_the_handshake_and_its_socket_holds(
        self,
    ) -> None:
        session, tls, fake, clock = tlsSessionOnSocket()
        # Small writes first wait a turn, to be encrypted together.
        self.assertEqual(unsentBytes(session.transport), len(GREETING))
        clock.advance(0)
        # No handshake yet: the greeting waits in the TLS layer.
        self.assertEqual(tls._appSendBuffer, [GREETING])
        self.assertEqual(unsentBytes(session.transport), len(GREETING))
        fake.room = 0
        socketTransport = tls.transport
        assert socketTransport is not None
        socketTransport.write(b"12345")
        self.assertEqual(unsentBytes(session.transport), len(GREETING) + 5)

    def test_tls_started_on_the_socket_itself_cannot_tell(self) -> None:
        _, transport, _, _ = sessionOnSocket()
        transport.TLS = True
        self.assertIsNone(unsentBytes(transport))

    def test_a_string_transport_cannot_tell(self) -> None:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "1.2.3.4", 5))
        self.assertIsNone(unsentBytes(transport))
