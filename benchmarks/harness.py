"""
What every script in benchmarks/ shares: starting a server under test and
learning its port, the C load generator, interleaved rounds, medians with
their spread, the server's CPU time, and the records that docs/ renders.

- L{Server} starts any server of the comparison (C{twistd caret} with
  options, the reference servers of benchmarks/servers/, the C epoll
  server) with its output in a log file, and learns where it listens from
  that log through L{caretproto.listening}: every server here says
  C{caret listening on HOST:PORT}, as caret does.
- L{compiled} is the one place that compiles C (benchmarks/cload.c and
  benchmarks/servers/epoll_server.c), once per source: the binary is cached
  under the source's hash.
- L{interleaved} runs A, B, C, then B, C, A, then C, A, B, ..., so that
  other work on a shared machine weighs on every server alike and no
  server always runs first in a round; L{Spread} is a median with its min
  and max.
- L{writeRecord} writes one named record into docs/benchmarks.json, the
  one source of the figures that docs/_ext/caretfigures.py renders.

It is not a benchmark itself, asserts no speed, and is not part of the
package: scripts here import it as C{harness}, from their own folder.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from caretproto.listening import waitForListening

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "benchmarks" / "servers"
BIN = Path(sys.executable).parent
RECORDS = ROOT / "docs" / "benchmarks.json"
"""The one file of measured figures that the docs render."""

MEASURED_CODE = ("caretproto/", "benchmarks/servers/", "benchmarks/cload.c")
"""What a record's figures depend on, unless it names its own."""

TIMES = "\u00d7"
"""The unit of a ratio."""
T = TypeVar("T")


def say(text: str) -> None:
    """Progress, on standard error: standard output is for the results."""
    print(text, file=sys.stderr, flush=True)


# Compiling C, once.


def cacheFolder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "caretproto-benchmarks"


