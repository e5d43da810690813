"""
Pages checked against the program: the API page of C{caretproto.tap.Options}
(its docstring) lists every option with its default; the usage error of a
C{haproxy:} port without C{--trusted-proxy} (docs/exposing.rst) and the
Deferred client of docs/howto/client.rst print what their pages show.

Apart from tests/test_docs.py, which runs the README's and the tutorial's
commands, only to keep the two sets apart: the same helpers
(L{tests.docblocks}) read the pages.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pytest
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto import tap
from tests.docblocks import (
    REPO,
    consoleCommands,
    inVirtualEnvironment,
    serverArguments,
    withPorts,
)
from tests.twistd import Twistd

BINARIES = str(Path(sys.executable).parent)


class OptionsDocstringTests(SynchronousTestCase):
    """
    The API page of C{caretproto.tap.Options} is its docstring, which
    pydoctor reads from the source, so it cannot be generated: this checks
    it instead.
    """

    def test_the_options_docstring_lists_every_option_with_its_default(self) -> None:
        """
        Each option of C{--help} (but C{--help} and C{--version}) has a
        bullet, with the default C{--help} gives.
        """
        sys.path.insert(0, str(REPO / "docs" / "_ext"))
        self.addCleanup(sys.path.remove, str(REPO / "docs" / "_ext"))
        from optionlist import optionEntries

        docstring = " ".join((tap.Options.__doc__ or "").split())
        bullets = {
            match[1]: match[2]
            for match in re.finditer(
                r"- C\{--([\w-]+)[^}]*\}(.*?)(?= - C\{--|$)", docstring
            )
        }
        shown = {}
        for flags, description in optionEntries(tap.Options()):
            name = flags.split(", ")[-1].strip("-=")
            if name in ("help", "version"):
                continue
            default = re.search(r"\[default: ([^\]]+)\]", description)
            shown[name] = default[1] if default else "none"
        self.assertEqual(sorted(bullets), sorted(shown))
        for name, default in shown.items():
            self.assertIn(f"[default: {default}]", bullets[name], name)


class ClientOptionsDocstringTests(SynchronousTestCase):
    """
    The API pages of C{caret-bench}'s and C{caret-client}'s options list
    them as C{caretproto.tap.Options}'s page does.
    """

    def assertListsEveryOption(self, options: object) -> None:
        """
        Each option of C{options}' C{--help} (but C{--help} and
        C{--version}) has a bullet in its class's docstring; each that takes
        a value shows the default C{--help} gives, or none.
        """
        sys.path.insert(0, str(REPO / "docs" / "_ext"))
        self.addCleanup(sys.path.remove, str(REPO / "docs" / "_ext"))
        from optionlist import optionEntries

        docstring = " ".join((type(options).__doc__ or "").split())
        bullets = {
            match[1]: match[2]
            for match in re.finditer(
                r"- C\{--([\w-]+)[^}]*\}(.*?)(?= - C\{--|$)", docstring
            )
        }
        shown = {}
        for flags, description in optionEntries(options):  # type: ignore[arg-type]
            name = flags.split(", ")[-1].strip("-=")
            if name in ("help", "version"):
                continue
            default = re.search(r"\[default: ([^\]]+)\]", description)
            if flags.endswith("="):
                shown[name] = default[1] if default else "none"
            else:
                shown[name] = None
        self.assertEqual(sorted(bullets), sorted(shown))
        for name, default in shown.items():
            if default is not None:
                self.assertIn(f"[default: {default}]", bullets[name], name)

    def test_the_caret_bench_options_docstring_lists_every_option(self) -> None:
        from caretproto import benchrun

        self.assertListsEveryOption(benchrun.Options())

    def test_the_caret_client_options_docstring_lists_every_option(self) -> None:
        from caretproto import caretclient

        self.assertListsEveryOption(caretclient.Options())


def underTest() -> dict[str, str]:
    """
    This environment, with this tree first on C{PYTHONPATH}: the programs a
    test starts import the C{caretproto} under test, and find its plugin.
    """
    rest = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), rest])))


async def run(line: str) -> tuple[int, list[str]]:
    """Run C{line} in a shell at the repository's root: its status and output."""
    out, err, status = await getProcessOutputAndValue(
        "/bin/bash", ["-c", line], env=underTest(), path=str(REPO)
    )
    return status, (out + err).decode().splitlines()


@pytest.mark.process
class PageCommandsTests(TestCase):
    """Commands the pages show, run as they show them."""

    timeout = 60

    async def test_a_haproxy_port_without_trusted_proxies_prints_what_the_page_shows(
        self,
    ) -> None:
        [command] = consoleCommands("docs/exposing.rst", "Trusted proxies")
        status, output = await run(inVirtualEnvironment(command.line, BINARIES))
        self.assertEqual((status, output), (1, command.output))

    async def test_the_deferred_client_example_prints_what_its_page_shows(
        self,
    ) -> None:
        words, documented = serverArguments(
            inVirtualEnvironment(".venv/bin/twistd -n caret --port 9090", BINARIES)
        )
        twistd = Twistd.start(self, *words[1:], runner=words[:1])
        [address] = await twistd.listening
        ports = {documented: int(address.rsplit(":", 1)[1])}
        # The page's second command names a port where nothing listens:
        # here, one just closed.
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        ports[9099] = closed.getsockname()[1]
        closed.close()
        answered, refused = consoleCommands(
            "docs/howto/client.rst", "The client with Deferreds: errors and timeouts"
        )
        for command, status in [(answered, 0), (refused, 1)]:
            line = withPorts(inVirtualEnvironment(command.line, BINARIES), ports)
            self.assertEqual(await run(line), (status, command.output), line)
