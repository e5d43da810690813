"""
Yardstick: how long N concurrent reference sessions take against
`twistd caret`, with and without `--max-connections`.

    python benchmarks/reference_sessions.py                  # -n 1000, default server
    python benchmarks/reference_sessions.py -n 3 --max-connections 1 --runs 3

Starts one server per run set on an ephemeral loopback port, runs
`caret-client -q -n N` against it `--runs` times, one after another, and
prints each elapsed time and their median.  The issue's yardstick: 1,000
sessions against the default server well under 4 s (one session is 2.2 s).
A heavy measurement, not a test: the suite runs `-n 3` once.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile

from caretproto.listening import waitForListening

LOOPBACK = "tcp:0:interface=127.0.0.1"
CLIENT = [sys.executable, "-m", "caretproto.caretclient"]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def startServer(extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start twistd caret on an ephemeral port; its log goes to a file."""
    log = tempfile.NamedTemporaryFile(prefix="caret-server-", suffix=".log")
    server = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "caret", "--port", LOOPBACK, *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        [listening, *_] = waitForListening(log.name, server)
    except RuntimeError as error:
        server.kill()
        raise SystemExit(f"twistd caret did not start: {error}") from None
    assert listening.port is not None
    return server, listening.port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-connections", type=int, default=None)
    args = parser.parse_args()
    extra = []
    if args.max_connections is not None:
        extra = ["--max-connections", str(args.max_connections)]
    server, port = startServer(extra)
    try:
        times = []
        for _ in range(args.runs):
            result = subprocess.run(
                [*CLIENT, "-q", "-n", str(args.connections), "127.0.0.1", str(port)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise SystemExit(f"caret-client failed:\n{result.stderr}")
            reported = re.search(r"Elapsed: (\S+)", result.stdout)
            assert reported is not None, result.stdout
            elapsed = float(reported[1])
            times.append(elapsed)
            print(f"caret-client -n {args.connections}: Elapsed {elapsed:.2f}")
        server_kind = (
            f"--max-connections {args.max_connections}"
            if args.max_connections is not None
            else "default server"
        )
        print(
            f"{args.connections} sessions, {server_kind}: median "
            f"{statistics.median(times):.2f} s over {args.runs} runs "
            f"(min {min(times):.2f}, max {max(times):.2f})"
        )
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
