"""``sp.pl.moran``: genes ranked by Moran's I with the selected cut-off."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._validation import check_adata, check_int

from ._utils import figure_axes, finish, style_axes


@d.inject
def moran(
    adata: AnnData | pd.DataFrame,
    *,
    key: str = Key.MORAN_I,
    stats_key: str | None = Key.PIPELINE,
    selected_key: str | None = Key.SELECTED,
    per_slide_key: str | None = Key.varm.moran_I_per_slide,
    n_labels: int = 10,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (6.0, 4.0),
    show: bool | None = None,
    save: str | Path | None = None,
    dpi: float | None = None,
) -> Axes | None:
    """Rank genes by Moran's I and mark the genes selected by the SpaRED cut-off.

    Genes are sorted by decreasing Moran's I (the slide average written by :func:`spared_tools.pp.moran`).
    After :func:`spared_tools.pp.spared_pipeline`, ``adata`` holds only the selected genes; the statistics
    of every candidate gene are then read from ``adata.uns[stats_key]["gene_stats"]`` so that the ranking
    shows the genes below the cut-off too. Selected genes are drawn in colour, the others in grey; a vertical line
    marks the cut-off rank (number of selected genes) and a horizontal line the Moran's I of the last
    selected gene. When per-slide values exist in ``adata.varm[per_slide_key]``, their range over slides is
    shaded behind the curve.

    Parameters
    ----------
    adata
        Annotated data with Moran's I in ``adata.var[key]``, or a per-gene DataFrame (index = genes).
    key
        Column holding Moran's I.
    stats_key
        Entry of ``adata.uns`` with a ``"gene_stats"`` DataFrame over all candidate genes (written by the
        pipeline), used instead of ``adata.var`` when present; ``None`` always uses ``adata.var``.
    selected_key
        Boolean column marking the selected genes; ``None`` or an absent column draws no cut-off.
    per_slide_key
        Key of ``adata.varm`` with one column per slide (DataFrame or array); ``None`` or absent: no band.
        The band is drawn for the genes present in ``adata.var`` only.
    n_labels
        Label the names of this many top-ranked genes (listed in a column, with a line to each gene).
    %(ax_figsize)s
    %(show_save_dpi)s

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` (``None`` when shown). The ranked curve is its first line
    (``ax.lines[0]``; x = rank starting at 1, y = Moran's I).
    """
    if isinstance(adata, pd.DataFrame):
        table, source, adata_obj = adata, "the table", None
    else:
        check_adata(adata)
        adata_obj = adata
        entry = adata.uns.get(stats_key) if stats_key is not None else None
        gene_stats = entry.get("gene_stats") if isinstance(entry, Mapping) else None
        if isinstance(gene_stats, pd.DataFrame) and key in gene_stats.columns:
            table, source = gene_stats, f"adata.uns[{stats_key!r}]['gene_stats']"
        else:
            table, source = adata.var, "adata.var"
    if key not in table.columns:
        raise KeyError(
            f"{source} has no Moran's I column {key!r}; run sp.pp.moran first "
            f"(available columns: {list(table.columns)})."
        )
    moran_i = pd.to_numeric(table[key], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(moran_i)
    if not finite.any():
        raise ValueError(f"{source}[{key!r}] has no finite values to rank.")
    order = np.argsort(-np.where(finite, moran_i, -np.inf), kind="stable")
    order = order[finite[order]]
    ranked = moran_i[order]
    ranks = np.arange(1, len(order) + 1)
    names = table.index.to_numpy()[order]

    selected = None
    if selected_key is not None and selected_key in table.columns:
        sel = table[selected_key]
        if sel.dtype != bool:
            raise TypeError(f"{source}[{selected_key!r}] must be boolean, got dtype {sel.dtype}.")
        selected = sel.to_numpy()[order]

    fig, ax = figure_axes(ax, figsize)
    ax.plot(ranks, ranked, color="0.25", linewidth=1.2, label="Moran's I (mean over slides)")
    if adata_obj is not None and per_slide_key is not None and per_slide_key in adata_obj.varm:
        per = adata_obj.varm[per_slide_key]
        per = per.to_numpy(dtype=np.float64) if isinstance(per, pd.DataFrame) else np.asarray(per, float)
        pos = adata_obj.var_names.get_indexer(names)
        band = np.full((len(names), 2), np.nan)
        has = pos >= 0
        rows = per[pos[has]]
        ok = np.isfinite(rows).any(axis=1)
        idx = np.flatnonzero(has)[ok]
        band[idx, 0] = np.nanmin(rows[ok], axis=1)
        band[idx, 1] = np.nanmax(rows[ok], axis=1)
        if np.isfinite(band).any():
            ax.fill_between(
                ranks,
                band[:, 0],
                band[:, 1],
                where=np.isfinite(band).all(axis=1),
                color="0.8",
                linewidth=0,
                label="range over slides",
            )
    if selected is not None:
        ax.scatter(ranks[selected], ranked[selected], s=10, color="#1f77b4", zorder=3, label="selected")
        n_sel = int(selected.sum())
        if n_sel:
            ax.axvline(n_sel + 0.5, color="#d62728", linestyle="--", linewidth=1)
            cut = ranked[selected].min()
            ax.axhline(cut, color="#d62728", linestyle=":", linewidth=1)
            ax.annotate(
                f"{n_sel} selected, I ≥ {cut:.3f}",
                xy=(n_sel + 0.5, cut),
                xytext=(6, 6),
                textcoords="offset points",
                color="#d62728",
                fontsize="small",
            )
    n_lab = min(check_int(n_labels, "n_labels", min=0), len(order))
    for i, (r, v, name) in enumerate(zip(ranks[:n_lab], ranked[:n_lab], names[:n_lab])):
        ax.annotate(
            str(name),
            xy=(r, v),
            xytext=(0.28, 0.95 - i * 0.45 / max(n_lab - 1, 9)),
            textcoords="axes fraction",
            fontsize="x-small",
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5, "shrinkB": 2},
        )
    ax.set_xlabel("gene rank")
    ax.set_ylabel("Moran's I")
    ax.set_title(f"Moran's I ranking ({len(order)} genes)")
    ax.legend(frameon=False, fontsize="small", loc="upper right")
    style_axes(ax, grid=True)
    return finish(fig, ax, show=show, save=save, dpi=dpi)
