"""``sp.pl.completion``: predicted vs true values on masked entries, and error vs mask fraction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._settings import resolve_seed
from spared_tools._validation import check_int

from ._utils import METHOD_COLORS, finish, frame_from, new_figure, style_axes

_CURVE_KEYS = ("results", "summary", "curve", "mse_curve", "by_mask_fraction", "mse")
_VALUE_KEYS = ("values", "entries", "masked_values", "masked")
_TRUE_NAMES = ("true", "truth", "y_true", "target")
_FRAC_NAMES = ("mask_frac", "mask_fraction", "mask_prob", "fraction")


def _column(df: pd.DataFrame, names: Sequence[str]) -> str | None:
    lower = {str(c).lower(): c for c in df.columns}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def _curve_frame(obj: Any, methods: Sequence[str], metric: str) -> pd.DataFrame:
    """Long table ``mask_fraction, method, value[, std]`` from a per-mask, summary or wide curve table."""
    df = frame_from(obj, what="the error curve").copy()
    if "method" in df.columns:
        frac_col = _column(df, _FRAC_NAMES)
        if frac_col is None:
            raise KeyError(f"The error curve needs a 'mask_frac' column; it has {list(df.columns)}.")
        value_col = _column(df, [metric, f"{metric}_mean"])
        if value_col is None:
            raise KeyError(f"The error curve has no column {metric!r}; it has {list(df.columns)}.")
        std_col = _column(df, [f"{metric}_std"])
        long = pd.DataFrame(
            {
                "mask_fraction": df[frac_col].to_numpy(dtype=float),
                "method": df["method"].astype(str).to_numpy(),
                "value": pd.to_numeric(df[value_col], errors="coerce").to_numpy(dtype=float),
            }
        )
        if std_col is not None:
            long["std"] = pd.to_numeric(df[std_col], errors="coerce").to_numpy(dtype=float)
        if long.duplicated(["method", "mask_fraction"]).any():  # one row per mask: mean ± std over masks
            g = long.groupby(["method", "mask_fraction"], sort=False)["value"]
            long = pd.concat([g.mean(), g.std(ddof=0).rename("std")], axis=1).reset_index()
        return long
    # wide: index (or a column) = mask fraction, one column per method
    frac_col = _column(df, _FRAC_NAMES)
    if frac_col is not None:
        df = df.set_index(frac_col)
    cols = [m for m in methods if m in df.columns]
    if not cols:
        raise KeyError(
            f"The error curve has none of the methods {list(methods)}; columns: {list(df.columns)}."
        )
    out = (
        df[cols]
        .rename_axis("mask_fraction")
        .reset_index()
        .melt(id_vars="mask_fraction", var_name="method", value_name="value")
    )
    out["mask_fraction"] = out["mask_fraction"].astype(float)
    return out


def _values_frame(obj: Any, methods: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    df = frame_from(obj, what="the masked values")
    true_col = next((c for c in _TRUE_NAMES if c in df.columns), None)
    if true_col is None:
        raise KeyError(f"The masked values need a 'true' column; got columns {list(df.columns)}.")
    preds = {m: df[m].to_numpy(dtype=np.float64) for m in methods if m in df.columns}
    if not preds:
        raise KeyError(
            f"The masked values have none of the methods {list(methods)}; columns: {list(df.columns)}."
        )
    return df[true_col].to_numpy(dtype=np.float64), preds


def _lookup(result: Mapping[str, Any], names: Sequence[str]) -> Any:
    for n in names:
        if n in result:
            return result[n]
    return None


@d.inject
def completion(
    result: Mapping[str, Any] | pd.DataFrame | AnnData,
    *,
    key: str = Key.uns.spackle_evaluation,
    values: pd.DataFrame | Mapping[str, Any] | None = None,
    methods: Sequence[str] = (Key.layers.spackle, Key.layers.median),
    method_labels: Mapping[str, str] | None = None,
    metric: str = "MSE",
    overlay: bool = False,
    max_points: int = 20000,
    seed: int | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    dpi: float | None = None,
) -> Figure | None:
    """Completion quality: predicted vs true values of masked entries, and the error vs the mask fraction.

    Designed for :func:`spared_tools.tl.evaluate_completion`, which hides real (non-zero) entries at
    random, completes them with SpaCKLE and with the adaptive median method on the same masks, and scores
    both: the error-curve panel shows the mean ± standard deviation over masks of ``metric`` per mask
    fraction and method. When the hidden entries' true and completed values are available (``values=``
    or a ``"values"`` entry of the result), one scatter panel per method shows them against each other.

    Parameters
    ----------
    result
        The per-mask table returned by :func:`~spared_tools.tl.evaluate_completion` (columns ``method``,
        ``mask_frac``, ``MSE``, ...), its summary table (``<metric>_mean`` / ``<metric>_std``), a wide table
        indexed by mask fraction with one column per method, or a mapping holding such a table under
        ``"results"`` (also ``"summary"``, ``"curve"``, ``"mse_curve"``, ``"by_mask_fraction"``, ``"mse"``)
        and optionally the masked values under ``"values"`` (also ``"entries"``, ``"masked_values"``,
        ``"masked"``). An :class:`~anndata.AnnData` is read from ``adata.uns[key]``.
    key
        Entry of ``adata.uns`` holding the result when ``result`` is an AnnData.
    values
        True and completed values of the hidden entries: a table (or mapping of arrays) with a ``true``
        column and one column per method; overrides a ``"values"`` entry of ``result``.
    methods
        Methods to draw, in this order (those absent from the result are skipped).
    method_labels
        Display names, e.g. ``{"spackle": "SpaCKLE", "median": "median"}``.
    metric
        Metric of the curve drawn on the y axis (``"MSE"``, ``"MAE"``, ``"PCC-gene"``, ...; matched without
        regard to case).
    overlay
        Draw the methods' scatters in one panel (colours per method, metrics in the legend) instead of one
        panel per method.
    max_points
        Draw at most this many (randomly chosen) entries per scatter panel; the metrics in the titles
        use every entry.
    seed
        Seed for choosing the drawn entries (``None``: ``sp.settings.seed``).
    figsize
        Figure size in inches; default 3.6 inches per panel.
    %(show_save_dpi)s

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` (``None`` when shown): one scatter panel per method (titles
    give the MSE and Pearson correlation over all masked entries; with ``overlay`` one panel whose legend
    gives them) followed by the error-curve panel.
    """
    if isinstance(result, AnnData):
        if key not in result.uns:
            raise KeyError(f"adata.uns has no completion evaluation {key!r}; run sp.tl.evaluate_completion.")
        result = result.uns[key]
    if isinstance(result, pd.DataFrame):
        result = {"results": result}
    if not isinstance(result, Mapping):
        raise TypeError(f"result must be a DataFrame, a mapping or an AnnData, got {type(result).__name__}.")
    check_int(max_points, "max_points")
    labels = dict(method_labels or {})
    curve_obj = _lookup(result, _CURVE_KEYS)
    values_obj = values if values is not None else _lookup(result, _VALUE_KEYS)
    if curve_obj is None and values_obj is None:
        raise KeyError(
            f"The completion result has neither an error curve ({_CURVE_KEYS}) nor masked values "
            f"({_VALUE_KEYS}); its keys are {list(result.keys())}."
        )
    scatter: dict[str, np.ndarray] = {}
    truth = np.zeros(0)
    if values_obj is not None:
        truth, scatter = _values_frame(values_obj, methods)
    curve = _curve_frame(curve_obj, methods, metric) if curve_obj is not None else None
    n_scatter = (1 if overlay else len(scatter)) if scatter else 0
    n_panels = n_scatter + (curve is not None)
    fig = new_figure(figsize or (3.6 * n_panels, 3.6))
    axes = np.atleast_1d(fig.subplots(1, n_panels))
    rng = np.random.default_rng(resolve_seed(seed))
    if scatter:
        finite = np.isfinite(truth)
        for m in scatter:
            finite &= np.isfinite(scatter[m])
        lo = min(truth[finite].min(), *(p[finite].min() for p in scatter.values())) if finite.any() else 0
        hi = max(truth[finite].max(), *(p[finite].max() for p in scatter.values())) if finite.any() else 1
        keep = np.flatnonzero(finite)
        if len(keep) > max_points:
            keep = np.sort(rng.choice(keep, size=max_points, replace=False))
        for i, (m, pred) in enumerate(scatter.items()):
            a = axes[0 if overlay else i]
            t, p = truth[finite], pred[finite]
            mse = float(np.mean((p - t) ** 2)) if t.size else float("nan")
            pcc = (
                float(np.corrcoef(t, p)[0, 1]) if t.size > 1 and t.std() > 0 and p.std() > 0 else float("nan")
            )
            summary = f"{labels.get(m, m)}: MSE {mse:.3f}, PCC {pcc:.3f}"
            a.scatter(
                truth[keep], pred[keep], s=4, alpha=0.4 if not overlay else 0.3, linewidths=0,
                color=METHOD_COLORS.get(m, f"C{i + 2}"), rasterized=True, label=summary,
            )  # fmt: skip
            if overlay and i > 0:
                continue
            a.plot([lo, hi], [lo, hi], color="0.3", linestyle="--", linewidth=1)
            a.set_xlim(lo, hi)
            a.set_ylim(lo, hi)
            a.set_aspect("equal")
            a.set_xlabel("true value (masked entries)")
            a.set_ylabel("completed value")
            a.set_title(summary if not overlay else "masked entries", fontsize="medium")
            style_axes(a)
        if overlay:
            axes[0].set_title(f"masked entries (n = {int(finite.sum())})", fontsize="medium")
            axes[0].legend(frameon=False, fontsize="small", loc="upper left", markerscale=3)
        else:
            for a in axes[: len(scatter)]:
                a.set_title(f"{a.get_title()}\n(n = {int(finite.sum())})", fontsize="medium")
    if curve is not None:
        a = axes[-1]
        for m in [m for m in methods if m in set(curve["method"])]:
            sub = curve[curve["method"] == m].sort_values("mask_fraction")
            color = METHOD_COLORS.get(m)
            a.plot(sub["mask_fraction"], sub["value"], marker="o", color=color, label=labels.get(m, m))
            if "std" in sub.columns:
                a.fill_between(
                    sub["mask_fraction"], sub["value"] - sub["std"], sub["value"] + sub["std"],
                    color=color, alpha=0.2, linewidth=0,
                )  # fmt: skip
        a.set_xlabel("fraction of real entries masked")
        a.set_ylabel(f"{metric} (mean ± s.d. over masks)" if "std" in curve.columns else metric)
        a.set_title(f"{metric} vs mask fraction", fontsize="medium")
        a.legend(frameon=False)
        style_axes(a, grid=True)
    return finish(fig, fig, show=show, save=save, dpi=dpi)
