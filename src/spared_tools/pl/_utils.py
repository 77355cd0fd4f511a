"""Helpers shared by the plotting functions: figure finishing, value extraction and spot geometry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from spared_tools._atomic import atomic_path
from spared_tools._logging import logger

#: Colours used for the methods / models that appear in several plots, so that a method keeps its colour.
METHOD_COLORS = {
    "spackle": "#1f77b4",
    "median": "#ff7f0e",
    "truth": "#2ca02c",
    "kept": "#1f77b4",
    "removed": "#d62728",
}


def style_axes(ax: Axes, *, grid: bool = False) -> None:
    """Scanpy-like axes: no top/right spines, light grid on request."""
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    if grid:
        ax.grid(True, color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)


def finish(
    fig: Figure | SubFigure,
    ret: Any,
    *,
    show: bool | None,
    save: str | Path | None,
    dpi: float | None = None,
) -> Any:
    """Save and/or show ``fig``; return ``ret`` unless the figure was shown (scanpy semantics).

    Parameters
    ----------
    fig
        The figure to finish.
    ret
        What the plotting function returns when the figure is not shown (an Axes or the Figure).
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None`` shows it only when matplotlib runs in
        interactive mode (:func:`matplotlib.is_interactive`).
    save
        Path to write the figure to; the format follows the file extension.
    dpi
        Resolution used when saving; ``None`` uses ``rcParams["savefig.dpi"]``.
    """
    if save is not None:
        path = Path(save)
        if path.parent != Path() and not path.parent.exists():
            raise FileNotFoundError(f"Cannot save the figure: directory {str(path.parent)!r} does not exist.")
        root = fig if isinstance(fig, Figure) else fig.figure  # a SubFigure saves its whole figure
        fmt = path.suffix[1:] or str(mpl.rcParams["savefig.format"])
        if not path.suffix:  # matplotlib's rule: the default format's extension is appended
            path = path.with_name(f"{path.name}.{fmt}")
        with atomic_path(path) as tmp:  # never a half-written figure where a good one was
            root.savefig(tmp, format=fmt, dpi=dpi if dpi is not None else "figure", bbox_inches="tight")
        logger.info("saved figure to %s", path)
    if show is None:
        show = mpl.is_interactive()
    if show:
        plt.show()
        return None
    return ret


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """Create a figure through pyplot (so that it shows in notebooks) with constrained layout."""
    return plt.figure(figsize=figsize, layout=kwargs.pop("layout", "constrained"), **kwargs)


def figure_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure | SubFigure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` with one axes when ``ax`` is ``None``."""
    if ax is None:
        fig = new_figure(figsize)
        return fig, fig.subplots()
    return ax.figure, ax


def dense_column(X, j: int | np.ndarray) -> np.ndarray:
    """Return column(s) ``j`` of a dense or sparse matrix as a float64 dense array."""
    if sp.issparse(X):
        col = X[:, j]
        col = col.toarray() if sp.issparse(col) else np.asarray(col)
    else:
        col = np.asarray(X)[:, j]
    col = np.asarray(col, dtype=np.float64)
    return col.ravel() if np.ndim(j) == 0 else col


def gene_values(adata: AnnData, gene: str, layer: str | None) -> np.ndarray:
    """Values of ``gene`` in ``layer`` (``None`` = ``X``) as float64, with clear errors."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass the layer(s) to plot with layers=.")
        X = adata.X
    else:
        if layer not in adata.layers:
            raise KeyError(
                f"Layer {layer!r} not found in adata.layers; available: {sorted(adata.layers.keys())}."
            )
        X = adata.layers[layer]
    j = adata.var_names.get_loc(gene)
    if not isinstance(j, int | np.integer):
        raise ValueError(f"Gene {gene!r} occurs more than once in adata.var_names; make the names unique.")
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.dtype == np.bool_:
        return dense_column(X, int(j))
    if not np.issubdtype(data.dtype, np.number):
        raise TypeError(f"Layer {layer!r} must be numeric to be plotted, got dtype {data.dtype}.")
    return dense_column(X, int(j))


def resolve_limit(lim: float | str | None, values: np.ndarray, *, default: float) -> float:
    """Resolve a colour limit given as a number, ``"pXX"`` (percentile of finite values) or ``None``."""
    finite = values[np.isfinite(values)]
    if lim is None:
        return default
    if isinstance(lim, str):
        if not lim.startswith("p"):
            raise ValueError(
                f"Colour limits given as strings must look like 'p99' (a percentile), got {lim!r}."
            )
        try:
            q = float(lim[1:])
        except ValueError as err:
            raise ValueError(f"Could not read a percentile from colour limit {lim!r}.") from err
        if not 0 <= q <= 100:
            raise ValueError(f"Percentile in colour limit {lim!r} must lie in [0, 100].")
        return float(np.percentile(finite, q)) if finite.size else default
    return float(lim)


def as_list(x: str | Sequence[Any] | None) -> list[Any]:
    """Wrap a scalar (or ``None``) into a list; leave sequences as lists."""
    if x is None:
        return [None]
    if isinstance(x, str) or not isinstance(x, Sequence):
        return [x]
    return list(x)


def frame_from(obj: Any, *, what: str) -> pd.DataFrame:
    """Turn a DataFrame, a mapping of columns or a mapping of records into a DataFrame with a clear error."""
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, Mapping):
        try:
            return pd.DataFrame(dict(obj))
        except ValueError as err:
            raise ValueError(f"Could not read {what} as a table: {err}") from err
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        return pd.DataFrame(list(obj))
    raise TypeError(f"{what} must be a pandas DataFrame or a mapping of columns, got {type(obj).__name__}.")
