"""
Errors at start: a C{twistd caret} that cannot listen, or cannot read its
certificate, says which option is wrong and why in one line, and exits with
status 1, as docs/exposing.rst promises; no traceback, for it is the
operator's mistake, not the program's.  Each case runs the real command
(L{tests.twistd}), in the foreground and as a daemon; and in this process,
an endpoint that fails to listen only later.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from caretproto.service import CaretService
from caretproto.tap import CannotStart, CaretCommand, startErrorsShownOn, whyNot
from tests.fakes import clockedFactory
from tests.tempfolder import tempFolder
from tests.twistd import LOOPBACK, TWIST, TWISTD, Twistd


@pytest.mark.process
class StartErrorTests(TestCase):
    timeout = 60

    def busyPort(self) -> int:
        """A loopback port this test listens on, so that caret cannot."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port: int = busy.getsockname()[1]
        return port

    async def fails(self, *argv: str, runner: list[str] | None = None) -> str:
        """Run caret with C{argv}; it must exit with status 1.  Its output."""
        process = Twistd.start(self, "caret", *argv, runner=runner)
        process.listening.addErrback(lambda _: None)
        status = await process.ended
        self.assertEqual(status, 1, process.output)
        self.assertNotIn("Traceback", process.output)
        return process.output

    async def test_a_port_in_use(self) -> None:
        port = self.busyPort()
        output = await self.fails("--port", f"tcp:{port}:interface=127.0.0.1")
        self.assertIn(
            f"caret cannot start: --port 'tcp:{port}:interface=127.0.0.1' cannot "
            f"listen: Address already in use (127.0.0.1:{port})",
            output,
        )

    async def test_a_port_in_use_under_twist_and_with_workers(self) -> None:
        port = self.busyPort()
        output = await self.fails(
            "--workers", "2", "--port", f"tcp:{port}:interface=127.0.0.1",
            runner=[TWIST],
        )  # fmt: skip
        self.assertIn("cannot listen: Address already in use", output)
        self.assertNotIn("worker 1", output)

    async def test_a_unix_socket_in_a_missing_folder(self) -> None:
        path = Path(tempFolder(self)) / "missing" / "caret.sock"
        output = await self.fails("--port", f"unix:{path}")
        self.assertIn(
            f"caret cannot start: --port 'unix:{path}' cannot listen: the folder "
            f"'{path.parent}' does not exist",
            output,
        )

    async def test_a_metrics_endpoint_that_cannot_listen(self) -> None:
        port = self.busyPort()
        output = await self.fails(
            "--port", LOOPBACK, "--metrics", f"tcp:{port}:interface=127.0.0.1"
        )
        self.assertIn(
            f"caret cannot start: --metrics 'tcp:{port}:interface=127.0.0.1' "
            f"cannot listen: Address already in use (127.0.0.1:{port})",
            output,
        )

    async def test_a_certificate_file_missing(self) -> None:
        missing = Path(tempFolder(self)) / "missing.pem"
        output = await self.fails("--port", f"ssl:0:privateKey={missing}")
        self.assertIn(
            f"--port 'ssl:0:privateKey={missing}' is not a usable endpoint "
            f"([Errno 2] No such file or directory: '{missing}')",
            output,
        )

    async def test_a_certificate_file_that_is_not_pem(self) -> None:
        garbage = Path(tempFolder(self)) / "garbage.pem"
        garbage.write_bytes(b"not a certificate\n")
        output = await self.fails("--port", f"ssl:0:privateKey={garbage}")
        self.assertIn(
            f"--port 'ssl:0:privateKey={garbage}' is not a usable endpoint (its "
            f"key or certificate file is not PEM",
            output,
        )

    async def test_a_certificate_file_that_cannot_be_read(self) -> None:
        # Root reads any file whatever its mode; a folder no one can read as
        # a file.
        folder = Path(tempFolder(self))
        output = await self.fails("--port", f"ssl:0:privateKey={folder}")
        self.assertIn(
            f"--port 'ssl:0:privateKey={folder}' is not a usable endpoint "
            f"([Errno 21] Is a directory: '{folder}')",
            output,
        )

    async def withPidFile(self, *argv: str, daemon: bool) -> tuple[str, str]:
        """
        Run C{twistd [-n] --pidfile=P --logfile=L caret ARGV}.  It must exit
        with status 1 within 15 s, leaving no pid file and no traceback.
        What it wrote on the terminal, and its log.
        """
        folder = Path(tempFolder(self))
        pidFile, logFile = folder / "twistd.pid", folder / "twistd.log"
        self.addCleanup(_killDaemon, pidFile)
        runner = [TWISTD, f"--pidfile={pidFile}", f"--logfile={logFile}"]
        if not daemon:
            runner.insert(1, "-n")
        started = reactor.seconds()
        process = Twistd.start(self, "caret", *argv, runner=runner)
        process.listening.addErrback(lambda _: None)
        status = await process.ended
        self.assertEqual(status, 1, process.output)
        if daemon:
            # The daemon removes its pid file just after it tells the waiting
            # process, which may have ended first.
            await _removed(pidFile, within=5)
        self.assertLess(reactor.seconds() - started, 15)
        self.assertFalse(pidFile.exists())
        log = logFile.read_text() if logFile.exists() else ""
        self.assertNotIn("Traceback", process.output + log)
        return process.output, log

    async def test_a_port_in_use_as_a_daemon(self) -> None:
        port = self.busyPort()
        given = f"tcp:{port}:interface=127.0.0.1"
        terminal, log = await self.withPidFile("--port", given, daemon=True)
        # twistd's own words around the first 100 bytes of the error.
        self.assertIn(
            f"CannotStart: Address already in use (127.0.0.1:{port}): --port", terminal
        )
        self.assertIn(
            f"caret cannot start: --port {given!r} cannot listen: Address already "
            f"in use (127.0.0.1:{port})",
            log,
        )

    async def test_a_port_in_use_in_the_foreground_logging_to_a_file(self) -> None:
        port = self.busyPort()
        given = f"tcp:{port}:interface=127.0.0.1"
        terminal, log = await self.withPidFile("--port", given, daemon=False)
        line = (
            f"caret cannot start: --port {given!r} cannot listen: Address already "
            f"in use (127.0.0.1:{port})"
        )
        self.assertEqual(terminal, line + "\n")
        self.assertIn(line, log)

    async def test_a_unix_socket_in_a_missing_folder_as_a_daemon(self) -> None:
        path = Path(tempFolder(self)) / "missing" / "caret.sock"
        terminal, _ = await self.withPidFile("--port", f"unix:{path}", daemon=True)
        self.assertIn(f"CannotStart: the folder '{path.parent}' does not", terminal)

    async def test_a_metrics_port_in_use_as_a_daemon(self) -> None:
        port = self.busyPort()
        terminal, _ = await self.withPidFile(
            "--port", LOOPBACK, "--metrics", f"tcp:{port}:interface=127.0.0.1",
            daemon=True,
        )  # fmt: skip
        self.assertIn(
            f"CannotStart: Address already in use (127.0.0.1:{port}): --metrics",
            terminal,
        )

    async def test_a_port_out_of_range_in_both_modes(self) -> None:
        for daemon in (True, False):
            terminal, _ = await self.withPidFile("--port", "99999", daemon=daemon)
            self.assertIn("99999", terminal)
            self.assertIn("65535", terminal)

    async def test_a_certificate_file_missing_as_a_daemon(self) -> None:
        # A usage error, found before twistd forks.
        missing = Path(tempFolder(self)) / "missing.pem"
        terminal, _ = await self.withPidFile(
            "--port", f"ssl:0:privateKey={missing}", daemon=True
        )
        self.assertIn(
            f"--port 'ssl:0:privateKey={missing}' is not a usable endpoint "
            f"([Errno 2] No such file or directory: '{missing}')",
            terminal,
        )

    async def test_an_endpoint_that_fails_to_listen_later(self) -> None:
        # An endpoint plugin of this test's own, whose listening fails half a
        # second after it begins, as one that must first reach another
        # service might.
        plugins = Path(tempFolder(self))
        (plugins / "twisted" / "plugins").mkdir(parents=True)
        (plugins / "twisted" / "plugins" / "late_endpoint.py").write_text(
            LATE_ENDPOINT_PLUGIN
        )
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(plugins), environment.get("PYTHONPATH", "")]
        )
        folder = Path(tempFolder(self))
        pidFile, logFile = folder / "twistd.pid", folder / "twistd.log"
        process = Twistd.start(
            self, "caret", "--port", LOOPBACK, "--port", "late:",
            runner=[TWISTD, "-n", f"--pidfile={pidFile}", f"--logfile={logFile}"],
            env=environment,
        )  # fmt: skip
        # Its log goes to the file, where the test reads it at the end.
        process.listening.addErrback(lambda _: None)
        self.assertEqual(await process.ended, 1, process.output)
        line = (
            "caret cannot start: --port 'late:' cannot listen: Permission denied (*:1)"
        )
        self.assertEqual(process.output, line + "\n")
        log = logFile.read_text()
        self.assertNotIn("caret listening on", log)
        self.assertIn(line, log)
        self.assertNotIn("Traceback", log)
        self.assertFalse(pidFile.exists())


