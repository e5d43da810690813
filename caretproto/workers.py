# -*- test-case-name: tests.test_workers -*-
"""
Worker processes: one caret server on one machine, served by N processes.

One CPython process runs on one core.  With C{--workers N}, the process
twistd starts (the parent) binds every C{--port} through its endpoint, as a
single process would, but never accepts: it starts N workers, each a normal
C{caret} server built by L{caretproto.tap.makeService} with the same options,
that accepts on the parent's listening sockets instead of binding its own.

The workers share the parent's sockets rather than each binding one with
C{SO_REUSEPORT}, because sharing keeps endpoints the one way to listen: UNIX
sockets, sockets inherited from systemd and ports below 1024 bound before
twistd drops privileges all work, none of which C{SO_REUSEPORT} can do; a
client waiting in the shared listen queue is accepted by another worker when
one dies, where a C{SO_REUSEPORT} socket's queue dies with its process; and no
other program can bind the same port and take a share of the clients.  What
C{SO_REUSEPORT} does better, spreading a burst of connections evenly, the
workers get by accepting one connection each time the socket is ready.

This module is the parent's side, L{WorkerPool}: it starts the workers,
relays their log events into its own log (with L{caretproto.logrelay}),
replaces a worker that dies, and on shutdown asks each to stop (SIGTERM, so
that each drains its sessions as L{caretproto.service.CaretService} does) and
waits for them.  The worker's side, listening on the inherited sockets and
stopping when the parent is gone, is L{caretproto.workerside}.

Not here: the protocol, the options (L{caretproto.tap}), or balancing across
machines, which is a load balancer's job (C{haproxy:} endpoints,
L{caretproto.proxy}).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.reactors import Reactor, getReactorTypes
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorProcess,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caretproto.logrelay import IRelayedWorker, IWorkerReports, relayLine
from caretproto.processlines import LineProcessProtocol

FIRST_FD = 3
"""
The descriptor a worker finds its first inherited listening socket at; the
others follow in C{--port} order, as L{WORKER_FDS} tells it.
"""

WORKER_FDS = "CARET_WORKER_FDS"
"""
The environment variable that tells a worker it is one, and which
descriptors (C{3,4}) are its inherited listening sockets, one per C{--port}:
as systemd tells a service with C{LISTEN_FDS}, so that no option meant for
the program itself appears among the user's.
"""


def workerCommand(argv: Sequence[str], reactor: str | None = None) -> list[str]:
    """
    The command that starts a worker: the C{caret} command with the parent's
    own options, under C{twist} logging JSON events to its standard output
    for the parent to relay, on the parent's reactor if C{twist} knows it by
    a name (L{reactorName}).  It learns of its inherited sockets from
    L{workerEnvironment}.

    @param argv: the parent's own C{caret} options, as given.
    @param reactor: the C{--reactor} name of the parent's reactor, if any.
    @return: the program and its arguments, for C{spawnProcess}.
    """
    return [
        sys.executable,
        "-m",
        "twisted",
        *([f"--reactor={reactor}"] if reactor is not None else []),
        "--log-format=json",
        "--log-file=-",
        "caret",
        *argv,
        "--workers=1",
    ]


def reactorName(reactor: object) -> str | None:
    """
    The name C{twistd --reactor} and C{twist --reactor} know C{reactor}'s
    kind by.

    @param reactor: a reactor, installed or not.
    @return: C{"epoll"}, C{"caret-epoll"}, ...; C{None} if no name does.
    """
    module = type(reactor).__module__
    for installer in getReactorTypes():
        # Twisted's and caret's are Reactor plugins, which name their module.
        if isinstance(installer, Reactor) and installer.moduleName == module:
            return installer.shortName
    return None


def workerEnvironment(environ: Mapping[str, str], listening: int) -> dict[str, str]:
    """
    A worker's environment: C{environ}, with L{WORKER_FDS} naming its
    inherited sockets, from L{FIRST_FD} on.

    @param environ: the parent's environment.
    @param listening: how many listening sockets the worker inherits.
    @return: a new environment; C{environ} is left as it was.
    """
    fds = ",".join(str(fd) for fd in range(FIRST_FD, FIRST_FD + listening))
    return {**environ, WORKER_FDS: fds}


def describeExit(reason: Failure) -> str:
    """
    How a process ended, for the log: an exit code or a signal's name.

    @param reason: what C{processEnded} was given.
    @return: C{exit code 0}, C{SIGKILL} and the like.
    """
    ended = reason.value
    if isinstance(ended, ProcessTerminated) and ended.signal is not None:
        try:
            return signal.Signals(ended.signal).name
        except ValueError:
            return f"signal {ended.signal}"
    if isinstance(ended, (ProcessDone, ProcessTerminated)):
        return f"exit code {ended.exitCode}"
    return str(ended)


@implementer(IRelayedWorker)
class _Worker(LineProcessProtocol):
    """
    One worker process, as its pool sees it.

    @ivar pool: the pool that started it.
    @ivar index: its number in the pool, from 1; a replacement takes the
        number of the worker it replaces.
    @ivar pid: its process id, once started.
    @ivar startedAt: when it was started, on the pool's clock.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        """
        @param pool: the pool that starts it.
        @param index: its number in the pool.
        """
        super().__init__()
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.startedAt = 0.0

    def connectionMade(self) -> None:
        """
        The process runs: note its pid.
        """
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def lineReceived(self, childFD: int, line: str) -> None:
        """
        Pass a line of the worker's output to the pool to relay.

        @param childFD: 1 for its standard output, 2 for its standard error.
        @param line: the line, without its newline.
        """
        self.pool.relay(self, childFD, line)

    def processEnded(self, reason: Failure) -> None:
        """
        Tell the pool that the worker is gone.

        @param reason: how it ended.
        """
        self.pool.workerEnded(self, reason)

    def signal(self, name: str) -> None:
        """
        Send the worker a signal, unless it has already ended.

        @param name: the signal's name without C{SIG}: C{TERM}, C{KILL}.
        """
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass


class WorkerPool(Service):
    """
    Runs C{count} worker processes with C{command}, each given the listening
    sockets that C{descriptors} returns; replaces a worker that dies; stops
    them all, gracefully, when stopped.

    A worker that ran for C{steadyAfter} seconds or more before it died is
    replaced at once.  One that died sooner is replaced after a delay that
    grows with each such death in a row (L{restartDelay}), so that a worker
    that cannot start does not make the parent spin.

    @ivar count: how many workers run.
    @ivar command: the program and arguments that start a worker
        (L{workerCommand}).
    @ivar descriptors: returns the listening sockets' descriptors, which
        each worker inherits from L{FIRST_FD} on, in order.
    @ivar killAfter: seconds the workers get to drain their sessions after
        SIGTERM before they are killed.
    @ivar workers: the running workers, by number.
    @ivar reports: what the workers' reports go to, if anything; without it
        they are logged like any other event.
    @cvar steadyAfter: seconds a worker must run for its death to be no
        quick one.
    @cvar restartDelay: the delay before starting a worker again after so
        many quick deaths in a row (Twisted's C{backoffPolicy}: 1 s,
        doubling, at most a minute).
    """

    _log = Logger()
    reports: IWorkerReports | None = None
    steadyAfter = 10.0
    restartDelay: Callable[[int], float] = staticmethod(
        backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter=lambda: 0)
    )

    def __init__(
        self,
        count: int,
        command: Sequence[str],
        descriptors: Callable[[], Sequence[int]],
        killAfter: float,
        reactor: Any = None,
    ) -> None:
        """
        @param count: how many workers to run.
        @param command: the program and arguments that start a worker.
        @param descriptors: called as each worker starts, for the
            descriptors of the sockets it inherits.
        @param killAfter: seconds between SIGTERM and SIGKILL on shutdown.
        @param reactor: what starts the processes and times the restarts
            (an C{IReactorProcess} and C{IReactorTime}); by default the
            reactor.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.count = count
        self.command = list(command)
        self.descriptors = descriptors
        self.killAfter = killAfter
        self._processes: IReactorProcess = reactor
        self._clock: IReactorTime = reactor
        self.workers: dict[int, _Worker] = {}
        self._quickDeaths: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._killCall: IDelayedCall | None = None
        self._allEnded: list[Deferred[None]] = []

    def startService(self) -> None:
        """
        Start the workers, numbered from 1.  One that cannot be started is
        logged and tried again later, as one that died at once would be.
        """
        Service.startService(self)
        for index in range(1, self.count + 1):
            self._start(index)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = _Worker(self, index)
        childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        descriptors = self.descriptors()
        for offset, fd in enumerate(descriptors):
            childFDs[FIRST_FD + offset] = fd
        worker.startedAt = self._clock.seconds()
        try:
            self._processes.spawnProcess(
                worker,
                self.command[0],
                self.command,
                env=workerEnvironment(os.environ, len(descriptors)),
                childFDs=childFDs,
            )
        except OSError as error:
            delay = self._replaceLater(index, 0.0)
            self._log.error(
                "worker {index} could not be started: {error}; trying again "
                "in {delay:.1f}s",
                index=index,
                error=error,
                delay=delay,
            )
            return
        self.workers[index] = worker
        self._log.info("worker {index} started: pid {pid}", index=index, pid=worker.pid)

    def _replaceLater(self, index: int, lived: float) -> float:
        """
        Start worker C{index} anew, after a worker that ran for C{lived}
        seconds died: at once after a steady run, later and later after quick
        deaths in a row.  Returns the delay.
        """
        if lived >= self.steadyAfter:
            self._quickDeaths[index] = 0
            delay = 0.0
        else:
            deaths = self._quickDeaths.get(index, 0)
            self._quickDeaths[index] = deaths + 1
            delay = self.restartDelay(deaths)
        self._restarts[index] = self._clock.callLater(delay, self._start, index)
        return delay

    def relay(self, worker: _Worker, childFD: int, line: str) -> None:
        """
        Log a line C{worker} wrote, or pass its report to L{reports}:
        L{relayLine}.

        @param worker: the worker that wrote it.
        @param childFD: 1 for its standard output, 2 for its standard error.
        @param line: the line, without its newline.
        """
        relayLine(self._log, self.reports, worker, childFD, line)

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        """
        C{worker} is gone: replace it if this pool is running, or count it
        out if the pool is stopping.

        @param worker: the worker whose process ended.
        @param reason: how it ended.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.reports is not None:
            self.reports.ended(worker)
        status = describeExit(reason)
        if not self.running:
            self._log.info(
                "worker {index} (pid {pid}) ended: {status}",
                index=worker.index,
                pid=worker.pid,
                status=status,
            )
            if not self.workers:
                self._ended()
            return
        lived = self._clock.seconds() - worker.startedAt
        delay = self._replaceLater(worker.index, lived)
        self._log.error(
            "worker {index} (pid {pid}) died after {lived:.1f}s: {status}; "
            "starting another in {delay:.1f}s",
            index=worker.index,
            pid=worker.pid,
            lived=lived,
            status=status,
            delay=delay,
        )

    def stopService(self) -> Deferred[None]:
        """
        Ask every worker to stop, as twistd asks a single process, with
        SIGTERM: each stops accepting and drains its sessions.  Fires when all
        have ended; those still running after C{killAfter} seconds are
        killed.

        @return: a C{Deferred} that fires when every worker has ended.
        """
        Service.stopService(self)
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        if not self.workers:
            return succeed(None)
        for worker in self.workers.values():
            worker.signal("TERM")
        self._killCall = self._clock.callLater(self.killAfter, self._kill)
        ended: Deferred[None] = Deferred()
        self._allEnded.append(ended)
        return ended

    def _kill(self) -> None:
        self._killCall = None
        for worker in self.workers.values():
            self._log.warn(
                "worker {index} (pid {pid}) still running {timeout}s after "
                "SIGTERM: killing it",
                index=worker.index,
                pid=worker.pid,
                timeout=self.killAfter,
            )
            worker.signal("KILL")

    def _ended(self) -> None:
        if self._killCall is not None:
            self._killCall.cancel()
            self._killCall = None
        waiting, self._allEnded = self._allEnded, []
        for ended in waiting:
            ended.callback(None)
