"""Sphinx configuration for the portnn documentation.

Build from the repository root with warnings as errors::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The examples written as ``>>>`` blocks can be run with the doctest builder::

    sphinx-build -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import os
import sys

# Import portnn from this checkout, without installing it.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import portnn  # noqa: E402

# -- Project information -----------------------------------------------------

project = "portnn"
author = "portnn developers"
copyright = "portnn developers"
release = portnn.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "myst_parser",  # benchmarks.md: tables that bench/ scripts print as Markdown
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# The docstrings are plain reST with Google/NumPy-style sections at most.
napoleon_google_docstring = True
napoleon_numpy_docstring = True

# Signatures stay short; the docstrings say what the arguments take.
autodoc_typehints = "none"
autodoc_member_order = "bysource"

# Only the ">>>" blocks are doctests; the backend-specific examples are
# ordinary code blocks, since not every machine has torch or a CUDA GPU.
doctest_global_setup = """
import numpy as np
import portnn as pn
pn.set_backend("numpy")
"""

# -- HTML output -------------------------------------------------------------

html_theme = "furo"
html_title = f"portnn {release}"
