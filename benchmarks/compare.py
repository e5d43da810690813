"""
caretproto beside the servers a user could write instead, in one run.

The rows, each its own process on 127.0.0.1:

- C{epoll}: benchmarks/servers/epoll_server.c, the ceiling: what the
  generator reaches against a server that costs next to nothing, so that a
  reader sees the generator did not limit the other rows;
- C{asyncio}, C{uvloop} (if installed): benchmarks/servers/asyncio_server.py,
  the fifty lines a user of asyncio would write, sharing no code with
  caretproto;
- C{twisted}, C{twisted-write-at-once}: benchmarks/servers/twisted_bare.py,
  the barest Twisted server with the same inline rules, with Twisted's own
  C{transport.write} and with write-at-once: the split between what Twisted
  costs and what caret's own features cost;
- C{caret} (C{twistd -n caret}, the defaults), C{caret-idle-off}
  (C{--idle-timeout off}), C{caret-workers-2} (C{--workers 2}) and
  C{caret-epoll} (the defaults on caret's own reactor, C{twistd
  --reactor=caret-epoll}: caretproto/reactor.py).

The figures, driven by benchmarks/cload.c (C, epoll, every reply byte
checked): the server's CPU time (user and system) per round, the leading
figure, and the rate, at rr 1, 100 and 1,000 connections (16-byte round
trips) and in bulk; the resident memory each idle connection adds, C{--hold}
connections held by caret-bench against a freshly started server, one
server after the other; and caret-bench's own rate beside cload's against the
fastest server, since caret-bench is not the ceiling.

Runs are interleaved (A, B, C, then B, C, A, ...); every figure is a
median with its min and max.  A run whose reference rows are out of line (a
server slower at 100 connections than at 1,000 by more than the spread, or a
spread over 20 % of the median) is repeated once, then flagged in the record
and on the page.  It prints the tables; C{--write} puts the record
C{compare} into docs/benchmarks.json, which docs/benchmarks.rst renders.

    pip install -e '.[bench]'
    python benchmarks/compare.py --write      # 2 s runs, 5 rounds: the lead's
    python benchmarks/compare.py --quick      # a smoke run, figures rough

Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/ is on the path as this script's folder.
import harness
from harness import TIMES, Server, Spread, say

from caretproto.openfiles import raiseOpenFilesLimit

RR_CONNECTIONS = (1, 100, 1000)

REFERENCE = ["epoll", "asyncio", "uvloop", "twisted", "twisted-write-at-once"]
"""Rows whose figures are not caret's: the yardsticks checked for sanity."""

LABELS = {
    "epoll": "C epoll (ceiling)",
    "asyncio": "plain asyncio",
    "uvloop": "uvloop",
    "twisted": "bare Twisted, transport.write",
    "twisted-write-at-once": "bare Twisted, write-at-once",
    "caret": "twistd -n caret",
    "caret-idle-off": "caret --idle-timeout off",
    "caret-workers-2": "caret --workers 2",
    "caret-epoll": "twistd --reactor=caret-epoll caret",
}

HOLD_ROWS = ["caret", "caret-idle-off", "asyncio", "uvloop", "twisted"]
"""The servers whose memory per held connection is measured."""


def commands(quick: bool) -> dict[str, list[str]]:
    """The rows of this run, name: command."""
    rows = {
        "epoll": harness.referenceServer("epoll"),
        "asyncio": harness.referenceServer("asyncio"),
        "uvloop": harness.referenceServer("uvloop"),
        "twisted": harness.referenceServer("twisted"),
        "twisted-write-at-once": harness.referenceServer("twisted-write-at-once"),
        "caret": harness.twistdCaret(),
        "caret-idle-off": harness.twistdCaret("--idle-timeout", "off"),
        "caret-workers-2": harness.twistdCaret("--workers", "2"),
        "caret-epoll": harness.twistdCaret(reactor="caret-epoll"),
    }
    if importlib.util.find_spec("uvloop") is None:
        del rows["uvloop"]
    if quick:
        for name in ("uvloop", "twisted", "caret-workers-2"):
            rows.pop(name, None)
    return rows


