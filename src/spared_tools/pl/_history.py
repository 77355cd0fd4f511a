"""``sp.pl.training_history``: loss curves from the stored training metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from spared_tools._docs import d
from spared_tools._keys import Key

from ._utils import figure_axes, finish, style_axes

_X_CANDIDATES = ("step", "epoch")
_BEST_CANDIDATES = ("val_mse", "val_loss", "MSE", "val_MSE", "loss")


def _is_correlation(name: str) -> bool:
    low = name.lower()
    return "pcc" in low or "corr" in low or "pearson" in low


def _history_frame(data: Any, key: str) -> pd.DataFrame:
    if isinstance(data, AnnData):
        if key not in data.uns:
            raise KeyError(f"adata.uns has no entry {key!r}; train a model first or pass key=.")
        entry = data.uns[key]
        if not isinstance(entry, Mapping) or "history" not in entry:
            raise KeyError(f"adata.uns[{key!r}] has no 'history' with the training metrics.")
        data = entry["history"]
    if isinstance(data, Mapping) and isinstance(data.get("epochs"), Sequence | pd.DataFrame):
        data = data[
            "epochs"
        ]  # GeneQuery: {"epochs": [{epoch, train_loss, val_loss}, ...], "best_epoch": ...}
    if isinstance(data, pd.DataFrame):
        df = data
    elif isinstance(data, Mapping):
        try:
            df = pd.DataFrame(dict(data))
        except ValueError as err:
            raise ValueError(f"Could not read the training history as a table: {err}") from err
    elif isinstance(data, Sequence) and not isinstance(data, str):
        if not all(isinstance(r, Mapping) for r in data):
            raise TypeError("A training history given as a list must hold one dict of metrics per entry.")
        df = pd.DataFrame(list(data))
    else:
        raise TypeError(
            f"history must be an AnnData, a DataFrame, a mapping of columns or a list of dicts, "
            f"got {type(data).__name__}."
        )
    if df.empty:
        raise ValueError("The training history is empty.")
    return df


@d.inject
def training_history(
    data: AnnData | pd.DataFrame | Sequence[Mapping[str, float]] | Mapping[str, Any],
    key: str = Key.SPACKLE,
    *,
    metrics: Sequence[str] | None = None,
    x: str | None = None,
    best: str | None = "auto",
    logy: bool = False,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.5, 3.8),
    show: bool | None = None,
    save: str | Path | None = None,
    dpi: float | None = None,
) -> Axes | None:
    """Plot training and validation curves from the metrics a model stored during training.

    Each metric is drawn against the step (or epoch) at which it was logged; entries where a metric is
    missing (e.g. validation metrics logged less often than the training loss) are skipped for that
    metric only. Correlation metrics (names containing ``PCC``/``corr``) go on a second y axis on the
    right when losses or errors are drawn too. The best value of the ``best`` metric (its minimum) is
    marked with a star, which is the checkpoint the models keep.

    Parameters
    ----------
    data
        An :class:`~anndata.AnnData` (read from ``adata.uns[key]["history"]``), a DataFrame (SpaCKLE:
        ``step``, ``MSE``, ``MAE``, ``PCC-gene``, ...), a mapping of columns, a GeneQuery history (a mapping
        whose ``"epochs"`` holds the per-epoch records), or a list of dicts such as
        ``{"step": 100, "train_loss": 0.4, "val_loss": 0.5}``.
    key
        Entry of ``adata.uns`` when ``data`` is an AnnData (``"spackle"``, ``"genequery"``, ...).
    metrics
        Columns to draw; default: every numeric column except the x column, ``epoch``, ``step`` and counts
        (names starting with ``n_``).
    x
        Column for the x axis; default ``"step"`` when present, else ``"epoch"``, else the entry number.
    best
        Metric whose minimum is marked; ``"auto"`` picks the first present of ``val_mse``, ``val_loss``,
        ``MSE``, ``val_MSE``, ``loss``; ``None`` marks nothing.
    logy
        Logarithmic y axis.
    %(ax_figsize)s
    %(show_save_dpi)s

    Returns
    -------
    The main :class:`~matplotlib.axes.Axes` (``None`` when shown); its ``lines`` hold one line per loss or
    error metric, in the order of ``metrics``, labelled with the metric name (correlation metrics are on
    the twin axes, ``ax.figure.axes[1]``, when both kinds are drawn).
    """
    df = _history_frame(data, key)
    if x is None:
        x = next((c for c in _X_CANDIDATES if c in df.columns), None)
    elif x not in df.columns:
        raise KeyError(f"The training history has no column {x!r}; columns: {list(df.columns)}.")
    xs = df[x].to_numpy(dtype=float) if x is not None else np.arange(len(df), dtype=float)
    if metrics is None:
        metrics = [
            c
            for c in df.columns
            if c not in (x, *_X_CANDIDATES)
            and not str(c).startswith("n_")
            and pd.api.types.is_numeric_dtype(df[c])
        ]
    else:
        missing = [m for m in metrics if m not in df.columns]
        if missing:
            raise KeyError(f"Metrics {missing} not in the training history; columns: {list(df.columns)}.")
    if not metrics:
        raise ValueError(f"The training history has no numeric metric to plot; columns: {list(df.columns)}.")
    if best == "auto":
        best = next((m for m in _BEST_CANDIDATES if m in df.columns), None)
    elif best is not None and best not in df.columns:
        raise KeyError(f"best={best!r} is not a column of the training history.")

    fig, ax = figure_axes(ax, figsize)
    corr = [m for m in metrics if _is_correlation(str(m))]
    errors = [m for m in metrics if m not in corr]
    ax_corr = ax.twinx() if corr and errors else ax
    for i, m in enumerate(metrics):
        y = pd.to_numeric(df[m], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(y) & np.isfinite(xs)
        marker = "o" if ok.sum() <= 30 else None
        style = "-" if str(m).startswith("train") else (":" if m in corr else "--")
        target = ax_corr if m in corr else ax
        target.plot(xs[ok], y[ok], linestyle=style, marker=marker, markersize=3, color=f"C{i}", label=m)
    if best is not None:
        y = pd.to_numeric(df[best], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(y) & np.isfinite(xs)
        if ok.any():
            j = np.flatnonzero(ok)[np.argmin(y[ok])]
            ax.scatter([xs[j]], [y[j]], marker="*", s=120, color="black", zorder=5,
                       label=f"best {best} = {y[j]:.4g} at {x or 'entry'} {xs[j]:g}")  # fmt: skip
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x or "entry")
    ax.set_ylabel("loss / error" if errors else "correlation")
    if ax_corr is not ax:
        ax_corr.set_ylabel("correlation")
        ax_corr.spines["top"].set_visible(False)
    title = f"Training history ({key})" if isinstance(data, AnnData) else "Training history"
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if ax_corr is not ax:  # two y axes: the legend goes below the plot, clear of both sets of lines
        h2, l2 = ax_corr.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, frameon=False, fontsize="small", loc="upper center",
                  bbox_to_anchor=(0.5, -0.15), ncols=min(3, len(labels)))  # fmt: skip
    else:
        ax.legend(handles, labels, frameon=False, fontsize="small")
    style_axes(ax, grid=True)
    return finish(fig, ax, show=show, save=save, dpi=dpi)