LATE_ENDPOINT_PLUGIN = """\
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class LateEndpoint:
    def __init__(self, reactor):
        self.reactor = reactor

    def listen(self, factory):
        def fail():
            raise CannotListenError("", 1, OSError(13, "Permission denied"))

        return deferLater(self.reactor, 0.5, fail)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class LateParser:
    prefix = "late"

    def parseStreamServer(self, reactor, *args, **kwargs):
        return LateEndpoint(reactor)


late = LateParser()
"""


async def _removed(path: Path, within: float) -> None:
    """Wait until C{path} is gone, for up to C{within} seconds."""
    deadline = reactor.seconds() + within
    # A file removed by another process gives nothing to wait on but time.
    while path.exists() and reactor.seconds() < deadline:
        await deferLater(reactor, 0.05)


def _killDaemon(pidFile: Path) -> None:
    """Kill the daemon that C{pidFile} names, if a test left one running."""
    try:
        os.kill(int(pidFile.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


class CannotStartTests(SynchronousTestCase):
    def test_twistd_reports_it_and_it_ends_the_program_with_status_1(self) -> None:
        error = CannotStart("--port", "9090", "Address already in use (*:9090)")
        self.assertIsInstance(error, Exception)
        self.assertIsInstance(error, SystemExit)
        self.assertEqual(error.code, 1)

    def test_its_text_leads_with_the_reason(self) -> None:
        self.assertEqual(
            str(CannotStart("--port", "99999", "bind(): port must be 0-65535.")),
            "bind(): port must be 0-65535: --port '99999'",
        )

    def test_a_foreground_twistd_logging_elsewhere_says_it_on_standard_error(
        self,
    ) -> None:
        for twistd in [
            {"nodaemon": True, "logfile": "twistd.log"},
            {"nodaemon": True, "logfile": None, "syslog": True},
            {"nodaemon": True, "logfile": None, "logger": "my.observer"},
        ]:
            self.assertIs(startErrorsShownOn(_under(twistd)), sys.__stderr__)

    def test_nothing_else_says_it_on_standard_error(self) -> None:
        for runner in [
            {"nodaemon": False, "logfile": "twistd.log"},
            {"nodaemon": True, "logfile": None},
            {"nodaemon": True, "logfile": "-"},
            {"logFile": "-"},
        ]:
            self.assertIsNone(startErrorsShownOn(_under(runner)))
        self.assertIsNone(startErrorsShownOn({}))


def _under(runner: dict[str, Any]) -> Any:
    """Options of the caret command, run by a runner with C{runner} options."""
    options: Any = type("Options", (dict,), {})()
    options.parent = runner
    return options


@implementer(IStreamServerEndpoint)
class LaterEndpoint:
    """An endpoint whose listening ends when the test says so."""

    def __init__(self) -> None:
        self.result: Deferred[IListeningPort] = Deferred()

    def listen(self, factory: Factory) -> Deferred[IListeningPort]:  # type: ignore[type-arg]
        return self.result


@implementer(IStreamServerEndpoint)
class NowEndpoint:
    """An endpoint that listens, or fails to, at once."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.port = FakePort()

    def listen(self, factory: Factory) -> Deferred[IListeningPort]:  # type: ignore[type-arg]
        if self.error is not None:
            return fail(self.error)
        return succeed(self.port)  # type: ignore[arg-type]


class FakePort:
    listening = True

    def stopListening(self) -> None:
        self.listening = False


class ListenFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def critical(self) -> list[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.critical
        ]

    def command(
        self, *endpoints: Any
    ) -> tuple[CaretCommand, CaretService, list[int], io.StringIO]:
        factory, _ = clockedFactory()
        caret = CaretService(list(endpoints), factory)
        caret.setName("caret")
        ports = [f"tcp:{9090 + index}" for index in range(len(endpoints))]
        command = CaretCommand(ports)
        caret.setServiceParent(command)
        stopped: list[int] = []
        command.stopProgram = stopped.append
        command.terminal = io.StringIO()
        return command, caret, stopped, command.terminal

    def test_failing_at_once_raises_cannot_start(self) -> None:
        error = CannotListenError("", 9091, OSError(errno.EADDRINUSE, "in use"))
        command, _, stopped, terminal = self.command(NowEndpoint(), NowEndpoint(error))
        raised = self.assertRaises(CannotStart, command.privilegedStartService)
        self.assertEqual((raised.option, raised.given), ("--port", "tcp:9091"))
        line = "caret cannot start: --port 'tcp:9091' cannot listen: in use (*:9091)"
        self.assertEqual(self.critical(), [line])
        self.assertEqual(terminal.getvalue(), line + "\n")
        self.assertEqual(stopped, [])

    def test_failing_later_stops_the_program_with_status_1(self) -> None:
        later, now = LaterEndpoint(), NowEndpoint()
        command, caret, stopped, terminal = self.command(now, later)
        command.privilegedStartService()
        command.startService()
        self.assertEqual(stopped, [])
        later.result.errback(OSError(errno.EACCES, "Permission denied"))
        line = "caret cannot start: --port 'tcp:9091' cannot listen: Permission denied"
        self.assertEqual(self.critical(), [line])
        self.assertEqual(terminal.getvalue(), line + "\n")
        self.assertEqual(stopped, [1])
        # The endpoint that did listen stops: the service serves none.
        self.assertFalse(now.port.listening)
        self.assertEqual(caret.ports, [])

    def test_a_service_alone_logs_a_later_failure_naming_the_endpoint(self) -> None:
        later = LaterEndpoint()
        factory, _ = clockedFactory()
        caret = CaretService([NowEndpoint(), later], factory)
        caret.startService()
        later.result.errback(OSError(errno.EACCES, "Permission denied"))
        [line] = self.critical()
        self.assertIn("endpoint 1 (<tests.test_start_errors.LaterEndpoint", line)
        self.assertIn("cannot listen: [Errno 13] Permission denied", line)

    def test_a_failure_after_the_command_stopped_is_not_reported(self) -> None:
        later = LaterEndpoint()
        command, _, stopped, _ = self.command(later)
        command.startService()
        command.stopService()
        later.result.errback(OSError(errno.EACCES, "Permission denied"))
        self.assertEqual((self.critical(), stopped), ([], []))


class WhyNotTests(SynchronousTestCase):
    def test_a_missing_folder_is_named_whatever_the_unix_description(self) -> None:
        for description in [
            "unix:/nonexistent/a.sock",
            "unix:/nonexistent/a.sock:mode=600",
            "unix:address=/nonexistent/a.sock:lockfile=1",
            "haproxy:unix:/nonexistent/a.sock",
        ]:
            self.assertEqual(
                whyNot(description, OSError("anything")),
                "the folder '/nonexistent' does not exist",
                description,
            )

    def test_a_socket_error_in_the_systems_words(self) -> None:
        error = CannotListenError("", 9090, OSError(errno.EACCES, "Permission denied"))
        self.assertEqual(whyNot("tcp:9090", error), "Permission denied (*:9090)")

    def test_anything_else_as_it_says(self) -> None:
        self.assertEqual(whyNot("tcp:1", ValueError("odd")), "odd")
        self.assertEqual(whyNot("tcp:1", ValueError()), "ValueError")
