"""
The comparison of concurrency models, in one run.

Starts caretproto (twistd caret) and the reference servers of
benchmarks/servers/ (sequential, thread per connection, thread pool of 64,
plain asyncio, uvloop) side by side on 127.0.0.1, drives each with the same
caret-bench loads, and writes the figures into docs/benchmarks.rst (between
its "generated" markers, keeping the hand-written text around them), the raw
results into docs/benchmarks.json and the plot of reference sessions' elapsed
time against N into docs/elapsed.png.  It also compiles benchmarks/cload.c and
runs it against caretproto beside caret-bench --processes 2.

    pip install -e '.[bench]'
    python benchmarks/compare.py            # about 15 minutes on 2 cores
    python benchmarks/compare.py --quick    # a smoke run, figures meaningless

Measurements that repeat are interleaved across models (model A, B, ... then
A, B, ... again) so that noise from other work on the machine hits all of
them alike; tables quote medians.  Nothing here asserts a speed.
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

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "benchmarks" / "servers"
BIN = Path(sys.executable).parent

LISTENING = re.compile(r"caret listening on .*?(\d+)\)?\s*$", re.MULTILINE)
"""twistd caret's log line naming its port, whichever way it spells it."""

CARET_ONE_AT_A_TIME = "caretproto --max-connections 1"
"""caretproto made sequential by its own option, for the sessions."""

CAPACITY = {"sequential": 1, "thread pool (64)": 64, CARET_ONE_AT_A_TIME: 1}
"""Connections a model serves at once, where that is fewer than asked."""

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
    """Start the server of model C{name}, logging to a file of its own."""
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
    for _ in range(300):
        if logFile.exists():
            found = LISTENING.search(logFile.read_text())
            if found:
                server.port = int(found.group(1))
                server.ps = psutil.Process(server.process.pid)
                return server
        if server.process.poll() is not None:
            break
        time.sleep(0.1)
    server.process.terminate()
    raise RuntimeError(f"twistd caret did not start; see {logFile}")


