"""
Tests for systemd socket activation: C{twistd -n caret --port
systemd:domain=INET:index=0} serving sockets it inherits, as systemd hands them
over (C{LISTEN_FDS}, C{LISTEN_FDNAMES}, C{LISTEN_PID}, descriptors from 3 on).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent

from caretproto.rules import GREETING
from caretproto.tap import endpointDescription
from tests.rawclient import connect
from tests.test_metrics import get
from tests.twistd import TWISTD, Twistd
from tests.workedexample import WORKED_EXAMPLE_ANSWER, runWorkedExample


def listeningSocket() -> socket.socket:
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    return listening


UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "caret.service"


def unitCommand() -> list[str]:
    """The service unit's C{ExecStart}, split as systemd splits it."""
    text = UNIT.read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def unitTwistdOptions() -> list[str]:
    """The unit's options for twistd itself, before C{caret}'s own."""
    command = unitCommand()
    return command[1 : command.index("caret")]


# systemd sets LISTEN_PID to the pid of the process it starts; the shell sets
# it to its own, which exec hands on to twistd.  twistd's own options are
# the service unit's.
_SYSTEMD_LIKE = [
    "/bin/sh",
    "-c",
    'LISTEN_PID=$$ exec "$0" "$@"',
    TWISTD,
    *unitTwistdOptions(),
]


def _inheriting(count: int, names: str) -> dict[str, str]:
    """This process's environment, telling of C{count} inherited sockets."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LISTEN_")
    }
    # Twisted takes inherited sockets only when LISTEN_FDNAMES names as many
    # as LISTEN_FDS counts, as systemd 227 and later always do.
    environment["LISTEN_FDS"] = str(count)
    environment["LISTEN_FDNAMES"] = names
    return environment


class EndpointDescriptionTests(SynchronousTestCase):
    def test_systemd_descriptions_get_no_backlog(self) -> None:
        """
        The listen queue of an inherited socket is systemd's (C{Backlog=}), so
        C{--backlog} must not add C{backlog=} to a systemd: description.
        """
        self.assertEqual(
            endpointDescription("systemd:domain=INET:index=0", 4096),
            "systemd:domain=INET:index=0",
        )

    def test_systemd_descriptions_behind_haproxy_get_no_backlog(self) -> None:
        self.assertEqual(
            endpointDescription("haproxy:systemd:domain=INET:index=0", 4096),
            "haproxy:systemd:domain=INET:index=0",
        )


@pytest.mark.process
class SocketActivationTests(TestCase):
    timeout = 60

    async def test_twistd_serves_an_inherited_socket_behind_haproxy(self) -> None:
        caret = listeningSocket()
        caretPort = caret.getsockname()[1]
        environment = _inheriting(1, "caret")
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            "haproxy:systemd:domain=INET:index=0",
            "--trusted-proxy",
            "127.0.0.1",
            runner=_SYSTEMD_LIKE,
            env=environment,
            childFDs={0: "w", 1: "r", 2: "r", 3: caret.fileno()},
        )
        caret.close()

        client = await connect(caretPort)
        assert client.transport is not None
        client.transport.write(b"PROXY TCP4 198.51.100.7 127.0.0.1 4242 9090\r\n^a$")
        client.transport.loseWriteConnection()
        self.assertEqual(await client.done, GREETING + b"b", twistd.output)
        await twistd.logged(r"198\.51\.100\.7:4242 disconnected after")
        twistd.signal(signal.SIGTERM)
        self.assertEqual(await twistd.ended, -signal.SIGTERM)
        self.assertNotIn("Traceback", twistd.output)

    def test_these_tests_run_twistd_as_the_service_unit_does(self) -> None:
        command = unitCommand()
        self.assertEqual(Path(command[0]).name, "twistd")
        self.assertEqual(
            unitTwistdOptions(), ["--nodaemon", "--pidfile=", "--reactor=caret-epoll"]
        )
        caret = command[command.index("caret") + 1 :]
        self.assertEqual(caret[:2], ["--port", "systemd:domain=INET:index=0"])

    async def test_twistd_serves_the_sockets_it_inherits(self) -> None:
        caret, metrics = listeningSocket(), listeningSocket()
        caretPort = caret.getsockname()[1]
        metricsPort = metrics.getsockname()[1]
        twistd = Twistd.start(
            self,
            "caret",
            "--port",
            "systemd:domain=INET:index=0",
            "--metrics",
            "systemd:domain=INET:name=metrics",
            runner=_SYSTEMD_LIKE,
            env=_inheriting(2, "caret:metrics"),
            childFDs={0: "w", 1: "r", 2: "r", 3: caret.fileno(), 4: metrics.fileno()},
        )
        # From here on only twistd holds the listening sockets: clients that
        # connect before it is ready wait in the listen queue.
        caret.close()
        metrics.close()

        answer = await runWorkedExample(
            TCP4ClientEndpoint(reactor, "127.0.0.1", caretPort)
        )
        self.assertEqual(answer, WORKED_EXAMPLE_ANSWER, twistd.output)
        self.assertEqual(
            await twistd.listening, [f"127.0.0.1:{caretPort}"], twistd.output
        )

        response, body = await get(
            Agent(reactor), f"http://127.0.0.1:{metricsPort}/metrics".encode()
        )
        self.assertEqual(response.code, 200)
        found = {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        self.assertEqual(found["caret_connections_total"], 1)
        self.assertEqual(found["caret_messages_total"], 4)
        self.assertEqual(found["caret_bytes_sent_total"], len(WORKED_EXAMPLE_ANSWER))
        # On the reactor the unit chooses.
        self.assertIn("reactor class: caretproto.reactor.EPollReactor", twistd.output)

        twistd.signal(signal.SIGTERM)
        # twistd shuts down cleanly, then ends by the signal that stopped it,
        # as systemd expects of a service it stops.
        self.assertEqual(await twistd.ended, -signal.SIGTERM)
        self.assertIn("Server Shut Down.", twistd.output)
