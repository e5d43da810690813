"""
Prometheus metrics for a caret server, served at C{/metrics} by twisted.web.

L{CaretMetrics} watches one L{CaretFactory} and answers, at scrape time, what
its sessions have done: the sessions that ended are folded into running
totals as they end, and the sessions in progress are read live.  So the data
path pays nothing for metrics -- the protocol keeps its own counters whether
or not anyone scrapes them -- and a scrape still sees the bytes of a session
that has been running for hours, not only those of sessions that ended.

L{metricsService} is the twisted.web service that serves them, composed beside
the caret service by L{caretproto.tap.makeService}.  This module does not
decide where to listen and keeps no global state: every L{CaretMetrics} has
its own C{CollectorRegistry}, so several servers in one process (or in one
test run) never share or clash over metrics.

With C{--workers}, one C{/metrics}, the parent's, covers every worker.  A
L{Snapshot} is plain data that adds up field by field: each worker's
L{MetricsReporter} writes its snapshot to the parent every
L{REPORT_INTERVAL} seconds, and once more when it has drained, as a report
in its JSON log (the channel the parent already reads, see
L{caretproto.workers}); the parent's L{WorkersMetrics} serves the sum of the
latest reports and of the last reports of the workers that ended.  So a
scrape of the parent is up to L{REPORT_INTERVAL} behind the workers, and a
worker that is killed loses what it did since its last report.
(prometheus_client's multiprocess mode would not do: it cannot carry values
read at scrape time, only values written on every change.)
"""

from __future__ import annotations

import dataclasses
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from caretproto.connections import RefusalLog, describeAddress, peerHost
from caretproto.logrelay import IWorkerReports
from caretproto.server import CaretFactory, CaretProtocol

DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""
Upper bounds, in seconds, of the connection-duration histogram: from a
connect-and-close probe, past the reference session of docs/protocol.rst
(whose pauses add up to 2.2 s), to sessions held open for an hour.
"""


REPORT = "worker_report"
"""
The field of a worker's log event that carries its metrics to the parent:
the parent's log relay hands its value to L{WorkersMetrics} instead of
logging it.
"""

REPORT_INTERVAL = 1.0
"""Seconds between a worker's reports of its metrics to the parent."""


