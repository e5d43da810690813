"""
Worker processes (L{caretproto.workers}): the pool's supervision on a fake
process reactor and a L{Clock}; log relaying; and, on real loopback sockets in
this process, a worker's endpoints on sockets a parent bound.  The processes
themselves run in C{tests/test_twistd.py}.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from pathlib import Path
from typing import Any, NamedTuple

import twisted.test
from twisted.internet import reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import LogEvent, Logger, LogLevel, eventAsJSON, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.protocols.wire import Echo
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from caretproto.logrelay import IWorkerReports
from caretproto.metrics import REPORT
from caretproto.proxy import TrustedProxies
from caretproto.server import CaretFactory
from caretproto.service import CaretService
from caretproto.workers import (
    WORKER_FDS,
    WorkerPool,
    describeExit,
    reactorName,
    workerCommand,
    workerEnvironment,
)
from caretproto.workerside import ParentLink, adoptable, inheritedEndpoint
from tests.fakes import unstartedReactor
from tests.rawclient import RawClient, connect
from tests.tempfolder import shortTempPath

SERVER_PEM = Path(twisted.test.__file__).parent / "server.pem"


class FakeProcess:
    """A process transport that records the signals sent to it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)


class Spawned(NamedTuple):
    protocol: ProcessProtocol
    args: list[str]
    childFDs: dict[int, Any]
    process: FakeProcess


