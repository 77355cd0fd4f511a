"""``sp.pl.prediction``: per-gene PCC distributions (ALL / HEG / HVG) per model, best and worst gene maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure, SubFigure

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._validation import check_int

from ._geometry import SpotShape
from ._spatial import _spatial_grid
from ._utils import finish, new_figure, style_axes

_GROUPS = {"ALL": None, "HEG": "heg", "HVG": "hvg"}


def _per_model(results: Any, model_key: str) -> dict[str, pd.DataFrame]:
    if isinstance(results, pd.DataFrame):
        if model_key in results.columns:
            return {str(m): df for m, df in results.groupby(model_key, sort=False, observed=True)}
        return {"model": results}
    if isinstance(results, Mapping) and isinstance(results.get("per_gene"), pd.DataFrame):
        return {"model": results["per_gene"]}  # one sp.tl.evaluate_prediction result
    if isinstance(results, Mapping):
        out = {}
        for name, df in results.items():
            if isinstance(df, Mapping) and isinstance(df.get("per_gene"), pd.DataFrame):
                df = df["per_gene"]
            if not isinstance(df, pd.DataFrame):
                raise TypeError(f"results[{name!r}] must be a per-gene DataFrame, got {type(df).__name__}.")
            out[str(name)] = df
        if not out:
            raise ValueError("results is empty; pass at least one model's per-gene table.")
        return out
    raise TypeError(
        f"results must be a per-gene DataFrame or a mapping model -> DataFrame, got {type(results).__name__}."
    )


@d.inject
def prediction(
    results: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    groups: Sequence[str] = ("ALL", "HEG", "HVG"),
    pcc_key: str = Key.evaluation.pcc,
    model_key: str = Key.evaluation.model,
    adata: AnnData | None = None,
    model: str | None = None,
    true_layer: str | None = None,
    pred_layer: str | None = None,
    n_best: int = 2,
    n_worst: int = 2,
    library_key: str | None = Key.SLIDE,
    slides: Any = None,
    shape: SpotShape = "auto",
    size: float | Literal["lattice"] = "lattice",
    img: bool | None = None,
    cmap: str = "viridis",
    panel_size: float = 2.6,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    dpi: float | None = None,
) -> Figure | None:
    """Per-gene Pearson correlation of predicted vs true expression, for several models side by side.

    The top panel shows, for each gene group (ALL genes, the highly expressed genes HEG, the highly
    variable genes HVG, as flagged by :func:`spared_tools.tl.evaluate_prediction`), one box per model of
    the per-gene PCC distribution, with the mean (the number the papers report) as a white diamond and
    its value printed. Genes whose PCC is undefined (NaN, e.g. constant predictions) are left out and
    counted in the legend. With ``adata``, the best and worst genes of ``model`` are added below as spot
    maps of the true and the predicted layer side by side, on one colour scale per gene (so a prediction
    that is too flat looks flat) and with spots as wide as the lattice spacing.

    Parameters
    ----------
    results
        Per-gene table with a ``pcc_key`` column and boolean ``heg``/``hvg`` columns (index = genes), as in
        the ``"per_gene"`` entry of :func:`~spared_tools.tl.evaluate_prediction`'s result; a mapping model
        name → such a table (or → the whole ``evaluate_prediction`` result); one
        ``evaluate_prediction`` result; or one long table with a ``model_key`` column.
    groups
        Gene groups to draw among ``"ALL"``, ``"HEG"``, ``"HVG"``.
    pcc_key
        Column with the per-gene PCC.
    model_key
        Column naming the model in a long table.
    adata
        Data holding the true and predicted layers, for the best/worst gene maps; ``None`` skips them.
    model
        Model whose best/worst genes are mapped (default: the first).
    true_layer
        Layer with the true expression (``None`` = ``adata.X``).
    pred_layer
        Layer with the predictions of ``model``; required with ``adata``.
    n_best
        Number of best genes to map.
    n_worst
        Number of worst genes to map.
    library_key
        Column of ``adata.obs`` identifying slides, see :func:`spared_tools.pl.spatial`.
    slides
        Slide(s) to map, e.g. the test slide (default: every slide).
    shape
        Spot shape for the maps, see :func:`spared_tools.pl.spatial`.
    size
        Spot size in the maps, see :func:`spared_tools.pl.spatial`; ``"lattice"`` (default) draws every spot
        one lattice spacing wide, so the maps are continuous tiles (legacy ST spots cover a quarter of
        their lattice cell at true size).
    img
        Draw the tissue image below the maps (``None``: when present), see :func:`spared_tools.pl.spatial`.
    cmap
        Colour map for the maps.
    panel_size
        Size of one map panel in inches.
    figsize
        Size of the figure in inches; default from the number of models and maps.
    %(show_save_dpi)s

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` (``None`` when shown). Its first axes holds the box plot; the
    map panels follow, titled ``"<gene> (PCC x.xx) | true"`` / ``"... | predicted"``.
    """
    tables = _per_model(results, model_key)
    bad = [g for g in groups if g not in _GROUPS]
    if bad:
        raise ValueError(f"Unknown gene groups {bad}; choose among {list(_GROUPS)}.")
    for name, df in tables.items():
        if pcc_key not in df.columns:
            raise KeyError(f"Table of model {name!r} has no {pcc_key!r} column; columns: {list(df.columns)}.")
        for g in groups:
            flag = _GROUPS[g]
            if flag is not None and flag not in df.columns:
                raise KeyError(
                    f"Table of model {name!r} has no boolean {flag!r} column needed for group {g}."
                )
    names = list(tables)
    n_models = len(names)
    n_best, n_worst = check_int(n_best, "n_best", min=0), check_int(n_worst, "n_worst", min=0)
    maps = adata is not None and (n_best + n_worst) > 0
    if maps and pred_layer is None:
        raise ValueError("pred_layer= is required to draw the best and worst genes' maps.")
    n_map_rows = (n_best + n_worst) if maps else 0
    width = max(2.0 + 1.1 * n_models * len(groups), 2 * panel_size + 1.0)
    height = 3.6 + n_map_rows * panel_size
    fig = new_figure(figsize or (width, height))
    top: Figure | SubFigure = fig
    bottom: SubFigure | None = None
    if maps:
        subs = np.asarray(fig.subfigures(2, 1, height_ratios=[3.6, n_map_rows * panel_size]), dtype=object)
        top, bottom = subs.ravel()
        maps_w = 2 * panel_size + 1.0  # true and predicted side by side with their colour bar, centred
        fig_w = float(fig.get_size_inches()[0])
        if fig_w > maps_w + 0.5:
            side = (fig_w - maps_w) / 2
            bottom = np.asarray(bottom.subfigures(1, 3, width_ratios=[side, maps_w, side]), dtype=object)[1]
    ax = top.subplots()

    box_w = 0.8 / n_models
    handles = []
    for i, name in enumerate(names):
        df = tables[name]
        pcc = pd.to_numeric(df[pcc_key], errors="coerce")
        data, pos = [], []
        for gi, g in enumerate(groups):
            flag = _GROUPS[g]
            sel = pcc if flag is None else pcc[df[flag].astype(bool).to_numpy()]
            data.append(sel.dropna().to_numpy())
            pos.append(gi + (i - (n_models - 1) / 2) * box_w)
        color = f"C{i}"
        bp = ax.boxplot(
            [d if d.size else np.array([np.nan]) for d in data],
            positions=pos,
            widths=box_w * 0.85,
            patch_artist=True,
            showfliers=True,
            flierprops={"markersize": 2, "markerfacecolor": color, "markeredgecolor": color},
            medianprops={"color": "black"},
        )
        for patch in bp["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.75)
        means = [float(d.mean()) if d.size else np.nan for d in data]
        ax.scatter(pos, means, marker="D", color="white", edgecolors="black", s=18, zorder=4)
        for x, m in zip(pos, means):
            if np.isfinite(m):
                ax.annotate(f"{m:.2f}", (x, m), xytext=(0, 5), textcoords="offset points",
                            ha="center", fontsize="x-small")  # fmt: skip
        n_nan = int(pcc.isna().sum())
        label = name if n_nan == 0 else f"{name} ({n_nan} NaN genes left out)"
        handles.append((bp["boxes"][0], label))
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{g}" for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("per-gene PCC")
    ax.set_title("Prediction: per-gene Pearson correlation (diamond = mean)")
    ax.legend([h for h, _ in handles], [lab for _, lab in handles], frameon=False, fontsize="small",
              loc="best")  # fmt: skip
    style_axes(ax, grid=True)

    if maps and adata is not None:
        chosen = model if model is not None else names[0]
        if chosen not in tables:
            raise KeyError(f"Model {chosen!r} not in the results; available: {names}.")
        pcc = pd.to_numeric(tables[chosen][pcc_key], errors="coerce").dropna()
        pcc = pcc[pcc.index.isin(adata.var_names)]
        if pcc.empty:
            raise KeyError(f"No gene of model {chosen!r}'s table (with a finite PCC) is in adata.var_names.")
        ranked = pcc.sort_values(ascending=False, kind="stable")
        picked = list(dict.fromkeys(list(ranked.index[:n_best]) + list(ranked.index[::-1][:n_worst][::-1])))
        labels = {g: f"{g} (PCC {ranked[g]:.2f})" for g in picked}
        _spatial_grid(
            bottom,
            adata,
            picked,
            [true_layer, pred_layer],
            library_key=library_key,
            slides=slides,
            img=img,
            shape=shape,
            size=size,
            cmap=cmap,
            layer_titles={true_layer: "true", pred_layer: f"predicted ({chosen})"},
            panel_size=panel_size,
            gene_labels=labels,
        )
    return finish(fig, fig, show=show, save=save, dpi=dpi)
