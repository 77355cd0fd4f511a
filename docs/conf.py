"""Sphinx configuration for spared_tools (myst-nb + autosummary, numpydoc docstrings via napoleon).

Build locally (warnings are errors)::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Tutorials are the executed notebooks in the top-level ``notebooks/`` folder, linked in through the
``docs/notebooks`` symlink (never copied) and rendered with their stored outputs.
"""

from __future__ import annotations

import os
import sys
import warnings
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("MPLBACKEND", "Agg")
# sphinx-autodoc-typehints still calls an API that Sphinx 9 deprecates; silence that Python warning (it is
# not a Sphinx build warning and says nothing about our docs).
warnings.filterwarnings("ignore", message=".*set_application.*", category=DeprecationWarning)

project = "spared_tools"
author = "spared_tools developers"
copyright = f"{date.today().year}, {author}"
try:
    release = version("spared-tools")
except PackageNotFoundError:  # building from a source tree without installing
    release = "0.0.0"
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]
# Cross-links to the scverse / numpy / matplotlib docs need the network: only on Read the Docs, so that an
# offline CI build with -W does not fail on an unreachable inventory.
if os.environ.get("READTHEDOCS") == "True" or os.environ.get("SPARED_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
    }

# .rst first: autosummary writes its stub pages with the first suffix, and they are reStructuredText.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# --- autodoc / autosummary / napoleon -------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
typehints_use_signature = False
typehints_use_signature_return = False

# --- myst / myst-nb -------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "substitution"]
myst_heading_anchors = 3
# Notebooks are committed executed (CI re-executes them in a separate job); the docs render stored outputs.
nb_execution_mode = "off"
nb_merge_streams = True

# --- HTML -----------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "spared_tools"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
html_static_path: list[str] = []
suppress_warnings = ["myst.header"]