def _zeros() -> tuple[int, ...]:
    return (0,) * (len(DURATION_BUCKETS) + 1)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """
    What a caret server's sessions have done, at one moment: plain numbers
    that add up, so snapshots from several processes can be summed.

    @ivar connectionsActive: sessions in progress.
    @ivar connectionsTotal: sessions started, ended or not.
    @ivar messages: messages ended by C{$}.
    @ivar bytesReceived: bytes read from clients.
    @ivar bytesSent: bytes written to clients, greetings included.
    @ivar pauses: times a session stopped reading because its replies
        backed up.
    @ivar durationCounts: ended sessions per bucket of L{DURATION_BUCKETS}
        (not cumulative); the last is C{+Inf}.
    @ivar durationSum: the seconds the ended sessions lasted, in all.
    """

    connectionsActive: int = 0
    connectionsTotal: int = 0
    messages: int = 0
    bytesReceived: int = 0
    bytesSent: int = 0
    pauses: int = 0
    durationCounts: tuple[int, ...] = dataclasses.field(default_factory=_zeros)
    durationSum: float = 0.0

    def __add__(self, other: Snapshot) -> Snapshot:
        """
        The field-by-field sum of two snapshots: what two processes have done
        between them.

        @param other: the other snapshot.
        @return: the sum.
        """
        return Snapshot(
            connectionsActive=self.connectionsActive + other.connectionsActive,
            connectionsTotal=self.connectionsTotal + other.connectionsTotal,
            messages=self.messages + other.messages,
            bytesReceived=self.bytesReceived + other.bytesReceived,
            bytesSent=self.bytesSent + other.bytesSent,
            pauses=self.pauses + other.pauses,
            durationCounts=tuple(
                mine + theirs
                for mine, theirs in zip(
                    self.durationCounts, other.durationCounts, strict=True
                )
            ),
            durationSum=self.durationSum + other.durationSum,
        )

    def report(self) -> dict[str, Any]:
        """
        The snapshot as plain JSON-ready data, for L{fromReport}.

        @return: a dict of the fields, by name.
        """
        return dataclasses.asdict(self)

    @classmethod
    def fromReport(cls, report: dict[str, Any]) -> Snapshot:
        """
        The snapshot that L{report} gave, read back from JSON.

        @param report: what L{report} returned, through JSON (so with a list
            for C{durationCounts}).
        @return: the snapshot.
        @raise TypeError: if C{report} is not one: a field unknown or with a
            count of buckets other than L{DURATION_BUCKETS}'.
        """
        fields = dict(report)
        fields["durationCounts"] = tuple(fields.get("durationCounts", ()))
        snapshot = cls(**fields)
        if len(snapshot.durationCounts) != len(DURATION_BUCKETS) + 1:
            raise TypeError(f"not a report of {len(DURATION_BUCKETS)} buckets")
        return snapshot

    def families(self) -> Iterator[Metric]:
        """
        The snapshot as Prometheus metric families: a gauge of the active
        sessions, counters of the others, and a histogram of the durations.

        @return: the families, in the order a scrape shows them.
        """
        yield GaugeMetricFamily(
            "caret_connections_active",
            "Caret sessions in progress.",
            value=self.connectionsActive,
        )
        for name, documentation, value in [
            ("caret_connections", "Caret sessions started.", self.connectionsTotal),
            ("caret_messages", "Messages ended by $.", self.messages),
            ("caret_bytes_received", "Bytes read from clients.", self.bytesReceived),
            (
                "caret_bytes_sent",
                "Bytes written to clients, greetings included.",
                self.bytesSent,
            ),
            (
                "caret_flow_control_pauses",
                "Times a session stopped reading because its replies backed up.",
                self.pauses,
            ),
        ]:
            yield CounterMetricFamily(name, documentation, value=value)
        cumulative = 0
        buckets = []
        for bound, count in zip(
            [*map(str, DURATION_BUCKETS), "+Inf"], self.durationCounts, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "caret_connection_duration_seconds",
            "How long ended caret sessions lasted.",
            buckets=buckets,
            sum_value=self.durationSum,
        )