class ProcessReactor(MemoryReactorClock):
    """A memory reactor and clock whose spawnProcess starts nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self.spawnError: OSError | None = None

    def spawnProcess(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, Any] | None = None,
    ) -> FakeProcess:
        if self.spawnError is not None:
            raise self.spawnError
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append(Spawned(protocol, args, childFDs or {}, process))
        protocol.makeConnection(process)
        return process


def end(spawned: Spawned, reason: Exception) -> None:
    """C{spawned} ends as the reactor tells it: its pipes close, then it ends."""
    spawned.process.ended = True
    for childFD in (0, 1, 2):
        spawned.protocol.childConnectionLost(childFD)
    spawned.protocol.processEnded(Failure(reason))


KILLED = ProcessTerminated(signal=signal.SIGKILL)


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.events: list[LogEvent] = []
        self.pool = WorkerPool(
            2, ["worker", "--serve"], lambda: [7, 9], 30.0, reactor=self.reactor
        )
        self.pool._log = Logger(observer=self.events.append)

    def messages(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def test_starts_each_worker_with_the_command_and_the_listening_sockets(
        self,
    ) -> None:
        self.pool.startService()
        self.assertEqual(len(self.reactor.spawned), 2)
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.args, ["worker", "--serve"])
            self.assertEqual(spawned.childFDs, {0: "w", 1: "r", 2: "r", 3: 7, 4: 9})
        self.assertEqual(
            self.messages(),
            ["worker 1 started: pid 1000", "worker 2 started: pid 1001"],
        )

    def test_a_worker_that_dies_after_running_a_while_is_replaced_at_once(
        self,
    ) -> None:
        self.pool.startService()
        self.reactor.advance(60)
        first = self.reactor.spawned[0]
        end(first, KILLED)
        [died] = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(
            formatEvent(died),
            "worker 1 (pid 1000) died after 60.0s: SIGKILL; starting another in 0.0s",
        )
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertIs(self.pool.workers[1], self.reactor.spawned[2].protocol)
        self.assertEqual(self.pool.workers.keys(), {1, 2})

    def test_a_worker_that_keeps_dying_at_once_is_restarted_ever_later(
        self,
    ) -> None:
        self.pool.startService()
        for delay in [1.0, 2.0, 4.0, 8.0]:
            end(self.reactor.spawned[-1], ProcessTerminated(exitCode=3))
            started = len(self.reactor.spawned)
            self.reactor.advance(delay - 0.01)
            self.assertEqual(len(self.reactor.spawned), started)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.reactor.spawned), started + 1)
        self.assertIn("exit code 3; starting another in 8.0s", self.messages()[-2])

    def test_a_steady_run_forgives_earlier_quick_deaths(self) -> None:
        self.pool.startService()
        for delay in [1.0, 2.0, 4.0]:
            end(self.reactor.spawned[-1], KILLED)
            self.reactor.advance(delay)
        self.reactor.advance(60)
        end(self.reactor.spawned[-1], KILLED)
        self.assertIn("starting another in 0.0s", self.messages()[-1])
        self.reactor.advance(0)
        end(self.reactor.spawned[-1], KILLED)
        self.assertIn("starting another in 1.0s", self.messages()[-1])

    def test_a_worker_that_cannot_be_started_is_retried_later(self) -> None:
        self.reactor.spawnError = OSError(errno.EAGAIN, "fork failed")
        self.pool.startService()
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(
            self.messages()[0],
            "worker 1 could not be started: [Errno 11] fork failed; trying "
            "again in 1.0s",
        )
        self.assertEqual(self.pool.workers, {})
        self.reactor.spawnError = None
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_stopping_asks_every_worker_to_drain_and_waits_for_all(self) -> None:
        self.pool.startService()
        stopped = self.pool.stopService()
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.process.signals, ["TERM"])
        end(self.reactor.spawned[0], ProcessTerminated(signal=signal.SIGTERM))
        self.assertNoResult(stopped)
        end(self.reactor.spawned[1], ProcessDone(0))
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(
            self.messages()[-2:],
            [
                "worker 1 (pid 1000) ended: SIGTERM",
                "worker 2 (pid 1001) ended: exit code 0",
            ],
        )

    def test_workers_still_running_after_the_drain_timeout_are_killed(
        self,
    ) -> None:
        self.pool.startService()
        stopped = self.pool.stopService()
        end(self.reactor.spawned[0], ProcessDone(0))
        self.reactor.advance(29.9)
        self.assertEqual(self.reactor.spawned[1].process.signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.spawned[1].process.signals, ["TERM", "KILL"])
        self.assertIn("still running 30.0s after SIGTERM", self.messages()[-1])
        self.assertNoResult(stopped)
        end(self.reactor.spawned[1], KILLED)
        self.successResultOf(stopped)

    def test_no_worker_is_replaced_once_stopping(self) -> None:
        self.pool.startService()
        end(self.reactor.spawned[0], KILLED)
        stopped = self.pool.stopService()
        end(self.reactor.spawned[1], ProcessDone(0))
        self.successResultOf(stopped)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_stopping_with_no_worker_running_is_at_once(self) -> None:
        self.pool.startService()
        end(self.reactor.spawned[0], KILLED)
        end(self.reactor.spawned[1], KILLED)
        self.successResultOf(self.pool.stopService())


@implementer(IWorkerReports)
class Reports:
    """Records what a pool tells of its workers' reports."""

    field = REPORT

    def __init__(self) -> None:
        self.received: list[tuple[object, Any]] = []
        self.gone: list[object] = []

    def reported(self, worker: object, report: Any) -> None:
        self.received.append((worker, report))

    def ended(self, worker: object) -> None:
        self.gone.append(worker)


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.events: list[LogEvent] = []
        self.pool = WorkerPool(1, ["worker"], lambda: [], 30.0, reactor=self.reactor)
        self.pool._log = Logger(observer=self.events.append)
        self.pool.startService()
        self.worker = self.reactor.spawned[0].protocol
        del self.events[:]

    def workerLogs(self, text: str, **fields: Any) -> bytes:
        emitted: list[LogEvent] = []
        Logger(
            namespace="caretproto.server.CaretProtocol", observer=emitted.append
        ).info(text, **fields)
        return b"\x1e" + eventAsJSON(emitted[0]).encode() + b"\n"

    def test_a_workers_log_event_is_logged_as_it_was_marked_with_the_worker(
        self,
    ) -> None:
        line = self.workerLogs(
            "{peer} disconnected after {duration:.3f}s",
            peer="127.0.0.1:5",
            duration=0.12345,
        )
        self.worker.childDataReceived(1, line[:20])
        self.assertEqual(self.events, [])
        self.worker.childDataReceived(1, line[20:])
        [event] = self.events
        self.assertEqual(formatEvent(event), "127.0.0.1:5 disconnected after 0.123s")
        self.assertEqual(
            event["log_system"],
            "worker 1 pid 1000 caretproto.server.CaretProtocol#info",
        )
        self.assertEqual((event["worker"], event["worker_pid"]), (1, 1000))
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertNotIn("log_logger", event)

    def test_a_field_json_cannot_hold_is_formatted_as_the_worker_saw_it(
        self,
    ) -> None:
        self.worker.childDataReceived(1, self.workerLogs("got {thing}", thing=object))
        self.assertEqual(formatEvent(self.events[0]), "got <class 'object'>")

    def test_a_report_goes_to_the_reports_not_the_log(self) -> None:
        reports = Reports()
        self.pool.reports = reports
        self.worker.childDataReceived(
            1, self.workerLogs("metrics for the parent", **{REPORT: {"messages": 3}})
        )
        self.assertEqual(self.events, [])
        self.assertEqual(reports.received, [(self.worker, {"messages": 3})])
        end(self.reactor.spawned[0], ProcessDone(0))
        self.assertEqual(reports.gone, [self.worker])

    def test_without_reports_a_report_is_logged_like_any_event(self) -> None:
        self.worker.childDataReceived(
            1, self.workerLogs("metrics for the parent", **{REPORT: {"messages": 3}})
        )
        [event] = self.events
        self.assertEqual(event[REPORT], {"messages": 3})

    def test_other_output_is_logged_as_text_stderr_as_a_warning(self) -> None:
        self.worker.childDataReceived(1, b"not json\n")
        self.worker.childDataReceived(2, b"Traceback (most recent call last):\n  Fi")
        end(self.reactor.spawned[0], ProcessDone(0))
        out, err1, err2 = self.events[:3]
        self.assertEqual(formatEvent(out), "not json")
        self.assertEqual(out["log_level"], LogLevel.info)
        self.assertEqual(out["log_system"], "worker 1 pid 1000 stdout")
        self.assertEqual(formatEvent(err1), "Traceback (most recent call last):")
        self.assertEqual(formatEvent(err2), "  Fi")
        self.assertEqual(err1["log_level"], LogLevel.warn)


