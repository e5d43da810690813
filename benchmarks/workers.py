"""
The --workers yardstick: the small-message rate of `twistd -n caret
--workers 2` beside that of one process, measured side by side in one run.

Both servers run at once on loopback (each idle while the other is measured),
and the measurements alternate between them, so that whatever else the
machine is doing weighs on both alike.  The load is 100 connections, each
sending a 16-byte message (`^`, 14 body bytes, `$`) and waiting for its
whole reply before sending the next; the rate is replies per second.  Every
reply byte is checked.

The load generator is `benchmarks/cload.c` (one thread, epoll, every reply
byte checked), compiled here with `cc`, so that it costs the machine little
beside the server it measures: a Python client would need about as much CPU
as the server, on the same two cores.

    python benchmarks/workers.py [--rounds 10] [--seconds 2] [--workers 2]

Not a test: it takes a minute and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from caretproto.listening import waitForListening

CONNECTED = re.compile(
    r"\[worker (\d+) pid \d+ caretproto\.server\.CaretProtocol#info\] \S+ connected"
)
TWISTD = str(Path(sys.executable).parent / "twistd")
CLOAD = Path(__file__).with_name("cload.c")


class Server:
    """A C{twistd -n caret} on an ephemeral loopback port, logging to a file."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.workers = workers
        self.log = folder / f"server-{workers}.log"
        self.process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "caret",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--workers",
                str(workers),
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        # The parent says it listens, then each worker does.
        expected = 1 if workers == 1 else 1 + workers
        [first, *_] = waitForListening(self.log, self.process, expected)
        assert first.port is not None
        self.port = first.port

    def logSize(self) -> int:
        return self.log.stat().st_size

    def connectionsPerWorker(self, since: int) -> list[int]:
        with self.log.open() as log:
            log.seek(since)
            found = CONNECTED.findall(log.read())
        return [found.count(str(index)) for index in range(1, self.workers + 1)]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def compileLoadgen(folder: Path) -> Path:
    binary = folder / "cload"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(CLOAD)], check=True)
    return binary


def measure(
    loadgen: Path, port: int, connections: int, seconds: float, size: int
) -> float:
    """Replies per second from C{connections} connections for C{seconds}."""
    done = subprocess.run(
        [
            str(loadgen),
            "127.0.0.1",
            str(port),
            str(connections),
            str(size),
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    result = json.loads(done.stdout or "{}")
    if done.returncode != 0 or result.get("errors", 1):
        raise RuntimeError(f"cload: {done.stdout} {done.stderr}")
    return float(result["rounds_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    def run(server: Server) -> float:
        measure(loadgen, server.port, args.connections, 0.5, args.size)
        return measure(loadgen, server.port, args.connections, args.seconds, args.size)

    print(
        f"{os.cpu_count()} CPUs, {args.connections} connections, "
        f"{args.size}-byte messages, {args.seconds:g} s per measurement",
        flush=True,
    )
    ones: list[float] = []
    manys: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="caret-workers-bench-") as name:
        folder = Path(name)
        loadgen = compileLoadgen(folder)
        single, pool = Server(folder, 1), Server(folder, args.workers)
        try:
            for round in range(1, args.rounds + 1):
                # Alternate which goes first, so that neither always follows
                # the other's load.
                since = pool.logSize()
                if round % 2:
                    one, many = run(single), run(pool)
                else:
                    many, one = run(pool), run(single)
                time.sleep(0.5)
                ones.append(one)
                manys.append(many)
                ratios.append(many / one)
                print(
                    f"round {round}: 1 process {one:9,.0f}/s, "
                    f"--workers {args.workers} {many:9,.0f}/s, "
                    f"ratio {many / one:.2f} (connections per worker: "
                    f"{pool.connectionsPerWorker(since)})",
                    flush=True,
                )
        finally:
            single.stop()
            pool.stop()
    print(
        f"medians: 1 process {statistics.median(ones):9,.0f} replies/s, "
        f"--workers {args.workers} {statistics.median(manys):9,.0f} replies/s; "
        f"ratio {statistics.median(ratios):.2f} (median of the rounds' ratios)"
    )


if __name__ == "__main__":
    main()
