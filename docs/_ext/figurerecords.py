"""
The measured figures of docs/benchmarks.json, as the docs read them: a
record by name, one figure as text, and whether the code a record measured
has changed since.

Apart from the directive (C{caretfigures.py}) so that C{tests/test_figures.py}
can check the format and the staleness rule without Sphinx.  It does not
measure anything: the records are written by C{benchmarks/harness.py}.

A record::

    {"command": "python benchmarks/compare.py ...",
     "commit": "<40 hex digits>[+dirty]",
     "date": "2026-12-04 18:00 UTC",
     "machine": {"cpu": ..., "cores": ..., "kernel": ..., "python": ...,
                 "twisted": ...},
     "load": [1.0, 0.8, 0.5],
     "measures": ["caretproto/", "benchmarks/servers/"],
     "notes": ["what the page must say beside the figures"],
     "figures": {"rr100.caret.cpu": {"median": 9.2, "min": 8.9,
                                     "max": 9.6, "runs": 5, "unit": "µs"}},
     "tables": {"cpu": {"title": ..., "header": [...],
                        "rows": [["label", "figure name" or null, ...]]}}}
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

DASH = "\u2013"

_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class MissingFigure(LookupError):
    """A page names a record or a figure that docs/benchmarks.json lacks."""


def loadRecords(path: Path) -> dict[str, dict[str, Any]]:
    """Every record of C{path}, by name; none if the file does not exist."""
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = json.loads(path.read_text())["records"]
    return records


def recordNamed(records: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """
    @raise MissingFigure: there is no record C{name}.
    """
    try:
        return records[name]
    except KeyError:
        raise MissingFigure(
            f"no record {name!r} in docs/benchmarks.json "
            f"(there are: {', '.join(sorted(records)) or 'none'})"
        ) from None


def figureNamed(records: dict[str, dict[str, Any]], reference: str) -> dict[str, Any]:
    """
    The figure C{"compare.rr100.caret.cpu"}: record C{compare}, figure
    C{rr100.caret.cpu}.

    @raise MissingFigure: there is no such record or figure.
    """
    name, _, key = reference.partition(".")
    entry = recordNamed(records, name)
    figure = entry["figures"].get(key)
    if not figure or "median" not in figure:
        raise MissingFigure(f"no figure {key!r} in the record {name!r}")
    return dict(figure)


def formatFigure(figure: dict[str, Any], unit: bool = True) -> str:
    """
    C{9.2 µs (8.9-9.6)}, with an en dash: the median, then the min and max
    of the runs when there were several and they differ.
    """

    def number(value: float) -> str:
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) >= 1 else f"{value:.2g}"

    text = number(figure["median"])
    if unit and figure.get("unit"):
        text += f" {figure['unit']}"
    if figure.get("runs", 1) > 1 and figure["min"] != figure["max"]:
        text += f" ({number(figure['min'])}{DASH}{number(figure['max'])})"
    return text


def measuredCommit(entry: dict[str, Any]) -> str | None:
    """The commit a record was measured at, without C{+dirty}; C{None} if unknown."""
    commit = str(entry.get("commit") or "").removesuffix("+dirty")
    return commit if _COMMIT.match(commit) else None


def changesSince(
    entry: dict[str, Any], root: Path, run: Any = subprocess.run
) -> int | None:
    """
    How many commits since C{entry}'s measurement changed the code it
    measured (its C{measures} paths): C{git rev-list --count COMMIT..HEAD --
    PATHS} in C{root}.  A record measured on a dirty tree counts as changed
    at least once, since what was measured is in no commit.

    @return: the count, or C{None} when it cannot be known (no git, not a
        clone, a commit this clone lacks).
    """
    commit = measuredCommit(entry)
    if commit is None:
        return None
    paths = list(entry.get("measures") or ["caretproto/"])
    try:
        done = run(
            [
                "git",
                "-C",
                str(root),
                "rev-list",
                "--count",
                f"{commit}..HEAD",
                "--",
                *paths,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        return None
    count = int(done.stdout.strip())
    if str(entry.get("commit", "")).endswith("+dirty"):
        count = max(count, 1)
    return count


def provenance(entry: dict[str, Any], changes: int | None) -> tuple[str, str | None]:
    """
    What a page says under a record's figures: where and how they were
    measured, and a warning when the measured code changed since (or when
    that cannot be known).

    @return: C{(text, warning or None)}.
    """
    machine = entry.get("machine", {})
    commit = str(entry.get("commit") or "unknown")
    short = measuredCommit(entry)
    shown = (
        short[:10] + ("+dirty" if commit.endswith("+dirty") else "")
        if short
        else commit
    )
    load = " ".join(f"{value:.2f}" for value in entry.get("load", []))
    text = (
        f"Measured {entry.get('date', 'at an unknown date')} at commit {shown} "
        f"on {machine.get('cpu', 'an unknown CPU')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('kernel', '?')}; "
        f"Python {machine.get('python', '?')}, Twisted {machine.get('twisted', '?')}; "
        f"load average {load or 'unknown'}.  "
        f"Command: {entry.get('command', 'unknown')}.  "
        "Each figure is the median of its runs, with their min and max."
    )
    paths = ", ".join(entry.get("measures") or ["caretproto/"])
    if changes is None:
        return text, (
            f"Commits since this measurement that changed the measured code "
            f"({paths}): unknown."
        )
    if changes:
        plural = "commit has" if changes == 1 else "commits have"
        return text, (
            f"Stale: {changes} {plural} changed the measured code ({paths}) "
            f"since this measurement; these figures may no longer be true."
        )
    return text + f"  No commit since has changed the measured code ({paths}).", None
