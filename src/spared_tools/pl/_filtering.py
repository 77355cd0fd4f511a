"""``sp.pl.filtering``: the SpaRED quality-control plots (counts, expression fractions, kept/removed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.figure import Figure

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._validation import check_adata, check_finite_nonnegative, slide_labels

from ._utils import METHOD_COLORS, finish, new_figure, style_axes

_DEFAULTS = {
    "cell_min_counts": 10.0,
    "cell_max_counts": 1e6,
    "gene_min_counts": 10.0,
    "gene_max_counts": 1e6,
    "real_data_percentage": 0.7,
}


@dataclass
class FilterQC:
    """The SpaRED filter recomputed from counts (what :func:`filtering` draws).

    Attributes
    ----------
    spot_counts
        Total counts per spot.
    gene_counts
        Total counts per gene over the spots that pass the spot filter.
    spot_kept
        Spots kept (count window, and non-zero over the kept genes).
    gene_kept
        Genes kept (count window and expression-fraction rule).
    exp_frac
        Per gene, the minimum over slides of the fraction of spots expressing it.
    glob_exp_frac
        Per gene, the fraction of all (kept) spots expressing it.
    candidates
        Positions of the genes that pass the count window, sorted by decreasing ``exp_frac``.
    running_mean
        Running mean of ``glob_exp_frac`` along ``candidates``.
    n_prefix
        Length of the longest prefix of ``candidates`` whose running mean is ≥ ``real_data_percentage``.
    params
        The thresholds used.
    """

    spot_counts: np.ndarray
    gene_counts: np.ndarray
    spot_kept: np.ndarray
    gene_kept: np.ndarray
    exp_frac: np.ndarray
    glob_exp_frac: np.ndarray
    candidates: np.ndarray
    running_mean: np.ndarray
    n_prefix: int
    params: dict[str, float]


def filter_qc(X, slides: np.ndarray, params: Mapping[str, float], fit: np.ndarray | None = None) -> FilterQC:
    """Recompute the SpaRED filter (spots, then genes by counts and by the expression-fraction rule).

    Gene statistics use the spots that pass the spot window and, when ``fit`` is given, are marked in it
    (the training split), as :func:`spared_tools.pp.filter_spared` does.
    """
    X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    spot_counts = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    spot_window = (spot_counts > params["cell_min_counts"]) & (spot_counts < params["cell_max_counts"])
    rows = spot_window if fit is None else spot_window & fit
    Xs = X[rows]
    s = slides[rows]
    expressed = (Xs > 0).astype(np.float64)
    n_genes = X.shape[1]
    gene_counts = np.asarray(Xs.sum(axis=0), dtype=np.float64).ravel()
    if Xs.shape[0]:
        glob = np.asarray(expressed.mean(axis=0)).ravel()
        per = [np.asarray(expressed[s == k].mean(axis=0)).ravel() for k in np.unique(s)]
        exp_frac = np.min(np.vstack(per), axis=0)
    else:
        glob = np.zeros(n_genes)
        exp_frac = np.zeros(n_genes)
    gene_window = (gene_counts > params["gene_min_counts"]) & (gene_counts < params["gene_max_counts"])
    cand = np.flatnonzero(gene_window)
    cand = cand[np.argsort(-exp_frac[cand], kind="stable")]
    running = np.cumsum(glob[cand]) / np.arange(1, len(cand) + 1) if len(cand) else np.zeros(0)
    ok = np.flatnonzero(running >= params["real_data_percentage"])
    n_prefix = int(ok.max() + 1) if ok.size else 0
    gene_kept = np.zeros(n_genes, dtype=bool)
    gene_kept[cand[:n_prefix]] = True
    left = np.asarray(X[:, gene_kept].sum(axis=1)).ravel()
    spot_kept = spot_window & (left > 0)
    return FilterQC(
        spot_counts, gene_counts, spot_kept, gene_kept, exp_frac, glob, cand, running, n_prefix, dict(params)
    )


def _params(adata: AnnData, given: dict[str, float | None], uns_key: str | None) -> dict[str, float]:
    stored: Mapping[str, Any] = {}
    for k in [uns_key] if uns_key is not None else ["filter_spared", Key.PIPELINE]:
        entry = adata.uns.get(k)
        if isinstance(entry, Mapping) and isinstance(entry.get("params"), Mapping):
            stored = entry["params"]
            break
    out = {}
    for name, default in _DEFAULTS.items():
        val = given[name]
        if val is None:
            val = stored.get(name, default)
        out[name] = float(val)
    if not 0 <= out["real_data_percentage"] <= 1:
        raise ValueError(f"real_data_percentage must lie in [0, 1], got {out['real_data_percentage']}.")
    return out


@d.inject
def filtering(
    adata: AnnData,
    *,
    layer: str | None = None,
    library_key: str | None = Key.SLIDE,
    cell_min_counts: float | None = None,
    cell_max_counts: float | None = None,
    gene_min_counts: float | None = None,
    gene_max_counts: float | None = None,
    real_data_percentage: float | None = None,
    split_key: str | None = None,
    train_value: Any = Key.TRAIN,
    uns_key: str | None = None,
    bins: int = 40,
    figsize: tuple[float, float] = (10.0, 7.0),
    show: bool | None = None,
    save: str | Path | None = None,
    dpi: float | None = None,
) -> Figure | None:
    """SpaRED quality-control plots: spot and gene counts, the expression-fraction rule, kept vs removed.

    The SpaRED filter is recomputed from the raw counts so that the plot works before filtering (what the
    pipeline will remove) and after it: spots are kept when their total count lies strictly inside
    ``(cell_min_counts, cell_max_counts)``; genes when their total count lies strictly inside
    ``(gene_min_counts, gene_max_counts)``; the surviving genes are sorted by ``exp_frac`` (minimum over
    slides of the fraction of spots expressing the gene) and the longest prefix whose running mean of
    ``glob_exp_frac`` (fraction over all spots) is ≥ ``real_data_percentage`` is kept; spots left with
    zero counts are removed.

    Four panels: (a) histogram of spot total counts (log10) with the thresholds, kept vs removed;
    (b) the same for genes; (c) ``exp_frac``, ``glob_exp_frac`` and the running mean along the sorted
    genes with the ``real_data_percentage`` line and the cut-off (logarithmic gene axis beyond 200 genes); (d) spots and genes kept/removed per
    slide.

    Parameters
    ----------
    adata
        Annotated data with raw counts.
    layer
        Layer with the raw counts; ``None`` uses ``adata.layers["counts"]`` when present, else ``adata.X``.
    library_key
        Column of ``adata.obs`` identifying slides (``exp_frac`` is a minimum over slides); ``None`` for
        one slide.
    cell_min_counts
        Spots need more total counts than this. ``None``: the value recorded in the ``"params"`` of
        ``adata.uns[uns_key]``, else 10 (SpaRED default).
    cell_max_counts
        Spots need fewer total counts than this (default as above, else 1e6).
    gene_min_counts
        Genes need more total counts than this (default as above, else 10).
    gene_max_counts
        Genes need fewer total counts than this (default as above, else 1e6).
    real_data_percentage
        Threshold on the running mean of ``glob_exp_frac`` (default as above, else 0.7).
    split_key
        Column of ``adata.obs`` with the split; when given, gene statistics are computed on the training
        spots only (as :func:`spared_tools.pp.filter_spared` does with a split). ``None``: all spots.
    train_value
        Value of ``adata.obs[split_key]`` marking training spots.
    uns_key
        Entry of ``adata.uns`` whose ``"params"`` provide the default thresholds; ``None`` looks in
        ``"filter_spared"`` (written by :func:`spared_tools.pp.filter_spared`), then ``"spared"``.
    bins
        Number of histogram bins.
    figsize
        Figure size in inches.
    %(show_save_dpi)s

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` (``None`` when shown), with four axes in the order above.
    """
    check_adata(adata)
    if layer is None:
        X = adata.layers[Key.COUNTS] if Key.COUNTS in adata.layers else adata.X
        what = "adata.layers['counts']" if Key.COUNTS in adata.layers else "adata.X"
    else:
        if layer not in adata.layers:
            raise KeyError(f"Layer {layer!r} not found in adata.layers; available: {sorted(adata.layers)}.")
        X, what = adata.layers[layer], f"adata.layers[{layer!r}]"
    if X is None:
        raise ValueError("adata.X is empty; pass layer= with the raw counts.")
    check_finite_nonnegative(X, what=what)
    if library_key is not None and library_key not in adata.obs.columns:
        raise KeyError(
            f"adata.obs has no slide column {library_key!r}; pass library_key=None for a single slide."
        )
    codes = slide_labels(adata, library_key)
    names = (
        list(pd.Categorical(adata.obs[library_key]).categories) if library_key is not None else ["all spots"]
    )
    params = _params(
        adata,
        {
            "cell_min_counts": cell_min_counts,
            "cell_max_counts": cell_max_counts,
            "gene_min_counts": gene_min_counts,
            "gene_max_counts": gene_max_counts,
            "real_data_percentage": real_data_percentage,
        },
        uns_key,
    )
    fit = None
    if split_key is not None:
        if split_key not in adata.obs.columns:
            raise KeyError(f"adata.obs has no split column {split_key!r}.")
        fit = (adata.obs[split_key] == train_value).to_numpy()
        if not fit.any():
            raise ValueError(f"No spot has adata.obs[{split_key!r}] == {train_value!r}.")
    qc = filter_qc(X, codes, params, fit)

    fig = new_figure(figsize)
    ax_s, ax_g, ax_f, ax_b = fig.subplots(2, 2).ravel()
    kept_c, rem_c = METHOD_COLORS["kept"], METHOD_COLORS["removed"]

    def hist(ax, counts, kept, lo, hi, what):
        lc = np.log10(counts + 1)
        edges = np.histogram_bin_edges(lc, bins=bins)
        ax.hist(
            [lc[kept], lc[~kept]],
            bins=edges,
            stacked=True,
            color=[kept_c, rem_c],
            label=[f"kept ({int(kept.sum())})", f"removed ({int((~kept).sum())})"],
        )
        for t in (lo, hi):
            if np.log10(t + 1) <= edges[-1] * 1.05:
                ax.axvline(np.log10(t + 1), color="0.2", linestyle="--", linewidth=1)
        ax.set_xlabel(f"log10(total counts + 1) per {what}")
        ax.set_ylabel(f"{what}s")
        ax.legend(frameon=False, fontsize="small")
        style_axes(ax)

    hist(ax_s, qc.spot_counts, qc.spot_kept, params["cell_min_counts"], params["cell_max_counts"], "spot")
    ax_s.set_title("(a) spots")
    hist(ax_g, qc.gene_counts, qc.gene_kept, params["gene_min_counts"], params["gene_max_counts"], "gene")
    ax_g.set_title("(b) genes")

    ranks = np.arange(1, len(qc.candidates) + 1)
    ax_f.plot(ranks, qc.exp_frac[qc.candidates], color="#1f77b4", label="exp_frac (min over slides)")
    ax_f.plot(ranks, qc.glob_exp_frac[qc.candidates], color="0.6", linewidth=0.8, label="glob_exp_frac")
    ax_f.plot(ranks, qc.running_mean, color="#ff7f0e", label="running mean of glob_exp_frac")
    ax_f.axhline(params["real_data_percentage"], color="0.2", linestyle=":", linewidth=1)
    ax_f.axvline(qc.n_prefix + 0.5, color=rem_c, linestyle="--", linewidth=1)
    ax_f.set_ylim(-0.02, 1.02)
    if len(qc.candidates) > 200:  # thousands of genes: a log axis keeps the kept prefix visible
        ax_f.set_xscale("log")
    ax_f.set_xlabel("genes passing the count filter, by decreasing exp_frac")
    ax_f.set_ylabel("fraction of spots expressing")
    ax_f.set_title(f"(c) expression-fraction rule: {qc.n_prefix} of {len(qc.candidates)} genes kept")
    ax_f.legend(frameon=False, fontsize="small", loc="lower left")
    style_axes(ax_f)

    x = np.arange(len(names))
    kept = np.array([qc.spot_kept[codes == k].sum() for k in range(len(names))])
    total = np.array([(codes == k).sum() for k in range(len(names))])
    width = min(0.8, 0.25 * max(len(names), 1))
    ax_b.bar(x, kept, width=width, color=kept_c, label="spots kept")
    ax_b.bar(x, total - kept, width=width, bottom=kept, color=rem_c, label="spots removed")
    ax_b.set_xlim(-0.75, len(names) - 0.25)
    ax_b.set_ylim(0, total.max() * 1.25 if total.size else 1)
    ax_b.set_xticks(x, [str(n) for n in names], rotation=90 if len(names) > 6 else 0)
    ax_b.set_ylabel("spots")
    ax_b.set_title(f"(d) per slide; genes kept: {int(qc.gene_kept.sum())} of {adata.n_vars}")
    ax_b.legend(frameon=False, fontsize="small", loc="upper right", ncols=2)
    style_axes(ax_b)
    return finish(fig, fig, show=show, save=save, dpi=dpi)
