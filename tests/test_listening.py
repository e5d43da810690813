"""
Tests for L{caretproto.listening}: the listening ports read from a server's
log, in the lines that L{caretproto.service.CaretService} writes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.trial.unittest import TestCase

from caretproto.listening import (
    Listening,
    listeningIn,
    waitForListening,
)
from caretproto.service import LISTENING
from tests import childEnvironment
from tests.tempfolder import shortTempPath

TWISTD_LOG = """\
2026-11-30T16:00:00+0000 [-] Loading caretproto.tap...
2026-11-30T16:00:00+0000 [caretproto.service.CaretService#info] \
caret listening on 127.0.0.1:40001
2026-11-30T16:00:00+0000 [caretproto.service.CaretService#info] \
caret listening on [::1]:40002
2026-11-30T16:00:00+0000 [caretproto.service.CaretService#info] \
caret listening on /tmp/caret.sock
2026-11-30T16:00:01+0000 [worker 1 pid 77 caretproto.service.CaretService#info] \
caret listening on 127.0.0.1:40001
"""


class ListeningInTests(TestCase):
    def test_every_listening_line_is_read_in_order(self) -> None:
        self.assertEqual(
            listeningIn(TWISTD_LOG),
            [
                Listening("127.0.0.1:40001", "127.0.0.1", 40001),
                Listening("[::1]:40002", "::1", 40002),
                Listening("/tmp/caret.sock"),
                Listening("127.0.0.1:40001", "127.0.0.1", 40001),
            ],
        )

    def test_the_format_the_service_logs_is_the_one_read(self) -> None:
        line = LISTENING.format(address="10.0.0.1:9090")
        self.assertEqual(
            listeningIn(line), [Listening("10.0.0.1:9090", "10.0.0.1", 9090)]
        )

    def test_a_log_that_names_no_port_gives_none(self) -> None:
        self.assertEqual(listeningIn("caret starting\n"), [])


class WaitForListeningTests(TestCase):
    def test_a_logged_port_is_returned(self) -> None:
        log = shortTempPath(self, "twistd.log")
        with open(log, "w") as file:
            file.write(TWISTD_LOG)
        self.assertEqual(waitForListening(log, count=4)[1].port, 40002)

    @pytest.mark.process
    def test_a_server_that_ends_first_fails_at_once_with_its_log(self) -> None:
        log = shortTempPath(self, "twistd.log")
        with open(log, "wb") as file:
            process = subprocess.Popen(
                [sys.executable, "-c", "print('no such option')"],
                stdout=file,
                env=childEnvironment(),
            )
            process.wait()
        error = self.assertRaises(
            RuntimeError, waitForListening, log, process, 1, 600.0
        )
        self.assertIn("ended (status 0) before listening", str(error))
        self.assertIn("no such option", str(error))
