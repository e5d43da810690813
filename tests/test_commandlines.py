"""
The three commands, C{twistd caret}, C{caret-client} and C{caret-bench}, run
as programs: one convention for all.  A wrong port or count is refused in
one line that names the command and the option, then a line saying where the
help is, with exit status 1 and no traceback; C{--version} names
caretproto's version.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

import pytest
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from caretproto.tap import ENDPOINT_EXAMPLES
from tests import childEnvironment
from tests.twistd import TWISTD
from twisted import __version__ as twistedVersion

COMMANDS = {
    "caret-client": [sys.executable, "-m", "caretproto.caretclient"],
    "caret-bench": [sys.executable, "-m", "caretproto.benchrun"],
    "twistd caret": [TWISTD, "-n", "--pidfile=", "caret"],
}


async def run(command: str, *argv: str) -> tuple[str, str, int]:
    """Run C{command} with C{argv}: its output, its errors and its exit status."""
    [executable, *args] = COMMANDS[command]
    out, err, status = await getProcessOutputAndValue(
        executable, [*args, *argv], env=childEnvironment()
    )
    return out.decode(), err.decode(), status


@pytest.mark.process
class UsageErrorTests(TestCase):
    timeout = 60

    async def assertUsageError(self, command: str, argv: list[str], says: str) -> None:
        out, err, status = await run(command, *argv)
        self.assertEqual(
            (err.splitlines(), status),
            ([f"{command}: {says}", f"See '{command} --help' for every option."], 1),
            out,
        )

    async def test_a_count_that_is_not_positive(self) -> None:
        says = "--connections takes a positive number, like --connections 100; got '0'"
        await self.assertUsageError("caret-client", ["-n", "0", "h", "9090"], says)
        await self.assertUsageError("caret-bench", ["-c", "0", "h", "9090"], says)
        await self.assertUsageError(
            "twistd caret",
            ["--max-connections", "0"],
            "--max-connections takes a positive number or off, like "
            "--max-connections 1 or --max-connections off; got '0'",
        )

    async def test_a_port_out_of_range(self) -> None:
        says = "PORT must be a TCP port number, like 9090; got '99999'"
        await self.assertUsageError("caret-client", ["h", "99999"], says)
        await self.assertUsageError("caret-bench", ["h", "99999"], says)
        await self.assertUsageError(
            "twistd caret",
            ["--port", "99999"],
            "--port '99999': the port must be a number from 0 to 65535, got "
            "'99999'; use a port number or a Twisted endpoint description, "
            f"like {ENDPOINT_EXAMPLES}",
        )

    async def test_an_endpoint_port_out_of_range(self) -> None:
        for command in ["caret-client", "caret-bench"]:
            await self.assertUsageError(
                command,
                ["--endpoint", "tcp:127.0.0.1:70000"],
                "--endpoint 'tcp:127.0.0.1:70000': the port must be a number "
                "from 1 to 65535, got '70000'; use a Twisted endpoint "
                "description, like tcp:host=127.0.0.1:port=9090, "
                "unix:path=/run/caret.sock, tls:example.com:9443",
            )

    async def test_an_unknown_option(self) -> None:
        for command in COMMANDS:
            await self.assertUsageError(
                command, ["--colour"], "option --colour not recognized"
            )


@pytest.mark.process
class VersionTests(TestCase):
    timeout = 60

    async def test_the_clients_print_caretprotos_version(self) -> None:
        for command in ["caret-client", "caret-bench"]:
            out, err, status = await run(command, "--version")
            self.assertEqual(
                (out, err, status),
                (
                    f"{command} (caretproto) {version('caretproto')}\n"
                    f"Twisted {twistedVersion}\n",
                    "",
                    0,
                ),
            )

    async def test_twistd_caret_prints_caretprotos_version(self) -> None:
        # twistd --version is twistd's own: after "caret", it is caret's.
        out, err, status = await run("twistd caret", "--version")
        self.assertEqual(
            (out, err, status),
            (
                f"twistd caret (caretproto) {version('caretproto')}\n"
                f"Twisted {twistedVersion}\n",
                "",
                0,
            ),
        )
