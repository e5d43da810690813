"""
The dependencies point down: the command-line tools load the library they
use, never the server's command module or what only the server needs.
Each import runs in a fresh interpreter, so that what this test process has
already imported cannot hide a dependency.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.trial.unittest import TestCase

from tests import childEnvironment

SERVER_ONLY = {
    "caretproto.tap",
    "caretproto.workers",
    "caretproto.workerside",
    "caretproto.proxy",
    "caretproto.service",
    "caretproto.capacity",
    "caretproto.metrics",
}


def loadedBy(module: str) -> set[str]:
    """The modules of caretproto (and rich) that importing C{module} loads."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {module}; print(*sorted(sys.modules), sep=chr(10))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=childEnvironment(),
    )
    return {
        name
        for name in result.stdout.split()
        if name.startswith("caretproto") or name == "rich"
    }


@pytest.mark.process
class LayerTests(TestCase):
    def test_caret_client_loads_none_of_the_server(self) -> None:
        loaded = loadedBy("caretproto.caretclient")
        self.assertEqual(loaded & (SERVER_ONLY | {"caretproto.server"}), set())

    def test_caret_bench_loads_none_of_the_server(self) -> None:
        loaded = loadedBy("caretproto.benchrun")
        self.assertEqual(
            loaded
            & (
                SERVER_ONLY
                | {"caretproto.server", "caretproto.referenceclient", "rich"}
            ),
            set(),
        )

    def test_the_metrics_do_not_load_the_worker_pool(self) -> None:
        loaded = loadedBy("caretproto.metrics")
        self.assertEqual(
            loaded & {"caretproto.workers", "caretproto.workerside"}, set()
        )

    def test_the_package_itself_loads_nothing(self) -> None:
        self.assertEqual(loadedBy("caretproto"), {"caretproto"})

    def test_the_connection_helpers_load_no_protocol(self) -> None:
        # What the PROXY wrapper and the descriptor guard build on is not
        # the caret session.
        for module in ["caretproto.proxy", "caretproto.capacity"]:
            self.assertNotIn("caretproto.server", loadedBy(module), module)
