"""
The twistd plugin and its options: endpoint descriptions, the listen
backlog, usage errors, and the service L{caretproto.tap.makeService} builds.
"""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

import twisted.internet
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from caretproto import tap
from caretproto.service import CaretService
from caretproto.workers import WORKER_FDS, WorkerPool
from caretproto.workerside import ParentLink
from tests.fakes import listenedAs

REPO = Path(__file__).resolve().parent.parent


def parse(*argv: str, workerFDs: str | None = None) -> tap.Options:
    """
    C{argv} parsed as C{caret}'s options; as in a worker whose pool named
    C{workerFDs} in its environment, if given.
    """
    options = tap.Options()
    options.environ = {} if workerFDs is None else {WORKER_FDS: workerFDs}
    options.parseOptions(list(argv))
    return options


class EndpointDescriptionTests(SynchronousTestCase):
    def test_bare_number_is_tcp_with_the_default_backlog(self) -> None:
        self.assertEqual(tap.endpointDescription("9090"), "tcp:9090:backlog=4096")

    def test_listening_endpoints_without_backlog_get_it(self) -> None:
        for given in [
            "tcp:9090:interface=127.0.0.1",
            "unix:/run/caret.sock",
            "haproxy:tcp:9090",
        ]:
            self.assertEqual(
                tap.endpointDescription(given, 500), f"{given}:backlog=500"
            )

    def test_an_explicit_backlog_is_kept(self) -> None:
        self.assertEqual(
            tap.endpointDescription("tcp:9090:backlog=10"), "tcp:9090:backlog=10"
        )

    def test_inherited_sockets_are_left_alone(self) -> None:
        given = "systemd:domain=INET:index=0"
        self.assertEqual(tap.endpointDescription(given), given)


class OptionsTests(SynchronousTestCase):
    def test_default_is_tcp_9090(self) -> None:
        options = parse()
        self.assertEqual(options["port"], ["9090"])
        [endpoint] = options["endpoints"]
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        [(port, _, backlog, interface)] = listenedAs(self)
        self.assertEqual((port, backlog, interface), (9090, 4096, ""))

    def test_port_may_be_given_several_times(self) -> None:
        options = parse(
            "--port", "tcp:9091:interface=127.0.0.1", "-p", "unix:/tmp/c.sock"
        )
        tcp, unix = options["endpoints"]
        self.assertIsInstance(tcp, TCP4ServerEndpoint)
        self.assertIsInstance(unix, UNIXServerEndpoint)
        [(port, _, _, interface)] = listenedAs(
            self, "--port", "tcp:9091:interface=127.0.0.1"
        )
        self.assertEqual((port, interface), (9091, "127.0.0.1"))

    def test_backlog_option_applies_to_endpoints_without_one(self) -> None:
        [(port, _, backlog, _)] = listenedAs(self, "--backlog", "123", "--port", "9092")
        self.assertEqual((port, backlog), (9092, 123))

    def test_bad_port_names_the_option_and_shows_examples(self) -> None:
        for bad in [
            "tcp:notaport",
            "bogus:1",
            "",
            "ssl:9443:privateKey=/nonexistent.pem",
        ]:
            error = self.assertRaises(UsageError, parse, "--port", bad)
            self.assertIn("--port", str(error))
            self.assertIn("tcp:9090:interface=127.0.0.1", str(error))

    def test_a_port_out_of_range_is_refused_while_parsing(self) -> None:
        for bad, port in [
            ("99999", "99999"),
            ("tcp:99999", "99999"),
            ("tcp:70000:interface=127.0.0.1", "70000"),
            ("tcp6:port=65536", "65536"),
            ("ssl:port=99999:privateKey=key.pem", "99999"),
            ("haproxy:tcp:70000", "70000"),
            ("tcp:-1", "-1"),
        ]:
            error = self.assertRaises(
                UsageError, parse, "--trusted-proxy", "any", "--port", bad
            )
            self.assertEqual(
                str(error),
                f"--port {bad!r}: the port must be a number from 0 to 65535, "
                f"got {port!r}; use a port number or a Twisted endpoint "
                f"description, like {tap.ENDPOINT_EXAMPLES}",
            )

    def test_ports_0_to_65535_and_portless_endpoints_are_taken(self) -> None:
        for good in ["0", "tcp:65535", "tcp6:port=0", "unix:/run/caret.sock"]:
            self.assertEqual(parse("--port", good)["port"], [good])

    def test_a_metrics_port_out_of_range_is_refused_while_parsing(self) -> None:
        error = self.assertRaises(UsageError, parse, "--metrics", "tcp:99999")
        self.assertIn("--metrics 'tcp:99999': the port must be a number", str(error))
        self.assertIn(tap.METRICS_EXAMPLES, str(error))

    def test_bad_backlog_names_the_option_and_an_example(self) -> None:
        for bad in ["-3", "0", "many"]:
            error = self.assertRaises(UsageError, parse, "--backlog", bad)
            self.assertIn("--backlog", str(error))
            self.assertIn("4096", str(error))


class ServiceTests(SynchronousTestCase):
    def test_make_service_returns_a_multiservice_with_a_named_caret_service(
        self,
    ) -> None:
        service = tap.makeService(
            parse("--port", "tcp:0", "--port", "unix:/tmp/x.sock")
        )
        self.assertTrue(IService.providedBy(service))
        assert isinstance(service, MultiService)
        caret = service.getServiceNamed("caret")
        assert isinstance(caret, CaretService)
        self.assertEqual(len(caret.endpoints), 2)


