"""
The --workers yardstick: the small-message rate of C{twistd -n caret
--workers 2} beside that of one process, measured side by side in one run.

Both servers run at once on loopback (each idle while the other is measured),
and the measurements alternate between them, so that whatever else the
machine is doing weighs on both alike.  The load is 100 connections, each
sending a 16-byte message (C{^}, 14 body bytes, C{$}) and waiting for its
whole reply before sending the next; the rate is replies per second.  Every
reply byte is checked against the reply that L{caretproto.rules} gives for
the message.

The load generator is a small C program (one thread, epoll), compiled here
with C{cc}, so that it costs the machine little beside the server it
measures: a Python client would need about as much CPU as the server.  It is
a stand-in; C{caret-bench} (issue 5) should replace it once merged.

    python benchmarks/workers.py [--rounds 10] [--seconds 2] [--workers 2]

Not a test: it takes a minute and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from caretproto.rules import State, feed

LOADGEN_C = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* loadgen HOST PORT CONNECTIONS SECONDS MESSAGE_HEX EXPECTED_HEX
   Prints: replies errors seconds */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static size_t unhex(const char *hex, unsigned char *out) {
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &out[i]);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 7) return 2;
    int n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    unsigned char msg[4096], exp[4096], buf[65536];
    size_t msglen = unhex(argv[5], msg), explen = unhex(argv[6], exp);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    int ep = epoll_create1(0);
    int *fds = calloc(n, sizeof(int));
    long *got = calloc(n, sizeof(long));
    long replies = 0, errors = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0) {
            perror("connect");
            return 1;
        }
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        got[i] = -1; /* the greeting comes first */
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    struct epoll_event evs[256];
    double start = now();
    while (now() - start < seconds) {
        int k = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            int i = evs[e].data.u32;
            ssize_t r = read(fds[i], buf, sizeof buf);
            if (r <= 0) {
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                continue;
            }
            for (ssize_t j = 0; j < r; j++) {
                int send_next = 0;
                if (got[i] < 0) {
                    if (buf[j] != '*') errors++;
                    got[i] = 0;
                    send_next = 1;
                } else {
                    if (buf[j] != exp[got[i]]) errors++;
                    if (++got[i] == (long)explen) {
                        replies++;
                        got[i] = 0;
                        send_next = 1;
                    }
                }
                if (send_next && write(fds[i], msg, msglen) != (ssize_t)msglen)
                    errors++;
            }
        }
    }
    printf("%ld %ld %.6f\n", replies, errors, now() - start);
    return errors != 0;
}
"""

LISTENING = re.compile(r"caret listening on 127\.0\.0\.1:(\d+)")
CONNECTED = re.compile(
    r"\[worker (\d+) pid \d+ caretproto\.server\.CaretProtocol#info\] \S+ connected"
)
TWISTD = str(Path(sys.executable).parent / "twistd")


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
        deadline = time.monotonic() + 30
        expected = 1 if workers == 1 else 1 + workers
        while time.monotonic() < deadline:
            found = LISTENING.findall(self.log.read_text())
            if len(found) >= expected:
                self.port = int(found[0])
                return
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

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
    source = folder / "loadgen.c"
    source.write_text(LOADGEN_C)
    binary = folder / "loadgen"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def measure(
    loadgen: Path, port: int, connections: int, seconds: float, size: int
) -> float:
    body = bytes(range(ord("a"), ord("a") + size - 2))
    message = b"^" + body + b"$"
    step = feed(State.WAIT_FOR_MSG, message)
    assert step.state is State.WAIT_FOR_MSG and step.messages == 1
    done = subprocess.run(
        [
            str(loadgen),
            "127.0.0.1",
            str(port),
            str(connections),
            str(seconds),
            message.hex(),
            step.reply.hex(),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    replies, errors, elapsed = done.stdout.split()
    if done.returncode != 0 or int(errors):
        raise RuntimeError(f"load generator: {errors} errors, {done.stderr}")
    return int(replies) / float(elapsed)


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