class _Collector:
    """
    A Prometheus collector of a L{Snapshot}, with a registry of its own.

    @ivar registry: the registry to scrape: these metrics and the process's
        own (CPU, memory, open file descriptors).
    """

    def __init__(self) -> None:
        """
        A registry of this collector's own, holding it and the process's
        metrics.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def snapshot(self) -> Snapshot:
        """
        What to collect now: each subclass says.

        @return: the snapshot.
        """
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        """
        The prometheus_client collector protocol: the families of
        L{snapshot}, taken at scrape time.

        @return: the metric families.
        """
        return self.snapshot().families()


class CaretMetrics(_Collector):
    """
    A Prometheus collector for the sessions of one L{CaretFactory}.
    """

    def __init__(
        self, factory: CaretFactory, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """
        Watch C{factory}'s sessions, from now on: the factory tells this of
        each session that ends.

        @param factory: the factory whose sessions to count.
        @param clock: the clock that L{CaretProtocol.startedAt} is read
            from, to time the sessions.
        """
        self._factory = factory
        self._clock = clock
        # The ended sessions' totals, kept as plain numbers: a session's end
        # costs a few additions, not a Snapshot.
        self._ended = 0
        self._messages = 0
        self._bytesReceived = 0
        self._bytesSent = 0
        self._pauses = 0
        self._durationCounts = [0] * (len(DURATION_BUCKETS) + 1)
        self._durationSum = 0.0
        factory.endObservers.append(self._sessionEnded)
        super().__init__()

    def _sessionEnded(self, session: CaretProtocol) -> None:
        duration = self._clock() - session.startedAt
        self._ended += 1
        self._messages += session.messages
        self._bytesReceived += session.bytesReceived
        self._bytesSent += session.bytesSent
        self._pauses += session.pauses
        self._durationCounts[bisect_left(DURATION_BUCKETS, duration)] += 1
        self._durationSum += duration

    def snapshot(self) -> Snapshot:
        """
        The totals now: the ended sessions' plus the live counters of the
        sessions in progress.  Each counter only grows, because a session
        leaves the live sum in the same call that adds it to the ended totals.

        @return: the totals.
        """
        sessions = self._factory.sessions
        return Snapshot(
            connectionsActive=len(sessions),
            connectionsTotal=self._ended + len(sessions),
            messages=self._messages + sum(s.messages for s in sessions),
            bytesReceived=self._bytesReceived + sum(s.bytesReceived for s in sessions),
            bytesSent=self._bytesSent + sum(s.bytesSent for s in sessions),
            pauses=self._pauses + sum(s.pauses for s in sessions),
            durationCounts=tuple(self._durationCounts),
            durationSum=self._durationSum,
        )


@implementer(IWorkerReports)
class WorkersMetrics(_Collector):
    """
    The metrics of a L{caretproto.workers.WorkerPool}'s workers, as one
    server: the sum of each running worker's latest report and of the last
    reports of the workers that ended (their sessions ended with them).  The
    process metrics are the parent's own.

    @cvar field: the field of a worker's log event that holds its report,
        L{REPORT}.
    """

    field = REPORT
    _log = Logger()

    def __init__(self) -> None:
        """
        Metrics of no worker yet, with a registry of their own.
        """
        self._latest: dict[Hashable, Snapshot] = {}
        self._gone = Snapshot()
        super().__init__()

    def reported(self, worker: Hashable, report: Any) -> None:
        """
        C{worker} sent the report of a L{MetricsReporter}: it replaces that
        worker's previous one.  A report that is not one is logged as an
        error and dropped.

        @param worker: the worker's key.
        @param report: the event's L{REPORT} field, as L{Snapshot.report}
            wrote it.
        """
        try:
            self._latest[worker] = Snapshot.fromReport(report)
        except (TypeError, ValueError) as error:
            self._log.error(
                "a worker's metrics report is not one: {error}", error=error
            )

    def ended(self, worker: Hashable) -> None:
        """
        C{worker} is gone: keep its counts, none of its sessions.

        @param worker: the worker's key.
        """
        last = self._latest.pop(worker, None)
        if last is not None:
            self._gone += dataclasses.replace(last, connectionsActive=0)

    def snapshot(self) -> Snapshot:
        """
        The sum of the running workers' latest reports and of the ended
        workers' last ones.

        @return: the totals.
        """
        total = self._gone
        for latest in self._latest.values():
            total += latest
        return total


class MetricsReporter(Service):
    """
    In a worker: report the metrics of C{metrics} to the parent every
    L{REPORT_INTERVAL} seconds, as a log event with a
    L{REPORT} field, and once more when the worker has
    drained its sessions.
    """

    _log = Logger()

    def __init__(
        self,
        metrics: CaretMetrics,
        factory: CaretFactory,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param metrics: the worker's metrics.
        @param factory: its factory, whose drain the last report waits for.
        @param clock: what times the reports; by default the reactor.
        """
        self._metrics = metrics
        self._factory = factory
        self._reporting = LoopingCall(self.report)
        if clock is not None:
            self._reporting.clock = clock

    def report(self) -> None:
        """Report the metrics now."""
        self._log.info(
            "metrics for the parent", **{REPORT: self._metrics.snapshot().report()}
        )

    def startService(self) -> None:
        """
        Report now, and every L{REPORT_INTERVAL} seconds from now on.
        """
        Service.startService(self)
        self._reporting.start(REPORT_INTERVAL)

    def stopService(self) -> Deferred[None]:
        """
        Stop the regular reports, and report once more when the factory's
        sessions have all ended, so that the parent counts them.

        @return: a C{Deferred} that fires once that report is made.
        """
        Service.stopService(self)
        if self._reporting.running:
            self._reporting.stop()
        return self._factory.whenIdle().addCallback(lambda _: self.report())


