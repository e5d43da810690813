"""
The documentation's commands, run as written: the quick start's server, the
first session, the sequential and concurrent demonstration, a bad option, the
client example; and the option list of docs/running.rst against C{--help}.

Each command is read from README.rst or docs/ (L{tests.docblocks}), with two
changes only: the quick start's C{.venv/bin/} becomes the environment running
the tests, and the documented port (9090, 9091, ...) becomes an ephemeral
port on loopback, since tests never listen on a fixed port.  What a command
prints is compared with what the page shows, once timestamps and elapsed
times are masked.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from caretproto import tap
from tests import inCI
from tests.docblocks import (
    REPO,
    Command,
    consoleCommands,
    inVirtualEnvironment,
    literalLines,
    serverArguments,
    withPorts,
)
from tests.twistd import Twistd
from tests.workedexample import WORKED_EXAMPLE_ANSWER, runWorkedExample

BINARIES = str(Path(sys.executable).parent)

QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install . && "
    ".venv/bin/twistd -n caret --port 9090"
)


def masked(lines: list[str]) -> list[str]:
    """C{lines} without what changes from run to run: clock times, elapsed times."""
    text = "\n".join(lines)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", "TIME", text)
    text = re.sub(r"Elapsed: \d+\.\d+", "Elapsed: SECONDS", text)
    return text.splitlines()


def needsNetcat(command: str) -> None:
    """
    Skip, outside CI, a command that needs OpenBSD's netcat when it is
    missing; .ci/run installs it.
    """
    if " nc " not in command or shutil.which("nc"):
        return
    if inCI():
        raise AssertionError("CI must install netcat-openbsd (.ci/run does)")
    raise SkipTest("nc (netcat-openbsd) is not installed; CI installs it")


@pytest.mark.process
class DocumentedCommandsTests(TestCase):
    """The commands of README.rst and the tutorial, run as the pages show them."""

    timeout = 60

    @inlineCallbacks
    def startServer(self, command: str) -> Any:
        """
        Start a documented server command; fire with C{(documented port,
        actual port)} once it listens.
        """
        words, documented = serverArguments(inVirtualEnvironment(command, BINARIES))
        twistd = Twistd.start(self, *words[1:], runner=words[:1])
        [address] = yield twistd.listening
        return documented, int(address.rsplit(":", 1)[1])

    @inlineCallbacks
    def runCommand(self, command: Command, ports: dict[int, int]) -> Any:
        """Run a documented command in a shell at the repository's root."""
        needsNetcat(command.line)
        line = withPorts(inVirtualEnvironment(command.line, BINARIES), ports)
        out, err, status = yield getProcessOutputAndValue(
            "/bin/bash", ["-c", line], env=dict(os.environ), path=str(REPO)
        )
        self.assertEqual(status, 0, (line, out, err))
        return (out + err).decode().splitlines()

    def test_the_quick_start_is_two_commands(self) -> None:
        lines = literalLines("README.rst", "Quick start")
        self.assertEqual(
            lines,
            [
                QUICK_START,
                "python3 -m venv .venv && .venv/bin/pip install '.[test]' && "
                ".venv/bin/python -m pytest",
            ],
        )

    @inlineCallbacks
    def test_first_session_prints_what_the_pages_show(self) -> Any:
        server = QUICK_START.rsplit("&& ", 1)[1]
        ports = dict([(yield self.startServer(server))])
        commands = [
            *consoleCommands("README.rst", "A first session"),
            *consoleCommands("docs/tutorial.rst", "A first session"),
        ]
        self.assertGreaterEqual(len(commands), 5)
        for command in commands:
            output = yield self.runCommand(command, ports)
            self.assertEqual(masked(output), masked(command.output), command.line)

    @inlineCallbacks
    def test_sequential_and_concurrent_servers_as_shown(self) -> Any:
        commands = consoleCommands("README.rst", "Sequential or concurrent")
        self.assertEqual(
            [command.line for command in commands],
            [
                command.line
                for command in consoleCommands(
                    "docs/tutorial.rst", "Sequential or concurrent"
                )
            ],
        )
        servers = [command for command in commands if "twistd" in command.line]
        clients = [command for command in commands if "caret-client" in command.line]
        self.assertEqual((len(servers), len(clients)), (2, 2))
        ports = dict((yield gatherResults([self.startServer(c.line) for c in servers])))
        outputs = yield gatherResults([self.runCommand(c, ports) for c in clients])
        for command, output in zip(clients, outputs, strict=True):
            self.assertEqual(masked(output), masked(command.output), command.line)
            [shown] = re.findall(r"Elapsed: (\d+\.\d+)", "\n".join(command.output))
            [took] = re.findall(r"Elapsed: (\d+\.\d+)", "\n".join(output))
            # The sessions' own pauses set a floor; the ceiling is generous,
            # for a busy machine.  What matters is 3 x 2.2 s against 2.2 s.
            self.assertTrue(
                float(shown) * 0.95 <= float(took) < float(shown) + 2.5,
                (command.line, took),
            )
        # caret-client -q checks the replies with caretproto's rules and
        # shows none; the servers as shown answer the specification's worked
        # example, written out.
        for port in ports.values():
            answer = yield ensureDeferred(
                runWorkedExample(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
            )
            self.assertEqual(answer, WORKED_EXAMPLE_ANSWER)

    @inlineCallbacks
    def test_client_example_prints_what_the_page_shows(self) -> Any:
        ports = dict(
            [(yield self.startServer(".venv/bin/twistd -n caret --port 9090"))]
        )
        [command] = consoleCommands("docs/client.rst", "The client API")
        self.assertEqual(command.line, ".venv/bin/python examples/client.py")
        example = Command(
            f"{command.line} tcp:host=127.0.0.1:port={ports[9090]}", command.output
        )
        self.assertEqual((yield self.runCommand(example, {})), command.output)

    @inlineCallbacks
    def test_a_bad_option_value_prints_what_the_pages_show(self) -> Any:
        for page, title in [
            ("docs/running.rst", "Options"),
            ("docs/limits.rst", "Limits and failure behaviour"),
        ]:
            [command] = consoleCommands(page, title)[:1]
            line = inVirtualEnvironment(command.line, BINARIES)
            out, err, status = yield getProcessOutputAndValue(
                "/bin/bash", ["-c", line], env=dict(os.environ), path=str(REPO)
            )
            self.assertNotEqual(status, 0)
            self.assertEqual((out + err).decode().splitlines(), command.output)


class OptionsPageTests(SynchronousTestCase):
    """The option list of docs/running.rst says what C{--help} says."""

    def test_every_option_reads_as_in_help(self) -> None:
        sys.path.insert(0, str(REPO / "docs" / "_ext"))
        self.addCleanup(sys.path.remove, str(REPO / "docs" / "_ext"))
        from optionlist import optionEntries

        helpText = str(tap.Options())
        # --help wraps descriptions at column 27, breaking after hyphens too.
        unwrapped = re.sub(r"-\n {27}", "-", helpText)
        unwrapped = " ".join(re.sub(r"\n {27}", " ", unwrapped).split())
        entries = optionEntries(tap.Options())
        self.assertEqual(
            sorted(flags.split(", ")[-1].strip("-=") for flags, _ in entries),
            sorted(re.findall(r"^  (?:-\w, |    )--([\w-]+)", helpText, re.M)),
        )
        for flags, description in entries:
            self.assertIn(f"{flags} {' '.join(description.split())}", unwrapped)
