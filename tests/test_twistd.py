"""
The installed program, for real: C{twistd -n caret} and C{twistd -ny} with the
example C{.tac}, started as subprocesses and spoken to over loopback.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from caretproto.reference import REFERENCE_SCRIPT
from caretproto.referenceclient import runSessions
from tests.rawclient import connect
from tests.tempfolder import shortTempPath
from tests.twistd import (
    LOOPBACK,
    TWIST,
    TWISTD,
    WORKER_LISTENING,
    WORKER_SERVED,
    Twistd,
)
from tests.workedexample import WORKED_EXAMPLE, WORKED_EXAMPLE_ANSWER

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.process
class TwistdCaretTests(TestCase):
    timeout = 30

    async def test_worked_example_against_twistd_caret_then_sigterm(self) -> None:
        twistd = Twistd.start(self, "caret", "--port", LOOPBACK)
        [address] = await twistd.listening
        client = await connect(f"tcp:{address}")
        await client.receivedAtLeast(1)
        total = 1
        for sent, answered in WORKED_EXAMPLE:
            client.transport.write(sent)
            total += len(answered)
            await client.receivedAtLeast(total)
        client.transport.loseWriteConnection()
        received = await client.done
        self.assertEqual(received, WORKED_EXAMPLE_ANSWER)

        twistd.signal(signal.SIGTERM)
        # twistd shuts down cleanly, then ends by the signal that stopped it.
        self.assertEqual(await twistd.ended, -signal.SIGTERM)
        log = twistd.output
        self.assertIn("Server Shut Down.", log)
        # One line per session, when it ends.
        self.assertNotRegex(log, r"127\.0\.0\.1:\d+ connected")
        self.assertRegex(
            log,
            r"127\.0\.0\.1:\d+ disconnected after [\d.]+s: 32 bytes in, "
            r"15 bytes out, 4 messages",
        )

    async def test_listens_on_every_port_given(self) -> None:
        socket = shortTempPath(self, "caret.sock")
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            LOOPBACK,
            "--port",
            f"unix:{socket}",
        )
        await twistd.listening
        for description in [f"unix:{socket}"]:
            client = await connect(description)
            self.assertEqual(await client.receivedAtLeast(1), b"*")
            client.transport.loseConnection()

    async def test_twist_caret_serves_too(self) -> None:
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            LOOPBACK,
            runner=[TWIST, "--log-format", "text"],
        )
        [address] = await twistd.listening
        await self.oneRound(address)

    async def oneRound(self, address: str) -> None:
        """Greeted, one message answered, at C{address}."""
        client = await connect(f"tcp:{address}")
        client.transport.write(b"^\xff^$")
        self.assertEqual(await client.receivedAtLeast(3), b"*\x00_")
        client.transport.loseConnection()

    async def test_caret_s_reactor_serves_and_its_workers_run_on_it(self) -> None:
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            LOOPBACK,
            "--workers",
            "2",
            runner=[TWISTD, "-n", "--pidfile=", "--reactor=caret-epoll"],
        )
        [address] = await twistd.listening
        pids = {match[2] for match in (await twistd.logged(WORKER_LISTENING, 2))}
        self.assertIn("reactor class: caretproto.reactor.EPollReactor", twistd.output)
        for pid in pids:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            self.assertIn(b"--reactor=caret-epoll", command)
        await self.oneRound(address)

    async def test_a_bad_option_is_a_usage_error_not_a_traceback(self) -> None:
        twistd = Twistd.start(self, "caret", "--port", "tcp:notaport")
        await self.assertFailure(twistd.listening, AssertionError)
        self.assertNotEqual(await twistd.ended, 0)
        log = twistd.output
        self.assertIn("--port 'tcp:notaport'", log)
        self.assertNotIn("Traceback", log)

    async def test_a_bad_option_value_is_one_line_and_a_pointer_to_help(self) -> None:
        for runner in (None, [TWIST]):
            twistd = Twistd.start(self, "caret", "--idle-timeout", "0", runner=runner)
            await self.assertFailure(twistd.listening, AssertionError)
            self.assertNotEqual(await twistd.ended, 0)
            lines = twistd.output.splitlines()
            self.assertLessEqual(len(lines), 3, twistd.output)
            self.assertIn("--idle-timeout takes a positive number or off", lines[0])
            self.assertIn("caret --help", twistd.output)


QUICK_SCRIPT = [(data, 0.05) for data, _ in REFERENCE_SCRIPT]


@pytest.mark.process
class WorkersTests(TestCase):
    timeout = 120

    async def sessions(self, address: str, count: int) -> None:
        """The reference session, its pauses shortened, C{count} at once."""
        host, port = address.rsplit(":", 1)
        report = await runSessions(
            reactor,
            TCP4ClientEndpoint(reactor, host, int(port)),
            count,
            Logger(observer=lambda event: None),
            QUICK_SCRIPT,
            timeout=30,
        )
        self.assertIsNone(report.summary())

    async def test_workers_serve_together_are_replaced_and_drain_on_sigterm(
        self,
    ) -> None:
        twistd = Twistd.start(self, "caret", "--workers", "2", "--port", LOOPBACK)
        address = (await twistd.listening)[0]
        pids = {match[2] for match in (await twistd.logged(WORKER_LISTENING, 2))}
        self.assertEqual(len(pids), 2)

        # Which worker accepts is up to the kernel: enough sessions and both
        # have served.
        for _ in range(5):
            await self.sessions(address, 20)
            served = set(re.findall(WORKER_SERVED, twistd.output))
            if served == pids:
                break
        self.assertEqual(served, pids)

        victim = min(pids)
        os.kill(int(victim), signal.SIGKILL)
        await twistd.logged(
            rf"worker \d \(pid {victim}\) died after [\d.]+s: SIGKILL; starting another"
        )
        listening = await twistd.logged(WORKER_LISTENING, 3)
        [replacement] = {match[2] for match in listening} - pids
        self.assertNotEqual(replacement, victim)
        await self.sessions(address, 20)

        # A session in progress goes on through the drain, and ends as its
        # client ends it.
        client = await connect(f"tcp:{address}")
        client.transport.write(b"^abc")
        await client.receivedAtLeast(4)
        twistd.signal(signal.SIGTERM)
        await twistd.logged(r"sessions in progress: 1, given up to 10.0s to end")
        client.transport.write(b"de$^f")
        await client.receivedAtLeast(7)
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, b"*bcdefg")
        self.assertEqual(await twistd.ended, -signal.SIGTERM)
        log = twistd.output
        self.assertRegex(log, r"worker 1 \(pid \d+\) ended: SIGTERM")
        self.assertRegex(log, r"worker 2 \(pid \d+\) ended: SIGTERM")
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)

    async def test_workers_on_a_port_they_cannot_share_is_a_usage_error(self) -> None:
        twistd = Twistd.start(self, "caret", "--workers", "2", "--port", "stdio:")
        await self.assertFailure(twistd.listening, AssertionError)
        self.assertNotEqual(await twistd.ended, 0)
        log = twistd.output
        self.assertIn("--port 'stdio:' cannot be shared by --workers", log)
        self.assertNotIn("Traceback", log)


@pytest.mark.process
class TacTests(TestCase):
    timeout = 30

    async def test_the_example_tac_serves_caret_beside_a_web_site(self) -> None:
        tac = Path(shortTempPath(self, "example.tac"))
        web = shortTempPath(self, "web.sock")
        text = (REPO / "examples" / "caret-and-web.tac").read_text()
        self.assertIn('"tcp:9090"', text)
        self.assertIn('"tcp:8080"', text)
        tac.write_text(
            text.replace('"tcp:9090"', '"tcp:0:interface=127.0.0.1"').replace(
                '"tcp:8080"', f'"unix:{web}"'
            )
        )
        # The command in the file's first line, as written but for the
        # environment's twistd and the copy with test ports.
        command = text.splitlines()[0].removeprefix("# Run with: ").split()
        self.assertEqual(
            command,
            [
                ".venv/bin/twistd",
                "-n",
                "--pidfile=",
                "-y",
                "examples/caret-and-web.tac",
            ],
        )
        twistd = Twistd.start(self, *command[1:-1], str(tac), runner=[TWISTD])
        [address] = await twistd.listening
        caret = await connect(f"tcp:{address}")
        self.assertEqual(await caret.receivedAtLeast(1), b"*")
        caret.transport.loseConnection()
        http = await connect(f"unix:{web}")
        http.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        page = await http.done
        self.assertIn(b"caret is on port 9090", page)
