# -*- test-case-name: tests.test_benchmark_scripts -*-
"""
Every script in benchmarks/ answers C{--help} with its usage and runs
nothing: no server started, nothing compiled, nothing written.  The scripts
are not run for real here (their figures depend on the machine); this pins
that each still imports and parses its options after a change elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests import childEnvironment

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

NOT_SCRIPTS = {"harness.py", "micro.py", "conftest.py"}
"""The shared module, and the micro-benchmarks and their hooks, which
pytest runs."""


def scripts() -> list[Path]:
    return sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in NOT_SCRIPTS)


@pytest.mark.process
class HelpTests(SynchronousTestCase):
    def test_every_script_answers_help_and_runs_nothing(self) -> None:
        self.assertIn("compare.py", [script.name for script in scripts()])
        with tempfile.TemporaryDirectory() as cache:
            # A script that compiled cload would put it here.
            environment = childEnvironment({**os.environ, "XDG_CACHE_HOME": cache})
            for script in scripts():
                done = subprocess.run(
                    [sys.executable, str(script), "--help"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=environment,
                    check=False,
                )
                self.assertEqual(done.returncode, 0, f"{script.name}: {done.stderr}")
                self.assertTrue(done.stdout.startswith("usage:"), script.name)
            self.assertEqual(os.listdir(cache), [])

    def test_the_micro_benchmarks_say_how_to_run_them(self) -> None:
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / "micro.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=childEnvironment(),
            check=False,
        )
        self.assertIn("python -m pytest benchmarks/micro.py", done.stderr)