class WorkersOptionTests(SynchronousTestCase):
    def test_one_process_by_default(self) -> None:
        options = parse("--port", "tcp:0")
        self.assertEqual(options["workers"], 1)
        top = tap.makeService(options)
        assert isinstance(top, MultiService)
        self.assertNotIn("workers", [service.name for service in top])
        self.assertNotIn(ParentLink, [type(service) for service in top])

    def test_auto_is_one_worker_per_cpu(self) -> None:
        self.assertEqual(parse("--workers", "auto")["workers"], os.cpu_count())

    def test_bad_workers_names_the_option_and_its_forms(self) -> None:
        for bad in ["0", "-2", "many", "1.5"]:
            error = self.assertRaises(UsageError, parse, "--workers", bad)
            self.assertIn("--workers 4 or --workers auto", str(error))
            self.assertIn(repr(bad), str(error))

    def test_workers_cannot_share_a_port_they_could_not_take_over(self) -> None:
        error = self.assertRaises(
            UsageError, parse, "--workers", "2", "--port", "9090", "--port", "stdio:"
        )
        self.assertIn("--port 'stdio:' cannot be shared by --workers", str(error))

    def test_with_workers_this_process_listens_but_the_workers_accept(
        self,
    ) -> None:
        argv = ["--workers", "3", "--port", "tcp:0", "--port", "unix:/tmp/w.sock"]
        top = tap.makeService(parse(*argv))
        assert isinstance(top, MultiService)
        caret = top.getServiceNamed("caret")
        assert isinstance(caret, CaretService)
        self.assertFalse(caret.accepting)
        pool = top.getServiceNamed("workers")
        assert isinstance(pool, WorkerPool)
        self.assertEqual(pool.count, 3)
        self.assertEqual(pool.command[-len(argv) - 1 :], [*argv, "--workers=1"])

    def test_workers_are_killed_only_once_their_drain_could_be_over(self) -> None:
        top = tap.makeService(parse("--workers", "2", "--shutdown-timeout", "7"))
        assert isinstance(top, MultiService)
        pool = top.getServiceNamed("workers")
        assert isinstance(pool, WorkerPool)
        self.assertEqual(pool.killAfter, 2 * 7 + tap.WORKERS_KILL_MARGIN)

    def test_a_worker_listens_on_the_sockets_it_inherits(self) -> None:
        bound = socket.socket()
        self.addCleanup(bound.close)
        bound.bind(("127.0.0.1", 0))
        bound.listen()
        inherited = os.dup(bound.fileno())
        argv = ("--port", "9090", "--workers=1")
        memory = MemoryReactorClock()
        self.patch(twisted.internet, "reactor", memory)
        [endpoint] = parse(*argv, workerFDs=str(inherited))["endpoints"]
        port = self.successResultOf(endpoint.listen(Factory()))
        self.addCleanup(port.stopListening)
        # It took over the socket it was given rather than binding 9090.
        self.assertEqual(memory.tcpServers, [])
        self.assertEqual(port.getHost().port, bound.getsockname()[1])  # type: ignore[attr-defined]
        options = parse("--port", "9090", "--workers=1", workerFDs="3")
        top = tap.makeService(options)
        assert isinstance(top, MultiService)
        self.assertIsInstance(top.getServiceNamed("caret"), CaretService)
        self.assertIn(ParentLink, [type(service) for service in top])

    def test_a_worker_inherits_one_socket_per_port(self) -> None:
        for argv, fds in [
            (["--port", "9090"], "3,4"),
            (["--port", "9090", "--workers=2"], "3"),
            (["--port", "9090"], "three"),
        ]:
            error = self.assertRaises(UsageError, parse, *argv, workerFDs=fds)
            self.assertIn(WORKER_FDS, str(error))

    def test_a_process_that_is_no_worker_listens_itself(self) -> None:
        self.assertIsNone(parse("--port", "9090")["inherited"])


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_the_caret_plugin_naming_caretproto_tap(self) -> None:
        [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "caret"]
        self.assertEqual(maker.module, "caretproto.tap")
        self.assertIs(maker.options, tap.Options)

    def test_plugin_file_imports_nothing_but_the_plugin_classes(self) -> None:
        # Twisted imports every plugin file for every twistd command: this
        # one names the service maker and the reactor, and loads neither.
        tree = ast.parse((REPO / "twisted" / "plugins" / "caret.py").read_text())
        imports = [
            n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
        ]
        self.assertEqual(
            [(n.module, [a.name for a in n.names]) for n in imports],  # type: ignore[union-attr]
            [
                ("twisted.application.reactors", ["Reactor"]),
                ("twisted.application.service", ["ServiceMaker"]),
            ],
        )

    def test_no_init_files_that_would_shadow_twisted(self) -> None:
        self.assertFalse((REPO / "twisted" / "__init__.py").exists())
        self.assertFalse((REPO / "twisted" / "plugins" / "__init__.py").exists())


class HelpTests(SynchronousTestCase):
    """
    C{twistd caret --help}: every option a user may give, laid out as
    Twisted lays out help, and nothing internal.
    """

    def test_help_lists_every_option_and_nothing_internal(self) -> None:
        helpText = str(tap.Options())
        self.assertNotIn("worker-fds", helpText)
        for name in ["--port=", "--workers=", "--idle-timeout=", "--metrics="]:
            self.assertIn(name, helpText)

    def test_help_has_no_runs_of_spaces_inside_a_description(self) -> None:
        # Options start at column 0 to 6 and descriptions at column 27; past
        # that, a run of spaces is a docstring's indentation leaking through.
        for line in str(tap.Options()).splitlines():
            self.assertNotIn("   ", line[27:].rstrip(), line)