def compiled(source: str) -> Path:
    """
    benchmarks/C{source} (C{"cload.c"}, C{"servers/epoll_server.c"}),
    compiled with C{cc -O2}: a binary named for the source's hash, so that a
    changed source is compiled again and an unchanged one never.

    @raise RuntimeError: there is no C compiler.
    """
    path = ROOT / "benchmarks" / source
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    binary = cacheFolder() / f"{path.stem}-{digest}"
    if binary.exists():
        return binary
    compiler = shutil.which("cc")
    if compiler is None:
        raise RuntimeError(f"benchmarks/{source} needs a C compiler (cc)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    # Compiled beside, then renamed: two scripts at once never run a half
    # written binary.
    handle, name = tempfile.mkstemp(dir=binary.parent, prefix=binary.name)
    os.close(handle)
    partial = Path(name)
    subprocess.run([compiler, "-O2", "-o", str(partial), str(path)], check=True)
    partial.rename(binary)
    return binary


def cload(
    port: int,
    connections: int,
    duration: float,
    mode: str = "rr",
    size: int = 16,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """
    One benchmarks/cload.c run: C{connections} connections each with one
    C{size}-byte message in flight (C{mode="rr"}), or one endless message
    (C{"bulk"}); its JSON report, with the C{command} that made it.

    @raise RuntimeError: cload failed or saw a wrong reply.
    """
    arguments = [str(connections), str(size if mode == "rr" else 0)]
    arguments += [str(duration), mode]
    done = subprocess.run(
        [str(compiled("cload.c")), host, str(port), *arguments],
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stdout or "{}")
    if not report or report.get("errors"):
        raise RuntimeError(f"cload {' '.join(arguments)}: {done.stdout}{done.stderr}")
    report["command"] = "cload 127.0.0.1 PORT " + " ".join(arguments)
    return report


# Servers under test.


def twistdCaret(*options: str, reactor: str | None = None) -> list[str]:
    """
    The command of C{twistd -n caret} on an ephemeral loopback port, on
    twistd's default reactor or on C{reactor} (C{"caret-epoll"}).
    """
    twistd = [str(BIN / "twistd"), "-n", "--pidfile="]
    if reactor is not None:
        twistd.append(f"--reactor={reactor}")
    return [*twistd, "caret", "--port", "tcp:0:interface=127.0.0.1", *options]


def referenceServer(name: str) -> list[str]:
    """
    The command of a reference server: C{"asyncio"}, C{"uvloop"},
    C{"twisted"} (bare, Twisted's own write), C{"twisted-write-at-once"},
    C{"sequential"}, C{"threads"}, C{"threadpool"}, C{"epoll"} (C).
    """
    python = [sys.executable, "-u"]
    commands = {
        "asyncio": [*python, str(SERVERS / "asyncio_server.py")],
        "uvloop": [*python, str(SERVERS / "asyncio_server.py"), "0", "--uvloop"],
        "twisted": [*python, str(SERVERS / "twisted_bare.py")],
        "twisted-write-at-once": [
            *python,
            str(SERVERS / "twisted_bare.py"),
            "0",
            "--write-at-once",
        ],
        "sequential": [*python, str(SERVERS / "sequential.py")],
        "threads": [*python, str(SERVERS / "threads.py")],
        "threadpool": [*python, str(SERVERS / "threadpool.py")],
    }
    if name == "epoll":
        return [str(compiled("servers/epoll_server.c"))]
    return commands[name]


class Server:
    """
    One server under test, in its own process, its output in a log file.

    @ivar port: where it listens, on 127.0.0.1, as its log said.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        folder: Path,
        listening: int = 1,
        environment: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        handle, log = tempfile.mkstemp(
            prefix="".join(c if c.isalnum() else "-" for c in name),
            suffix=".log",
            dir=folder,
        )
        self.log = Path(log)
        with os.fdopen(handle, "wb") as output:
            self.process = subprocess.Popen(
                list(command),
                cwd=cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        try:
            # With --workers the parent says it listens, then each worker.
            found = waitForListening(self.log, self.process, listening)
        except RuntimeError as failure:
            self.stop()
            raise RuntimeError(f"{name}: {failure}") from None
        assert found[0].port is not None
        self.port: int = found[0].port

    def _processes(self) -> list[Any]:
        import psutil

        server = psutil.Process(self.process.pid)
        return [server, *server.children(recursive=True)]

    def cpuSeconds(self) -> float:
        """User and system CPU time of the server (and its workers) so far."""
        return sum(sum(p.cpu_times()[:2]) for p in self._processes())

    def rss(self) -> int:
        """Resident memory of the server (and its workers), in bytes."""
        return sum(int(p.memory_info().rss) for p in self._processes())

    def peakRss(self) -> int:
        """The server process's resident memory at its peak so far (Linux)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc: not Linux?")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running(
    commands: dict[str, Sequence[str]], folder: Path
) -> Iterator[dict[str, Server]]:
    """Every server of C{commands} (name: command) started, and stopped after."""
    servers: dict[str, Server] = {}
    try:
        for name, command in commands.items():
            workers = _workers(command)
            servers[name] = Server(
                name, command, folder, listening=1 + workers if workers else 1
            )
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def openConnections(
    port: int,
    count: int,
    configure: Callable[[socket.socket], object] | None = None,
) -> list[socket.socket]:
    """
    C{count} connections to C{port} on 127.0.0.1, made at once and all
    connected when it returns; C{configure}, if given, is called on each
    socket before it connects (socket options that must come first).
    """
    selector = selectors.DefaultSelector()
    clients = []
    for _ in range(count):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if configure is not None:
            configure(client)
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        selector.register(client, selectors.EVENT_WRITE)
        clients.append(client)
    connected = 0
    while connected < count:
        events = selector.select(timeout=30)
        if not events:
            raise SystemExit(f"only {connected} of {count} connected within 30s")
        for key, _ in events:
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            error = ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise SystemExit(f"a connection failed: {os.strerror(error)}")
            selector.unregister(ready)
            connected += 1
    return clients


def awaitGreetings(clients: Sequence[socket.socket]) -> None:
    """Read each client's greeting; anything else, or none in 30 s, ends the run."""
    from caretproto.rules import GREETING

    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client, selectors.EVENT_READ)
    greeted = 0
    while greeted < len(clients):
        events = selector.select(timeout=30)
        if not events:
            raise SystemExit(f"only {greeted} of {len(clients)} greeted within 30s")
        for key, _ in events:
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            data = ready.recv(16)
            if data != GREETING:
                raise SystemExit(f"got {data!r} instead of the greeting")
            selector.unregister(ready)
            greeted += 1


