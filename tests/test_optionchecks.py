"""
Tests for L{caretproto.optionchecks}: the checks refuse a wrong value with a
usage error that names the option, the endpoint port check, and the words
every command ends a usage error with.
"""

from __future__ import annotations

import contextlib
import io
from importlib.metadata import version

from twisted.python import usage
from twisted.trial.unittest import TestCase

from caretproto.optionchecks import (
    endpointPort,
    positive,
    positiveOrOff,
    printVersion,
    tcpPort,
    usageFailure,
)
from twisted import __version__ as twistedVersion


class PositiveTests(TestCase):
    def test_a_positive_number_is_converted(self) -> None:
        self.assertEqual(positive("size", "16")("16"), 16)
        self.assertEqual(positive("duration", "10", float)("0.5"), 0.5)

    def test_zero_negative_and_words_are_refused_naming_the_option(self) -> None:
        for value in ["0", "-3", "many", "1.5"]:
            error = self.assertRaises(
                usage.UsageError, positive("connections", "100"), value
            )
            self.assertEqual(
                str(error),
                "--connections takes a positive number, like --connections 100; "
                f"got {value!r}",
            )

    def test_usage_options_report_the_message_as_it_is(self) -> None:
        class Options(usage.Options):
            optParameters = [["size", None, "16", "", positive("size", "16")]]

        error = self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--size", "0"]
        )
        self.assertEqual(
            str(error), "--size takes a positive number, like --size 16; got '0'"
        )


class PositiveOrOffTests(TestCase):
    def test_off_in_any_case_is_no_limit(self) -> None:
        for value in ["off", "OFF", " Off "]:
            self.assertIsNone(positiveOrOff("idle-timeout", "300", float)(value))

    def test_a_positive_number_is_converted(self) -> None:
        self.assertEqual(positiveOrOff("idle-timeout", "300", float)("2.5"), 2.5)

    def test_anything_else_is_refused_saying_how_to_turn_it_off(self) -> None:
        for value in ["0", "none", "-1", ""]:
            error = self.assertRaises(
                usage.UsageError, positiveOrOff("max-per-peer", "100"), value
            )
            self.assertEqual(
                str(error),
                "--max-per-peer takes a positive number or off, like "
                f"--max-per-peer 100 or --max-per-peer off; got {value!r}",
            )


class TCPPortTests(TestCase):
    def test_port_numbers_are_converted(self) -> None:
        self.assertEqual([tcpPort("1"), tcpPort("65535")], [1, 65535])

    def test_anything_else_is_refused_showing_an_example(self) -> None:
        for value in ["0", "65536", "http", "-1", ""]:
            error = self.assertRaises(usage.UsageError, tcpPort, value)
            self.assertEqual(
                str(error), f"PORT must be a TCP port number, like 9090; got {value!r}"
            )


class EndpointPortTests(TestCase):
    def test_a_server_port_from_0_to_65535_is_taken(self) -> None:
        for good in ["0", "65535", "tcp:0", "tcp6:port=9090", "haproxy:ssl:443"]:
            endpointPort("--port", good, "9090")

    def test_endpoints_without_a_tcp_port_are_left_to_twisted(self) -> None:
        for other in ["unix:/run/caret.sock", "systemd:domain=INET:index=0", "x:1"]:
            endpointPort("--port", other, "9090")

    def test_a_server_port_out_of_range_is_refused_naming_the_option(self) -> None:
        error = self.assertRaises(
            usage.UsageError, endpointPort, "--port", "haproxy:tcp:70000", "9090"
        )
        self.assertEqual(
            str(error),
            "--port 'haproxy:tcp:70000': the port must be a number from 0 to "
            "65535, got '70000'; use a port number or a Twisted endpoint "
            "description, like 9090",
        )

    def test_a_client_port_is_after_the_host_and_not_0(self) -> None:
        endpointPort("--endpoint", "tcp:example.com:9090", "x", client=True)
        for bad, port in [
            ("tcp:example.com:0", "0"),
            ("tls:example.com:99999", "99999"),
            ("tcp:host=example.com:port=70000", "70000"),
        ]:
            error = self.assertRaises(
                usage.UsageError, endpointPort, "--endpoint", bad, "x", client=True
            )
            self.assertEqual(
                str(error),
                f"--endpoint {bad!r}: the port must be a number from 1 to 65535, "
                f"got {port!r}; use a Twisted endpoint description, like x",
            )


class CommandTests(TestCase):
    def test_a_usage_error_ends_with_status_1_and_a_pointer_to_help(self) -> None:
        failure = usageFailure("caret-bench", usage.UsageError("--size is wrong"))
        self.assertEqual(
            failure.code,
            "caret-bench: --size is wrong\nSee 'caret-bench --help' for every option.",
        )
        # Python prints a string code to standard error and exits with 1.
        self.assertIsInstance(failure.code, str)

    def test_version_names_caretproto_and_twisted(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exited = self.assertRaises(SystemExit, printVersion, "caret-bench")
        self.assertEqual(exited.code, 0)
        self.assertEqual(
            out.getvalue(),
            f"caret-bench (caretproto) {version('caretproto')}\n"
            f"Twisted {twistedVersion}\n",
        )
