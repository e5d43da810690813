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
import subprocess
import sys

import harness

CLIENT = [sys.executable, "-m", "caretproto.caretclient"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the record reference-sessions into docs/benchmarks.json",
    )
    args = parser.parse_args()
    extra = []
    if args.max_connections is not None:
        extra = ["--max-connections", str(args.max_connections)]
    with harness.logFolder("caret-sessions-") as folder:
        server = harness.Server("caret", harness.twistdCaret(*extra), folder)
        try:
            times = []
            for _ in range(args.runs):
                address = ["127.0.0.1", str(server.port)]
                result = subprocess.run(
                    [*CLIENT, "-q", "-n", str(args.connections), *address],
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
        finally:
            server.stop()
    kind = (
        f"--max-connections {args.max_connections}"
        if args.max_connections is not None
        else "default server"
    )
    spread = harness.Spread.of(times)
    assert spread is not None
    print(
        f"{args.connections} sessions, {kind}: median "
        f"{spread.median:.2f} s over {args.runs} runs "
        f"(min {spread.low:.2f}, max {spread.high:.2f})"
    )
    if args.write:
        key = f"n{args.connections}.caret.elapsed"
        label = f"{args.connections:,} sessions, {kind}"
        command = " ".join(["python benchmarks/reference_sessions.py", *sys.argv[1:]])
        table = {"title": "caret-client -q -n N", "header": ["", "seconds"]}
        table["rows"] = [[label, key]]
        harness.writeRecord(
            "reference-sessions",
            harness.record(command, {key: spread.asRecord("s")}, {"elapsed": table}),
        )


if __name__ == "__main__":
    main()
