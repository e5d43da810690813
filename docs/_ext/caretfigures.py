"""
The measured figures on the pages, from docs/benchmarks.json: never retyped.

- C{.. caret-figures:: compare} renders the tables of the record
  C{compare} (C{:table: cpu} for one of them), then says where, when and
  at which commit they were measured, and how many commits since changed
  the code they measured, with a warning on the page when any did.
- C{:caret-figure:`compare.rr100.caret.cpu`} is one figure in a sentence:
  its median and unit, and the min and max of its runs.  A page that quotes
  figures in sentences ends the passage with C{.. caret-figures:: compare}
  and C{:provenance:}: where they were measured, and whether the code
  changed since, without the tables.

A record or figure that does not exist is a Sphinx warning, so the docs
build (warnings as errors) fails on it.  The reading and the staleness rule
are in L{figurerecords}; this module only makes nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from figurerecords import (
    MissingFigure,
    changesSince,
    figureNamed,
    formatFigure,
    loadRecords,
    provenance,
    recordNamed,
)
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, SphinxRole

ROOT = Path(__file__).resolve().parent.parent.parent
RECORDS = ROOT / "docs" / "benchmarks.json"

logger = logging.getLogger(__name__)


_loaded: dict[float, dict[str, dict[str, Any]]] = {}


def _records() -> dict[str, dict[str, Any]]:
    # Read once per version of the file: Sphinx keeps its environment from
    # build to build, so the records are not kept there.
    changed = RECORDS.stat().st_mtime if RECORDS.exists() else 0.0
    if changed not in _loaded:
        _loaded.clear()
        _loaded[changed] = loadRecords(RECORDS)
    return _loaded[changed]


class CaretFigures(SphinxDirective):
    """C{.. caret-figures:: RECORD}: a record's tables and where they come from."""

    required_arguments = 1
    option_spec = {"table": directives.unchanged, "provenance": directives.flag}

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(RECORDS))
        name = self.arguments[0]
        try:
            entry = recordNamed(_records(), name)
        except MissingFigure as missing:
            logger.warning(str(missing), location=self.get_location())
            return []
        tables = entry.get("tables", {})
        wanted = self.options.get("table")
        if wanted is not None and wanted not in tables:
            logger.warning(
                f"no table {wanted!r} in the record {name!r}",
                location=self.get_location(),
            )
            return []
        result: list[nodes.Node] = []
        for tableName, table in tables.items():
            if "provenance" in self.options:
                break
            if wanted is None or tableName == wanted:
                result.append(self._table(entry, table))
        text, warning = provenance(entry, changesSince(entry, ROOT))
        result.append(nodes.paragraph(text, text))
        notes = entry.get("notes", [])
        if "provenance" in self.options and notes:
            # The tables' page lists them; a page quoting a figure says so.
            text = (
                f"Flagged: {len(notes)} figures of this run were out of line "
                f"(see the benchmarks page, where the record's tables are)."
            )
            result.append(nodes.warning("", nodes.paragraph(text, text)))
            notes = []
        for note in notes:
            result.append(nodes.warning("", nodes.paragraph(note, f"Flagged: {note}")))
        if warning:
            result.append(nodes.warning("", nodes.paragraph(warning, warning)))
        return result

    def _table(self, entry: dict[str, Any], table: dict[str, Any]) -> nodes.Node:
        figures = entry["figures"]
        header = table["header"]
        group = nodes.tgroup(cols=len(header))
        for _ in header:
            group += nodes.colspec(colwidth=1)
        head = nodes.thead()
        head += self._row(header)
        group += head
        body = nodes.tbody()
        for label, *keys in table["rows"]:
            cells = [label]
            for key in keys:
                figure = figures.get(key) if key else None
                cells.append(formatFigure(figure) if figure else "\u2014")
            body += self._row(cells)
        group += body
        made = nodes.table()
        made += nodes.title(table["title"], table["title"])
        made += group
        return made

    @staticmethod
    def _row(cells: list[str]) -> nodes.row:
        row = nodes.row()
        for text in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text, text)
            row += entry
        return row


class CaretFigure(SphinxRole):
    """C{:caret-figure:`RECORD.FIGURE`}: one figure, in a sentence."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        self.env.note_dependency(str(RECORDS))
        try:
            figure = figureNamed(_records(), self.text)
        except MissingFigure as missing:
            logger.warning(str(missing), location=self.get_location())
            return [nodes.problematic(self.rawtext, self.rawtext)], []
        text = formatFigure(figure)
        return [nodes.inline(text, text)], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("caret-figures", CaretFigures)
    app.add_role("caret-figure", CaretFigure())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
