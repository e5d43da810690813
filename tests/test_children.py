"""
The programs the tests start import the C{caretproto} under test: each is
given the environment L{tests.childEnvironment} builds, even where another
copy (an installed one) would otherwise come first.  And importing the tests
changes no environment: nothing rewrites C{PYTHONPATH} behind a test's back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import caretproto
import tests
from tests import childEnvironment
from tests.tempfolder import tempFolder

IMPORTED = "import caretproto; print(caretproto.__file__)"


@pytest.mark.process
class ChildEnvironmentTests(TestCase):
    async def python(self, script: str, environment: dict[str, str]) -> str:
        """Run C{script} in a fresh Python, elsewhere; what it prints."""
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ["-c", script], env=environment, path=tempFolder(self)
        )
        self.assertEqual(status, 0, err)
        return out.decode().strip()

    async def test_a_child_imports_the_caretproto_under_test_not_another_copy(
        self,
    ) -> None:
        other = Path(tempFolder(self))
        (other / "caretproto").mkdir()
        (other / "caretproto" / "__init__.py").write_text("")
        # The other copy comes first, as an installed one would for a clone
        # installed without -e: a child left to it imports that copy.
        installed = {**os.environ, "PYTHONPATH": str(other)}
        self.assertEqual(
            Path(await self.python(IMPORTED, installed)),
            other / "caretproto" / "__init__.py",
        )
        self.assertEqual(
            Path(await self.python(IMPORTED, childEnvironment(installed))).resolve(),
            Path(caretproto.__file__).resolve(),
        )

    async def test_importing_the_tests_changes_no_environment(self) -> None:
        script = (
            "import os; before = dict(os.environ); "
            "import tests, tests.twistd, tests.rawclient; "
            "print(before == dict(os.environ))"
        )
        testsFolder = str(Path(tests.__file__).resolve().parent.parent)
        environment = childEnvironment()
        environment["PYTHONPATH"] += os.pathsep + testsFolder
        self.assertEqual(await self.python(script, environment), "True")
