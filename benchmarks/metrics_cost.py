"""
Yardstick: what `--metrics` costs the server, in process.

    python benchmarks/metrics_cost.py

Nothing is added per chunk read (the sessions keep their counters with or
without metrics), so this measures the two places that pay: a session's end,
which folds its counters into the totals (20,000 ends in a loop, with and
without a CaretMetrics watching, three runs side by side), and a scrape,
which reads every session in progress (0, 1,000 and 10,000 sessions, median
of 21 renderings of the whole registry).
"""

from __future__ import annotations

import argparse
import statistics
import time

from prometheus_client import generate_latest
from twisted.internet.testing import StringTransport

from caretproto.metrics import CaretMetrics
from caretproto.server import CaretFactory, CaretProtocol


def sessions(factory: CaretFactory, count: int) -> list[CaretProtocol]:
    made = []
    for _ in range(count):
        session = factory.buildProtocol(None)
        assert isinstance(session, CaretProtocol)
        session.makeConnection(StringTransport())
        session.dataReceived(b"^abc$")
        made.append(session)
    return made


def scrapes() -> None:
    for count in (0, 1000, 10000):
        factory = CaretFactory()
        metrics = CaretMetrics(factory)
        sessions(factory, count)
        times = []
        for _ in range(21):
            started = time.perf_counter()
            generate_latest(metrics.registry)
            times.append(time.perf_counter() - started)
        print(
            f"scrape, {count:5d} sessions in progress: "
            f"{statistics.median(times) * 1e3:.2f} ms"
        )


def sessionEnds(count: int = 20000, runs: int = 3) -> None:
    perEnd: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for watched in (False, True):
            factory = CaretFactory()
            if watched:
                CaretMetrics(factory)
            made = sessions(factory, count)
            started = time.perf_counter()
            for session in made:
                factory.sessionEnded(session)
            perEnd[watched].append((time.perf_counter() - started) / count)
    for watched, times in perEnd.items():
        print(
            f"session end, metrics {'on ' if watched else 'off'}: "
            + ", ".join(f"{t * 1e6:.2f}" for t in times)
            + f" us (median {statistics.median(times) * 1e6:.2f})"
        )


def main() -> None:
    # No options: argparse is here so that --help describes the run rather
    # than starting it.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    scrapes()
    sessionEnds()


if __name__ == "__main__":
    main()