_ServerT = TypeVar("_ServerT", bound=Server)


@contextmanager
def greetingCaret(
    prefix: str,
    *options: str,
    kind: type[_ServerT] = Server,  # type: ignore[assignment]
) -> Iterator[_ServerT]:
    """
    C{twistd -n caret} with C{options}, started as a C{kind} with its log in
    a L{logFolder}, once it greets (listening comes before its reactor runs);
    stopped after.
    """
    from caretproto.rules import GREETING

    with logFolder(prefix) as folder:
        caret = kind("twistd -n caret", twistdCaret(*options), folder)
        try:
            with socket.create_connection(("127.0.0.1", caret.port)) as probe:
                if probe.recv(1) != GREETING:
                    raise SystemExit("twistd listens but does not greet")
            yield caret
        finally:
            caret.stop()


def _workers(command: Sequence[str]) -> int:
    for index, argument in enumerate(command):
        if argument == "--workers":
            return int(command[index + 1])
        if argument.startswith("--workers="):
            return int(argument.split("=", 1)[1])
    return 0


@contextmanager
def logFolder(prefix: str) -> Iterator[Path]:
    """A folder for servers' logs, removed unless the run fails."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    except BaseException:
        say(f"failed: the servers' logs are kept in {folder}")
        raise
    shutil.rmtree(folder, ignore_errors=True)


def costedCload(
    server: Server, connections: int, duration: float, mode: str = "rr"
) -> dict[str, Any]:
    """
    L{cload} against C{server}, and the server's CPU time (user and system)
    per round, in µs (C{cpu_us}), or per MB in bulk, in ms (C{cpu_ms_per_mb}):
    other work on a shared machine moves it far less than the rate.
    """
    before = server.cpuSeconds()
    report = cload(server.port, connections, duration, mode)
    used = server.cpuSeconds() - before
    if mode == "rr":
        report["cpu_us"] = used / report["rounds"] * 1e6 if report["rounds"] else None
    else:
        megabytes = report["bytes"] / 1e6
        report["cpu_ms_per_mb"] = used / megabytes * 1e3 if megabytes else None
    return report


class PeakMemory:
    """
    While in its C{with} block, the server's resident memory at its peak
    (sampled every 0.1 s), beside what it was before; and, given
    C{connections}, what it was while that many connections were held: once
    the server has as many more descriptors open, and a moment more for
    their greetings, before whatever the client does next (a round on each,
    the closes) makes its own transient peak.

    @ivar held: the resident memory while the connections were held, or
        C{None} if they never all were.
    """

    def __init__(self, server: Server, connections: int | None = None) -> None:
        self.server = server
        self.base = self.peak = 0
        self.held: int | None = None
        self.connections = connections
        self._watching = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = self.server.rss()
        self._baseDescriptors = self._descriptors()
        self._watching.set()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def _descriptors(self) -> int:
        return sum(process.num_fds() for process in self.server._processes())

    def _watch(self) -> None:
        while self._watching.is_set():
            self.peak = max(self.peak, self.server.rss())
            if (
                self.connections is not None
                and self.held is None
                and self._descriptors() >= self._baseDescriptors + self.connections
            ):
                time.sleep(0.5)
                self.held = self.server.rss()
            time.sleep(0.1)

    def __exit__(self, *exception: object) -> None:
        self._watching.clear()
        self._watcher.join()
        self.peak = max(self.peak, self.server.rss())


# Rounds and their spread.


def interleaved(
    names: Iterable[str], repeat: int, run: Callable[[str], T]
) -> dict[str, list[T]]:
    """
    C{run} for every name, C{repeat} rounds, one name after another, each
    round starting one name further on.  A fixed order charges whatever a
    place in the round costs (the first run after the pause between
    rounds, the run after the heaviest server) to the same server every
    time.
    """
    names = list(names)
    results: dict[str, list[T]] = {name: [] for name in names}
    for index in range(repeat):
        start = index % len(names)
        for name in names[start:] + names[:start]:
            results[name].append(run(name))
    return results


@dataclass(frozen=True)
class Spread:
    """The median of some runs, with their min and max."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread | None:
        """The spread of C{values} (C{None}s left out); C{None} if none."""
        kept = [float(v) for v in values if v is not None]
        if not kept:
            return None
        return cls(statistics.median(kept), min(kept), max(kept), len(kept))

    def wide(self, share: float = 0.20) -> bool:
        """Whether a run lies more than C{share} of the median from it."""
        return bool(self.median) and max(
            self.high - self.median, self.median - self.low
        ) > share * abs(self.median)

    def asRecord(self, unit: str = "") -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "runs": self.runs,
            "unit": unit,
        }


