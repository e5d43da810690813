"""
The comparison of concurrency models, in one run.

Starts caretproto (``twistd caret``, in one process and with ``--workers 2``)
and the reference servers of benchmarks/servers/ (sequential, thread per
connection, thread pool of 64, plain asyncio, uvloop, and a C epoll server)
side by side on 127.0.0.1, and measures them:

- throughput (round trips of 16-byte messages on 1, 100 and 1,000
  connections; bulk on one connection) with the C load generator
  benchmarks/cload.c, which costs far less per event than any server here.
  The C epoll server's row is the ceiling: what the generator reaches
  against a server that costs next to nothing, so a reader can see that the
  generator did not limit the other rows;
- caret-bench (``-P 2``) against cload, both against plain asyncio and
  caretproto, for how far caret-bench itself is from the ceiling;
- reference sessions (elapsed time against N) and connections held (memory
  per connection), with caret-bench.

It compiles cload and the C server with ``cc`` in a temporary folder, which
it removes at the end with the servers' logs (kept, and named, if a server
fails to start).  It prints the tables; only with ``--write-docs`` does it
rewrite docs/benchmarks.rst (between its "generated" markers), docs/
benchmarks.json and docs/elapsed.png.

    pip install -e '.[bench]'
    python benchmarks/compare.py                 # about 8 minutes on 2 cores
    python benchmarks/compare.py --quick         # about 2, figures rough
    python benchmarks/compare.py --write-docs    # and regenerate the docs

Measurements that repeat are interleaved across servers (A, B, ... then A,
B, ... again) so that noise from other work on the machine hits all of them
alike; tables quote medians and ratios to plain asyncio.  Nothing here asserts
a speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from caretproto.listening import waitForListening

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "benchmarks" / "servers"
BIN = Path(sys.executable).parent

CARET_ONE_AT_A_TIME = "caretproto --max-connections 1"
"""caretproto made sequential by its own option, for the sessions."""

CAPACITY = {"sequential": 1, "thread pool (64)": 64, CARET_ONE_AT_A_TIME: 1}
"""Connections a model serves at once, where that is fewer than asked."""

C_EPOLL = "C epoll (ceiling)"
"""benchmarks/servers/epoll_server.c: what cload reaches against next to no cost."""

CARET_WORKERS = "caretproto --workers 2"

THROUGHPUT_MODELS = [
    C_EPOLL,
    "threads",
    "asyncio",
    "uvloop",
    "caretproto",
    CARET_WORKERS,
]
"""The servers whose throughput cload measures."""

RR_CONNECTIONS = (1, 100, 1000)

MODELS = [
    "sequential",
    "threads",
    "thread pool (64)",
    "asyncio",
    "uvloop",
    "caretproto",
]


SESSION_MODELS = [*MODELS, CARET_ONE_AT_A_TIME]
"""The models whose reference sessions are timed."""


class Server:
    """One server under test, in its own process."""

    def __init__(self, name: str, command: list[str], logDir: Path) -> None:
        self.name = name
        self.log = Path(
            tempfile.mkstemp(
                prefix=re.sub(r"\W+", "-", name), suffix=".log", dir=logDir
            )[1]
        )
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.port = self._port()
        self.ps = psutil.Process(self.process.pid)

    def _port(self) -> int:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.open("a").write(line)
            found = re.search(r"port=(\d+)|^(\d+)$", line.strip())
            if found:
                port = int(found.group(1) or found.group(2))
                threading.Thread(target=self._drain, daemon=True).start()
                return port
        raise RuntimeError(f"{self.name} exited before listening; see {self.log}")

    def _drain(self) -> None:
        assert self.process.stdout is not None
        with self.log.open("a") as log:
            for line in self.process.stdout:
                log.write(line)

    def cpuSeconds(self) -> float:
        """User and system time of the server and its workers so far."""
        processes = [self.ps, *self.ps.children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def startServer(name: str, logDir: Path) -> Server:
    """
    Start the server of model C{name}, logging to a file of its own in
    C{logDir}, where the C programs are compiled too.
    """
    if name == C_EPOLL:
        return Server(name, [str(compiled("servers/epoll_server.c", logDir))], logDir)
    if name.startswith("caretproto"):
        # A log of its own per start: a restarted server's "listening" line
        # must not be confused with an earlier one's.
        log = Path(tempfile.mkstemp(prefix="caretproto-", suffix=".log", dir=logDir)[1])
        command = [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log)]
        options = name.split()[1:]
        return _startTwistd(
            [*command, "caret", "--port", "tcp:0:interface=127.0.0.1", *options],
            name,
            log,
        )
    python = [sys.executable, "-u"]
    commands = {
        "sequential": [*python, str(SERVERS / "sequential.py"), "0"],
        "threads": [*python, str(SERVERS / "threads.py"), "0"],
        "thread pool (64)": [*python, str(SERVERS / "threadpool.py"), "0"],
        "asyncio": [*python, str(SERVERS / "asyncio_server.py"), "0"],
        "uvloop": [*python, str(SERVERS / "asyncio_server.py"), "0", "--uvloop"],
    }
    return Server(name, commands[name], logDir)


def _startTwistd(command: list[str], name: str, logFile: Path) -> Server:
    """twistd logs to a file: wait for its 'listening' line there."""
    server = Server.__new__(Server)
    server.name = name
    server.log = logFile
    server.process = subprocess.Popen(command, cwd=ROOT)
    try:
        (listening,) = waitForListening(logFile, server.process)[:1]
    except RuntimeError:
        server.process.terminate()
        raise
    assert listening.port is not None
    server.port = listening.port
    server.ps = psutil.Process(server.process.pid)
    return server


def bench(server: Server, *args: str, timeout: float = 300) -> dict[str, Any]:
    """
    One caret-bench run against C{server}; its JSON report.

    @raise RuntimeError: it failed, or took over C{timeout} seconds (it is
        then killed with its worker processes).
    """
    command = [
        str(BIN / "caret-bench"),
        "127.0.0.1",
        str(server.port),
        "--json",
        *args,
    ]
    # A session of its own, so that a run that hangs goes with its workers.
    process = subprocess.Popen(
        command,
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
        raise RuntimeError(f"caret-bench took over {timeout:g}s: {command}") from None
    if not stdout.strip():
        raise RuntimeError(f"caret-bench failed: {command}\n{stderr}")
    figures: dict[str, Any] = json.loads(stdout)
    figures["command"] = "caret-bench HOST PORT " + " ".join(args)
    return figures


def benchWatchingMemory(server: Server, *args: str) -> dict[str, Any]:
    """C{bench}, noting the server's resident memory before and at its peak."""
    base = server.rss()
    peak = [base]
    running = threading.Event()
    running.set()

    def watch() -> None:
        while running.is_set():
            peak[0] = max(peak[0], server.rss())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        figures = bench(server, *args)
    finally:
        running.clear()
        watcher.join()
    figures["rss_base"] = base
    figures["rss_peak"] = peak[0]
    return figures


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleaved(
    names: list[str], repeat: int, run: Callable[[str], Any]
) -> dict[str, list[Any]]:
    """Run C{run} for every name, C{repeat} rounds, one name after another."""
    results: dict[str, list[Any]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            results[name].append(run(name))
    return results


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def compiled(source: str, folder: Path) -> Path:
    """benchmarks/C{source}, compiled into C{folder} once."""
    binary = folder / Path(source).stem
    if not binary.exists():
        subprocess.run(
            ["cc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / source)],
            check=True,
        )
    return binary


def cload(
    folder: Path, port: int, connections: int, duration: float, mode: str = "rr"
) -> dict[str, Any]:
    """One benchmarks/cload.c run: 16-byte round trips, or bulk."""
    arguments = [str(port), str(connections), "16", str(duration), mode]
    done = subprocess.run(
        [str(compiled("cload.c", folder)), "127.0.0.1", *arguments],
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=False,
    )
    if not done.stdout.strip():
        raise RuntimeError(f"cload failed: {arguments}\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["command"] = "cload 127.0.0.1 PORT " + " ".join(arguments[1:])
    return figures


def cloadCosting(
    folder: Path, server: Server, connections: int, duration: float, mode: str = "rr"
) -> dict[str, Any]:
    """
    L{cload}, and the server's CPU time per round (per MB in bulk), which
    other work on a shared machine disturbs far less than the rate.
    """
    before = server.cpuSeconds()
    figures = cload(folder, server.port, connections, duration, mode)
    used = server.cpuSeconds() - before
    done = figures["rounds"] if mode == "rr" else figures["bytes"] / 1e6
    figures["cpu_us"] = used / done * 1e6 if done else float("nan")
    return figures


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import uvloop

    import twisted

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "uvloop": uvloop.__version__,
        "load": "load average at start {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        "commit": subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }


@contextmanager
def running(names: list[str], logDir: Path) -> Iterator[dict[str, Server]]:
    servers = {}
    try:
        for name in names:
            servers[name] = startServer(name, logDir)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def measure(options: argparse.Namespace, logDir: Path) -> dict[str, Any]:
    quick = options.quick
    duration = options.duration
    repeat = options.repeat
    results: dict[str, Any] = {
        "machine": machine(),
        "options": vars(options),
        "failures": [],
    }
    everyServer = list(dict.fromkeys([*THROUGHPUT_MODELS, *SESSION_MODELS]))
    with running(everyServer, logDir) as servers:
        say("bulk, 1 connection (cload)")
        results["bulk"] = interleaved(
            THROUGHPUT_MODELS,
            repeat,
            lambda name: cloadCosting(logDir, servers[name], 1, duration, "bulk"),
        )

        results["rr"] = {}
        for connections in RR_CONNECTIONS:
            say(f"rr, {connections} connections (cload)")
            results["rr"][str(connections)] = interleaved(
                THROUGHPUT_MODELS,
                repeat,
                lambda name, c=connections: cloadCosting(
                    logDir, servers[name], c, duration
                ),
            )

        say("caret-bench -P 2 beside cload, 100 connections")
        checks: dict[str, list[dict[str, Any]]] = {"asyncio": [], "caretproto": []}
        for _ in range(repeat):
            for name, runs in checks.items():
                port = servers[name].port
                runs.append(
                    {
                        "cload": cload(logDir, port, 100, duration),
                        "caret-bench": bench(
                            servers[name], "-c", "100", "-d", str(duration), "-P", "2"
                        ),
                    }
                )
        results["generator"] = checks

        oneAtATime = [1, 2] if quick else [1, 2, 5]
        sessionsN = {
            "sequential": oneAtATime,
            CARET_ONE_AT_A_TIME: oneAtATime,
            "thread pool (64)": [1, 100] if quick else [1, 100, 1000],
        }
        concurrentN = [1, 100] if quick else [1, 100, 1000, 10000]
        results["sessions"] = {}
        for name in SESSION_MODELS:
            results["sessions"][name] = {}
            for n in sessionsN.get(name, concurrentN):
                say(f"sessions, {name}, N = {n}")
                try:
                    results["sessions"][name][str(n)] = bench(
                        servers[name],
                        *("-m", "sessions", "-c", str(n), "-P", "2"),
                        timeout=90,
                    )
                except RuntimeError as failure:
                    # One model failing (a thread per connection, where the
                    # system allows fewer threads) must not lose the run.
                    say(str(failure))
                    results["failures"].append(f"{name}, {n} sessions: {failure}")

    # Memory is measured on fresh servers: one that has served a thousand
    # connections before keeps the heap it grew for them.
    results["hold"] = {}
    for connections in (1000,) if quick else (1000, 10000):
        results["hold"][str(connections)] = {}
        for name in MODELS:
            if connections > 1000 and name in CAPACITY:
                continue
            say(f"hold, {name}, {connections} connections")
            with running([name], logDir) as fresh:
                time.sleep(1)
                try:
                    results["hold"][str(connections)][name] = benchWatchingMemory(
                        fresh[name],
                        *("-m", "hold", "-c", str(connections), "-d", "2"),
                        *("-P", "2", "--greeting-timeout", "5"),
                    )
                except RuntimeError as failure:
                    say(str(failure))
                    results["failures"].append(f"{name}, hold {connections}: {failure}")
    return results


# Writing it down.


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)
    ]
    rule = "  ".join("=" * width for width in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
        )

    return "\n".join([rule, line(header), rule, *map(line, rows), rule])


def figure(runs: list[dict[str, Any]], key: str, digits: int = 0) -> float:
    return median([run[key] for run in runs if run.get(key) is not None])


def fmt(value: float, digits: int = 0) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def extrapolated(name: str, n: int, measured: dict[int, dict[str, Any]]) -> float:
    """
    Elapsed time for N sessions where it was not measured: a sequential
    server serves one session at a time, a pool of 64 serves batches of 64.
    """
    largest = max(measured)
    perBatch = measured[largest]["elapsed_s"] / math.ceil(
        largest / CAPACITY.get(name, largest)
    )
    return math.ceil(n / CAPACITY.get(name, n)) * perBatch


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    o = results["options"]
    out = []
    out.append(
        f"Measured {m['date']} on {m['cpu']}, {m['memory']}, {m['system']}; "
        f"Python {m['python']}, Twisted {m['twisted']}, uvloop {m['uvloop']}; "
        f"caretproto at commit {m.get('commit') or 'unknown'}; "
        f"{m['load']}.  Command: ``python benchmarks/compare.py "
        f"--duration {o['duration']} --repeat {o['repeat']}"
        f"{' --quick' if o['quick'] else ''} --write-docs``; figures for bulk "
        f"and rr are "
        f"medians of {o['repeat']} interleaved run(s).  "
        f"Client and servers share the machine's 2 cores (and, here, with "
        f"other work): read the ratios, not the absolute figures."
    )

    out.append("\nThroughput, with the C generator\n" + "-" * 32 + "\n")
    out.append(
        f"Generator: ``benchmarks/cload.c`` (C, epoll, one thread, every reply "
        f"byte checked), {o['duration']} s a run.  *rr C*: ``cload 127.0.0.1 "
        f"PORT C 16 {o['duration']}``, C connections each with one 16-byte "
        f"message in flight, rounds per second.  *bulk*: ``cload 127.0.0.1 "
        f"PORT 1 0 {o['duration']} bulk``, one endless message on one "
        f"connection, reply MB/s.  In brackets, the ratio to plain asyncio "
        f"(the servers' ratio: the same generator drives both).  The first row "
        f"is the ceiling: the generator against a C epoll server.\n"
    )
    out.append(table(THROUGHPUT_HEADER, throughputRows(results)))
    out.append(f"\n{ceilingVerdict(results)}\n")
    out.append(
        "The same runs, as the server's CPU time (user and system, its workers "
        "included) per round, in µs, and per MB in bulk, in ms: less is "
        "better, and other work on the machine moves it far less than the "
        "rates.  In brackets, the ratio to plain asyncio's.\n"
    )
    out.append(
        table(
            ["server", "µs / round, rr 1", "rr 100", "rr 1,000", "bulk, ms / MB"],
            throughputRows(results, costs=True),
        )
    )

    out.append("\nIs caret-bench the bottleneck?\n" + "-" * 30 + "\n")
    out.append(
        f"rr, 100 connections, 16-byte messages, {o['duration']} s each, "
        f"alternating: ``cload 127.0.0.1 PORT 100 16 {o['duration']}`` and "
        f"``caret-bench HOST PORT -c 100 -d {o['duration']} -P 2``, against "
        f"plain asyncio and against caretproto.  Medians of the rounds per "
        f"second, and caret-bench's share of cload's.\n"
    )
    rows = [
        [name, fmt(c), fmt(b), f"{b / c:.2f}"]
        for name, (c, b) in generatorRatios(results).items()
    ]
    out.append(table(["server", "cload", "caret-bench -P 2", "ratio"], rows))

    out.append("\nConnections held, memory per connection\n" + "-" * 39 + "\n")
    out.append(
        "``caret-bench HOST PORT -m hold -c C -d 2 -P 2 --greeting-timeout 5``: "
        "open C connections, hold them idle 2 s, then one round on each.  "
        "*Held* counts the connections greeted (a sequential server greets "
        "one, the pool 64; the rest wait 5 s and give up); *answered*, the "
        "rounds answered within 10 s; memory is the server's resident set at "
        "its peak less before, per connection held, on a freshly started "
        "server (one run each).\n"
    )
    rows = []
    for c, byModel in results["hold"].items():
        for name in MODELS:
            run = byModel.get(name)
            if run is None:
                continue
            held = run["held"]
            perConnection = (run["rss_peak"] - run["rss_base"]) / held if held else 0
            rows.append(
                [
                    f"{int(c):,}",
                    name,
                    f"{held:,}",
                    f"{run['rounds']:,}",
                    f"{perConnection / 1024:,.1f}",
                    f"{run['rss_peak'] / 2**20:,.1f}",
                ]
            )
    out.append(
        table(
            ["asked", "model", "held", "answered", "KiB / connection", "peak RSS MiB"],
            rows,
        )
    )

    out.append("\nReference sessions: elapsed time against N\n" + "-" * 42 + "\n")
    out.append(
        "``caret-bench HOST PORT -m sessions -c N -P 2``: the reference "
        "session of :doc:`protocol` (about 2.2 s of script) on N connections at "
        "once; seconds from the first connect to the last close, one run each. "
        "Figures in *italics* are extrapolated, not measured: a sequential "
        "server takes N x one session, a pool of 64 takes ⌈N / 64⌉ batches; "
        "measuring them would take hours.  The last column is caretproto "
        "itself made sequential by ``--max-connections 1``.  See "
        "``elapsed.png``.\n"
    )
    sessionModels = [m for m in SESSION_MODELS if m in results["sessions"]]
    allN = sorted({int(n) for byN in results["sessions"].values() for n in byN})
    rows = []
    for n in allN:
        row = [f"{n:,}"]
        for name in sessionModels:
            measured = {int(k): v for k, v in results["sessions"][name].items()}
            if n in measured:
                run = measured[n]
                cell = f"{run['elapsed_s']:,.2f}"
                if run["errors"]:
                    cell += f" ({run['errors']} errors)"
            elif name in CAPACITY and n > max(measured):
                cell = f"*{extrapolated(name, n, measured):,.0f}*"
            else:
                cell = "—"
            row.append(cell)
        rows.append(row)
    header = [
        "caretproto, 1 at a time" if m == CARET_ONE_AT_A_TIME else m
        for m in sessionModels
    ]
    out.append(table(["N", *header], rows))
    for failure in results.get("failures", []):
        out.append(f"\nNot measured: {failure.splitlines()[0]}\n")
    out.append("\n.. image:: elapsed.png\n   :alt: elapsed time against N per model\n")
    return "\n".join(out)


THROUGHPUT_HEADER = ["server", "rr 1", "rr 100", "rr 1,000", "bulk 1, MB/s"]


def throughputRows(results: dict[str, Any], costs: bool = False) -> list[list[str]]:
    """
    cload's figures per server, each with its ratio to plain asyncio's:
    rates, or with C{costs} the server's CPU time per round (µs) and per MB
    of bulk (ms).
    """

    def cell(
        runs: dict[str, list[dict[str, Any]]], name: str, key: str, scale: float = 1
    ) -> str:
        value = figure(runs[name], key)
        ratio = value / figure(runs["asyncio"], key)
        return f"{fmt(value * scale, 1 if costs else 0)} ({ratio:.2f})"

    rr, bulk = ("cpu_us", "cpu_us") if costs else ("rounds_per_s", "mb_per_s")
    return [
        [
            name,
            *(cell(results["rr"][str(c)], name, rr) for c in RR_CONNECTIONS),
            cell(results["bulk"], name, bulk, 1 / 1000 if costs else 1),
        ]
        for name in THROUGHPUT_MODELS
    ]


def ceilingVerdict(results: dict[str, Any]) -> str:
    """
    Whether the ceiling row was above every other row, column by column: if
    it was, the generator had room to spare and did not limit the servers.
    """
    loads = [(f"rr {c}", results["rr"][str(c)], "rounds_per_s") for c in RR_CONNECTIONS]
    loads.append(("bulk", results["bulk"], "mb_per_s"))
    above: list[str] = []
    notAbove: list[str] = []
    for label, runs, key in loads:
        ceiling = figure(runs[C_EPOLL], key)
        best = max(figure(runs[name], key) for name in runs if name != C_EPOLL)
        (above if ceiling > best else notAbove).append(label)
    if not notAbove:
        return "The ceiling was above every server in every column."
    if not above:
        return (
            "The ceiling was not above every server in any column: the "
            "generator, or the noise of a shared machine, may have limited "
            "the figures."
        )
    return (
        f"The ceiling was above every server for {', '.join(above)}; "
        f"not for {', '.join(notAbove)}: there the generator, or the noise of a "
        f"shared machine, may have limited the figures."
    )


def generatorRatios(results: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per server, the medians of cload's and caret-bench's rounds per second."""
    return {
        name: (
            median([run["cload"]["rounds_per_s"] for run in runs]),
            median([run["caret-bench"]["rounds_per_s"] for run in runs]),
        )
        for name, runs in results["generator"].items()
    }


def summary(results: dict[str, Any]) -> str:
    """
    The headline figures, for the closing note: throughput with cload and
    ratios to plain asyncio, and caret-bench's share of cload's rate.
    """
    text = table(THROUGHPUT_HEADER, throughputRows(results))
    for name, (c, b) in generatorRatios(results).items():
        text += f"\ncaret-bench -P 2 / cload against {name}, rr 100: {b / c:.2f}"
    return text


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    allN = sorted({int(n) for byN in results["sessions"].values() for n in byN})
    for name in [m for m in SESSION_MODELS if m in results["sessions"]]:
        measured = {int(k): v for k, v in results["sessions"][name].items()}
        ns = sorted(measured)
        (line,) = ax.plot(
            ns,
            [measured[n]["elapsed_s"] for n in ns],
            marker="x" if name == CARET_ONE_AT_A_TIME else "o",
            linestyle=":" if name == CARET_ONE_AT_A_TIME else "-",
            label=name,
        )
        beyond = [n for n in allN if n > max(ns)]
        if beyond:
            ax.plot(
                [max(ns), *beyond],
                [measured[max(ns)]["elapsed_s"]]
                + [extrapolated(name, n, measured) for n in beyond],
                linestyle="--",
                color=line.get_color(),
                label=f"{name} (extrapolated)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N, reference sessions at once")
    ax.set_ylabel("elapsed, seconds")
    ax.set_title("caret reference sessions: elapsed time against N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


BEGIN = ".. begin generated by benchmarks/compare.py"
END = ".. end generated by benchmarks/compare.py"


def write(results: dict[str, Any], docs: Path) -> None:
    (docs / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, docs / "elapsed.png")
    page = docs / "benchmarks.rst"
    generated = f"{BEGIN}\n\n{render(results)}\n\n{END}"
    if page.exists() and BEGIN in page.read_text():
        text = page.read_text()
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        page.write_text(head + generated + tail)
    else:
        page.write_text(f"Benchmarks\n==========\n\n{generated}\n")


def main() -> None:
    parse = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog="Prints the tables; rewrites docs/ only with --write-docs.",
    )
    parse.add_argument("--duration", type=float, default=2.0, help="rr/bulk seconds")
    parse.add_argument("--repeat", type=int, default=3, help="interleaved runs")
    parse.add_argument("--quick", action="store_true", help="a rough run, ~2 min")
    parse.add_argument(
        "--write-docs",
        action="store_true",
        help="rewrite docs/benchmarks.rst, benchmarks.json and elapsed.png",
    )
    parse.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="where --write-docs writes"
    )
    parse.add_argument(
        "--from-json", type=Path, help="re-render from a previous benchmarks.json"
    )
    parse.add_argument("--save-json", type=Path, help="also write the raw results here")
    options = parse.parse_args()
    if shutil.which("cc") is None:
        sys.exit("compare.py: needs a C compiler (cc) for benchmarks/cload.c")
    if options.from_json:
        results = json.loads(options.from_json.read_text())
    else:
        if options.quick:
            options.duration = min(options.duration, 0.5)
            options.repeat = 1
        logDir = Path(tempfile.mkdtemp(prefix="caret-compare-"))
        try:
            results = measure(options, logDir)
        except BaseException:
            say(f"failed: the servers' logs are kept in {logDir}")
            raise
        shutil.rmtree(logDir)
    # What was measured, not where this run kept its files.
    results["options"] = {
        k: v
        for k, v in results["options"].items()
        if k in ("duration", "repeat", "quick")
    }
    if options.save_json:
        options.save_json.write_text(json.dumps(results, indent=1) + "\n")
    print(render(results))
    print()
    print(summary(results))
    if options.write_docs:
        options.docs.mkdir(exist_ok=True)
        write(results, options.docs)
        say(f"wrote benchmarks.rst, benchmarks.json and elapsed.png in {options.docs}")


if __name__ == "__main__":
    main()
