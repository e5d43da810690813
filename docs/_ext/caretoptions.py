"""
A Sphinx directive, C{.. caret-options::}, that lists the options of
C{twistd caret} from L{caretproto.tap.Options} itself.

The list on the running page is made from the same attributes, in the same
way, as C{twistd caret --help}, so the two cannot drift apart;
C{tests/test_docs.py} checks that every entry reads as in C{--help}.  It is
not a general renderer for L{twisted.python.usage.Options}.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from twisted.python import usage


def optionEntries(options: usage.Options) -> list[tuple[str, str]]:
    """
    Each option that C{options} shows in its help, as C{(flags, description)}:
    C{("-p, --port=", "Where to listen: ...")}.  The description is composed
    as Twisted's C{docMakeChunks} composes it for C{--help}: the option's
    documentation, its default, and what its coerce function accepts.
    """
    internal = getattr(options, "internal", frozenset())
    shortOf = {
        long: short
        for short, long in options.synonyms.items()
        if len(short) == 1 and short != long
    }
    entries = []
    for name in sorted(options.longOpt):
        long = name.rstrip("=")
        if long in internal:
            continue
        isParameter = name.endswith("=")
        doc = (options.docs.get(long) or "").strip()
        default = options.defaults.get(long)
        if isParameter and default is not None:
            doc = f"{doc} [default: {default}]"
        dispatch = options._dispatch.get(long)
        if isParameter and isinstance(dispatch, usage.CoerceParameter) and dispatch.doc:
            doc = f"{doc}. {dispatch.doc}"
        flags = f"--{long}=" if isParameter else f"--{long}"
        if long in shortOf:
            flags = f"-{shortOf[long]}, {flags}"
        entries.append((flags, doc))
    return entries


class CaretOptions(SphinxDirective):
    """
    C{.. caret-options::}: a definition list of C{twistd caret}'s options.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        from caretproto.tap import Options

        items = nodes.definition_list()
        for flags, description in optionEntries(Options()):
            items += nodes.definition_list_item(
                "",
                nodes.term("", "", nodes.literal(flags, flags)),
                nodes.definition("", nodes.paragraph(description, description)),
            )
        return [items]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("caret-options", CaretOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
