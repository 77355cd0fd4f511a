"""``sp.pl.spatial``: genes × layers as spot maps over the H&E image, one shared colour scale per gene."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib as mpl
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, ListedColormap, Normalize, to_hex
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Patch

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._validation import check_adata, check_number

from ._geometry import SlideView, SpotShape, _lattice, draw_slide, slide_groups, slide_view
from ._utils import as_list, finish, gene_values, new_figure, resolve_limit


@d.inject
def spatial(
    adata: AnnData,
    genes: str | Sequence[str],
    layers: str | Sequence[str | None] | None = None,
    *,
    library_key: str | None = Key.SLIDE,
    slides: Any | Sequence[Any] | None = None,
    library_id: str | Mapping[Any, str] | None = None,
    spatial_key: str = Key.SPATIAL,
    img_key: str | None = "auto",
    img: bool | None = None,
    shape: SpotShape = "auto",
    size: float | Literal["lattice"] = 1.0,
    cmap: str | Colormap = "viridis",
    vmin: float | str | None = None,
    vmax: float | str | None = None,
    layer_titles: Mapping[str | None, str] | None = None,
    na_color: Any = "lightgray",
    alpha: float = 1.0,
    alpha_img: float = 1.0,
    crop: bool = True,
    panel_size: float = 3.0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    dpi: float | None = None,
) -> Figure | None:
    """Plot genes in one or more layers (and ``obs`` annotations) as spot maps over the tissue image.

    One panel per slide × gene × layer: rows are ``(slide, gene)`` pairs, columns are layers, so that a
    gene can be compared across e.g. raw, median-completed, SpaCKLE-completed, predicted and true values.
    With a single layer, rows are slides and columns genes. Every panel of a gene shares one colour scale
    (over all its layers and slides).
    Spots are drawn at their true size in image coordinates: hexagons on hexagonal lattices (Visium),
    squares on square grids (legacy ST), edges facing the nearest neighbours, with the inscribed circle
    equal to ``spot_diameter_fullres`` × ``size``.

    Parameters
    ----------
    adata
        Annotated data with spot coordinates in ``adata.obsm[spatial_key]`` (full-resolution pixels) and,
        for the image, ``adata.uns["spatial"][library]["images"][img_key]`` with the scale factor
        ``tissue_<img_key>_scalef`` and ``spot_diameter_fullres``.
    genes
        One gene or a list of genes (``adata.var_names``). Names that are not genes but columns of
        ``adata.obs`` (e.g. pathologist labels, clusters, total counts) are drawn once per slide, in the
        first column: categorical columns with the colours of ``adata.uns["<column>_colors"]`` (scanpy's
        convention) or a default palette and a legend, numeric ones with their own colour scale.
    layers
        Layer or list of layers to compare; ``None`` entries stand for ``adata.X``. Default: ``adata.X``.
    library_key
        Column of ``adata.obs`` identifying slides; one row of panels per slide. ``None`` treats all spots
        as one slide. When the column is absent and ``adata.uns["spatial"]`` holds at most one library the
        data are treated as one slide as well.
    slides
        Slide(s) to draw, in this order. Default: every slide.
    library_id
        Key of ``adata.uns["spatial"]`` to use for every slide, or a mapping slide → key. Default: the key
        equal to the slide name, the only key when there is one slide, or the unique key of the form
        ``"<prefix>_<slide>"``.
    spatial_key
        Key of the spot coordinates ``[x, y]`` in ``adata.obsm``.
    img_key
        Image resolution in ``adata.uns["spatial"][library]["images"]`` (``"hires"``, ``"lowres"``);
        ``"auto"`` takes ``"hires"`` when present, else ``"lowres"``; ``None`` draws no image.
    img
        ``True`` requires the image (error when missing), ``False`` never draws it, ``None`` draws it when
        present. Without an image, spots are drawn in full-resolution coordinates.
    shape
        Spot shape: ``"auto"`` detects the lattice from the directions to the nearest spots (6-fold
        symmetry → ``"hex"``, 4-fold → ``"square"``); ``"circle"`` draws the physical round spots.
    size
        Scale applied to the spot diameter (``1`` = true size; a hexagon then fills a Visium spot's disc),
        or ``"lattice"``: every spot as wide as the distance to its nearest neighbours (median over the
        slide), so that the tiles fill the lattice without gaps — easier to read than true-size spots on
        legacy ST, whose 100 µm spots sit 200 µm apart.
    cmap
        Colour map for expression values.
    vmin
        Lower colour limit shared by each gene's panels: a number, a percentile such as ``"p1"`` of the
        gene's values over all its panels, or ``None`` for the minimum.
    vmax
        Upper colour limit, as ``vmin`` (``None`` for the maximum, e.g. ``"p99"`` to clip outliers).
    layer_titles
        Display names for layers in panel titles, e.g. ``{"spackle": "SpaCKLE", None: "raw"}``.
    na_color
        Colour of spots whose value is NaN (e.g. entries a layer leaves undefined).
    alpha
        Opacity of the spots.
    alpha_img
        Opacity of the image.
    crop
        Zoom each panel onto its spots; ``False`` shows the whole image.
    panel_size
        Width and height of one panel in inches.
    ax
        Existing axes to draw on; only possible when there is exactly one panel.
    %(show_save_dpi)s

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` (``None`` when shown). Its axes are ``fig.axes`` in row-major
    order (colour bars after them); every panel is titled with the gene and the layer (``"<gene> | <layer>"``, on
    two lines when long), prefixed by ``"<slide>: "`` when there are several slides.
    """
    fig = _spatial_grid(
        None,
        adata,
        genes,
        layers,
        library_key=library_key,
        slides=slides,
        library_id=library_id,
        spatial_key=spatial_key,
        img_key=img_key,
        img=img,
        shape=shape,
        size=size,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        layer_titles=layer_titles,
        na_color=na_color,
        alpha=alpha,
        alpha_img=alpha_img,
        crop=crop,
        panel_size=panel_size,
        ax=ax,
    )
    return finish(fig, fig, show=show, save=save, dpi=dpi)


def _lattice_size(view: SlideView) -> float:
    """``size`` that draws the spots of ``view`` one nearest-neighbour spacing wide (1 for a lone spot)."""
    spacing = _lattice(view.xy)[0]
    return float(spacing / view.diameter) if np.isfinite(spacing) and view.diameter > 0 else 1.0


def _category_colors(adata: AnnData, key: str, n: int) -> list[Any]:
    """Colours of the categories of ``adata.obs[key]``: ``adata.uns[f"{key}_colors"]`` (scanpy), else a palette."""
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) == n:
        return list(stored)
    if n <= 20:
        name, k = ("tab10", 10) if n <= 10 else ("tab20", 20)
        base = mpl.colormaps[name]((np.arange(n) + 0.5) / k)  # the palette's n first colours
    else:
        base = mpl.colormaps["turbo"](np.linspace(0.05, 0.95, n))
    return [to_hex(c) for c in base]


def _spatial_grid(
    container: Figure | SubFigure | None,
    adata: AnnData,
    genes: str | Sequence[str],
    layers: str | Sequence[str | None] | None,
    *,
    library_key: str | None,
    slides: Any,
    library_id: str | Mapping[Any, str] | None = None,
    spatial_key: str = Key.SPATIAL,
    img_key: str | None = "auto",
    img: bool | None,
    shape: SpotShape,
    size: float | Literal["lattice"],
    cmap: str | Colormap,
    vmin: float | str | None = None,
    vmax: float | str | None = None,
    layer_titles: Mapping[str | None, str] | None,
    na_color: Any = "lightgray",
    alpha: float = 1.0,
    alpha_img: float = 1.0,
    crop: bool = True,
    panel_size: float,
    ax: Axes | None = None,
    gene_labels: Mapping[str, str] | None = None,
) -> Figure | SubFigure:
    """Draw the panel grid of :func:`spatial` into ``container`` (a new figure when ``None``).

    The defaults are :func:`spatial`'s.
    """
    check_adata(adata)
    genes = [genes] if isinstance(genes, str) else list(genes)
    if len(genes) == 0:
        raise ValueError("genes= is empty; pass at least one gene.")
    obs_keys = [g for g in genes if g not in adata.var_names and g in adata.obs.columns]
    unknown = [g for g in genes if g not in adata.var_names and g not in obs_keys]
    if unknown:
        show = ", ".join(map(repr, unknown[:10])) + (" …" if len(unknown) > 10 else "")
        raise KeyError(
            f"{len(unknown)} names are neither in adata.var_names nor columns of adata.obs: {show}."
        )
    layer_list = as_list(layers)
    if size != "lattice":
        check_number(size, "size", min=0, min_inclusive=False)
    titles = {None: "X"} | dict(layer_titles or {})
    groups = slide_groups(adata, library_key, slides)
    n_slides = len(groups)
    views = [
        slide_view(
            adata,
            s,
            idx,
            n_slides=n_slides,
            spatial_key=spatial_key,
            img_key=img_key,
            img=img,
            library_id=library_id,
            shape=shape,
        )
        for s, idx in groups
    ]
    cmap_obj = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    cmap_obj = cmap_obj.with_extremes(bad=na_color)
    values: dict[tuple[str, str | None], np.ndarray] = {}
    norms: dict[str, Normalize] = {}
    cmaps: dict[str, Colormap] = {}
    categories: dict[str, tuple[list[str], list[Any]]] = {}
    for g in genes:
        if g in obs_keys:  # an obs column: one panel per slide, whatever the layers
            col = adata.obs[g]
            if isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col):
                cat = pd.Categorical(col)
                names = [str(c) for c in cat.categories]
                colors = _category_colors(adata, g, len(names))
                categories[g] = (names, colors)
                codes = cat.codes.astype(np.float64)
                codes[codes < 0] = np.nan
                values[(g, None)] = codes
                norms[g] = Normalize(vmin=-0.5, vmax=max(len(names), 1) - 0.5)
                cmaps[g] = ListedColormap(colors if colors else ["none"]).with_extremes(bad=na_color)
                continue
            values[(g, None)] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            used = np.concatenate([values[(g, None)][v.index] for v in views])
        else:
            for lay in layer_list:
                values[(g, lay)] = gene_values(adata, g, lay)
            used = np.concatenate([values[(g, lay)][v.index] for lay in layer_list for v in views])
        finite = used[np.isfinite(used)]
        lo_default = float(finite.min()) if finite.size else 0.0
        hi_default = float(finite.max()) if finite.size else 1.0
        lo = resolve_limit(vmin, used, default=lo_default)
        hi = resolve_limit(vmax, used, default=hi_default)
        if hi < lo:
            raise ValueError(f"vmax ({hi}) is below vmin ({lo}) for {g!r}.")
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        norms[g] = Normalize(vmin=lo, vmax=hi)
        cmaps[g] = cmap_obj

    # One layer: slides are rows and genes columns (each panel with its own colour bar). Several layers:
    # one row per (slide, gene) with the layers as columns and one colour bar per row.
    by_gene = len(layer_list) == 1
    n_rows = len(views) if by_gene else len(views) * len(genes)
    n_cols = len(genes) if by_gene else len(layer_list)
    if ax is not None:
        if n_rows * n_cols != 1:
            raise ValueError(f"ax= can only be used for a single panel; this call draws {n_rows * n_cols}.")
        fig: Figure | SubFigure = ax.figure
        grid = np.array([[ax]])
    else:
        extra = 0.8 if not by_gene else 0.8 * n_cols
        fig = (
            new_figure((panel_size * n_cols + extra, panel_size * n_rows)) if container is None else container
        )
        grid = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for s_i, view in enumerate(views):
        head = f"{view.slide}: " if n_slides > 1 else ""
        view_size = _lattice_size(view) if size == "lattice" else float(size)
        for g_i, g in enumerate(genes):
            r = s_i if by_gene else s_i * len(genes) + g_i
            gene_label = (gene_labels or {}).get(g, g)
            row_layers = [None] if g in obs_keys else layer_list
            panels = []
            coll = None
            longest = max(len(str(titles.get(lay, lay))) for lay in row_layers)
            sep = "\n" if len(head) + len(str(gene_label)) + longest > 26 else " | "  # one per row: aligned
            for c, lay in enumerate(row_layers):
                a = grid[r, g_i if by_gene else c]
                panels.append(a)
                coll = draw_slide(
                    a,
                    view,
                    values[(g, lay)][view.index],
                    cmap=cmaps[g],
                    norm=norms[g],
                    size=view_size,
                    alpha=alpha,
                    alpha_img=alpha_img,
                    crop=crop,
                )
                if g in obs_keys:
                    a.set_title(f"{head}{gene_label}", fontsize="medium")
                    continue
                layer_label = titles.get(lay, lay)
                a.set_title(f"{head}{gene_label}{sep}{layer_label}", fontsize="medium")
            assert coll is not None  # every gene has at least one panel
            spare = None
            if not by_gene:
                for c in range(len(row_layers), n_cols):
                    grid[r, c].set_axis_off()
                spare = grid[r, 1] if len(row_layers) < n_cols else None
            if g in categories:
                names, colors = categories[g]
                handles = [Patch(facecolor=col, label=name) for name, col in zip(names, colors)]
                # in the row's unused second panel when there is one, so the map columns stay aligned
                host = spare if spare is not None else panels[0]
                host.legend(
                    handles=handles, loc="center left", bbox_to_anchor=(0.0 if spare is not None else 1.02, 0.5),
                    frameon=False, fontsize="small", ncols=1 if len(names) <= 12 else 2,
                )  # fmt: skip
                continue
            cb = fig.colorbar(
                coll, ax=panels if by_gene else list(grid[r, :]), shrink=0.8, pad=0.02, aspect=15
            )
            cb.outline.set_visible(False)
    return fig