class MetricsPage(Resource):
    """
    A registry in the Prometheus text format (or OpenMetrics, when the
    scraper asks for it).

    Unlike C{prometheus_client.twisted.MetricsResource}, which renders in the
    reactor's thread pool through WSGI, this renders in the reactor thread:
    L{CaretMetrics} reads live sessions that only the reactor thread may
    touch, and a scrape is cheap enough not to need a thread.

    @cvar isLeaf: C{True}: the page has no children.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        """
        @param registry: the registry to serve.
        """
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """
        The registry, scraped now, in the format the request's C{Accept}
        header asks for (the Prometheus text format if it asks for none).

        @param request: the scrape.
        @return: the response body; the C{Content-Type} is set on
            C{request}.
        """
        accept = request.getHeader("accept")
        encode, contentType = choose_encoder(accept or "")
        request.setHeader("content-type", contentType)
        return encode(self._registry)


REQUEST_TIMEOUT = 5.0
"""
Seconds a C{--metrics} client has to send a whole request, from when it
connects or its last response ends, before it is cut off, as HAProxy's
C{timeout http-request} and nginx's C{client_header_timeout} do.  A scraper
sends its request at once; a client that sends a byte now and then, which
Twisted's own timeout (an idle one, restarted by every byte) never reaches,
holds a descriptor, from the same pool as the caret port's, no longer.
"""


class _MetricsChannel(http.HTTPChannel):
    """
    An HTTP connection to the metrics site, aborted when a whole request has
    not come within L{REQUEST_TIMEOUT}.  The deadline runs while a request is
    awaited: from the connection, and from the end of each response (so it
    also closes a kept-alive connection left idle), until the request is
    complete.  Nothing is owed when it fires.
    """

    requestTimeout = REQUEST_TIMEOUT
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._awaitRequest()

    def allContentReceived(self) -> None:
        self._stopWaiting()
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        # Before the channel goes on: it may find the next request whole in
        # what it has already read.
        self._awaitRequest()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopWaiting()
        super().connectionLost(reason)

    def _awaitRequest(self) -> None:
        self._stopWaiting()
        self._deadline = self.callLater(self.requestTimeout, self._tooSlow)

    def _stopWaiting(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _tooSlow(self) -> None:
        self._deadline = None
        assert self.transport is not None
        peer = self.transport.getPeer()
        site = getattr(self, "site", None)
        assert isinstance(site, _MetricsSite)
        site.tooSlow.refused(
            peerHost(peer) or describeAddress(peer), timeout=self.requestTimeout
        )
        # Every stream transport Twisted ships can abort, though ITransport
        # does not say so.
        self.transport.abortConnection()  # type: ignore[attr-defined]


class _MetricsSite(Site):
    """
    A site that does not log each request: a scrape every few seconds would
    bury the sessions' log lines.  Its connections are L{_MetricsChannel}s;
    those cut off for slowness are logged once per burst from each host.

    @ivar tooSlow: the log of connections cut off for slowness.
    """

    noisy = False
    protocol = _MetricsChannel  # type: ignore[assignment]

    def __init__(
        self, resource: IResource, reactor: IReactorTime | None = None
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.tooSlow = RefusalLog(
            self.reactor,
            "metrics client {host} sent no whole request within {timeout}s: cut off",
            "metrics clients from {host} cut off for sending no whole request "
            "within {timeout}s: {count} in {duration:.0f}s",
            logger=Logger(namespace="caretproto.metrics"),
        )

    def stopFactory(self) -> None:
        self.tooSlow.flush()
        super().stopFactory()

    def logPrefix(self) -> str:
        return "metrics"

    def log(self, request: http.Request) -> None:
        pass


def metricsService(
    description: str,
    registry: CollectorRegistry,
    reactor: IReactorTime | None = None,
) -> IService:
    """
    A service that serves C{registry} at C{/metrics} on the endpoint
    C{description}; other paths are 404.  A client gets L{REQUEST_TIMEOUT}
    seconds for each request.

    @param description: a Twisted server endpoint description, such as
        C{tcp:9100:interface=127.0.0.1}.
    @param registry: the registry to serve, such as a L{CaretMetrics}'
        C{registry}.
    @param reactor: what times the requests; by default the reactor.
    @return: the service, not yet started: it listens when started.
    """
    return strports.service(description, metricsSite(registry, reactor))


def metricsSite(
    registry: CollectorRegistry, reactor: IReactorTime | None = None
) -> Site:
    """
    The site of L{metricsService}, for a program that listens itself.

    @param registry: the registry to serve at C{/metrics}.
    @param reactor: what its timers run on; by default the reactor.
    @return: the site.
    """
    root = notFound()
    root.putChild(b"metrics", MetricsPage(registry))
    return _MetricsSite(root, reactor)
