"""
Side by side: the caret server's CPU time per round at two commits, in one run.

For each commit given, the server of that commit's tree (``git archive``
into a temporary folder) is started as ``twistd caret`` would start it, with
the default options, on 127.0.0.1; benchmarks/cload.c then drives each in
turn (A, B, ... then A, B, ... again), and the server's user and system time
is divided by the rounds it answered.  ``--reference NAME`` adds a
reference server of benchmarks/servers/ as a yardstick (``asyncio``, the plain
asyncio server, which shares no code with caretproto;
``twisted-write-at-once``, the barest Twisted server; any name
``harness.referenceServer`` knows), in the same interleaving.

    python benchmarks/cpu_ab.py main HEAD
    python benchmarks/cpu_ab.py main HEAD --reference asyncio -c 1000 --runs 5
    python benchmarks/cpu_ab.py HEAD --reference twisted-write-at-once
    python benchmarks/cpu_ab.py main HEAD --sessions 10000 --runs 3
    python benchmarks/cpu_ab.py HEAD --reactor caret-epoll -c 1000

With ``--reactor NAME``, each commit's server also runs on that reactor
(``twistd --reactor=NAME``), as a row of its own, ``COMMIT@NAME``.

With ``--sessions N``, each run is N reference sessions at once
(``caret-bench -m sessions -c N -P 2``, as benchmarks/compare.py times
them) instead of cload's rounds: it prints the seconds from the first connect
to the last close, and the server's CPU time per session.

It is for measuring one change to the server against the code before it:
CPU time per round moves far less than the rate when other work shares the
machine.  It is not the comparison of servers (benchmarks/compare.py) and
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
from compare import bench

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
"""twistd, from the Python running this script, on whatever path it is given."""


def checkout(commit: str, folder: Path) -> Path:
    """
    C{commit}'s tree, unpacked into a folder of its own under C{folder}
    (once: a second server of the same commit shares it).
    """
    tree = folder / commit.replace("/", "_")
    if tree.exists():
        return tree
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(harness.ROOT), "archive", commit],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def startCommit(
    commit: str, folder: Path, reactor: str | None = None
) -> harness.Server:
    """
    The server of C{commit}'s tree, as C{twistd -n caret} starts it, on
    twistd's default reactor or on C{reactor}.
    """
    tree = checkout(commit, folder)
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    # The commit's own code, not the installed one.
    found = subprocess.run(
        [sys.executable, "-c", "import caretproto; print(caretproto.__file__)"],
        env=environment,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not found.startswith(str(tree)):
        raise SystemExit(f"{commit}: caretproto comes from {found}, not its tree")
    command = [*TWISTD, *harness.twistdCaret(reactor=reactor)[1:]]
    name = commit if reactor is None else f"{commit}@{reactor}"
    return harness.Server(name, command, folder, environment=environment, cwd=tree)


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parse.add_argument("commits", nargs="+", help="commits to compare, e.g. main HEAD")
    parse.add_argument("-c", "--connections", type=int, default=100)
    parse.add_argument("-d", "--duration", type=float, default=1.5)
    parse.add_argument("--runs", type=int, default=7, help="interleaved runs")
    parse.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME",
        help="also this reference server (asyncio, twisted-write-at-once, ...)",
    )
    parse.add_argument(
        "--reactor",
        action="append",
        default=[],
        metavar="NAME",
        help="also each commit's server on this reactor (caret-epoll, ...)",
    )
    parse.add_argument(
        "--sessions",
        type=int,
        metavar="N",
        help="time N reference sessions at once instead of cload's rounds",
    )
    options = parse.parse_args()
    if options.sessions:
        sessions(options)
        return
    servers: dict[str, harness.Server] = {}
    with harness.logFolder("caret-cpu-ab-") as folder:
        try:
            servers.update(startAll(options, folder))
            perRound = harness.interleaved(
                servers,
                options.runs,
                lambda name: harness.costedCload(
                    servers[name], options.connections, options.duration
                )["cpu_us"],
            )
        finally:
            for server in servers.values():
                server.stop()
    print(
        f"rr, {options.connections} connections, {options.duration} s a run, "
        f"medians of {options.runs} interleaved runs: server CPU µs a round"
    )
    table(perRound, options.commits[0])


def startAll(options: argparse.Namespace, folder: Path) -> dict[str, harness.Server]:
    """Every commit's server, then every reference server, by name."""
    servers = {commit: startCommit(commit, folder) for commit in options.commits}
    for commit in options.commits:
        for reactor in options.reactor:
            server = startCommit(commit, folder, reactor)
            servers[server.name] = server
    for name in options.reference:
        command = harness.referenceServer(name)
        servers[name] = harness.Server(name, command, folder)
    return servers


def sessions(options: argparse.Namespace) -> None:
    """C{--sessions N}: N reference sessions at once, against each server."""
    cpu: dict[str, list[float]] = {}
    servers: dict[str, harness.Server] = {}

    def run(name: str) -> float:
        server = servers[name]
        before = server.cpuSeconds()
        report: dict[str, Any] = bench(
            server, "-m", "sessions", "-c", str(options.sessions), "-P", "2"
        )
        used = server.cpuSeconds() - before
        cpu.setdefault(name, []).append(used / options.sessions * 1e6)
        return float(report["elapsed_s"])

    with harness.logFolder("caret-cpu-ab-") as folder:
        try:
            servers.update(startAll(options, folder))
            elapsed = harness.interleaved(servers, options.runs, run)
        finally:
            for server in servers.values():
                server.stop()
    print(
        f"{options.sessions:,} reference sessions at once, medians of "
        f"{options.runs} interleaved runs: seconds from the first connect to "
        "the last close"
    )
    table(elapsed, options.commits[0])
    print("server CPU µs a session")
    table(cpu, options.commits[0])


def table(figures: dict[str, list[float]], first: str) -> None:
    """Each name's median, its ratio to C{first}'s, its spread and its runs."""
    base = harness.Spread.of(figures[first])
    assert base is not None
    for name, values in figures.items():
        spread = harness.Spread.of(values)
        assert spread is not None
        runs = " ".join(f"{value:.2f}" for value in values)
        print(
            f"{name:>24}  {spread.median:6.2f}  ({spread.median / base.median:.3f})"
            f"  min {spread.low:.2f} max {spread.high:.2f}  runs: {runs}"
        )


if __name__ == "__main__":
    main()
