"""
Side by side: the caret server's CPU time per round at two commits, in one run.

For each commit given, the server of that commit's tree (``git archive``
into a temporary folder) is started as ``twistd caret`` would start it, with
the default options, on 127.0.0.1; benchmarks/cload.c then drives each in
turn (A, B, ... then A, B, ... again), and the server's user and system time
is divided by the rounds it answered.  ``asyncio`` beside a commit adds the
plain asyncio reference server with that commit's rules.

    python benchmarks/cpu_ab.py main HEAD
    python benchmarks/cpu_ab.py main HEAD --asyncio -c 1000 --runs 5

It is for measuring one change to the server against the code before it:
CPU time per round moves far less than the rate when other work shares the
machine.  It is not the comparison of servers (benchmarks/compare.py) and
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

SERVE = """
import os
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor, tcp
from caretproto import tap
# The commit's own code, not the installed one.
assert tap.__file__.startswith(os.environ["PYTHONPATH"]), tap.__file__
options = tap.Options()
options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
service = tap.makeService(options)
service.privilegedStartService()
service.startService()
def tell():
    for reader in reactor.getReaders():
        if isinstance(reader, tcp.Port):
            print(reader.getHost().port, flush=True)
reactor.callWhenRunning(tell)
reactor.run()
"""
"""The server of the tree on C{sys.path}, built by caret's own C{makeService}."""


def checkout(commit: str, folder: Path) -> Path:
    """C{commit}'s tree, unpacked into a folder of its own under C{folder}."""
    tree = folder / commit.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def start(command: list[str], tree: Path) -> tuple[subprocess.Popen[str], int]:
    """Start a server with C{tree} first on its path; return it and its port."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, cwd=tree, env=environment
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parse.add_argument("commits", nargs="+", help="commits to compare, e.g. main HEAD")
    parse.add_argument("-c", "--connections", type=int, default=100)
    parse.add_argument("-d", "--duration", type=float, default=1.5)
    parse.add_argument("--runs", type=int, default=7, help="interleaved runs")
    parse.add_argument(
        "--asyncio", action="store_true", help="also each commit's asyncio server"
    )
    options = parse.parse_args()
    with tempfile.TemporaryDirectory(prefix="caret-cpu-ab-") as temporary:
        folder = Path(temporary)
        cload = folder / "cload"
        subprocess.run(
            ["cc", "-O2", "-o", str(cload), str(ROOT / "benchmarks" / "cload.c")],
            check=True,
        )
        servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
        try:
            for commit in options.commits:
                tree = checkout(commit, folder)
                servers[commit] = start([sys.executable, "-c", SERVE], tree)
                if options.asyncio:
                    script = tree / "benchmarks" / "servers" / "asyncio_server.py"
                    command = [sys.executable, str(script), "0"]
                    servers[f"asyncio at {commit}"] = start(command, tree)
            perRound: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(options.runs):
                for name, (process, port) in servers.items():
                    server = psutil.Process(process.pid)
                    before = sum(server.cpu_times()[:2])
                    arguments = [str(options.connections), "16", str(options.duration)]
                    done = subprocess.run(
                        [str(cload), "127.0.0.1", str(port), *arguments],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    used = sum(server.cpu_times()[:2]) - before
                    rounds = json.loads(done.stdout)["rounds"]
                    perRound[name].append(used / rounds * 1e6)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait()
    first = statistics.median(perRound[options.commits[0]])
    print(
        f"rr, {options.connections} connections, {options.duration} s a run, "
        f"medians of {options.runs} interleaved runs: server CPU µs a round"
    )
    for name, figures in perRound.items():
        median = statistics.median(figures)
        runs = " ".join(f"{figure:.2f}" for figure in figures)
        print(f"{name:>24}  {median:6.2f}  ({median / first:.3f})  runs: {runs}")


if __name__ == "__main__":
    main()
