"""
The examples of the how-to pages (docs/howto/), run as tests: the page
includes the code of a file under docs/howto/, and this module runs that
same file, under trial and under pytest.
"""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceCollection
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caretproto import tap
from caretproto.capacity import OpenFilesLimit
from caretproto.client import ConnectionClosed, GreetingError, connect
from caretproto.server import CaretFactory
from caretproto.service import CaretService
from caretproto.tap import CaretCommand
from tests.docblocks import REPO, inVirtualEnvironment, literalLines
from tests.tempfolder import tempFolder
from tests.test_docpages import underTest


def howtoExample(name: str) -> ModuleType:
    """The module C{docs/howto/NAME.py}, imported once."""
    qualified = f"docs.howto.{name}"
    if qualified not in sys.modules:
        path = REPO / "docs" / "howto" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(qualified, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


_testing = howtoExample("testing_examples")
StringTransportTests = _testing.StringTransportTests
IdleTimeoutTests = _testing.IdleTimeoutTests
MemoryReactorTests = _testing.MemoryReactorTests
ClientAndServerTests = _testing.ClientAndServerTests


class ClientExampleTests(SynchronousTestCase):
    """
    docs/howto/client_example.py's C{askOnce}, with a MemoryReactorClock
    playing both the network and the time: each way it can end.
    """

    def ask(self) -> tuple[Deferred[bytes], StringTransport, Any, MemoryReactorClock]:
        """Ask as the example does; the connection made, nothing said yet."""
        reactor = MemoryReactorClock()
        replying = howtoExample("client_example").askOnce(
            reactor, "tcp:host=192.0.2.1:port=9090", b"abc", timeout=5
        )
        [(host, port, factory, _, _)] = reactor.tcpClients
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return replying, transport, protocol, reactor

    def test_the_reply_comes_and_the_client_closes(self) -> None:
        replying, transport, protocol, _ = self.ask()
        protocol.dataReceived(b"*")
        self.assertEqual(transport.value(), b"^abc$")
        protocol.dataReceived(b"bc")
        self.assertNoResult(replying)
        protocol.dataReceived(b"d")
        self.assertEqual(self.successResultOf(replying), b"bcd")
        self.assertTrue(transport.disconnecting)

    def test_a_server_that_does_not_greet_is_a_greeting_error(self) -> None:
        replying, transport, protocol, _ = self.ask()
        protocol.dataReceived(b"220 smtp.example.com\r\n")
        self.failureResultOf(replying, GreetingError)
        self.assertEqual(transport.value(), b"")

    def test_a_server_that_closes_owing_the_reply_is_connection_closed(
        self,
    ) -> None:
        replying, _, protocol, _ = self.ask()
        protocol.dataReceived(b"*b")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(replying, ConnectionClosed)

    def test_a_silent_server_is_a_timeout_and_is_dropped(self) -> None:
        replying, transport, _, reactor = self.ask()
        reactor.advance(4.9)
        self.assertNoResult(replying)
        reactor.advance(0.1)
        self.failureResultOf(replying, TimeoutError)
        self.assertTrue(transport.disconnecting)

    def test_no_connection_is_a_connect_error(self) -> None:
        reactor = MemoryReactorClock()
        replying = howtoExample("client_example").askOnce(
            reactor, "tcp:host=192.0.2.1:port=9090", b"abc"
        )
        [(_, _, factory, _, _)] = reactor.tcpClients
        connector = reactor.connectors[0]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.failureResultOf(replying, ConnectError)

    def test_no_connection_in_time_is_a_timeout(self) -> None:
        reactor = MemoryReactorClock()
        replying = howtoExample("client_example").askOnce(
            reactor, "tcp:host=192.0.2.1:port=9090", b"abc", timeout=5
        )
        reactor.advance(5)
        self.failureResultOf(replying, TimeoutError)


class ComposingExamplesTests(SynchronousTestCase):
    """
    The two C{.tac} files of docs/howto/composing.rst build what the page
    says: the bare factory without the command's defaults, the plugin's
    service with them.  Neither is started.
    """

    def application(self, name: str) -> list[IService]:
        """The services of C{examples/NAME}, as twistd -y would load them."""
        tac = runpy.run_path(str(REPO / "examples" / name))
        return list(IServiceCollection(tac["application"]))

    def test_a_bare_factory_has_no_idle_timeout_and_no_drain(self) -> None:
        [listening] = self.application("bare-caret.tac")
        self.assertIsInstance(listening, StreamServerEndpointService)
        self.assertIsInstance(listening.factory, CaretFactory)
        self.assertIsNone(listening.factory.idleTimeout)
        self.assertNotIsInstance(listening, CaretService)

    def test_the_plugins_service_has_the_commands_defaults(self) -> None:
        caret, web = self.application("caret-and-web.tac")
        self.assertIsInstance(caret, CaretCommand)
        self.assertIsInstance(web, StreamServerEndpointService)
        server = caret.getServiceNamed("caret")
        self.assertIsInstance(server, CaretService)
        self.assertEqual(server.factory.idleTimeout, tap.DEFAULT_IDLE_TIMEOUT)
        self.assertTrue(any(isinstance(s, OpenFilesLimit) for s in caret))


def running(pid: int) -> bool:
    """
    Whether process C{pid} runs: it exists and is no zombie (a daemon's
    parent is init, or whichever reaper the machine has, which may be slow).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stopIfRunning(pid: int) -> None:
    """Stop a daemon that a failed test left behind."""
    if running(pid):
        os.kill(pid, signal.SIGTERM)


@pytest.mark.process
class DaemonPageTests(TestCase):
    """
    docs/howto/daemon.rst's commands, run as the page shows them (with the
    test environment's twistd and an ephemeral port on loopback), in a
    folder of their own: start as a daemon, find the pid file and the log,
    stop with kill, and the pid file is gone.
    """

    timeout = 60

    def shell(self, command: str, folder: str) -> Deferred[tuple[bytes, bytes, int]]:
        line = inVirtualEnvironment(command, str(Path(sys.executable).parent))
        line = line.replace("--port 9090", "--port tcp:0:interface=127.0.0.1")
        return getProcessOutputAndValue(
            "/bin/bash", ["-c", line], env=underTest(), path=folder
        )

    async def test_start_then_stop_as_the_page_says(self) -> None:
        [start] = literalLines("docs/howto/daemon.rst", "Start")
        [stop] = literalLines("docs/howto/daemon.rst", "Stop")
        self.assertEqual(stop, "kill $(cat caret.pid)")
        folder = Path(tempFolder(self))
        out, err, status = await self.shell(start, str(folder))
        self.assertEqual(status, 0, (out, err))
        # twistd returns once the daemon runs: the pid file names it, and
        # the log says where it listens.
        pid = int((folder / "caret.pid").read_text())
        self.addCleanup(stopIfRunning, pid)
        [address] = re.findall(
            r"caret listening on (\S+)", (folder / "caret.log").read_text()
        )
        client = await connect(reactor, f"tcp:host={address.replace(':', ':port=')}")
        self.assertEqual(await client.request(b"abc"), b"bcd")
        client.close()
        await client.closed
        out, err, status = await self.shell(stop, str(folder))
        self.assertEqual(status, 0, (out, err))
        # The daemon is no child of ours: its end shows as its pid vanishing.
        for _ in range(300):
            if not running(pid):
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(running(pid))
        self.assertFalse((folder / "caret.pid").exists())
        self.assertIn("Server Shut Down.", (folder / "caret.log").read_text())