class HelpersTests(SynchronousTestCase):
    def test_exit_is_described_by_code_or_signal_name(self) -> None:
        self.assertEqual(describeExit(Failure(ProcessDone(0))), "exit code 0")
        self.assertEqual(
            describeExit(Failure(ProcessTerminated(exitCode=2))), "exit code 2"
        )
        self.assertEqual(describeExit(Failure(KILLED)), "SIGKILL")

    def test_workers_share_sockets_of_endpoints_that_listen_on_one(self) -> None:
        for description in [
            "tcp:9090",
            "tcp6:9090",
            "unix:/run/c.sock",
            "ssl:9443:privateKey=k.pem",
            "systemd:domain=INET:index=0",
            "haproxy:tcp:9090",
            "haproxy:haproxy:unix:/x",
        ]:
            self.assertTrue(adoptable(description), description)
        for description in ["onion:80", "haproxy:onion:80", "stdio:"]:
            self.assertFalse(adoptable(description), description)

    def test_a_worker_runs_the_caret_command_with_the_parents_options(
        self,
    ) -> None:
        command = workerCommand(["--port", "9090", "--workers", "2"])
        self.assertEqual(
            command[1:6],
            ["-m", "twisted", "--log-format=json", "--log-file=-", "caret"],
        )
        self.assertEqual(
            command[6:], ["--port", "9090", "--workers", "2", "--workers=1"]
        )

    def test_a_worker_runs_on_the_reactor_it_is_given(self) -> None:
        command = workerCommand(["--port", "9090"], "caret-epoll")
        self.assertEqual(
            command[1:5],
            ["-m", "twisted", "--reactor=caret-epoll", "--log-format=json"],
        )
        self.assertEqual(command[6:], ["caret", "--port", "9090", "--workers=1"])

    def test_a_reactor_is_named_as_twist_knows_it(self) -> None:
        from twisted.internet import epollreactor

        from caretproto import reactor as caretreactor

        for kind, name in [
            (epollreactor.EPollReactor, "epoll"),
            (caretreactor.EPollReactor, "caret-epoll"),
        ]:
            self.assertEqual(reactorName(unstartedReactor(self, kind)), name)
        self.assertIsNone(reactorName(object()))

    def test_a_worker_is_told_its_inherited_sockets_in_its_environment(
        self,
    ) -> None:
        self.assertEqual(
            workerEnvironment({"PATH": "/bin"}, 2),
            {"PATH": "/bin", WORKER_FDS: "3,4"},
        )


class Parent:
    """A parent's listening socket: bound, not accepting, shared as a dup."""

    def __init__(self, testCase: TestCase, port: Any) -> None:
        port.stopReading()
        testCase.addCleanup(port.stopListening)
        self.port = port
        self.fd = os.dup(port.fileno())


