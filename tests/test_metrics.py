"""
Tests for L{caretproto.metrics}: what a scrape reports about sessions ended and
in progress, and the C{--metrics} service of C{twistd caret}.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, Logger, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, ResponseDone
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

from caretproto.metrics import (
    DURATION_BUCKETS,
    REPORT,
    REPORT_INTERVAL,
    CaretMetrics,
    MetricsReporter,
    Snapshot,
    WorkersMetrics,
)
from caretproto.server import CaretFactory, CaretProtocol
from caretproto.tap import Options, makeService
from tests.tempfolder import shortTempPath
from tests.twistd import LOOPBACK, WORKER_LISTENING, WORKER_SERVED, Twistd
from tests.workedexample import (
    WORKED_EXAMPLE,
    WORKED_EXAMPLE_ANSWER,
    runWorkedExample,
)


class _Body(Protocol):
    def __init__(self) -> None:
        self.body = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.body += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(self.body)
        else:
            self.done.errback(reason)


async def get(agent: IAgent, url: bytes) -> tuple[IResponse, bytes]:
    """
    GET C{url}: the response and its whole body.  (Not C{readBody}, which
    warns that it cannot abort the connection of a response already read.)
    """
    response = await agent.request(b"GET", url)
    body = _Body()
    response.deliverBody(body)
    return response, await body.done


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def connect(factory: CaretFactory, startedAt: float) -> CaretProtocol:
    session = factory.buildProtocol(None)
    assert isinstance(session, CaretProtocol)
    session.makeConnection(StringTransport())
    session.startedAt = startedAt
    return session


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape by name and labels, like C{a{le="1.0"}}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = (
                sample.value
            )
    return found


class CaretMetricsTests(TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.factory = CaretFactory()
        self.metrics = CaretMetrics(self.factory, self.clock)

    def test_live_session_counts_are_seen_before_it_ends(self) -> None:
        session = connect(self.factory, self.clock.now)
        session.dataReceived(b"^abc$^de")
        snapshot = self.metrics.snapshot()
        self.assertEqual(
            (
                snapshot.connectionsActive,
                snapshot.connectionsTotal,
                snapshot.messages,
                snapshot.bytesReceived,
                snapshot.bytesSent,
            ),
            (1, 1, 1, 8, 1 + 5),
        )
        self.assertEqual(sum(snapshot.durationCounts), 0)

    def test_ended_session_moves_to_totals_without_any_counter_going_down(
        self,
    ) -> None:
        session = connect(self.factory, self.clock.now)
        for sent, _ in WORKED_EXAMPLE:
            session.dataReceived(sent)
        before = self.metrics.snapshot()
        self.clock.now += 2.25
        session.connectionLost()
        after = self.metrics.snapshot()
        self.assertEqual((before.connectionsActive, after.connectionsActive), (1, 0))
        for field in ["connectionsTotal", "messages", "bytesReceived", "bytesSent"]:
            self.assertEqual(getattr(before, field), getattr(after, field), field)
        self.assertEqual(after.bytesSent, len(WORKED_EXAMPLE_ANSWER))
        self.assertEqual(after.durationSum, 2.25)

    def test_duration_on_a_bucket_bound_counts_in_that_bucket(self) -> None:
        session = connect(self.factory, self.clock.now)
        self.clock.now += 2.5
        session.connectionLost()
        counts = self.metrics.snapshot().durationCounts
        self.assertEqual(counts[DURATION_BUCKETS.index(2.5)], 1)
        self.assertEqual(sum(counts), 1)

    def test_duration_past_the_last_bound_counts_only_in_inf(self) -> None:
        session = connect(self.factory, self.clock.now)
        self.clock.now += DURATION_BUCKETS[-1] + 1
        session.connectionLost()
        self.assertEqual(self.metrics.snapshot().durationCounts[-1], 1)

    def test_flow_control_pauses_are_counted(self) -> None:
        session = connect(self.factory, self.clock.now)
        session.pauseProducing()
        session.resumeProducing()
        session.pauseProducing()
        self.assertEqual(self.metrics.snapshot().pauses, 2)

    def test_snapshots_add_field_by_field(self) -> None:
        one = Snapshot(connectionsActive=1, bytesSent=5, durationSum=1.5)
        other = Snapshot(
            connectionsTotal=3,
            bytesSent=7,
            durationCounts=(1,) + (0,) * len(DURATION_BUCKETS),
        )
        total = one + other
        self.assertEqual(
            (total.connectionsActive, total.connectionsTotal, total.bytesSent),
            (1, 3, 12),
        )
        self.assertEqual(total.durationCounts, other.durationCounts)
        self.assertEqual(total.durationSum, 1.5)

    def test_registry_exposes_every_caret_metric(self) -> None:
        session = connect(self.factory, self.clock.now)
        session.dataReceived(b"^a$")
        self.clock.now += 0.3
        session.connectionLost()
        found = samples(generate_latest(self.metrics.registry).decode())
        self.assertEqual(found["caret_connections_active"], 0)
        self.assertEqual(found["caret_connections_total"], 1)
        self.assertEqual(found["caret_messages_total"], 1)
        self.assertEqual(found["caret_bytes_received_total"], 3)
        self.assertEqual(found["caret_bytes_sent_total"], 2)
        self.assertEqual(found["caret_flow_control_pauses_total"], 0)
        self.assertEqual(found['caret_connection_duration_seconds_bucket{le="0.1"}'], 0)
        self.assertEqual(found['caret_connection_duration_seconds_bucket{le="0.5"}'], 1)
        self.assertEqual(
            found['caret_connection_duration_seconds_bucket{le="+Inf"}'], 1
        )
        self.assertEqual(found["caret_connection_duration_seconds_count"], 1)

    def test_two_servers_in_one_process_keep_separate_metrics(self) -> None:
        other = CaretMetrics(CaretFactory(), self.clock)
        connect(self.factory, self.clock.now)
        self.assertEqual(self.metrics.snapshot().connectionsActive, 1)
        self.assertEqual(other.snapshot().connectionsActive, 0)


class MetricsOptionTests(TestCase):
    def test_without_metrics_there_is_no_metrics_service_and_no_observer(
        self,
    ) -> None:
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
        top = makeService(options)
        self.assertNotIn("metrics", [service.name for service in top])
        self.assertEqual(top.getServiceNamed("caret").factory.endObservers, [])

    def test_bare_number_means_tcp(self) -> None:
        options = Options()
        options.parseOptions(["--metrics", "9100"])
        self.assertEqual(options["metrics"], "tcp:9100")

    def test_bad_endpoint_is_a_usage_error_naming_the_option(self) -> None:
        options = Options()
        error = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--metrics", "bogus:9100"]
        )
        self.assertIn("--metrics 'bogus:9100'", str(error))
        self.assertIn("tcp:9100:interface=127.0.0.1", str(error))


@implementer(IAgentEndpointFactory)
class UNIXSocketAgent:
    """Sends every request of an L{Agent} to one UNIX socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def endpointForURI(self, uri: object) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, self.path)


