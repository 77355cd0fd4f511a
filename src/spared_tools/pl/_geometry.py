"""Spot geometry for the spatial plots: which slide uses which image, spot shapes and true spot sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection, PolyCollection
from matplotlib.colors import Colormap, Normalize
from scipy.spatial import cKDTree

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_choice

SpotShape = Literal["auto", "hex", "square", "circle"]


@dataclass
class SlideView:
    """Everything needed to draw the spots of one slide.

    Attributes
    ----------
    slide
        Slide name (value of the library column), or ``None`` for a single unnamed slide.
    index
        Integer positions of the slide's spots in ``adata``.
    xy
        Spot centres ``(n, 2)`` in the plotting coordinates (image pixels when an image is drawn).
    diameter
        Spot diameter in plotting coordinates.
    shape
        Resolved spot shape: ``"hex"``, ``"square"`` or ``"circle"``.
    angle
        Rotation of the lattice (radians): direction of the nearest neighbour, used to orient the shapes.
    image
        Image array to draw below the spots, or ``None``.
    library_id
        Key of ``adata.uns["spatial"]`` used for the image and scale factors, or ``None``.
    """

    slide: Any
    index: np.ndarray
    xy: np.ndarray
    diameter: float
    shape: str
    angle: float
    image: np.ndarray | None
    library_id: str | None


def slide_groups(adata: AnnData, library_key: str | None, slides: Any = None) -> list[tuple[Any, np.ndarray]]:
    """Return ``[(slide, positions), ...]`` in category / first-appearance order, optionally restricted."""
    spatial_uns = adata.uns.get(Key.SPATIAL, {})
    if library_key is None or (
        library_key not in adata.obs.columns and isinstance(spatial_uns, Mapping) and len(spatial_uns) <= 1
    ):
        if slides is not None:
            raise ValueError("slides= was given but there is no slide column; pass library_key= as well.")
        return [(None, np.arange(adata.n_obs))]
    if library_key not in adata.obs.columns:
        raise KeyError(
            f"adata.obs has no slide column {library_key!r} and adata.uns['spatial'] holds several libraries. "
            f"Pass library_key= with the column that identifies slides, or library_key=None for one slide."
        )
    col = adata.obs[library_key]
    if col.isna().any():
        raise ValueError(f"adata.obs[{library_key!r}] has {int(col.isna().sum())} missing values.")
    order = list(col.cat.categories) if hasattr(col, "cat") else list(dict.fromkeys(col.tolist()))
    present = set(col.tolist())
    order = [s for s in order if s in present]
    if slides is not None:
        wanted = [slides] if isinstance(slides, str) or not hasattr(slides, "__iter__") else list(slides)
        unknown = [s for s in wanted if s not in present]
        if unknown:
            raise KeyError(f"Slides {unknown} not found in adata.obs[{library_key!r}]; available: {order}.")
        order = wanted
    values = col.to_numpy()
    return [(s, np.flatnonzero(values == s)) for s in order]


def resolve_library(
    adata: AnnData, slide: Any, n_slides: int, library_id: str | Mapping[Any, str] | None
) -> str | None:
    """Key of ``adata.uns['spatial']`` holding the image and scale factors of ``slide`` (``None`` if none)."""
    libs = adata.uns.get(Key.SPATIAL)
    if not isinstance(libs, Mapping) or len(libs) == 0:
        if library_id is not None:
            raise KeyError("library_id= was given but adata.uns['spatial'] is missing or empty.")
        return None
    names = list(libs.keys())
    if library_id is not None:
        lib = library_id.get(slide) if isinstance(library_id, Mapping) else library_id
        if lib is None:
            raise KeyError(f"library_id= has no entry for slide {slide!r}.")
        if lib not in libs:
            raise KeyError(f"Library {lib!r} not in adata.uns['spatial']; available: {names}.")
        return lib
    if slide is not None and str(slide) in libs:
        return str(slide)
    if n_slides == 1 and len(names) == 1:
        return names[0]
    if slide is not None:
        s = str(slide)
        hits = [n for n in names if n.endswith(f"_{s}") or n.startswith(f"{s}_") or f"_{s}_" in n]
        if len(hits) == 1:
            return hits[0]
    raise KeyError(
        f"Cannot tell which entry of adata.uns['spatial'] ({names}) belongs to slide {slide!r}. "
        f"Pass library_id= (a mapping slide -> library key)."
    )


def _lattice(xy: np.ndarray) -> tuple[float, str, float]:
    """Nearest-neighbour spacing, detected lattice ('hex' / 'square') and its angle, from spot centres."""
    if xy.shape[0] < 2:
        return float("nan"), "circle", 0.0
    tree = cKDTree(xy)
    k = min(9, xy.shape[0])
    dist, idx = tree.query(xy, k=k)
    d_nn = dist[:, 1]
    spacing = float(np.median(d_nn[d_nn > 0])) if np.any(d_nn > 0) else float("nan")
    if not np.isfinite(spacing):
        return spacing, "circle", 0.0
    close = (dist[:, 1:] > 0) & (dist[:, 1:] < 1.15 * spacing)
    rows, cols = np.nonzero(close)
    vec = xy[idx[:, 1:][rows, cols]] - xy[rows]
    theta = np.arctan2(vec[:, 1], vec[:, 0])
    # Neighbour directions repeat every 60 degrees on a hexagonal lattice and every 90 degrees on a square
    # one (also on a checkerboard, whose nearest neighbours are the diagonals): compare the concentration
    # of 6·theta and 4·theta on the circle.
    z6, z4 = np.exp(6j * theta).mean(), np.exp(4j * theta).mean()
    shape = "hex" if abs(z6) > abs(z4) else "square"
    z = z6 if shape == "hex" else z4
    n_fold = 6 if shape == "hex" else 4
    angle = float(np.angle(z) / n_fold) if abs(z) > 1e-9 else 0.0
    return spacing, shape, angle


def slide_view(
    adata: AnnData,
    slide: Any,
    index: np.ndarray,
    *,
    n_slides: int,
    spatial_key: str,
    img_key: str | None,
    img: bool | None,
    library_id: str | Mapping[Any, str] | None,
    shape: SpotShape,
) -> SlideView:
    """Collect coordinates, image, spot size and shape for one slide."""
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"Spot coordinates adata.obsm[{spatial_key!r}] are missing; available obsm keys: "
            f"{list(adata.obsm.keys())}."
        )
    xy_full = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if xy_full.ndim != 2 or xy_full.shape[1] < 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must have shape (n_obs, 2), got {xy_full.shape}.")
    xy_full = xy_full[index, :2]
    if not np.isfinite(xy_full).all():
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] holds NaN or infinite coordinates for slide {slide!r}."
        )
    lib = resolve_library(adata, slide, n_slides, library_id)
    info = adata.uns[Key.SPATIAL][lib] if lib is not None else {}
    scalefactors = info.get("scalefactors", {}) if isinstance(info, Mapping) else {}
    images = info.get("images", {}) if isinstance(info, Mapping) else {}
    image = None
    scale = 1.0
    if img_key == "auto":  # scanpy's choice: the hires image, else the lowres one
        img_key = next((k for k in ("hires", "lowres") if k in images), "hires")
    if img is not False and img_key is not None:
        if img_key in images:
            image = np.asarray(images[img_key])
            sf_key = f"tissue_{img_key}_scalef"
            if sf_key not in scalefactors:
                raise KeyError(
                    f"adata.uns['spatial'][{lib!r}]['scalefactors'] has no {sf_key!r}, needed to place spots "
                    f"on the {img_key!r} image."
                )
            scale = float(scalefactors[sf_key])
        elif img:
            where = f"adata.uns['spatial'][{lib!r}]['images']" if lib is not None else "adata.uns['spatial']"
            raise KeyError(
                f"No {img_key!r} image in {where} for slide {slide!r}; pass img=False to plot without it."
            )
    xy = xy_full * scale
    spacing, detected, angle = _lattice(xy)
    if "spot_diameter_fullres" in scalefactors:
        diameter = float(scalefactors["spot_diameter_fullres"]) * scale
    elif np.isfinite(spacing):
        diameter = spacing
        logger.info("slide %r: no spot_diameter_fullres; drawing spots one lattice spacing wide", slide)
    else:
        raise ValueError(
            f"Slide {slide!r} has a single spot and no 'spot_diameter_fullres' scale factor, so its spot size "
            "is unknown."
        )
    check_choice(shape, "shape", ("auto", "hex", "square", "circle"))
    resolved = detected if shape == "auto" else shape
    return SlideView(slide, index, xy, diameter, resolved, angle, image, lib)


def spot_collection(
    view: SlideView, values: np.ndarray, *, cmap: Colormap, norm: Normalize, size: float = 1.0, **kwargs: Any
):
    """Matplotlib collection drawing every spot of ``view`` at true size, coloured by ``values``.

    Hexagons and squares are drawn with their inscribed circle equal to the spot diameter × ``size`` and
    their edges facing the nearest lattice neighbours; circles have the spot diameter × ``size``.
    """
    d = view.diameter * size
    coll: EllipseCollection | PolyCollection
    if view.shape == "circle":
        coll = EllipseCollection(
            widths=np.full(len(values), d),
            heights=np.full(len(values), d),
            angles=np.zeros(len(values)),
            units="xy",
            offsets=view.xy,
            **kwargs,
        )
    else:
        n_sides = 6 if view.shape == "hex" else 4
        radius = d / 2 / np.cos(np.pi / n_sides)  # circumradius of a polygon with inscribed diameter d
        phi = view.angle + np.pi / n_sides + np.arange(n_sides) * 2 * np.pi / n_sides
        unit = np.column_stack([np.cos(phi), np.sin(phi)]) * radius
        verts = view.xy[:, None, :] + unit[None, :, :]
        coll = PolyCollection(verts, **kwargs)
    coll.set_array(np.ma.masked_invalid(values))
    coll.set_cmap(cmap)
    coll.set_norm(norm)
    return coll


def draw_slide(
    ax: Axes,
    view: SlideView,
    values: np.ndarray,
    *,
    cmap: Colormap,
    norm: Normalize,
    size: float = 1.0,
    alpha: float = 1.0,
    alpha_img: float = 1.0,
    crop: bool = True,
    edgecolor: Any = "none",
    linewidth: float = 0.0,
):
    """Draw the image (if any) and the spots of one slide on ``ax``; return the spot collection."""
    if view.image is not None:
        ax.imshow(view.image, alpha=alpha_img, interpolation="antialiased")
    coll = spot_collection(
        view,
        values,
        cmap=cmap,
        norm=norm,
        size=size,
        alpha=alpha,
        edgecolors=edgecolor,
        linewidths=linewidth,
    )
    if view.shape == "circle":
        coll.set_offset_transform(ax.transData)
    ax.add_collection(coll, autolim=view.shape != "circle")
    pad = view.diameter * max(size, 1.0)
    lo = view.xy.min(axis=0) - pad
    hi = view.xy.max(axis=0) + pad
    if view.image is not None and not crop:
        h, w = view.image.shape[:2]
        lo = np.minimum(lo, [0, 0])
        hi = np.maximum(hi, [w, h])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])  # image convention: y grows downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    return coll
