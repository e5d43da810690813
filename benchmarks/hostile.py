"""
Hostile clients against a real `twistd -n caret`, started here on a loopback
port: N clients that open a message, fill the server's buffers and never
read, and N clients that take their greeting and then say nothing.  It
reports what they hold of the server and of the kernel, and whether the idle
timeout gives it all back:

  - the server's descriptors (/proc/PID/fd) and resident memory (VmRSS);
  - the kernel's TCP socket memory (/proc/net/sockstat, "mem", in pages;
    on loopback both ends of each connection count);

before the clients connect, and, for each wave of clients, while all are
held and after the timeout.  It exits with status 1 if any descriptor the
clients took is not given back, if a client's connection is still open at
its end, or if the server's RSS, after the first wave's peak, ever rises
more than --rss-bound MiB (default 16) above that peak, during a later wave
or after a timeout.  That is the bound on memory: what a wave's sessions
held is freed when they end, and the next wave uses it again, so nothing
accumulates; but the C allocator keeps much of it for the process, so RSS
after a timeout lies anywhere between its figure before the first wave and
that peak (about 90 KiB per paused non-reader stays as free heap).

    python benchmarks/hostile.py -n 1000 --idle-timeout 10
    python benchmarks/hostile.py -n 1000 --idle-timeout 10 --write

A non-reader sets TCP_MAXSEG 1460 (an Internet-sized segment; loopback's is
64 KiB) and 4 KiB socket buffers before it connects, sends "^" and then
bytes until the server stops taking them, and never reads a byte, not even
the greeting.  A silent client reads the greeting and nothing else.  Both
kinds stay connected until the server ends them; the script never closes
them first.  Bounded: at most 5,000 of each, loopback only, and every wait
has a deadline.  Linux only (it reads /proc).

With --write, its record (command, commit, machine, figures) goes into
docs/benchmarks.json as "hostile", which docs/exposing.rst shows.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness

MiB = 1024 * 1024
MOST = 5000
"""The most clients of each kind the script will open."""

SEGMENT = 1460
SMALL_BUFFER = 4096
CHUNK = 64 * 1024
CAP = 16 * MiB
"""The most one non-reader sends, whether or not the server still takes it."""

TCP_STATES = {1: "established", 7: "closed (reset)", 8: "close-wait (FIN seen)"}


def parseArguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-n",
        "--clients",
        type=int,
        default=1000,
        help="how many clients of each kind (default 1000, at most 5000)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        help="the server's --idle-timeout, in seconds (default 10)",
    )
    parser.add_argument(
        "--waves",
        type=int,
        default=2,
        help="how many waves of clients, one after the other (default 2)",
    )
    parser.add_argument(
        "--rss-bound",
        type=float,
        default=16.0,
        help="MiB the server's RSS may rise above its peak with the first wave, "
        "in later waves or after the timeouts (default 16)",
    )
    parser.add_argument(
        "--fill-time",
        type=float,
        default=60.0,
        help="seconds the non-readers may take to fill the buffers (default 60)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the record 'hostile' into docs/benchmarks.json, where "
        "docs/exposing.rst shows it",
    )
    parser.add_argument(
        "--records",
        type=Path,
        default=harness.RECORDS,
        help="where --write writes",
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="pass OPTION to twistd caret as well",
    )
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.clients <= MOST:
        parser.error(f"--clients takes 1 to {MOST}")
    if not 1 <= arguments.waves <= 10:
        parser.error("--waves takes 1 to 10")
    if arguments.idle_timeout <= 0:
        parser.error("--idle-timeout takes a positive number of seconds")
    return arguments


class Caret(harness.Server):
    """A C{twistd -n caret} child, started by the harness, as this script sees it."""

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss(self) -> int:
        """The server process's own resident memory (VmRSS), in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise KeyError("VmRSS")

    def logText(self) -> str:
        """Its whole log so far."""
        return self.log.read_text(errors="replace")


def server(idleTimeout: float, *options: str) -> Any:
    """C{twistd -n caret} with C{--idle-timeout}, as a L{Caret}, greeting."""
    return harness.greetingCaret(
        "hostile", "--idle-timeout", repr(idleTimeout), *options, kind=Caret
    )


def kernelTCP() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: sockets in use, orphans, memory."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                return {
                    name: int(value)
                    for name, value in zip(fields[::2], fields[1::2], strict=True)
                }
    raise KeyError("TCP")


def snapshot(caret: Caret) -> dict[str, Any]:
    tcp = kernelTCP()
    page = os.sysconf("SC_PAGE_SIZE")
    return {
        "descriptors": caret.descriptors(),
        "rss_mib": round(caret.rss() / MiB, 1),
        "kernel_tcp_mem_pages": tcp["mem"],
        "kernel_tcp_mem_mib": round(tcp["mem"] * page / MiB, 1),
        "kernel_tcp_sockets": tcp["inuse"],
        "kernel_tcp_orphans": tcp["orphan"],
    }


