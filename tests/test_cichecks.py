"""
The checks .ci/run makes of the documentation and the history:
C{.ci/checklinks} (every local link of the built site leads somewhere) and
C{.ci/check-news} (every change to caretproto/ comes with a news fragment).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import inCI
from tests.docblocks import REPO
from tests.tempfolder import tempFolder


def ciScript(name: str) -> ModuleType:
    """The script C{.ci/NAME}, imported as a module."""
    loader = SourceFileLoader(name.replace("-", "_"), str(REPO / ".ci" / name))
    spec = spec_from_loader(loader.name, loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


class CheckLinksTests(SynchronousTestCase):
    """.ci/checklinks finds each broken local link and nothing else."""

    def test_missing_files_and_anchors_are_found_and_others_pass(self) -> None:
        site = Path(tempFolder(self))
        (site / "api").mkdir()
        (site / "index.html").write_text(
            '<a href="api/a.html#there">ok</a> <a href="api/a.html#gone">no</a>'
            '<a href="#top">ok</a> <span id="top"></span>'
            '<img src="missing.png"> <a href="https://example.com/x">out</a>'
        )
        (site / "api" / "a.html").write_text(
            '<a name="there"></a><a href="../index.html">ok</a>'
            '<a href="a._Private.html">no</a>'
        )
        self.assertEqual(
            ciScript("checklinks").brokenLinks(site),
            [
                "api/a.html: a._Private.html (no such file)",
                "index.html: api/a.html#gone (no such anchor)",
                "index.html: missing.png (no such file)",
            ],
        )


@pytest.mark.process
class CheckNewsTests(SynchronousTestCase):
    """.ci/check-news, run in a small repository of its own."""

    def setUp(self) -> None:
        if shutil.which("git") is None:
            if inCI():
                raise AssertionError("CI must have git")
            raise SkipTest("git is not installed; CI has it")
        self.repo = Path(tempFolder(self))
        (self.repo / ".ci").mkdir()
        shutil.copy(REPO / ".ci" / "check-news", self.repo / ".ci")
        self.git("init", "-q")
        self.commit({"caretproto/a.py": "# before towncrier\n"}, "no rule yet")
        self.commit(
            {"pyproject.toml": (REPO / "pyproject.toml").read_text()}, "towncrier"
        )

    def git(self, *args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=self.repo,
            check=True,
            capture_output=True,
        )

    def commit(self, files: dict[str, str], message: str) -> None:
        for name, text in files.items():
            (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def check(self) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, ".ci/check-news"],
            cwd=self.repo,
            capture_output=True,
            text=True,
        )
        return done.returncode, done.stdout

    def test_a_change_with_a_fragment_passes(self) -> None:
        self.commit(
            {"caretproto/a.py": "# x\n", "newsfragments/3.bugfix": "Fixed.\n"}, "fix"
        )
        self.assertEqual(self.check(), (0, ""))

    def test_a_change_without_a_fragment_fails_naming_the_commit(self) -> None:
        self.commit({"caretproto/a.py": "# x\n"}, "quiet change")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertIn("quiet change: changes caretproto/", out)

    def test_a_no_news_line_says_why_none_is_needed(self) -> None:
        self.commit(
            {"caretproto/a.py": "# a comment\n"},
            "A comment\n\nNo-news: a comment, no change in behaviour",
        )
        self.assertEqual(self.check(), (0, ""))

    def merge(self, branch: dict[str, str], message: str) -> None:
        """
        Make a branch of one commit per item of C{branch} (file, text),
        each without a fragment, and merge it with C{message}.
        """
        self.git("checkout", "-q", "-b", "topic")
        for name, text in branch.items():
            self.commit({name: text}, f"change {name}")
        self.git("checkout", "-q", "-")
        self.git("merge", "-q", "--no-ff", "-m", message, "topic")
        self.git("branch", "-q", "-D", "topic")

    def test_a_merged_branch_needs_one_fragment_for_all_its_commits(self) -> None:
        self.merge(
            {"caretproto/a.py": "# x\n", "newsfragments/3.feature": "New.\n"},
            "Merge a feature",
        )
        self.assertEqual(self.check(), (0, ""))

    def test_a_merged_branch_without_a_fragment_fails_naming_the_merge(
        self,
    ) -> None:
        self.merge({"caretproto/a.py": "# x\n"}, "Merge a quiet branch")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertIn("Merge a quiet branch: changes caretproto/", out)
        self.assertNotIn("change caretproto/a.py", out)

    def test_a_change_outside_caretproto_needs_no_fragment(self) -> None:
        self.commit({"docs/a.rst": "words\n"}, "docs")
        self.assertEqual(self.check(), (0, ""))

    def test_a_fragment_towncrier_cannot_read_fails(self) -> None:
        self.commit({"newsfragments/3.bugfixes": "Fixed.\n"}, "a typo")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertIn("newsfragments/3.bugfixes is not", out)

    def test_a_commit_listed_as_exempt_passes_and_baseline_lists_them(
        self,
    ) -> None:
        self.commit({"caretproto/a.py": "# x\n"}, "before the check")
        baseline = subprocess.run(
            [sys.executable, ".ci/check-news", "--baseline"],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertTrue(baseline.endswith(" before the check\n"), baseline)
        (self.repo / ".ci" / "news-exempt").write_text(f"# old\n{baseline}")
        self.assertEqual(self.check(), (0, ""))
        self.commit({"caretproto/a.py": "# y\n"}, "after the check")
        status, out = self.check()
        self.assertEqual(status, 1)
        self.assertNotIn("before the check", out)
        self.assertIn("after the check", out)
