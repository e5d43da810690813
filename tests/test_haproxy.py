"""
A real HAProxy in front of two caret servers, in TCP mode with C{send-proxy}
and the health check the deployment notes give: the reference session runs
through it, every reply is checked, both servers serve, and each logs the
real client, as the client sees itself, rather than the balancer.

It needs the C{haproxy} program (Debian's package; C{.ci/run} installs it).
Without it the test is skipped, except in CI (L{tests.inCI}), where it fails
at once saying that haproxy is missing.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from caretproto.reference import REFERENCE_SCRIPT
from caretproto.referenceclient import runSessions
from tests import inCI
from tests.model import referenceReplies
from tests.rawclient import connect
from tests.tempfolder import shortTempPath
from tests.twistd import Twistd

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")

CONFIG = """\
global
    stats socket {stats}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend caret
    bind 127.0.0.1:{port}
    default_backend carets

backend carets
    balance leastconn
    option redispatch
    retries 2
    option tcp-check
    tcp-check expect string *
    default-server send-proxy check inter 2s fall 2 rise 2
    server caret1 127.0.0.1:{one}
    server caret2 127.0.0.1:{two}
"""
"""As docs/readme/deployment.rst has it, but on loopback."""

QUICK_SCRIPT = [(data, 0.05) for data, _ in REFERENCE_SCRIPT]
SESSIONS = 10
STREAM = b"".join(data for data, _ in REFERENCE_SCRIPT)


def freePort() -> int:
    """A loopback port nobody listens on now, for HAProxy to bind."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@implementer(IStreamClientEndpoint)
class LocalPorts:
    """Connects through C{endpoint}, noting each connection's own port."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint
        self.ports: list[int] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Protocol]:
        def note(protocol: Protocol) -> Protocol:
            assert protocol.transport is not None
            self.ports.append(protocol.transport.getHost().port)  # type: ignore[attr-defined]
            return protocol

        return self.endpoint.connect(protocolFactory).addCallback(note)


@pytest.mark.process
class HAProxyTests(TestCase):
    timeout = 120
    if HAPROXY is None and not inCI():
        skip = "haproxy is not installed (CI installs it, and there this runs)"

    def setUp(self) -> None:
        if HAPROXY is None:
            self.fail("haproxy is not installed: CI must install it (Debian's haproxy)")

    async def test_sessions_through_haproxy_are_served_and_logged_as_the_real_client(
        self,
    ) -> None:
        servers = [
            Twistd.start(
                self,
                "caret",
                "--port",
                "haproxy:tcp:0:interface=127.0.0.1",
                "--trusted-proxy",
                "127.0.0.1",
            )
            for _ in range(2)
        ]
        addresses = await gatherResults([server.listening for server in servers])
        [one], [two] = addresses
        stats = shortTempPath(self, "stats.sock")
        config = Path(shortTempPath(self, "haproxy.cfg"))
        port = freePort()
        config.write_text(
            CONFIG.format(
                stats=stats,
                port=port,
                one=one.rsplit(":", 1)[1],
                two=two.rsplit(":", 1)[1],
            )
        )
        haproxy = Twistd.start(self, runner=[str(HAPROXY), "-db", "-f", str(config)])
        haproxy.listening.addErrback(lambda _: None)
        # The health checks reach both servers once HAProxy is running.
        await gatherResults(
            [server.logged(r"disconnected after") for server in servers]
        )

        clients = LocalPorts(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        report = await runSessions(
            reactor,  # type: ignore[arg-type]
            clients,
            SESSIONS,
            Logger(observer=lambda event: None),  # type: ignore[arg-type]
            QUICK_SCRIPT,
            timeout=30,
        )
        self.assertIsNone(report.summary())
        self.assertEqual(len(clients.ports), SESSIONS)
        # The client above checks replies with caretproto's own rules; this
        # one checks them against the tests' model.
        raw = await connect(f"tcp:127.0.0.1:{port}")
        clients.ports.append(raw.transport.getHost().port)
        raw.transport.write(STREAM)
        raw.transport.loseWriteConnection()
        self.assertEqual(await raw.done, b"*" + referenceReplies(STREAM))

        status = await self.serverStatus(stats)
        self.assertEqual(status, {"caret1": ("UP", "L7OK"), "caret2": ("UP", "L7OK")})

        haproxy.signal(signal.SIGKILL)
        for server in servers:
            server.signal(signal.SIGTERM)
        await gatherResults([server.ended for server in servers])
        bytesIn = len(STREAM)
        bytesOut = 1 + len(referenceReplies(STREAM))
        served = [
            {
                int(peer)
                for peer in re.findall(
                    rf"127\.0\.0\.1:(\d+) disconnected after [\d.]+s: {bytesIn} "
                    rf"bytes in, {bytesOut} bytes out, 4 messages",
                    server.output,
                )
            }
            for server in servers
        ]
        self.assertEqual(served[0] | served[1], set(clients.ports))
        self.assertEqual(served[0] & served[1], set())
        self.assertTrue(served[0] and served[1], served)

    async def serverStatus(self, stats: str) -> dict[str, tuple[str, str]]:
        """Each server's status and last check, from HAProxy's stats socket."""
        client = await connect(f"unix:{stats}")
        client.transport.write(b"show stat\n")
        table = (await client.done).decode().splitlines()
        header = table[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in table[1:]]
        return {
            row["svname"]: (row["status"], row["check_status"])
            for row in rows
            if row.get("pxname") == "carets" and row["svname"].startswith("caret")
        }
