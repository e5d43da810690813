"""
Errors at start: a C{twistd caret} that cannot listen, or cannot read its
certificate, says which option is wrong and why in one line, and exits with
status 1, as docs/exposing.rst promises; no traceback, for it is the
operator's mistake, not the program's.  Each case runs the real command
(L{tests.twistd}).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto.tap import whyNot
from tests.tempfolder import tempFolder
from tests.twistd import LOOPBACK, TWIST, Twistd


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
