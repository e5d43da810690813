"""
Sphinx configuration for caretproto's documentation.

The narrative pages are reStructuredText in this folder; the API reference is
generated from the epytext docstrings by pydoctor, through its Sphinx
extension, as Twisted's own documentation is.  Build it with::

    python -m sphinx -W -b html docs docs/_build/html
"""

from __future__ import annotations

import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
_ROOT = _HERE.parent

# The options directive (docs/_ext/caretoptions.py) imports caretproto.tap, so
# the pages describe the code in this tree even when another copy is installed.
sys.path[:0] = [str(_ROOT), str(_HERE / "_ext")]

project = "caretproto"
copyright = "the caretproto developers"
author = "the caretproto developers"

extensions = [
    # pydoctor's extension reads intersphinx_mapping, so intersphinx is on;
    # the mapping stays empty, since CI builds without network access.
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
    "caretoptions",
    "caretfigures",
]
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

exclude_patterns = ["_build"]
# Option names are everywhere in prose; "--port" must not become an en dash.
smartquotes = False
html_theme = "alabaster"
html_static_path: list[str] = []

# pydoctor writes the API reference to api/ in the output; pages link to it as
# api/caretproto.server.CaretProtocol.html and so on.  The extension passes
# --quiet itself and turns each line pydoctor still prints (its warnings: an
# unresolved L{...}, a malformed docstring) into a Sphinx warning, which -W
# makes an error.  A second --quiet here would silence those warnings too,
# and with them the check.
pydoctor_url_path = "api/"
pydoctor_args = [
    "--project-name=caretproto",
    "--project-base-dir=" + str(_ROOT),
    "--docformat=epytext",
    "--html-output={outdir}/api",
    "--privacy=HIDDEN:caretproto.*._*",
    # Private classes that a public signature or base class names: pydoctor
    # links to them whatever their privacy, so they get a page (marked
    # private) rather than a broken link.  Named in any module, so that a
    # class moving between modules keeps its page; .ci/checklinks finds any
    # other.
    *(
        "--privacy=PRIVATE:caretproto.*." + name
        for name in [
            "_Burst",
            "_Collector",
            "_Connection",
            "_Network",
            "_Owed",
            "_ServerFactory",
            "_Worker",
        ]
    ),
    str(_ROOT / "caretproto"),
]
