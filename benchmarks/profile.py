"""
Where caretproto's server spends its time under load: py-spy samples a
``twistd caret`` while caret-bench drives it, and the samples are summed by
function (self time: a function that makes a system call is charged for it).

    pip install -e '.[bench]'
    python benchmarks/profile.py            # rr (100 connections) and bulk
    python benchmarks/profile.py --seconds 20 --top 15

py-spy needs to be allowed to trace the server (root, or
``kernel.yama.ptrace_scope = 0``).  It prints reStructuredText tables, as
docs/benchmarks.rst shows them.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

BIN = Path(sys.executable).parent

LOADS = {
    "rr, 100 connections, 16-byte messages": ["-c", "100", "-P", "2"],
    "bulk, 1 connection": ["-m", "bulk"],
}

MEANING = {
    "untilConcludes": "``send()`` system call",
    "Connection.doRead": "``recv()`` system call",
    "EPollReactor.doPoll": "``epoll_wait()``",
    "EPollReactor._add": "``epoll_ctl()``: start writing / reading",
    "EPollReactor._remove": "``epoll_ctl()``: stop writing / reading",
    "feed": "the rules: ``find`` and ``translate``",
    "CaretProtocol.dataReceived": "our protocol, its own lines",
}


def frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    names = []
    for frame in stack.split(";"):
        found = re.match(r"(.*) \((.*?):\d+\)", frame)
        if found:
            where = found.group(2).split("site-packages/")[-1]
            names.append(f"{found.group(1)} ({Path(where).as_posix()})")
        else:
            names.append(frame)
    return names, int(count)


def profile(port: int, pid: int, load: list[str], seconds: float, folder: Path) -> Path:
    raw = Path(tempfile.mkstemp(suffix=".raw", dir=folder)[1])
    bench = subprocess.Popen(
        [
            str(BIN / "caret-bench"),
            "127.0.0.1",
            str(port),
            *load,
            "-d",
            str(seconds + 4),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(2)
    subprocess.run(
        [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        check=True,
        capture_output=True,
    )
    bench.wait()
    return raw


def table(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        names, count = frames(line)
        own[names[-1]] += count
        total += count
    rows = []
    for name, count in own.most_common(top):
        short = name.split(" (")[0]
        rows.append((f"{100 * count / total:.1f} %", name, MEANING.get(short, "")))
    widths = [
        max(len(row[i]) for row in [("self", "function", "what"), *rows])
        for i in range(3)
    ]
    rule = "  ".join("=" * w for w in widths)
    lines = [
        rule,
        "  ".join(
            h.ljust(w)
            for h, w in zip(("self", "function", "what"), widths, strict=True)
        ),
        rule,
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    ]
    lines.append(rule)
    ours = sum(count for name, count in own.items() if "caretproto/" in name)
    return (
        f"{total} samples; caretproto's own code (rules.py, server.py) "
        f"{100 * ours / total:.1f} % of them.\n\n" + "\n".join(lines)
    )


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("--seconds", type=float, default=10)
    parse.add_argument("--top", type=int, default=12)
    options = parse.parse_args()
    with tempfile.TemporaryDirectory(prefix="caret-profile-") as folder:
        run(options, Path(folder))


def run(options: argparse.Namespace, folder: Path) -> None:
    """Profile a server started in C{folder}, where its log and samples go."""
    try:
        server = harness.Server("caret", harness.twistdCaret(), folder)
    except RuntimeError as reason:
        sys.exit(f"twistd caret did not start: {reason}")
    try:
        for title, load in LOADS.items():
            raw = profile(
                server.port, server.process.pid, load, options.seconds, folder
            )
            print(f"{title}\n{'-' * len(title)}\n")
            command = f"caret-bench 127.0.0.1 PORT {' '.join(load)}"
            print(f"``{command}``; {table(raw, options.top)}\n")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
