"""
C{--metrics} checked by the real thing: a Prometheus server (Debian's
C{prometheus} package) scrapes a caret server and a C{--workers 2} one, and
its HTTP API, queried after a few reference sessions, gives the counts those
sessions produced; and C{promtool check metrics} finds nothing to say about
either exposition.

It needs C{prometheus} and C{promtool} (C{.ci/run} installs them).  Without
them the test is skipped, except in CI, where it must run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from caretproto.reference import REFERENCE_SCRIPT, expectedReplies
from caretproto.referenceclient import runSessions
from tests import inCI
from tests.tempfolder import tempFolder
from tests.test_haproxy import freePort
from tests.test_metrics import get
from tests.twistd import LOOPBACK, Twistd
from tests.workedexample import REFERENCE_REPLIES

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

QUICK_SCRIPT = [(data, 0.05) for data, _ in REFERENCE_SCRIPT]
MESSAGES = 4
"""Messages ended by C{$} in one reference session."""

CONFIG = """\
global:
  scrape_interval: 250ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: single
    static_configs:
      - targets: ["127.0.0.1:{single}"]
  - job_name: workers
    static_configs:
      - targets: ["127.0.0.1:{workers}"]
"""


@pytest.mark.process
class PrometheusTests(TestCase):
    timeout = 120
    if (PROMETHEUS is None or PROMTOOL is None) and not inCI():
        skip = (
            "prometheus and promtool are not installed (CI installs them, and "
            "there this runs)"
        )

    def setUp(self) -> None:
        missing = [
            name
            for name, path in (("prometheus", PROMETHEUS), ("promtool", PROMTOOL))
            if path is None
        ]
        if missing:
            self.fail(
                f"{' and '.join(missing)} not installed: CI must install them "
                "(Debian's prometheus)"
            )

    async def startCaret(self, *options: str) -> tuple[TCP4ClientEndpoint, int]:
        """A C{twistd caret} with C{--metrics}: where it serves, and its metrics."""
        twistd = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--metrics", LOOPBACK, *options
        )
        [address] = await twistd.listening
        [metrics] = await twistd.logged(r"\[-\] metrics starting on (\d+)")
        host, port = address.rsplit(":", 1)
        return TCP4ClientEndpoint(reactor, host, int(port)), int(metrics[1])

    async def query(self, port: int, expression: str) -> dict[str, float]:
        """Prometheus's instant answer to C{expression}, by job."""
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urlencode(
            {"query": expression}
        )
        _, body = await get(Agent(reactor), url.encode())
        answer = json.loads(body)
        self.assertEqual(answer["status"], "success", answer)
        return {
            result["metric"]["job"]: float(result["value"][1])
            for result in answer["data"]["result"]
        }

    async def queryUntil(
        self, port: int, expression: str, expected: dict[str, float]
    ) -> dict[str, float]:
        """
        Query until Prometheus answers C{expected}: the workers report to
        their parent every second, and Prometheus scrapes every 250 ms.
        """
        for _ in range(150):
            found = await self.query(port, expression)
            if found == expected:
                break
            await deferLater(reactor, 0.2, lambda: None)
        return found

    async def test_prometheus_scrapes_the_counts_the_sessions_produced(
        self,
    ) -> None:
        (single, singleMetrics), (workers, workersMetrics) = await gatherResults(
            [
                Deferred.fromCoroutine(self.startCaret()),
                Deferred.fromCoroutine(self.startCaret("--workers", "2")),
            ]
        )
        folder = Path(tempFolder(self))
        config = folder / "prometheus.yml"
        config.write_text(CONFIG.format(single=singleMetrics, workers=workersMetrics))
        port = freePort()
        prometheus = Twistd.start(
            self,
            runner=[
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )
        prometheus.listening.addErrback(lambda _: None)
        await prometheus.logged("Server is ready to receive web requests")
        # Each target is up, and scraped, before any session.
        await self.queryUntil(port, "up", {"single": 1, "workers": 1})

        counts = {"single": 3, "workers": 5}
        log = Logger(observer=lambda event: None)
        reports = await gatherResults(
            [
                runSessions(reactor, single, counts["single"], log, QUICK_SCRIPT),  # type: ignore[arg-type]
                runSessions(reactor, workers, counts["workers"], log, QUICK_SCRIPT),  # type: ignore[arg-type]
            ]
        )
        for report in reports:
            self.assertIsNone(report.summary())
            self.assertEqual(
                {outcome.received for outcome in report.outcomes}, {REFERENCE_REPLIES}
            )

        bytesIn = sum(len(data) for data, _ in QUICK_SCRIPT)
        bytesOut = 1 + len(expectedReplies(QUICK_SCRIPT))
        expected: dict[str, dict[str, float]] = {
            "caret_connection_duration_seconds_count": counts,
            "caret_connections_total": counts,
            "caret_connections_active": {"single": 0, "workers": 0},
            "caret_messages_total": {j: MESSAGES * n for j, n in counts.items()},
            "caret_bytes_received_total": {j: bytesIn * n for j, n in counts.items()},
            "caret_bytes_sent_total": {j: bytesOut * n for j, n in counts.items()},
        }
        for expression, answer in expected.items():
            self.assertEqual(
                await self.queryUntil(port, expression, answer), answer, expression
            )

    async def test_promtool_finds_nothing_wrong_with_the_exposition(self) -> None:
        for options in [(), ("--workers", "2")]:
            endpoint, metrics = await self.startCaret(*options)
            report = await runSessions(
                reactor,  # type: ignore[arg-type]
                endpoint,
                2,
                Logger(observer=lambda event: None),
                QUICK_SCRIPT,
            )
            self.assertIsNone(report.summary())
            self.assertEqual(
                {outcome.received for outcome in report.outcomes}, {REFERENCE_REPLIES}
            )
            _, exposition = await get(
                Agent(reactor), f"http://127.0.0.1:{metrics}/metrics".encode()
            )
            self.assertIn(b"caret_connections_total", exposition)
            out, err, code = await lint(tempFolder(self), exposition)
            self.assertEqual((out, err, code), (b"", b"", 0), options)


async def lint(folder: str, exposition: bytes) -> tuple[bytes, bytes, int]:
    """C{promtool check metrics}, given C{exposition} on its standard input."""
    path = Path(folder) / "exposition.txt"
    path.write_bytes(exposition)
    result: tuple[bytes, bytes, int] = await getProcessOutputAndValue(
        "/bin/sh", ["-c", 'exec "$0" check metrics < "$1"', str(PROMTOOL), str(path)]
    )
    return result