def throughput(
    servers: dict[str, Server],
    repeat: int,
    duration: float,
    connections: tuple[int, ...],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """cload's runs per load (C{"rr100"}, C{"bulk"}) per server."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for c in connections:
        say(f"rr, {c} connections (cload)")
        runs[f"rr{c}"] = harness.interleaved(
            servers,
            repeat,
            lambda name, c=c: harness.costedCload(servers[name], c, duration),
        )
    say("bulk, 1 connection (cload)")
    runs["bulk"] = harness.interleaved(
        servers,
        repeat,
        lambda name: harness.costedCload(servers[name], 1, duration, "bulk"),
    )
    return runs


def throughputFigures(
    runs: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, dict[str, Any]]:
    """
    C{rr100.caret.cpu} (µs a round), C{rr100.caret.rate} (rounds/s),
    C{bulk.caret.cpu} (ms a MB), C{bulk.caret.rate} (MB/s), and each one's
    ratio to plain asyncio's and to the bare Twisted server's with
    write-at-once (C{rr100.caret.cpu-asyncio}), and for caret's other rows
    to caret's with the defaults (C{rr100.caret-workers-2.rate-caret}),
    taken round by round: the
    rounds were interleaved, so round I of one server ran beside round I of
    the other.
    """
    figures: dict[str, dict[str, Any]] = {}
    for load, byServer in runs.items():
        cpu, rate = ("cpu_us", "rounds_per_s")
        units = ("µs", "/s")
        if load == "bulk":
            cpu, rate = ("cpu_ms_per_mb", "mb_per_s")
            units = ("ms/MB", "MB/s")
        for name, reports in byServer.items():
            for key, field, unit in (("cpu", cpu, units[0]), ("rate", rate, units[1])):
                spread = Spread.of(report.get(field) for report in reports)
                if spread is not None:
                    figures[f"{load}.{name}.{key}"] = spread.asRecord(unit)
                for base in ("asyncio", "twisted-write-at-once", "caret"):
                    if base not in byServer or base == name:
                        continue
                    if base == "caret" and not name.startswith("caret-"):
                        continue
                    ratio = Spread.of(
                        _ratio(mine.get(field), theirs.get(field))
                        for mine, theirs in zip(reports, byServer[base], strict=True)
                    )
                    if ratio is not None:
                        figures[f"{load}.{name}.{key}-{base}"] = ratio.asRecord(TIMES)
    return figures


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine is not None and theirs else None


def outOfLine(figures: dict[str, dict[str, Any]]) -> list[str]:
    """
    What is wrong with the reference rows: a server slower at 100
    connections than at 1,000 by more than the spread, or a rate or CPU
    figure whose spread is over ±20 % of its median.
    """
    wrong = []
    for name in REFERENCE:
        at100 = figures.get(f"rr100.{name}.rate")
        at1000 = figures.get(f"rr1000.{name}.rate")
        if at100 and at1000 and at100["max"] < at1000["min"]:
            wrong.append(
                f"{LABELS[name]} was slower at 100 connections "
                f"({at100['median']:,.0f}/s) than at 1,000 "
                f"({at1000['median']:,.0f}/s), beyond the spread"
            )
        for key, figure in figures.items():
            load, row, what = key.split(".")
            if row != name or what not in ("cpu", "rate"):
                continue
            spread = Spread(figure["median"], figure["min"], figure["max"], 0)
            if spread.wide():
                wrong.append(
                    f"{LABELS[name]}, {load} {what}: the runs spread over "
                    f"±20 % of the median ({harness.formatted(figure)})"
                )
    return wrong


def hold(folder: Path, names: list[str], count: int, quick: bool) -> dict[str, Any]:
    """
    Per server, freshly started, one after the other: C{count} idle
    connections held by caret-bench, and the server's resident memory while
    they are held less before, per connection, in KiB (C{hold.caret.kib});
    beside it the peak less before, per connection (C{hold.caret.peak}),
    which also counts what the end of the hold costs: caret-bench then
    plays a round on every connection at once and closes them all.
    """
    figures: dict[str, Any] = {}
    rows = commands(quick)
    for name in names:
        if name not in rows:
            continue
        say(f"held, {name}, {count:,} connections")
        with harness.running({name: rows[name]}, folder) as started:
            server = started[name]
            time.sleep(1)
            with harness.PeakMemory(server, count) as memory:
                report = bench(
                    server,
                    *("-m", "hold", "-c", str(count), "-d", "3", "-P", "2"),
                    *("--greeting-timeout", "5"),
                )
        held = report.get("held") or 0
        if held and memory.held is not None:
            growth = (memory.held - memory.base) / held / 1024
            peak = (memory.peak - memory.base) / held / 1024
            figures[f"hold.{name}.kib"] = Spread.of([growth]).asRecord("KiB")  # type: ignore[union-attr]
            figures[f"hold.{name}.peak"] = Spread.of([peak]).asRecord("KiB")  # type: ignore[union-attr]
            figures[f"hold.{name}.held"] = Spread.of([held]).asRecord("")  # type: ignore[union-attr]
    for name in names:
        mine, theirs = figures.get(f"hold.{name}.kib"), figures.get("hold.asyncio.kib")
        if mine and theirs and name != "asyncio":
            ratio = mine["median"] / theirs["median"]
            figures[f"hold.{name}.kib-asyncio"] = Spread.of([ratio]).asRecord(TIMES)  # type: ignore[union-attr]
    return figures


def bench(server: Server, *arguments: str, timeout: float = 300) -> dict[str, Any]:
    """
    One caret-bench run against C{server}; its JSON report.

    @raise RuntimeError: it failed, or took over C{timeout} seconds (it is
        then killed with its worker processes).
    """
    command = [str(harness.BIN / "caret-bench"), "127.0.0.1", str(server.port)]
    # A session of its own, so that a run that hangs goes with its workers.
    process = subprocess.Popen(
        [*command, "--json", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(
            f"caret-bench {' '.join(arguments)}: over {timeout:g}s"
        ) from None
    if not stdout.strip():
        raise RuntimeError(f"caret-bench {' '.join(arguments)}: {stderr}")
    report: dict[str, Any] = json.loads(stdout)
    return report


def generator(
    servers: dict[str, Server], figures: dict[str, Any], repeat: int, duration: float
) -> dict[str, Any]:
    """
    caret-bench (C{-P 2}) beside cload, interleaved, against the server
    with the highest rr 100 rate: how far caret-bench is from the ceiling.
    """
    fastest = max(
        (name for name in servers if f"rr100.{name}.rate" in figures),
        key=lambda name: figures[f"rr100.{name}.rate"]["median"],
    )
    say(f"caret-bench -P 2 beside cload, 100 connections, against {fastest}")
    server = servers[fastest]
    runs = harness.interleaved(
        ["cload", "caret-bench"],
        repeat,
        lambda tool: (
            harness.cload(server.port, 100, duration)
            if tool == "cload"
            else bench(server, "-c", "100", "-d", str(duration), "-P", "2")
        ),
    )
    found: dict[str, Any] = {}
    for tool, reports in runs.items():
        spread = Spread.of(report["rounds_per_s"] for report in reports)
        assert spread is not None
        found[f"generator.{tool}.rate"] = spread.asRecord("/s")
    ratio = Spread.of(
        b["rounds_per_s"] / c["rounds_per_s"]
        for c, b in zip(runs["cload"], runs["caret-bench"], strict=True)
    )
    assert ratio is not None
    found["generator.caret-bench.rate-cload"] = ratio.asRecord(TIMES)
    found["generator.server"] = {"label": LABELS[fastest]}
    return found


def tables(names: list[str], connections: tuple[int, ...]) -> dict[str, Any]:
    """How docs/_ext/caretfigures.py lays this record's figures out."""
    loads = [f"rr{c}" for c in connections]
    columns = [f"rr {c:,}" for c in connections]

    def rows(key: str) -> list[list[Any]]:
        return [
            [LABELS[name], *(f"{load}.{name}.{key}" for load in [*loads, "bulk"])]
            for name in names
        ]

    return {
        "cpu": {
            "title": "Server CPU time per round (µs; bulk: ms per MB)",
            "header": ["server", *columns, "bulk"],
            "rows": rows("cpu"),
        },
        "cpu-ratios": {
            "title": "Server CPU time per round, as a ratio",
            "header": ["server", *(f"{c} ÷ asyncio" for c in columns)]
            + [f"{c} ÷ bare Twisted, write-at-once" for c in columns],
            "rows": [
                [
                    LABELS[name],
                    *(f"{load}.{name}.cpu-asyncio" for load in loads),
                    *(f"{load}.{name}.cpu-twisted-write-at-once" for load in loads),
                ]
                for name in names
                if name.startswith("caret") or name.startswith("twisted")
            ],
        },
        "rates": {
            "title": "Rates (rounds/s; bulk: reply MB/s)",
            "header": ["server", *columns, "bulk"],
            "rows": rows("rate"),
        },
        "workers": {
            "title": "caret --workers 2 beside one process, rates as a ratio",
            "header": ["", *columns, "bulk"],
            "rows": [
                [
                    "caret --workers 2 \u00f7 caret",
                    *(
                        f"{load}.caret-workers-2.rate-caret"
                        for load in [*loads, "bulk"]
                    ),
                ]
            ],
        },
        "hold": {
            "title": "Resident memory per held idle connection",
            "header": [
                "server",
                "held",
                "KiB per connection, held",
                "÷ asyncio",
                "at the peak (a round on each, then the closes)",
            ],
            "rows": [
                [
                    LABELS[name],
                    f"hold.{name}.held",
                    f"hold.{name}.kib",
                    f"hold.{name}.kib-asyncio",
                    f"hold.{name}.peak",
                ]
                for name in HOLD_ROWS
                if name in names
            ],
        },
        "generator": {
            "title": "caret-bench -P 2 beside cload, rr 100",
            "header": ["generator", "rounds/s", "÷ cload"],
            "rows": [
                ["cload", "generator.cload.rate", None],
                [
                    "caret-bench -P 2",
                    "generator.caret-bench.rate",
                    "generator.caret-bench.rate-cload",
                ],
            ],
        },
    }


SESSION_MODELS = {
    "sequential": ("sequential", None),
    "threads": ("thread per connection", None),
    "threadpool": ("thread pool (64)", None),
    "asyncio": ("plain asyncio", None),
    "uvloop": ("uvloop", None),
    "caret": ("caret", []),
    "caret-epoll": ("caret on caret-epoll", []),
    "caret-one": ("caret, 1 at a time", ["--max-connections", "1"]),
}
"""The concurrency models whose reference sessions are timed, the contrast
the protocol is for: name, label, and caret's options (C{None}: a reference
server of that name)."""

SESSION_REACTORS = {"caret-epoll": "caret-epoll"}
"""The models of caret run on a reactor other than twistd's default."""

CAPACITY = {"sequential": 1, "threadpool": 64, "caret-one": 1}
"""Sessions a model serves at once, where that is fewer than asked."""


def sessions(folder: Path, quick: bool) -> dict[str, Any]:
    """
    The reference session of docs/protocol.rst on N connections at once,
    with caret-bench, per model: seconds from the first connect to the last
    close.  One run each, but at the largest N three, interleaved, and their
    median: there a client whose SYN the full listen queue dropped waits a
    second to send it again, and one run can take a second longer than the
    next for that alone.  The record C{sessions}; a model that serves few
    at once is measured only where that takes seconds, not hours.
    """
    counts = {"sequential": [1, 2, 5], "caret-one": [1, 2, 5]}
    counts["threadpool"] = [1, 100, 1000]
    everyN = [1, 100, 1000, 10000]
    if quick:
        counts = {name: ns[:2] for name, ns in counts.items()}
        everyN = everyN[:2]
    models = {
        name: harness.referenceServer(name)
        if options is None
        else harness.twistdCaret(*options, reactor=SESSION_REACTORS.get(name))
        for name, (_, options) in SESSION_MODELS.items()
        if name != "uvloop" or importlib.util.find_spec("uvloop") is not None
    }
    figures: dict[str, Any] = {}
    notes: list[str] = []
    with harness.running(models, folder) as servers:

        def elapsed(name: str, n: int) -> float | None:
            say(f"sessions, {name}, N = {n}")
            try:
                report = bench(
                    servers[name],
                    *("-m", "sessions", "-c", str(n), "-P", "2"),
                    timeout=90,
                )
            except RuntimeError as failure:
                # One model failing (a thread per connection, where the
                # system allows fewer threads) must not lose the run.
                note = f"Not measured: {name}, N = {n}: {failure}"
                if note not in notes:
                    notes.append(note)
                return None
            return float(report["elapsed_s"])

        for n in sorted({n for name in models for n in counts.get(name, everyN)}):
            names = [name for name in models if n in counts.get(name, everyN)]
            rounds = 3 if n == everyN[-1] and not quick else 1
            runs = harness.interleaved(names, rounds, functools.partial(elapsed, n=n))
            for name, values in runs.items():
                spread = Spread.of(values)
                if spread is not None:
                    figures[f"n{n}.{name}.elapsed"] = spread.asRecord("s")
    allN = sorted({int(key.split(".")[0][1:]) for key in figures})
    table = {
        "title": "Reference sessions, seconds from the first connect to the last "
        "close (caret-bench -m sessions -c N -P 2, one run each; at "
        f"N = {everyN[-1]:,}, the median of three)",
        "header": ["N", *(SESSION_MODELS[name][0] for name in models)],
        "rows": [
            [f"{n:,}", *(f"n{n}.{name}.elapsed" for name in models)] for n in allN
        ],
    }
    command = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    return harness.record(command, figures, {"elapsed": table}, notes)


def plot(entry: dict[str, Any], path: Path) -> None:
    """The sessions record as docs/elapsed.png: elapsed time against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    byModel: dict[str, dict[int, float]] = {}
    for key, value in entry["figures"].items():
        n, name, _ = key.split(".")
        byModel.setdefault(name, {})[int(n[1:])] = value["median"]
    for name, measured in byModel.items():
        ns = sorted(measured)
        label = SESSION_MODELS[name][0]
        (line,) = axes.plot(ns, [measured[n] for n in ns], marker="o", label=label)
        if name in CAPACITY:
            # A model serving C sessions at once takes ceil(N / C) batches.
            largest = max(ns)
            batch = measured[largest] / math.ceil(largest / CAPACITY[name])
            beyond = [largest, 100, 1000, 10000]
            beyond = sorted({n for n in beyond if n >= largest})
            axes.plot(
                beyond,
                [math.ceil(n / CAPACITY[name]) * batch for n in beyond],
                linestyle="--",
                color=line.get_color(),
                label=f"{label} (extrapolated)",
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("N, reference sessions at once")
    axes.set_ylabel("elapsed, seconds")
    axes.set_title("caret reference sessions: elapsed time against N")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def measure(options: argparse.Namespace, folder: Path) -> dict[str, Any]:
    connections = (100, 1000) if options.quick else RR_CONNECTIONS
    rows = commands(options.quick)
    notes: list[str] = []
    with harness.running(rows, folder) as servers:
        figures = throughputFigures(
            throughput(servers, options.repeat, options.duration, connections)
        )
        wrong = outOfLine(figures)
        if wrong:
            say("out of line, measuring again: " + "; ".join(wrong))
            figures = throughputFigures(
                throughput(servers, options.repeat, options.duration, connections)
            )
            wrong = outOfLine(figures)
            notes += [f"Out of line, twice: {what}." for what in wrong]
        figures.update(generator(servers, figures, options.repeat, options.duration))
    holdRows = [name for name in HOLD_ROWS if name in rows]
    figures.update(hold(folder, holdRows, options.hold, options.quick))
    command = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])
    return harness.record(command, figures, tables(list(rows), connections), notes)


def main() -> None:
    parse = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog="Prints the tables; writes docs/benchmarks.json only with --write.",
    )
    parse.add_argument("--duration", type=float, default=2.0, help="seconds a run")
    parse.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    parse.add_argument(
        "--hold", type=int, default=10000, help="idle connections held per server"
    )
    parse.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: fewer rows, rr 100 and 1,000, 1 s runs, 2 rounds, "
        "1,000 held",
    )
    parse.add_argument(
        "--sessions",
        action="store_true",
        help="also time the reference sessions of every concurrency model "
        "(the record sessions, and docs/elapsed.png)",
    )
    parse.add_argument(
        "--write", action="store_true", help="write the records into docs/"
    )
    parse.add_argument(
        "--records", type=Path, default=harness.RECORDS, help="where --write writes"
    )
    options = parse.parse_args()
    if options.quick:
        options.duration = min(options.duration, 1.0)
        options.repeat = min(options.repeat, 2)
        options.hold = min(options.hold, 1000)
    raiseOpenFilesLimit(program="benchmarks/compare.py")
    with harness.logFolder("caret-compare-") as folder:
        entry = measure(options, folder)
        print(harness.show(entry))
        if options.write:
            harness.writeRecord("compare", entry, options.records)
        if options.sessions:
            timed = sessions(folder, options.quick)
            print(harness.show(timed))
            if options.write:
                harness.writeRecord("sessions", timed, options.records)
                plot(timed, options.records.parent / "elapsed.png")


if __name__ == "__main__":
    main()
