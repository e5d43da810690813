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
# api/caretproto.server.CaretProtocol.html and so on.  --quiet matters: the
# extension turns anything pydoctor prints into a Sphinx warning, and -W makes
# those errors, so an unresolved L{...} in a docstring fails the build.
pydoctor_url_path = "api/"
pydoctor_args = [
    "--quiet",
    "--project-name=caretproto",
    "--project-base-dir=" + str(_ROOT),
    "--docformat=epytext",
    "--html-output={outdir}/api",
    "--privacy=HIDDEN:caretproto.*._*",
    str(_ROOT / "caretproto"),
]
