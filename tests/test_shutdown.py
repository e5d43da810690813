"""
Graceful shutdown, on a clock: stopping the service lets sessions go on for
C{shutdownTimeout} seconds, then ends them, each delivering what it owes;
a second signal meanwhile ends the drain at once.  The real signals are in
L{tests.test_signals}.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto.proxy import ProxyProtocolFactory, TrustedProxies
from caretproto.rules import GREETING
from caretproto.service import CaretService
from caretproto.tap import CaretCommand
from caretproto.workerside import ParentLink
from tests.fakes import clockedFactory, connect

BALANCER = IPv4Address("TCP", "10.0.0.5", 51000)
HEADER = b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n"


class ShutdownTimeoutTests(TestCase):
    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.service = CaretService([], self.factory)
        self.service.shutdownTimeout = 10.0
        self.service.startService()

    def test_stop_without_sessions_is_done_at_once(self) -> None:
        self.assertIsNone(self.successResultOf(self.service.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessions_go_on_until_the_timeout(self) -> None:
        session, transport = connect(self.factory)
        stopped = self.service.stopService()
        self.clock.advance(9.9)
        session.dataReceived(b"^abc")
        self.assertEqual(transport.value(), GREETING + b"bcd")
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(stopped)

    def test_stop_is_done_when_the_last_session_ends_by_itself(self) -> None:
        first, _ = connect(self.factory)
        second, _ = connect(self.factory, port=40001)
        stopped = self.service.stopService()
        first.connectionLost()
        self.assertNoResult(stopped)
        self.clock.advance(3)
        second.connectionLost()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessions_left_at_the_timeout_are_finished(self) -> None:
        session, transport = connect(self.factory)
        session.pauseProducing()
        stopped = self.service.stopService()
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertFalse(transport.disconnected)
        self.assertNoResult(stopped)
        session.connectionLost()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_session_whose_client_takes_no_replies_is_cut_off_at_last(
        self,
    ) -> None:
        _, transport = connect(self.factory)
        self.service.stopService()
        self.clock.advance(10)
        self.assertFalse(transport.disconnected)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)

    def test_a_session_that_fails_to_finish_leaves_the_others_ended(
        self,
    ) -> None:
        broken, _ = connect(self.factory)
        _, transport = connect(self.factory, port=40001)

        def fails() -> None:
            raise RuntimeError("cannot finish")

        broken.finish = fails  # type: ignore[method-assign]
        self.service.stopService()
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)


class StopListeningTests(TestCase):
    async def test_new_clients_are_refused_once_stopping(self) -> None:
        factory, clock = clockedFactory()
        service = CaretService(
            [TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")], factory
        )
        service.startService()
        (port,) = service.ports
        address = port.getHost()
        _, transport = connect(factory)
        stopped = service.stopService()
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)  # type: ignore[attr-defined]
        with self.assertRaises(ConnectionRefusedError):
            await client.connect(Factory.forProtocol(Protocol))
        self.assertNoResult(stopped)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)


class ArrivingConnectionTests(SynchronousTestCase):
    """
    Behind a balancer (C{haproxy:}), a connection accepted just before the
    stop is the balancer's client already, though its PROXY header is still
    on its way and it is no session yet: the balancer will not send that
    client elsewhere, so the drain serves it too (docs/protocol.rst, "What
    the protocol leaves to the server").
    """

    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.service = CaretService([], self.factory)
        self.service.shutdownTimeout = 10.0
        self.service.startService()
        self.proxy = ProxyProtocolFactory(
            self.factory,
            clock=self.clock,
            headerTimeout=5,
            trusted=TrustedProxies.fromStrings(["10.0.0.0/24"]),
        )

    def accept(self) -> tuple[ProtocolWrapper, StringTransport]:
        wrapper = self.proxy.buildProtocol(BALANCER)
        assert isinstance(wrapper, ProtocolWrapper)
        transport = StringTransport(peerAddress=BALANCER)
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_a_connection_whose_header_comes_after_the_stop_is_served(
        self,
    ) -> None:
        wrapper, transport = self.accept()
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        wrapper.dataReceived(HEADER + b"^abc$de^abte$f")
        wrapper.dataReceived(b"xyz^123")
        self.assertEqual(transport.value(), GREETING + b"bcdbcuf234")
        self.assertNoResult(stopped)
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_connection_that_never_sends_its_header_ends_the_wait(
        self,
    ) -> None:
        wrapper, transport = self.accept()
        stopped = self.service.stopService()
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.factory.arriving, set())

    def test_an_untrusted_connection_is_not_waited_for(self) -> None:
        stranger = IPv4Address("TCP", "192.0.2.1", 51000)
        wrapper = self.proxy.buildProtocol(stranger)
        assert isinstance(wrapper, ProtocolWrapper)
        wrapper.makeConnection(StringTransport(peerAddress=stranger))
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(self.service.stopService()))

    def test_a_connection_still_arriving_at_the_last_moment_does_not_hold_the_stop(
        self,
    ) -> None:
        self.factory.buildProtocol(BALANCER)
        stopped = self.service.stopService()
        self.clock.advance(10)
        self.assertNoResult(stopped)
        self.clock.advance(10)
        self.assertIsNone(self.successResultOf(stopped))


class HurryTests(SynchronousTestCase):
    """A drain ended at once, as a second SIGINT or SIGTERM asks."""

    def setUp(self) -> None:
        self.factory, self.clock = clockedFactory()
        self.service = CaretService([], self.factory)
        self.service.shutdownTimeout = 3600.0
        self.service.startService()

    def test_every_connection_is_aborted_and_no_timer_is_left(self) -> None:
        first, firstTransport = connect(self.factory)
        second, secondTransport = connect(self.factory, port=40001)
        stopped = self.service.stopService()
        self.service.hurry()
        self.assertTrue(firstTransport.disconnected)
        self.assertTrue(secondTransport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        first.connectionLost()
        self.assertNoResult(stopped)
        second.connectionLost()
        self.assertIsNone(self.successResultOf(stopped))

    def test_after_the_timeout_too(self) -> None:
        _, transport = connect(self.factory)
        self.service.stopService()
        self.clock.advance(3600)
        self.assertFalse(transport.disconnected)
        self.service.hurry()
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connections_still_arriving_are_given_up_on(self) -> None:
        self.factory.buildProtocol(BALANCER)
        stopped = self.service.stopService()
        self.service.hurry()
        self.assertIsNone(self.successResultOf(stopped))

    def test_nothing_to_do_unless_draining(self) -> None:
        _, transport = connect(self.factory)
        self.service.hurry()
        self.assertFalse(transport.disconnected)


class FakeReactor:
    """The reactor's signal handlers, and its way to run them later."""

    def __init__(self) -> None:
        self.later: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def sigInt(self, number: int, frame: object) -> None:
        pass

    def sigTerm(self, number: int, frame: object) -> None:
        pass

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.later.append((f, args))

    def runLater(self) -> None:
        later, self.later = self.later, []
        for f, args in later:
            f(*args)


class SecondSignalTests(SynchronousTestCase):
    """
    While the command stops, SIGINT and SIGTERM are its own: a second one
    ends the drain, where the reactor's handler would try to stop it again.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.handlers: dict[int, Any] = {
            signal.SIGINT: self.reactor.sigInt,
            signal.SIGTERM: self.reactor.sigTerm,
        }
        self.patch(signal, "getsignal", self.handlers.__getitem__)
        self.patch(signal, "signal", self.handlers.__setitem__)
        self.factory, self.clock = clockedFactory()
        self.caret = CaretService([], self.factory)
        self.caret.shutdownTimeout = 3600.0
        self.caret.setName("caret")
        self.command = CaretCommand(["tcp:0"], reactor=self.reactor)
        self.caret.setServiceParent(self.command)
        self.command.startService()

    def test_a_second_signal_aborts_the_sessions_at_the_reactors_next_turn(
        self,
    ) -> None:
        session, transport = connect(self.factory)
        stopped = self.command.stopService()
        for number in (signal.SIGINT, signal.SIGTERM):
            self.assertEqual(self.handlers[number], self.command._signalled)
        self.handlers[signal.SIGINT](signal.SIGINT, None)
        self.assertFalse(transport.disconnected)
        self.reactor.runLater()
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        session.connectionLost()
        self.successResultOf(stopped)

    def test_the_reactors_handlers_are_back_once_stopped(self) -> None:
        self.successResultOf(self.command.stopService())
        self.assertEqual(self.handlers[signal.SIGINT], self.reactor.sigInt)
        self.assertEqual(self.handlers[signal.SIGTERM], self.reactor.sigTerm)

    def test_a_worker_leaves_its_signals_to_the_reactor(self) -> None:
        # Its parent ends it if need be; a signal sent to the whole process
        # group would reach it twice.
        pipe, parent = os.pipe()
        self.addCleanup(os.close, pipe)
        self.addCleanup(os.close, parent)
        ParentLink(MemoryReactor(), pipe).setServiceParent(self.command)
        connect(self.factory)
        self.command.stopService()
        self.assertEqual(self.handlers[signal.SIGTERM], self.reactor.sigTerm)

    def test_signals_the_reactor_does_not_handle_are_left_alone(self) -> None:
        self.handlers[signal.SIGINT] = signal.SIG_IGN
        connect(self.factory)
        self.command.stopService()
        self.assertEqual(self.handlers[signal.SIGINT], signal.SIG_IGN)
        self.assertEqual(self.handlers[signal.SIGTERM], self.command._signalled)