class MetricsServiceTests(TestCase):
    """
    C{twistd caret --metrics}: the service that makeService composes, scraped
    over a real socket after real sessions.
    """

    timeout = 30

    def setUp(self) -> None:
        metricsPath = shortTempPath(self, "metrics.sock")
        options = Options()
        options.parseOptions(
            ["--port", "tcp:0:interface=127.0.0.1", "--metrics", f"unix:{metricsPath}"]
        )
        self.top = makeService(options)
        self.top.startService()
        self.addCleanup(self.top.stopService)
        self.caret = self.top.getServiceNamed("caret")
        self.agent = Agent.usingEndpointFactory(reactor, UNIXSocketAgent(metricsPath))

    async def test_scrape_after_two_sessions_counts_them(self) -> None:
        port = self.caret.ports[0].getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        answers = await gatherResults(
            [Deferred.fromCoroutine(runWorkedExample(endpoint)) for _ in range(2)]
        )
        self.assertEqual(answers, [WORKED_EXAMPLE_ANSWER] * 2)
        await self.caret.factory.whenIdle()

        response, body = await get(self.agent, b"http://caret/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        found = samples(body.decode())
        sent = sum(len(buffer) for buffer, _ in WORKED_EXAMPLE)
        self.assertEqual(found["caret_connections_active"], 0)
        self.assertEqual(found["caret_connections_total"], 2)
        self.assertEqual(found["caret_messages_total"], 2 * 4)
        self.assertEqual(found["caret_bytes_received_total"], 2 * sent)
        self.assertEqual(
            found["caret_bytes_sent_total"], 2 * len(WORKED_EXAMPLE_ANSWER)
        )
        self.assertEqual(found["caret_connection_duration_seconds_count"], 2)
        self.assertIn("process_open_fds", found)

    async def test_other_paths_are_not_found(self) -> None:
        response, _ = await get(self.agent, b"http://caret/")
        self.assertEqual(response.code, 404)


class WorkersMetricsTests(TestCase):
    """The parent's sum of its workers' reports."""

    def setUp(self) -> None:
        self.metrics = WorkersMetrics()

    def test_the_latest_report_of_each_worker_is_summed(self) -> None:
        first, second = object(), object()
        self.metrics.reported(first, Snapshot(connectionsActive=2, messages=1).report())
        self.metrics.reported(first, Snapshot(connectionsActive=1, messages=5).report())
        self.metrics.reported(
            second, Snapshot(connectionsActive=3, messages=2).report()
        )
        total = self.metrics.snapshot()
        self.assertEqual((total.connectionsActive, total.messages), (4, 7))

    def test_an_ended_worker_keeps_its_counts_but_not_its_sessions(self) -> None:
        worker = object()
        report = Snapshot(
            connectionsActive=2,
            connectionsTotal=9,
            bytesSent=100,
            durationCounts=(1,) + (0,) * len(DURATION_BUCKETS),
        ).report()
        self.metrics.reported(worker, report)
        self.metrics.ended(worker)
        self.metrics.ended(worker)
        total = self.metrics.snapshot()
        self.assertEqual(
            (total.connectionsActive, total.connectionsTotal, total.bytesSent),
            (0, 9, 100),
        )
        self.assertEqual(total.durationCounts[0], 1)

    def test_a_report_survives_json(self) -> None:
        snapshot = Snapshot(
            connectionsTotal=3,
            durationCounts=(0, 1) + (0,) * (len(DURATION_BUCKETS) - 1),
            durationSum=0.05,
        )
        self.assertEqual(
            Snapshot.fromReport(json.loads(json.dumps(snapshot.report()))), snapshot
        )

    def test_a_report_that_is_not_one_is_logged_and_ignored(self) -> None:
        errors: list[LogEvent] = []
        self.metrics._log = Logger(observer=errors.append)
        worker = object()
        self.metrics.reported(worker, Snapshot(messages=1).report())
        self.metrics.reported(worker, {"messages": 2, "durationCounts": [1]})
        self.metrics.reported(worker, "nonsense")
        self.assertEqual(self.metrics.snapshot().messages, 1)
        self.assertEqual(len(errors), 2)
        self.assertIn("not one", formatEvent(errors[0]))


class MetricsReporterTests(TestCase):
    """A worker's reports to its parent."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = CaretFactory()
        self.reporter = MetricsReporter(
            CaretMetrics(self.factory), self.factory, self.clock
        )
        self.reports: list[dict[str, Any]] = []

        def observe(event: LogEvent) -> None:
            if REPORT in event:
                self.reports.append(event[REPORT])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_reports_at_start_and_every_interval(self) -> None:
        self.reporter.startService()
        session = connect(self.factory, 0.0)
        self.clock.advance(REPORT_INTERVAL)
        session.dataReceived(b"^ab$")
        self.clock.advance(REPORT_INTERVAL)
        self.assertEqual([report["messages"] for report in self.reports], [0, 0, 1])
        self.assertEqual(
            [report["connectionsActive"] for report in self.reports], [0, 1, 1]
        )
        self.reporter.stopService()

    def test_reports_once_more_when_the_sessions_have_drained(self) -> None:
        self.reporter.startService()
        session = connect(self.factory, 0.0)
        stopped = self.reporter.stopService()
        session.dataReceived(b"^ab$")
        self.clock.advance(10 * REPORT_INTERVAL)
        self.assertEqual(len(self.reports), 1)
        session.connectionLost()
        self.successResultOf(stopped)
        self.assertEqual(len(self.reports), 2)
        self.assertEqual(self.reports[-1]["messages"], 1)
        self.assertEqual(self.reports[-1]["connectionsActive"], 0)


@pytest.mark.process
class WorkersScrapeTests(TestCase):
    """C{twistd caret --workers 2 --metrics}: one scrape covers both."""

    timeout = 60

    async def test_one_scrape_covers_every_worker(self) -> None:
        twistd = Twistd.start(
            self,
            "caret",
            "--workers",
            "2",
            "--port",
            LOOPBACK,
            "--metrics",
            LOOPBACK,
        )
        [address] = await twistd.listening
        [metrics] = await twistd.logged(r"\[-\] metrics starting on (\d+)")
        pids = {match[2] for match in await twistd.logged(WORKER_LISTENING, 2)}
        host, port = address.rsplit(":", 1)
        endpoint = TCP4ClientEndpoint(reactor, host, int(port))
        # Which worker accepts is up to the kernel: enough sessions and both
        # have served.
        sessions = 0
        while set(re.findall(WORKER_SERVED, twistd.output)) != pids:
            self.assertLess(sessions, 100, "one worker served every session")
            answers = await gatherResults(
                [Deferred.fromCoroutine(runWorkedExample(endpoint)) for _ in range(10)]
            )
            self.assertEqual(answers, [WORKED_EXAMPLE_ANSWER] * 10)
            sessions += 10

        url = f"http://127.0.0.1:{int(metrics[1])}/metrics".encode()
        # The workers report every REPORT_INTERVAL: wait for the last of it.
        for _ in range(50):
            _, body = await get(Agent(reactor), url)
            found = samples(body.decode())
            if found["caret_connection_duration_seconds_count"] == sessions:
                break
            await deferLater(reactor, REPORT_INTERVAL / 5, lambda: None)
        self.assertEqual(found["caret_connections_total"], sessions)
        self.assertEqual(found["caret_connections_active"], 0)
        self.assertEqual(found["caret_messages_total"], 4 * sessions)
        self.assertEqual(
            found["caret_bytes_sent_total"], sessions * len(WORKED_EXAMPLE_ANSWER)
        )
        self.assertNotIn("metrics for the parent", twistd.output)
