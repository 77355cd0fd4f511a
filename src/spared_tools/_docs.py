"""Shared numpydoc fragments (squidpy's ``_docs.py``, scanpy's ``_utils._doc_params``).

A parameter block written the same way in several docstrings lives here once. A docstring names it with
a line holding only ``%(name)s``, at the indentation of the section it belongs to; :meth:`DocFragments.inject`
replaces that line with the fragment, re-indented::

    from spared_tools._docs import d

    @d.inject
    def plot(adata, *, show=None, save=None, dpi=None):
        \"\"\"Draw something.

Parameters
----------
        adata
            Data.
        %(show_save_dpi)s
        \"\"\"

Only whole-line placeholders are replaced, so a ``%`` elsewhere in a docstring ("10 %") is left alone,
and an unknown name raises ``KeyError`` at import time.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DocFragments", "d"]

_T = TypeVar("_T", bound=Callable)
_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.M)


class DocFragments:
    """Named docstring fragments and the decorator that fills them in.

    Parameters
    ----------
    **fragments
        Name → text of a fragment (dedented; continuation lines indented by four spaces, as in a
        numpydoc ``Parameters`` section).
    """

    def __init__(self, **fragments: str) -> None:
        self.fragments = {name: textwrap.dedent(text).strip("\n") for name, text in fragments.items()}

    def substitute(self, doc: str) -> str:
        """``doc`` with every whole-line ``%(name)s`` replaced by its fragment at that line's indentation.

        Parameters
        ----------
        doc
            A docstring.
        """

        def fill(match: re.Match[str]) -> str:
            name = match["name"]
            if name not in self.fragments:
                raise KeyError(f"No docstring fragment {name!r}; known: {sorted(self.fragments)}.")
            indent = match["indent"]
            return "\n".join(indent + line if line else "" for line in self.fragments[name].splitlines())

        return _PLACEHOLDER.sub(fill, doc)

    def inject(self, obj: _T) -> _T:
        """Decorator: fill the placeholders of ``obj.__doc__`` in place and return ``obj``.

        Parameters
        ----------
        obj
            A function or class with a docstring.
        """
        if obj.__doc__:
            obj.__doc__ = self.substitute(obj.__doc__)
        return obj


d = DocFragments(
    show_save_dpi="""
    show
        Show the figure; ``None`` shows it only in interactive matplotlib sessions.
    save
        File to save the figure to (format from the extension).
    dpi
        Resolution for ``save``.
    """,
    spared_count_thresholds="""
    cell_min_counts
        Spots need a total count strictly above this.
    cell_max_counts
        Spots need a total count strictly below this.
    gene_min_counts
        Genes need a total count strictly above this.
    gene_max_counts
        Genes need a total count strictly below this.
    """,
    train_data="""
    layer
        Layer holding log1p expression (``None``: ``X``).
    genes
        Genes to train on (default: every gene of ``adata``).
    split_key
        ``obs`` column with the split; ``None`` trains on every spot with no validation.
    train_value
        Value(s) of ``obs[split_key]`` marking training spots.
    val_value
        Value(s) marking validation spots (``None``: no validation).
    """,
    patches_key="""
    adata
        Annotated data with patches.
    key
        Key given to :func:`~spared_tools.pp.extract_patches` as ``key_added``.
    """,
    crop_centre="""
    x
        Column of the centre, in pixels.
    y
        Row of the centre, in pixels.
    side
        Crop side in pixels.
    fill
        Value of pixels that fall outside the image.
    """,
    truth_pred="""
    truth
        ``(n_spots, n_genes)`` true values.
    pred
        ``(n_spots, n_genes)`` predictions.
    """,
    ax_figsize="""
    ax
        Axes to draw on; a new figure when ``None``.
    figsize
        Size of the new figure in inches (ignored with ``ax``).
    """,
)
