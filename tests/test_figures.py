# -*- test-case-name: tests.test_figures -*-
"""
The records of measured figures (docs/benchmarks.json): the format
C{benchmarks/harness.py} writes is the one C{docs/_ext/figurerecords.py}
reads, a figure shows its spread, the staleness rule counts only commits
that changed the measured code (and says "unknown" rather than failing), and
every figure a page names exists.

No benchmark runs here and nothing is measured; the staleness tests make a
small git repository of their own.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import inCI

REPO = Path(__file__).resolve().parent.parent


def load(name: str, path: Path) -> ModuleType:
    """A module from a file outside the package, without touching sys.path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


figurerecords = load("figurerecords", REPO / "docs" / "_ext" / "figurerecords.py")
harness = load("harness", REPO / "benchmarks" / "harness.py")


def temporaryPath(case: SynchronousTestCase) -> Path:
    """
    A path in a fresh temporary folder, removed after C{case}: C{mktemp}
    would make it in the working directory under pytest.
    """
    folder = tempfile.mkdtemp(prefix="caret-figures-")
    case.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder) / "temp"


def entry(**changes: Any) -> dict[str, Any]:
    """A record as the harness writes it, with C{changes}."""
    made: dict[str, Any] = harness.record(
        "python benchmarks/compare.py --quick",
        {"rr100.caret.cpu": harness.Spread.of([9.6, 9.2, 8.9]).asRecord("µs")},
        {"cpu": {"title": "t", "header": ["server", "rr 100"], "rows": []}},
    )
    made.update(changes)
    return made