# Records.


def commit() -> str:
    """
    C{git rev-parse HEAD}, with C{+dirty} if the tree has changes other than
    to what the runs write (the records, the sessions' plot): a run that
    writes its record after another's measured the same code.
    """

    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *arguments],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    written = {str(RECORDS.relative_to(ROOT)), "docs/elapsed.png"}
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    dirty = [line for line in changed.splitlines() if line.split()[-1] not in written]
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """The machine and software a record was measured on."""
    import twisted

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    found = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }
    try:
        import uvloop

        found["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    return found


def record(
    command: str,
    figures: dict[str, dict[str, Any]],
    tables: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    measures: Sequence[str] = MEASURED_CODE,
) -> dict[str, Any]:
    """
    A record of figures measured now, on this machine, at this commit.

    @param figures: figure name (C{"rr100.caret.cpu"}) to
        L{Spread.asRecord}.
    @param tables: how the docs lay the figures out (see
        docs/_ext/caretfigures.py).
    @param notes: what the page must say beside them (a flagged run).
    @param measures: the paths whose changes make the figures stale.
    """
    return {
        "command": command,
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "machine": machine(),
        "load": list(os.getloadavg()),
        "measures": list(measures),
        "notes": list(notes),
        "figures": figures,
        "tables": tables or {},
    }


def writeRecord(name: str, entry: dict[str, Any], path: Path = RECORDS) -> None:
    """Put C{entry} in C{path} as the record C{name}, keeping the others."""
    records = json.loads(path.read_text()) if path.exists() else {}
    records.setdefault("records", {})[name] = entry
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    say(f"wrote the record {name!r} in {path}")


def show(entry: dict[str, Any]) -> str:
    """A record's tables as plain text, for the terminal."""
    figures = entry["figures"]
    out = [f"{entry['date']}, commit {entry['commit']}: {entry['command']}"]
    out += [f"FLAGGED: {note}" for note in entry["notes"]]
    for table in entry["tables"].values():
        lines = [table["header"]]
        for label, *keys in table["rows"]:
            lines.append([label, *(formatted(figures.get(key or "")) for key in keys)])
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        out.append(f"\n{table['title']}")
        for line in lines:
            out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(out)


def formatted(figure: dict[str, Any] | None) -> str:
    """A figure as the docs show it, or a dash for none."""
    return _figureRecords().formatFigure(figure) if figure else "\u2014"


def _figureRecords() -> Any:
    """docs/_ext/figurerecords.py, the reader of records, for its formats."""
    if "figurerecords" not in sys.modules:
        path = ROOT / "docs" / "_ext" / "figurerecords.py"
        spec = importlib.util.spec_from_file_location("figurerecords", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["figurerecords"] = module
        spec.loader.exec_module(module)
    return sys.modules["figurerecords"]