def connectAll(port: int, count: int, small: bool) -> list[socket.socket]:
    """
    C{count} connections to C{port}, made at once; with C{small}, each with
    an Internet-sized segment and small buffers, set before connecting.
    """
    return harness.openConnections(port, count, _shrink if small else None)


def _shrink(client: socket.socket) -> None:
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SEGMENT)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)


def fill(clients: list[socket.socket], deadline: float) -> tuple[int, int]:
    """
    Send C{^} and then bytes on every non-reader until the server takes no
    more from any (three quiet rounds in a row), each reaches L{CAP}, or
    C{deadline}; return the bytes sent and how many were still taking.  A
    non-reader the server has already cut off (on a machine slow enough
    that filling the first took the whole idle timeout) is done: the wave
    then reports that some ended before all were held.
    """
    body = b"a" * CHUNK
    sent = Counter[socket.socket]()
    quiet = Counter[socket.socket]()
    for client in clients:
        client.send(b"^")
    active = set(clients)
    while active and time.monotonic() < deadline:
        for client in list(active):
            moved = 0
            cutOff = False
            while sent[client] < CAP:
                try:
                    moved += client.send(body)
                except BlockingIOError:
                    break
                except ConnectionError:
                    cutOff = True
                    break
            sent[client] += moved
            quiet[client] = 0 if moved else quiet[client] + 1
            if cutOff or quiet[client] >= 3 or sent[client] >= CAP:
                active.discard(client)
        time.sleep(0.2)
    return sum(sent.values()), len(active)


def tcpState(client: socket.socket) -> int:
    return client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def wave(caret: Caret, arguments: argparse.Namespace, before: int) -> dict[str, Any]:
    """
    One wave of hostile clients: connect them, hold them, wait until the
    server has given back every descriptor they took (C{before} is its count
    without them), and leave them closed.
    """
    count, timeout = arguments.clients, arguments.idle_timeout
    began = time.monotonic()
    logged = caret.logText().count
    nonReaders = connectAll(caret.port, count, small=True)
    sent, stillTaking = fill(nonReaders, began + arguments.fill_time)
    silent = connectAll(caret.port, count, small=False)
    harness.awaitGreetings(silent)
    heldAt = time.monotonic()
    during = snapshot(caret)
    # Every client is ended by the server: the non-readers at most a timeout
    # and two ticks of the idle wheel after they last sent or took anything,
    # the silent ones a timeout and a tick after their greeting.  Wait for
    # the descriptors to come back, and give up at twice as long again.
    deadline = heldAt + 2 * timeout + 30
    releasedAt = None
    while time.monotonic() < deadline:
        if caret.descriptors() <= before:
            releasedAt = time.monotonic()
            break
        time.sleep(0.1)
    time.sleep(1)
    after = snapshot(caret)
    states = Counter(
        TCP_STATES.get(tcpState(client), "other") for client in nonReaders + silent
    )
    log = caret.logText().count
    for client in nonReaders + silent:
        client.close()
    return {
        "non_readers_sent_mib": round(sent / MiB, 1),
        "non_readers_still_taking_when_held": stillTaking,
        "held_after_s": round(heldAt - began, 1),
        "all_held": during["descriptors"] == before + 2 * count,
        "released_after_held_s": (
            None if releasedAt is None else round(releasedAt - heldAt, 1)
        ),
        "during": during,
        "after": after,
        "client_states_at_end": dict(states),
        "server_log": {
            name: log(line) - logged(line)
            for name, line in [
                ("aborted_while_paused", "while its reading was paused: abort"),
                ("aborted_after_idle_close", "after being closed for idleness: abort"),
                ("closed_silent", "s: closing\n"),
                ("closed_once_owed_taken", "owed bytes are taken"),
            ]
        },
    }


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    with server(arguments.idle_timeout, *arguments.server_option) as caret:
        # Warm up the allocator and the log with a few hundred sessions.
        for client in connectAll(caret.port, 200, small=False):
            client.close()
        time.sleep(1)
        before = snapshot(caret)
        waves = [
            wave(caret, arguments, before["descriptors"])
            for _ in range(arguments.waves)
        ]
    released = all(
        one["after"]["descriptors"] <= before["descriptors"] for one in waves
    )
    closed = all(
        not {"established", "other"} & set(one["client_states_at_end"]) for one in waves
    )
    peak = waves[0]["during"]["rss_mib"]
    highest = max(
        max(one["during"]["rss_mib"], one["after"]["rss_mib"]) for one in waves
    )
    rssBack = highest <= peak + arguments.rss_bound
    return {
        "clients_of_each_kind": arguments.clients,
        "idle_timeout_s": arguments.idle_timeout,
        "before": before,
        "waves": waves,
        "rss_above_first_peak_mib": round(highest - peak, 1),
        "rss_bound_mib": arguments.rss_bound,
        "descriptors_released": released,
        "clients_closed": closed,
        "rss_back_within_bound": rssBack,
        "passed": released and closed and rssBack,
    }