class RecordFormatTests(SynchronousTestCase):
    def test_a_record_names_its_command_commit_machine_date_and_load(self) -> None:
        made = entry()
        self.assertEqual(made["command"], "python benchmarks/compare.py --quick")
        self.assertRegex(made["commit"], r"^([0-9a-f]{40}(\+dirty)?|unknown)$")
        for key in ("cpu", "cores", "kernel", "python", "twisted"):
            self.assertIn(key, made["machine"])
        self.assertRegex(made["date"], r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$")
        self.assertEqual(len(made["load"]), 3)

    def test_a_figure_keeps_the_median_min_and_max_of_its_runs(self) -> None:
        figure = entry()["figures"]["rr100.caret.cpu"]
        self.assertEqual(
            (figure["median"], figure["min"], figure["max"], figure["runs"]),
            (9.2, 8.9, 9.6, 3),
        )

    def test_a_written_record_is_read_back_by_name_beside_the_others(self) -> None:
        path = temporaryPath(self)
        harness.writeRecord("first", entry(), path)
        harness.writeRecord("compare", entry(), path)
        records = figurerecords.loadRecords(path)
        self.assertEqual(sorted(records), ["compare", "first"])
        figure = figurerecords.figureNamed(records, "compare.rr100.caret.cpu")
        self.assertEqual(figure["median"], 9.2)

    def test_a_missing_record_or_figure_is_an_error_naming_it(self) -> None:
        records = {"compare": entry()}
        with self.assertRaisesRegex(figurerecords.MissingFigure, "'limits'"):
            figurerecords.figureNamed(records, "limits.hold.caret.kib")
        with self.assertRaisesRegex(figurerecords.MissingFigure, "'rr1.caret.cpu'"):
            figurerecords.figureNamed(records, "compare.rr1.caret.cpu")

    def test_a_figure_shows_its_unit_and_spread(self) -> None:
        self.assertEqual(
            figurerecords.formatFigure(entry()["figures"]["rr100.caret.cpu"]),
            "9.2 µs (8.9\u20139.6)",
        )

    def test_a_figure_of_one_run_shows_no_spread(self) -> None:
        one = harness.Spread.of([145234.0]).asRecord("/s")
        self.assertEqual(figurerecords.formatFigure(one), "145,234 /s")

    def test_a_spread_over_a_fifth_of_the_median_is_wide(self) -> None:
        self.assertTrue(harness.Spread.of([100, 121, 100]).wide())
        self.assertFalse(harness.Spread.of([100, 119, 81]).wide())


class Git:
    """A throw-away repository with a file in C{caretproto/} and one outside."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self("init", "-q")
        self("config", "user.email", "test@example.invalid")
        self("config", "user.name", "test")
        self.change("caretproto/server.py")
        self.change("README.rst")

    def __call__(self, *arguments: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.root), *arguments],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def change(self, path: str) -> str:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(file.read_text() + "x" if file.exists() else "x")
        self("add", path)
        self("commit", "-q", "-m", f"change {path}")
        return self("rev-parse", "HEAD")


class StalenessTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("git") is None:
            if inCI():
                self.fail("CI has git: the staleness rule must be tested")
            raise SkipTest("needs git (outside CI only)")
        self.git = Git(temporaryPath(self))

    def test_only_commits_that_changed_the_measured_code_count(self) -> None:
        measured = self.git("rev-parse", "HEAD")
        record = entry(commit=measured, measures=["caretproto/"])
        self.assertEqual(figurerecords.changesSince(record, self.git.root), 0)
        self.git.change("README.rst")
        self.assertEqual(figurerecords.changesSince(record, self.git.root), 0)
        self.git.change("caretproto/server.py")
        self.git.change("caretproto/rules.py")
        self.assertEqual(figurerecords.changesSince(record, self.git.root), 2)

    def test_a_measurement_of_a_dirty_tree_counts_as_changed(self) -> None:
        record = entry(commit=self.git("rev-parse", "HEAD") + "+dirty")
        self.assertEqual(figurerecords.changesSince(record, self.git.root), 1)

    def test_a_commit_the_clone_lacks_is_unknown(self) -> None:
        record = entry(commit="0123456789abcdef0123456789abcdef01234567")
        self.assertIsNone(figurerecords.changesSince(record, self.git.root))

    def test_no_clone_is_unknown(self) -> None:
        record = entry(commit=self.git("rev-parse", "HEAD"))
        elsewhere = temporaryPath(self)
        elsewhere.mkdir()
        self.assertIsNone(figurerecords.changesSince(record, elsewhere))


class ProvenanceTests(SynchronousTestCase):
    def test_no_git_is_unknown_not_a_failure(self) -> None:
        def noGit(*args: object, **kwargs: object) -> None:
            raise FileNotFoundError("git")

        record = entry(commit="a" * 40)
        self.assertIsNone(figurerecords.changesSince(record, REPO, run=noGit))
        _, warning = figurerecords.provenance(record, None)
        self.assertIn("unknown", warning)

    def test_an_unknown_commit_is_unknown(self) -> None:
        self.assertIsNone(figurerecords.changesSince(entry(commit="unknown"), REPO))

    def test_changed_code_gives_a_warning_with_the_count(self) -> None:
        record = entry(commit="a" * 40)
        text, warning = figurerecords.provenance(record, 3)
        self.assertIn("aaaaaaaaaa", text)
        self.assertIn("python benchmarks/compare.py --quick", text)
        self.assertIn("Stale: 3 commits have changed the measured code", warning)

    def test_unchanged_code_gives_no_warning(self) -> None:
        text, warning = figurerecords.provenance(entry(commit="a" * 40), 0)
        self.assertIsNone(warning)
        self.assertIn("No commit since has changed the measured code", text)


class PagesTests(SynchronousTestCase):
    """Every record and figure that docs/*.rst names is in docs/benchmarks.json."""

    def test_every_named_record_and_figure_exists(self) -> None:
        records = figurerecords.loadRecords(REPO / "docs" / "benchmarks.json")
        named = 0
        for page in sorted((REPO / "docs").glob("*.rst")):
            text = page.read_text()
            for name in re.findall(r"^\.\. caret-figures:: (\S+)", text, re.M):
                figurerecords.recordNamed(records, name)
                named += 1
            for reference in re.findall(r":caret-figure:`([^`]+)`", text):
                figurerecords.figureNamed(records, reference)
                named += 1
        self.assertGreater(named, 0)

    def test_every_record_has_what_the_page_says_of_it(self) -> None:
        records = json.loads((REPO / "docs" / "benchmarks.json").read_text())
        for name, record in records["records"].items():
            for key in ("command", "commit", "date", "machine", "figures", "tables"):
                self.assertIn(key, record, name)
            for figure in record["figures"].values():
                if "median" in figure:
                    self.assertLessEqual(figure["min"], figure["median"])
                    self.assertLessEqual(figure["median"], figure["max"])
