"""
Tests for L{caretproto.optionchecks}: one check refuses a wrong value in the
same words under L{twisted.python.usage} and under L{argparse}.
"""

from __future__ import annotations

import argparse
import contextlib
import io

from twisted.python import usage
from twisted.trial.unittest import TestCase

from caretproto.optionchecks import (
    OptionValueError,
    positive,
    positiveOrOff,
    tcpPort,
)


class PositiveTests(TestCase):
    def test_a_positive_number_is_converted(self) -> None:
        self.assertEqual(positive("size", "16")("16"), 16)
        self.assertEqual(positive("duration", "10", float)("0.5"), 0.5)

    def test_zero_negative_and_words_are_refused_naming_the_option(self) -> None:
        for value in ["0", "-3", "many", "1.5"]:
            error = self.assertRaises(
                OptionValueError, positive("connections", "100"), value
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

    def test_argparse_reports_the_message_and_exits_with_status_2(self) -> None:
        parser = argparse.ArgumentParser(prog="x")
        parser.add_argument("--size", type=positive("size", "16"))
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            exited = self.assertRaises(SystemExit, parser.parse_args, ["--size", "0"])
        self.assertEqual(exited.code, 2)
        self.assertIn(
            "--size takes a positive number, like --size 16; got '0'",
            stderr.getvalue(),
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
                OptionValueError, positiveOrOff("max-per-peer", "100"), value
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
            error = self.assertRaises(OptionValueError, tcpPort, value)
            self.assertEqual(
                str(error), f"PORT must be a TCP port number, like 9090; got {value!r}"
            )