class InheritedEndpointTests(TestCase):
    def parentTCP(self) -> Parent:
        return Parent(self, reactor.listenTCP(0, Factory(), interface="127.0.0.1"))

    async def listen(
        self,
        description: str,
        parent: Parent,
        factory: Factory | None = None,
        trusted: TrustedProxies | None = None,
    ) -> IListeningPort:
        endpoint = inheritedEndpoint(reactor, description, parent.fd, 50, trusted)
        port = await endpoint.listen(factory or CaretFactory())
        self.addCleanup(port.stopListening)
        return port

    async def test_a_worker_serves_on_the_tcp_socket_its_parent_bound(self) -> None:
        parent = self.parentTCP()
        await self.listen("tcp:1:interface=127.0.0.1", parent)
        client = await connect(parent.port)
        client.transport.write(b"^abc$")
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, b"*bcd")

    async def test_a_worker_stopping_leaves_the_shared_socket_listening(self) -> None:
        parent = self.parentTCP()
        port = await self.listen("tcp:1", parent)
        await port.stopListening()
        # Another worker (here, a second adoption of the parent's socket)
        # still serves on it.
        parent.fd = os.dup(parent.port.fileno())
        await self.listen("tcp:1", parent)
        client = await connect(parent.port)
        self.assertEqual(await client.receivedAtLeast(1), b"*")
        client.transport.loseConnection()

    async def test_a_systemd_socket_is_taken_over_without_systemds_environment(
        self,
    ) -> None:
        parent = self.parentTCP()
        await self.listen("systemd:domain=INET:index=0", parent)
        client = await connect(parent.port)
        self.assertEqual(await client.receivedAtLeast(1), b"*")
        client.transport.loseConnection()

    async def test_haproxy_puts_the_proxy_protocol_in_front_in_a_worker_too(
        self,
    ) -> None:
        parent = self.parentTCP()
        trusted = TrustedProxies.fromStrings(["127.0.0.1"])
        await self.listen("haproxy:tcp:1", parent, trusted=trusted)
        client = await connect(parent.port)
        client.transport.write(b"PROXY TCP4 203.0.113.7 10.0.0.9 4242 9090\r\n^a$")
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, b"*b")

    async def test_ssl_puts_tls_in_front_in_a_worker_too(self) -> None:
        parent = self.parentTCP()
        port = await self.listen(
            f"ssl:1:privateKey={SERVER_PEM}", parent, Factory.forProtocol(Echo)
        )
        self.assertIsInstance(port.factory, TLSMemoryBIOFactory)
        endpoint = wrapClientTLS(
            CertificateOptions(),
            TCP4ClientEndpoint(reactor, "127.0.0.1", parent.port.getHost().port),
        )
        client = await connectProtocol(endpoint, RawClient())
        client.transport.write(b"over TLS")
        self.assertEqual(await client.receivedAtLeast(8), b"over TLS")
        client.transport.loseConnection()
        await client.done

    async def test_a_unix_socket_keeps_its_mode_and_file_when_a_worker_stops(
        self,
    ) -> None:
        path = shortTempPath(self, "c.sock")
        listening = await UNIXServerEndpoint(reactor, path, mode=0o600).listen(
            Factory.forProtocol(Protocol)
        )
        parent = Parent(self, listening)
        port = await self.listen(f"unix:{path}:mode=600", parent)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        client = await connect(f"unix:{path}")
        self.assertEqual(await client.receivedAtLeast(1), b"*")
        client.transport.loseConnection()
        await port.stopListening()
        self.assertTrue(os.path.exists(path))
        parent.fd = os.dup(parent.port.fileno())
        await self.listen(f"unix:{path}", parent)
        client = await connect(f"unix:{path}")
        self.assertEqual(await client.receivedAtLeast(1), b"*")
        client.transport.loseConnection()


class SharedListeningTests(TestCase):
    async def test_a_parent_that_stops_listening_leaves_its_workers_accepting(
        self,
    ) -> None:
        parent = CaretService([TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")])
        parent.startService()
        parent.pauseAccepting("the workers accept")
        address = parent.ports[0].getHost()
        [fd] = parent.shareListening()
        endpoint = inheritedEndpoint(reactor, "tcp:1", os.dup(fd), 50)
        worker = await endpoint.listen(CaretFactory())
        self.addCleanup(worker.stopListening)
        await parent.stopService()
        client = await connect(f"tcp:127.0.0.1:{address.port}")
        self.assertEqual(await client.receivedAtLeast(1), b"*")
        client.transport.loseConnection()


class ParentLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
        self.reactor = MemoryReactor()
        # Twisted 23.10's MemoryReactor starts out saying it has stopped.
        self.reactor.hasStopped = False
        readEnd, self.writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.link = ParentLink(self.reactor, readEnd)
        self.link.startService()
        [self.pipe] = self.reactor.getReaders()

    def test_a_worker_stops_when_its_parent_is_gone(self) -> None:
        os.write(self.writeEnd, b"x")
        self.assertIsNone(self.pipe.doRead())
        self.assertFalse(self.reactor.hasStopped)
        os.close(self.writeEnd)
        reason = self.pipe.doRead()
        self.assertIsNotNone(reason)
        self.pipe.connectionLost(Failure(reason))
        self.assertTrue(self.reactor.hasStopped)

    def test_a_worker_leaves_interrupts_to_its_parent(self) -> None:
        self.addCleanup(os.close, self.writeEnd)
        self.assertEqual(signal.getsignal(signal.SIGINT), signal.SIG_IGN)

    def test_a_stopped_link_stops_watching(self) -> None:
        self.addCleanup(os.close, self.writeEnd)
        self.link.stopService()
        self.assertEqual(self.reactor.getReaders(), [])