def report(figures: dict[str, Any]) -> None:
    count = figures["clients_of_each_kind"]
    print(
        f"{count} non-readers and {count} silent clients a wave, "
        f"--idle-timeout {figures['idle_timeout_s']:g}"
    )
    rows = [("before", figures["before"])]
    for number, one in enumerate(figures["waves"], 1):
        print(
            f"  wave {number}: non-readers sent {one['non_readers_sent_mib']} MiB "
            f"({one['non_readers_still_taking_when_held']} still taking); all "
            f"held {one['held_after_s']}s after the first connected"
            + ("" if one["all_held"] else " (SOME ENDED BEFORE ALL WERE HELD)")
            + "; every descriptor back "
            + (
                f"{one['released_after_held_s']}s after"
                if one["released_after_held_s"] is not None
                else "NOT within the wait"
            )
        )
        print(f"    clients at the end: {one['client_states_at_end']}")
        print(f"    server log: {one['server_log']}")
        rows += [(f"during {number}", one["during"]), (f"after {number}", one["after"])]
    for moment, snap in rows:
        print(
            f"  {moment:9s} descriptors {snap['descriptors']:6d}  RSS "
            f"{snap['rss_mib']:7.1f} MiB  kernel TCP memory "
            f"{snap['kernel_tcp_mem_mib']:7.1f} MiB "
            f"({snap['kernel_tcp_mem_pages']} pages, "
            f"{snap['kernel_tcp_sockets']} sockets)"
        )
    print(
        f"  RSS at its highest after the first wave's peak, above it: "
        f"{figures['rss_above_first_peak_mib']:+.1f} MiB "
        f"(bound {figures['rss_bound_mib']:g})"
    )
    print(f"  {'PASS' if figures['passed'] else 'FAIL'}")


def asRecord(figures: dict[str, Any], command: str) -> dict[str, Any]:
    """
    C{figures} as the harness records them: each a single run's figure, and
    a table of what the clients held, and when it was given back.
    """
    one: dict[str, dict[str, Any]] = {}

    def put(name: str, value: float | None, unit: str) -> None:
        spread = harness.Spread.of([value])
        if spread is not None:
            one[name] = spread.asRecord(unit)

    moments = [("before", figures["before"])]
    for number, wave in enumerate(figures["waves"], 1):
        moments += [
            (f"w{number}.held", wave["during"]),
            (f"w{number}.after", wave["after"]),
        ]
        put(f"w{number}.heldFor", wave["held_after_s"], "s")
        put(f"w{number}.releasedAfter", wave["released_after_held_s"], "s")
        for kind, count in wave["server_log"].items():
            put(f"w{number}.log.{kind}", count, "")
    for moment, snap in moments:
        put(f"{moment}.descriptors", snap["descriptors"], "")
        put(f"{moment}.rss", snap["rss_mib"], "MiB")
        put(f"{moment}.tcpmem", snap["kernel_tcp_mem_mib"], "MiB")
    put("rssAboveFirstPeak", figures["rss_above_first_peak_mib"], "MiB")
    put("clients", figures["clients_of_each_kind"], "")
    put("idleTimeout", figures["idle_timeout_s"], "s")
    labels = {"before": "before the clients"}
    for number in range(1, len(figures["waves"]) + 1):
        labels[f"w{number}.held"] = f"wave {number}: all held"
        labels[f"w{number}.after"] = f"wave {number}: after the timeout"
    rows = [
        [labels[moment], f"{moment}.descriptors", f"{moment}.rss", f"{moment}.tcpmem"]
        for moment, _ in moments
    ]
    tables = {
        "held": {
            "title": (
                f"{figures['clients_of_each_kind']:,} paused non-readers and as "
                f"many silent clients a wave, --idle-timeout "
                f"{figures['idle_timeout_s']:g}"
            ),
            "header": [
                "moment",
                "server descriptors",
                "server RSS",
                "kernel TCP memory (whole machine)",
            ],
            "rows": rows,
        },
        "release": {
            "title": "How long it took",
            "header": ["wave", "all held after", "every descriptor back after"],
            "rows": [
                [f"wave {number}", f"w{number}.heldFor", f"w{number}.releasedAfter"]
                for number in range(1, len(figures["waves"]) + 1)
            ],
        },
    }
    notes = [] if figures["passed"] else ["FAILED: not everything was given back"]
    return harness.record(command, one, tables, notes)


def main(argv: list[str] | None = None) -> None:
    arguments = parseArguments(argv)
    from caretproto.openfiles import raiseOpenFilesLimit

    raiseOpenFilesLimit(program="benchmarks/hostile.py")
    figures = run(arguments)
    report(figures)
    command = " ".join(["python benchmarks/hostile.py", *(argv or sys.argv[1:])])
    entry = asRecord(figures, command)
    print(harness.show(entry))
    if arguments.write:
        harness.writeRecord("hostile", entry, arguments.records)
    sys.exit(0 if figures["passed"] else 1)


if __name__ == "__main__":
    main()
