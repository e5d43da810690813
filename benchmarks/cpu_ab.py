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

import harness

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
"""twistd, from the Python running this script, on whatever path it is given."""


def checkout(commit: str, folder: Path) -> Path:
    """C{commit}'s tree, unpacked into a folder of its own under C{folder}."""
    tree = folder / commit.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(harness.ROOT), "archive", commit],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def startCommit(commit: str, folder: Path) -> harness.Server:
    """The server of C{commit}'s tree, as C{twistd -n caret} starts it."""
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
    command = [*TWISTD, *harness.twistdCaret()[1:]]
    return harness.Server(commit, command, folder, environment=environment, cwd=tree)


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
    options = parse.parse_args()
    servers: dict[str, harness.Server] = {}
    with harness.logFolder("caret-cpu-ab-") as folder:
        try:
            for commit in options.commits:
                servers[commit] = startCommit(commit, folder)
            for name in options.reference:
                command = harness.referenceServer(name)
                servers[name] = harness.Server(name, command, folder)
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
    first = harness.Spread.of(perRound[options.commits[0]])
    assert first is not None
    print(
        f"rr, {options.connections} connections, {options.duration} s a run, "
        f"medians of {options.runs} interleaved runs: server CPU µs a round"
    )
    for name, figures in perRound.items():
        spread = harness.Spread.of(figures)
        assert spread is not None
        runs = " ".join(f"{figure:.2f}" for figure in figures)
        print(
            f"{name:>24}  {spread.median:6.2f}  ({spread.median / first.median:.3f})"
            f"  min {spread.low:.2f} max {spread.high:.2f}  runs: {runs}"
        )


if __name__ == "__main__":
    main()
