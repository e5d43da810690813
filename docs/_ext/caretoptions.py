"""
A Sphinx directive, C{.. caret-options::}, that lists the options of
C{twistd caret} from L{caretproto.tap.Options} itself.

The list on the running page is made by L{optionlist.optionEntries} from the
same attributes, in the same way, as C{twistd caret --help}, so the two cannot
drift apart.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from optionlist import optionEntries
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


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
