"""Sphinx configuration for the sermas_bus documentation.

Build: ``make docs`` or ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
The Markdown pages (design.md, threading.md, sermas.md, ...) are read as they
are by myst-parser; the API reference comes from the docstrings (autodoc), so
the compiled extension must be importable (``python setup.py build_ext --inplace``
or an installed package).
"""
from __future__ import annotations

import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)      # the source tree (built in place) when not installed

import sermas_bus  # noqa: E402

project = "sermas_bus"
author = "sermas_bus developers"
copyright = "sermas_bus developers"
release = sermas_bus.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# Markdown: headings get anchors so pages can link to sections (file.md#section)
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# autodoc: members in source order; signatures without the noise of type hints
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_preserve_defaults = True        # show `protocol=_AUTO`, not `<object object at 0x...>`
autodoc_inherit_docstrings = False      # an override's doc is its own, not its base's
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"sermas_bus {release}"
html_static_path: list = []

# Pages other branches add (performance.md, asyncio.md).  While one is missing,
# its line in index.md's toctree is dropped and Markdown links to it are
# rendered as their plain text, so the build (with -W) passes without it; once
# the file is there it is included and linked with no change here.
OPTIONAL_PAGES = ("performance", "asyncio")
MISSING_PAGES = [p for p in OPTIONAL_PAGES if not os.path.exists(os.path.join(DOCS, p + ".md"))]
_ALT = "|".join(MISSING_PAGES)
_TOC_ENTRY = re.compile(r"^(?:%s)[ \t]*\n" % _ALT, re.M) if MISSING_PAGES else None
_LINK = re.compile(r"\[([^\]]+)\]\((?:\./)?(?:%s)\.md(?:#[^)]*)?\)" % _ALT) if MISSING_PAGES else None


def _drop_missing_pages(app, docname, source):
    if not MISSING_PAGES:
        return
    text = source[0]
    if docname == root_doc:
        text = _TOC_ENTRY.sub("", text)
    source[0] = _LINK.sub(r"\1", text)


def setup(app):
    app.connect("source-read", _drop_missing_pages)