def bench(server: Server, *args: str, timeout: float = 900) -> dict[str, Any]:
    """One caret-bench run against C{server}; its JSON report."""
    command = [
        str(BIN / "caret-bench"),
        "127.0.0.1",
        str(server.port),
        "--json",
        *args,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False
    )
    if not done.stdout.strip():
        raise RuntimeError(f"caret-bench failed: {command}\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout)
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


def cload(port: int, connections: int, duration: float) -> dict[str, Any]:
    binary = Path(tempfile.gettempdir()) / f"caret-cload-{os.getpid()}"
    if not binary.exists():
        subprocess.run(
            ["cc", "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "cload.c")],
            check=True,
        )
    done = subprocess.run(
        [str(binary), "127.0.0.1", str(port), str(connections), "16", str(duration)],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    figures: dict[str, Any] = json.loads(done.stdout)
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


def measure(options: argparse.Namespace) -> dict[str, Any]:
    quick = options.quick
    duration = str(options.duration)
    repeat = options.repeat
    results: dict[str, Any] = {"machine": machine(), "options": vars(options)}
    logDir = Path(tempfile.mkdtemp(prefix="caret-compare-"))
    say(f"server logs in {logDir}")
    with running(SESSION_MODELS, logDir) as servers:
        say("bulk, 1 connection")
        results["bulk"] = interleaved(
            MODELS,
            repeat,
            lambda name: bench(servers[name], "-m", "bulk", "-d", duration),
        )

        results["rr"] = {}
        for connections in (1, 100, 1000):
            say(f"rr, {connections} connections")
            names = [m for m in MODELS if CAPACITY.get(m, connections) >= connections]
            results["rr"][str(connections)] = interleaved(
                names,
                repeat,
                lambda name, c=connections: bench(
                    servers[name], "-c", str(c), "-d", duration, "-P", "2"
                ),
            )

        say("cload against caret-bench --processes 2, 100 connections")
        checks = []
        for _ in range(repeat):
            c = cload(servers["caretproto"].port, 100, options.duration)
            b = bench(servers["caretproto"], "-c", "100", "-d", duration, "-P", "2")
            checks.append({"cload": c, "caret-bench": b})
        results["generator"] = checks

        oneAtATime = [1, 2, 5] if quick else [1, 2, 5, 10]
        sessionsN = {
            "sequential": oneAtATime,
            CARET_ONE_AT_A_TIME: oneAtATime,
            "thread pool (64)": [1, 10, 100] if quick else [1, 10, 100, 1000],
        }
        concurrentN = [1, 10, 100] if quick else [1, 10, 100, 1000, 10000]
        results["sessions"] = {}
        for name in SESSION_MODELS:
            results["sessions"][name] = {}
            for n in sessionsN.get(name, concurrentN):
                say(f"sessions, {name}, N = {n}")
                results["sessions"][name][str(n)] = bench(
                    servers[name], "-m", "sessions", "-c", str(n), "-P", "2"
                )

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
                results["hold"][str(connections)][name] = benchWatchingMemory(
                    fresh[name],
                    *("-m", "hold", "-c", str(connections), "-d", "2"),
                    *("-P", "2", "--greeting-timeout", "5"),
                )
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
        f"{' --quick' if o['quick'] else ''}``; figures for bulk and rr are "
        f"medians of {o['repeat']} interleaved run(s).  "
        f"Client and servers share the machine's 2 cores (and, here, with "
        f"other work): read the ratios, not the absolute figures."
    )

    asyncioBulk = figure(results["bulk"]["asyncio"], "mb_per_s")
    out.append("\nBulk echo, one connection\n" + "-" * 25 + "\n")
    out.append(
        f"``caret-bench HOST PORT -m bulk -d {o['duration']}``: one endless "
        f"message, every reply byte checked.\n"
    )
    rows = []
    for name in MODELS:
        mbs = figure(results["bulk"][name], "mb_per_s")
        rows.append([name, fmt(mbs, 1), f"{mbs / asyncioBulk:.2f}"])
    out.append(table(["model", "MB/s", "x asyncio"], rows))

    out.append("\nRequest/response, 16-byte messages\n" + "-" * 34 + "\n")
    out.append(
        f"``caret-bench HOST PORT -c C -d {o['duration']} -P 2``: one round in "
        f"flight per connection.  Rounds per second, and p50 / p99 round time "
        f"in ms.  A sequential server serves one connection and the pool 64: "
        f"more would wait for ever, so those cells are empty.\n"
    )
    rows = []
    for name in MODELS:
        row = [name]
        for c in (1, 100, 1000):
            runs = results["rr"][str(c)].get(name)
            if not runs:
                row.append("—")
                continue
            row.append(
                f"{fmt(figure(runs, 'rounds_per_s'))} "
                f"({fmt(figure(runs, 'p50_ms'), 2)} / {fmt(figure(runs, 'p99_ms'), 2)})"
            )
        rows.append(row)
    out.append(table(["model", "1 connection", "100 connections", "1,000"], rows))
    rr100 = results["rr"]["100"]
    rrRatio = figure(rr100["caretproto"], "rounds_per_s") / figure(
        rr100["asyncio"], "rounds_per_s"
    )
    bulkRatio = figure(results["bulk"]["caretproto"], "mb_per_s") / asyncioBulk
    out.append(
        f"\ncaretproto at 100 connections: {rrRatio:.2f} x plain asyncio "
        f"(target >= 0.4); bulk: {bulkRatio:.2f} x plain asyncio "
        f"(target >= 1.0).\n"
    )

    out.append("\nIs caret-bench the bottleneck?\n" + "-" * 30 + "\n")
    ratios = [
        check["caret-bench"]["rounds_per_s"] / check["cload"]["rounds_per_s"]
        for check in results["generator"]
    ]
    rows = [
        [
            str(i + 1),
            fmt(check["cload"]["rounds_per_s"]),
            fmt(check["caret-bench"]["rounds_per_s"]),
            f"{ratio:.2f}",
        ]
        for i, (check, ratio) in enumerate(
            zip(results["generator"], ratios, strict=True)
        )
    ]
    out.append(
        f"Against caretproto, rr, 100 connections, 16-byte messages, "
        f"{o['duration']} s each, alternating: ``benchmarks/cload.c`` (C, "
        f"epoll, one thread; ``cload 127.0.0.1 PORT 100 16 {o['duration']}``) "
        f"and ``caret-bench HOST PORT -c 100 -d {o['duration']} -P 2``.  "
        f"Median ratio {statistics.median(ratios):.2f} (the requirement: "
        f"≥ 0.5).\n"
    )
    out.append(table(["run", "cload rounds/s", "caret-bench rounds/s", "ratio"], rows))

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
        "session of docs/protocol.rst (about 2.2 s of script) on N connections at "
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
    out.append("\n.. image:: elapsed.png\n   :alt: elapsed time against N per model\n")
    return "\n".join(out)


def summary(results: dict[str, Any]) -> str:
    """One table of the headline figures per model, for the README."""
    rows = []
    held = results["hold"].get("10000", {})
    for name in MODELS:
        rr = results["rr"]["100"].get(name)
        sessions = {int(k): v for k, v in results["sessions"][name].items()}
        if 10000 in sessions:
            tenThousand = f"{sessions[10000]['elapsed_s']:,.1f}"
        elif name in CAPACITY:
            tenThousand = f"*{extrapolated(name, 10000, sessions):,.0f}*"
        else:
            tenThousand = "—"
        rows.append(
            [
                name,
                fmt(figure(results["bulk"][name], "mb_per_s")),
                fmt(figure(rr, "rounds_per_s")) if rr else "—",
                f"{held[name]['held']:,}"
                if name in held
                else f"{results['hold']['1000'][name]['held']:,} of 1,000",
                tenThousand,
            ]
        )
    return table(
        [
            "model",
            "bulk MB/s",
            "rr rounds/s, 100 conn.",
            "held of 10,000",
            "10,000 sessions, s",
        ],
        rows,
    )


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
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("--duration", type=float, default=3.0, help="rr/bulk seconds")
    parse.add_argument("--repeat", type=int, default=3, help="interleaved runs")
    parse.add_argument("--quick", action="store_true", help="a smoke run")
    parse.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="where to write"
    )
    parse.add_argument(
        "--from-json", type=Path, help="re-render from a previous benchmarks.json"
    )
    options = parse.parse_args()
    if shutil.which("cc") is None:
        sys.exit("compare.py: needs a C compiler (cc) for benchmarks/cload.c")
    if options.from_json:
        results = json.loads(options.from_json.read_text())
    else:
        if options.quick:
            options.duration = min(options.duration, 0.5)
            options.repeat = 1
        results = measure(options)
    options.docs.mkdir(exist_ok=True)
    results["options"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in results["options"].items()
    }
    write(results, options.docs)
    print(summary(results))
    say(f"wrote {options.docs / 'benchmarks.rst'} and {options.docs / 'elapsed.png'}")


if __name__ == "__main__":
    main()
