"""Lattice neighbour graphs (``sp.pp.spatial_graph``) and neighbour tables (``sp.pp.neighbor_table``)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from spared_tools._kernels.lattice import (
    GEOMETRIES,
    RING1_SIZE,
    detect_geometry,
    lattice_offsets,
    neighbor_lookup,
    table_to_graph,
)
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata, check_array_coords, check_int, slide_labels

GeometryArg = Literal["auto", "hex", "square", "checkerboard"]


def _check_n_rings(n_rings: int, *, minimum: int = 1) -> int:
    if isinstance(n_rings, bool) or not isinstance(n_rings, int | np.integer) or n_rings < minimum:
        raise ValueError(f"n_rings must be an integer >= {minimum}, got {n_rings!r}.")
    return int(n_rings)


def _pixel_coords(adata: AnnData, spatial_key: str | None) -> np.ndarray | None:
    if spatial_key is None or spatial_key not in adata.obsm:
        return None
    coords = np.asarray(adata.obsm[spatial_key])
    if coords.ndim != 2 or coords.shape[1] < 2 or not np.issubdtype(coords.dtype, np.number):
        return None
    coords = coords[:, :2].astype(np.float64)
    return coords if np.isfinite(coords).all() else None


def _slide_names(adata: AnnData, library_key: str | None) -> list[str]:
    if library_key is None:
        return ["all"]
    return [str(c) for c in pd.Categorical(adata.obs[library_key]).categories]


def _resolve_lattice(
    adata: AnnData,
    geometry: str,
    library_key: str | None,
    row_key: str,
    col_key: str,
    spatial_key: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
    """Validate inputs and return ``(slide, rows, cols, geometry, reason)``."""
    check_adata(adata, genes=False)  # the lattice needs positions only
    if geometry != "auto" and geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be 'auto' or one of {GEOMETRIES}, got {geometry!r}.")
    rc = check_array_coords(adata, row_key, col_key)
    slide = slide_labels(adata, library_key)
    rows, cols = rc[:, 0], rc[:, 1]
    if geometry == "auto":
        geometry, reason = detect_geometry(slide, rows, cols, _pixel_coords(adata, spatial_key))
    else:
        reason = "chosen by the caller"
        if geometry in ("hex", "checkerboard"):
            parity = (rows + cols) % 2
            n_slides = int(slide.max()) + 1
            mixed = (np.bincount(slide[parity == 0], minlength=n_slides) > 0) & (
                np.bincount(slide[parity == 1], minlength=n_slides) > 0
            )
            if mixed.any():
                names = np.asarray(_slide_names(adata, library_key))[mixed]
                raise ValueError(
                    f"geometry={geometry!r} needs row + col of one parity on each slide, but slide(s) "
                    f"{list(names[:5])} mix both parities; this looks like a square grid "
                    f"(geometry='square')."
                )
    return slide, rows, cols, geometry, reason


def _warn_small_slides(adata: AnnData, slide: np.ndarray, library_key: str | None) -> None:
    counts = np.bincount(slide)
    single = np.flatnonzero(counts == 1)
    if single.size:
        names = np.asarray(_slide_names(adata, library_key))[single]
        logger.warning(
            f"{single.size} slide(s) hold a single spot ({list(names[:5])}); their spot is an isolated node."
        )


def _lattice_table(adata, n_rings, geometry, library_key, row_key, col_key, spatial_key):
    """``(table, ring, geometry, reason, slide)``: every lattice offset within ``n_rings`` rings of each spot."""
    slide, rows, cols, geom, reason = _resolve_lattice(
        adata, geometry, library_key, row_key, col_key, spatial_key
    )
    offsets, ring = lattice_offsets(geom, n_rings)  # type: ignore[arg-type]
    table = np.empty((adata.n_obs, 1 + offsets.shape[0]), dtype=np.int64)
    table[:, 0] = np.arange(adata.n_obs)
    table[:, 1:] = neighbor_lookup(slide, rows, cols, offsets)
    return table, np.concatenate([[0], ring]).astype(np.int64), geom, reason, slide


def neighbor_table(
    adata: AnnData,
    *,
    n_rings: int = 2,
    geometry: GeometryArg = "auto",
    library_key: str | None = Key.SLIDE,
    row_key: str = Key.ARRAY_ROW,
    col_key: str = Key.ARRAY_COL,
    spatial_key: str | None = Key.SPATIAL,
) -> tuple[np.ndarray, np.ndarray]:
    """Table of lattice neighbours of every spot, one column per lattice offset.

    Parameters
    ----------
    adata
        Annotated data with integer array coordinates in ``obs``.
    n_rings
        Number of rings of lattice neighbours (``>= 0``; 0 returns only the spots themselves).
    geometry
        ``"hex"`` (Visium), ``"square"`` (legacy ST 1k), ``"checkerboard"`` (ST 2k) or ``"auto"``:
        square when a slide mixes both parities of ``row + col``, else checkerboard when pixel coordinates
        in ``obsm[spatial_key]`` show the ``(0, ±2)`` neighbours √2 further away than the ``(±1, ±1)``
        ones, else hex. See :func:`spatial_graph` for the neighbour rule of each geometry.
    library_key
        ``obs`` column identifying slides; neighbours are looked up within each slide only.
        ``None`` treats all spots as one slide.
    row_key
        ``obs`` column with the integer array row.
    col_key
        ``obs`` column with the integer array column.
    spatial_key
        ``obsm`` key with pixel coordinates, used only by ``geometry="auto"``.

    Returns
    -------
    table
        ``int64`` array ``(n_obs, 1 + K)``. Column 0 is the spot itself (``arange(n_obs)``); column ``k``
        holds the index of the spot at the ``k``-th lattice offset within ``n_rings`` rings, on the same
        slide, or ``-1`` where no spot sits there. Offsets are ordered by ring, then by angle from the
        ``+col`` direction towards ``+row`` (see :func:`spared_tools._kernels.lattice.lattice_offsets`).
    ring
        ``int64`` array ``(1 + K,)``: the ring (lattice distance) of each column, 0 for column 0.

    Notes
    -----
    Rings are lattice distances (hexagonal distance on Visium, Manhattan distance in four-neighbour
    units on square and checkerboard grids), so they do not depend on which other spots were filtered
    out. ``K`` is ``3 n (n + 1)`` on hex lattices and ``2 n (n + 1)`` on square and checkerboard ones.

    Raises
    ------
    KeyError
        If the array coordinates or the slide column are missing.
    ValueError
        If coordinates are NaN or not integers, two spots of a slide share a position, or the chosen
        geometry does not fit the coordinates.
    """
    n_rings = _check_n_rings(n_rings, minimum=0)
    table, ring, geom, reason, _ = _lattice_table(
        adata, n_rings, geometry, library_key, row_key, col_key, spatial_key
    )
    logger.debug(f"neighbor_table: geometry {geom!r} ({reason}).")
    return table, ring


def _check_distinct_positions(xy: np.ndarray, idx: np.ndarray, slide_name: str) -> None:
    """Raise ``ValueError`` when spots of one slide share a pixel position (zero-length edges)."""
    _, inverse, counts = np.unique(xy, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.ravel()] > 1
    if not shared.any():
        return
    first = np.flatnonzero(shared)[0]
    same = np.flatnonzero(inverse.ravel() == inverse.ravel()[first])
    raise ValueError(
        f"{int(shared.sum())} spots of slide {slide_name!r} share their pixel position with another spot "
        f"({int((counts > 1).sum())} positions hold several spots; e.g. spots {idx[same[:3]].tolist()} "
        f"at {xy[first].tolist()}). A generic graph would join them with zero-length edges. Remove or "
        "merge the duplicated spots, or check the coordinates (obsm) of that slide."
    )


def _generic_graph(
    coords: np.ndarray,
    slide: np.ndarray,
    radius: float | None,
    n_neighs: int,
    names: list[str] | None = None,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Per-slide radius or symmetric kNN graph on pixel coordinates (Euclidean distances, no self loops)."""
    n = coords.shape[0]
    src_all, dst_all = [], []
    for s in np.unique(slide):
        idx = np.flatnonzero(slide == s)
        if idx.size < 2:
            continue
        _check_distinct_positions(coords[idx], idx, str(s) if names is None else names[int(s)])
        tree = cKDTree(coords[idx])
        if radius is not None:
            pairs = tree.query_pairs(r=radius, output_type="ndarray")
            a, b = pairs[:, 0], pairs[:, 1]
        else:
            k = min(n_neighs, idx.size - 1)
            _, nn = tree.query(coords[idx], k=k + 1)
            nn = np.asarray(nn).reshape(idx.size, k + 1)
            a = np.repeat(np.arange(idx.size), k + 1)
            b = nn.ravel()
            keep = a != b
            a, b = a[keep], b[keep]
        src_all.append(idx[a])
        dst_all.append(idx[b])
    if src_all:
        src = np.concatenate(src_all)
        dst = np.concatenate(dst_all)
    else:
        src = dst = np.zeros(0, dtype=np.int64)
    # Symmetrise (union of both directions), drop self pairs (duplicated positions) and duplicates.
    ii = np.concatenate([src, dst])
    jj = np.concatenate([dst, src])
    off = ii != jj
    ii, jj = ii[off], jj[off]
    pattern = sp.csr_matrix((np.ones(ii.size, dtype=np.float32), (ii, jj)), shape=(n, n))
    pattern.sum_duplicates()
    pattern.sort_indices()
    pattern.data[:] = 1.0
    coo = pattern.tocoo()
    d = np.linalg.norm(coords[coo.row] - coords[coo.col], axis=1).astype(np.float32)
    dist = sp.csr_matrix((d, pattern.indices.copy(), pattern.indptr.copy()), shape=(n, n))
    return pattern.astype(np.float32), dist


def spatial_graph(
    adata: AnnData,
    *,
    geometry: GeometryArg = "auto",
    n_rings: int = 1,
    coord_type: Literal["auto", "grid", "generic"] = "auto",
    library_key: str | None = Key.SLIDE,
    row_key: str = Key.ARRAY_ROW,
    col_key: str = Key.ARRAY_COL,
    spatial_key: str = Key.SPATIAL,
    radius: float | None = None,
    n_neighs: int = 6,
    key_added: str = Key.GRAPH,
    copy: bool = False,
) -> AnnData | None:
    """Spatial neighbour graph on the spot lattice, built slide by slide.

    The graph never links spots of two different slides. With ``coord_type="grid"`` it follows the
    array lattice exactly (ring ``k`` = lattice distance ``k``):

    * ``"hex"`` (10x Visium; spots where ``row + col`` is even): ring 1 is ``(0, ±2)`` and ``(±1, ±1)``
      — 6 neighbours for an interior spot; the ring of ``(dr, dc)`` is ``|dr| + max(0, (|dc| - |dr|)/2)``,
      so ``n`` rings hold ``3 n (n + 1)`` spots (18 for two rings).
    * ``"square"`` (legacy ST 1k arrays such as HER2ST): ring 1 is ``(0, ±1)`` and ``(±1, 0)`` —
      4 neighbours; the ring is the Manhattan distance ``|dr| + |dc|`` (12 spots within two rings).
    * ``"checkerboard"`` (ST 2k arrays; ``row + col`` even, but a square lattice turned by 45°):
      ring 1 is the diagonal ``(±1, ±1)`` — 4 neighbours, the nearest in pixels; ``(0, ±2)`` and
      ``(±2, 0)`` are √2 further away and belong to ring 2. The ring is ``max(|dr|, |dc|)``.

    Spots on edges, corners or next to holes simply have fewer neighbours; a slide with one spot gives
    an isolated node (logged). With ``coord_type="generic"`` (or ``"auto"`` when array coordinates are
    absent) the graph joins spots of the same slide within ``radius`` pixels or, without ``radius``,
    each spot's ``n_neighs`` nearest spots (then symmetrised); distances are Euclidean pixels.

    Parameters
    ----------
    adata
        Annotated data with integer ``obs[row_key]`` / ``obs[col_key]`` (grid) or pixel coordinates in
        ``obsm[spatial_key]`` (generic).
    geometry
        ``"auto"``, ``"hex"``, ``"square"`` or ``"checkerboard"``; ``"auto"`` calls the square geometry
        when a slide mixes both parities of ``row + col``, else checkerboard when pixel coordinates show
        the ``(0, ±2)`` neighbours √2 further than the ``(±1, ±1)`` ones, else hex. Grid graphs only.
    n_rings
        Number of lattice rings joined to each spot (grid graphs only).
    coord_type
        ``"grid"`` (lattice from array coordinates), ``"generic"`` (pixel coordinates) or ``"auto"``
        (grid when the array coordinates are present, else generic).
    library_key
        ``obs`` column identifying slides; ``None`` treats all spots as one slide.
    row_key
        ``obs`` column with the integer array row.
    col_key
        ``obs`` column with the integer array column.
    spatial_key
        ``obsm`` key with pixel coordinates (generic graphs, and geometry detection).
    radius
        Generic graphs: join spots closer than this many pixels. ``None`` uses ``n_neighs`` nearest spots.
    n_neighs
        Generic graphs without ``radius``: number of nearest spots per spot before symmetrisation.
    key_added
        Prefix of the output keys (``"spatial"`` matches squidpy).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the modified copy when ``copy=True``). Writes:

    ``adata.obsp[f"{key_added}_connectivities"]``
        ``float32`` CSR, 1 for each neighbour pair, symmetric, no self loops.
    ``adata.obsp[f"{key_added}_distances"]``
        ``float32`` CSR with the same pattern: the ring of each neighbour (grid, as squidpy's grid
        graphs) or the Euclidean pixel distance (generic).
    ``adata.uns[f"{key_added}_neighbors"]``
        ``{"connectivities_key", "distances_key", "params"}``; ``params`` records ``coord_type``,
        ``geometry``, ``n_rings``, ``n_neighbors`` (ring-1 size or ``n_neighs``), ``radius``,
        ``library_key`` and ``transform`` (``"none"``).

    Raises
    ------
    KeyError
        If array coordinates (grid), pixel coordinates (generic) or the slide column are missing.
    ValueError
        For NaN or non-integer array coordinates, two spots of a slide at one position (array position
        for grid graphs, pixel position for generic ones: zero-length edges), a geometry that
        does not fit the coordinates, or bad ``n_rings`` / ``radius`` / ``n_neighs``.
    """
    check_adata(adata)
    if coord_type not in ("auto", "grid", "generic"):
        raise ValueError(f"coord_type must be 'auto', 'grid' or 'generic', got {coord_type!r}.")
    if coord_type == "auto":
        has_rc = row_key in adata.obs.columns and col_key in adata.obs.columns
        coord_type = "grid" if has_rc else "generic"
        if not has_rc:
            logger.info(
                f"No {row_key!r}/{col_key!r} in adata.obs: building a generic graph from "
                f"obsm[{spatial_key!r}] pixel coordinates."
            )
    if copy:
        adata = adata.copy()

    params: dict[str, object] = {"coord_type": coord_type, "transform": "none"}
    if library_key is not None:
        params["library_key"] = library_key
    if coord_type == "grid":
        n_rings = _check_n_rings(n_rings)
        table, ring, geom, reason, slide = _lattice_table(
            adata, n_rings, geometry, library_key, row_key, col_key, spatial_key
        )
        logger.info(f"spatial_graph: {geom} lattice ({reason}), {n_rings} ring(s).")
        conn, dist = table_to_graph(table, ring, n_rings)
        params.update(geometry=geom, n_rings=n_rings, n_neighbors=RING1_SIZE[geom])
    else:
        if spatial_key not in adata.obsm:
            raise KeyError(
                f"adata.obsm has no pixel coordinates {spatial_key!r} for a generic graph; available: "
                f"{list(adata.obsm.keys())}."
            )
        coords = np.asarray(adata.obsm[spatial_key])
        if coords.ndim != 2 or coords.shape[1] < 2 or not np.issubdtype(coords.dtype, np.number):
            raise ValueError(f"adata.obsm[{spatial_key!r}] must be a numeric (n_obs, 2) array.")
        coords = coords[:, :2].astype(np.float64)
        if not np.isfinite(coords).all():
            raise ValueError(f"adata.obsm[{spatial_key!r}] contains NaN or infinite coordinates.")
        radius_f: float | None = None
        if radius is not None:
            try:
                radius_f = float(radius)
            except (TypeError, ValueError):
                radius_f = float("nan")
            if isinstance(radius, bool) or not (np.isfinite(radius_f) and radius_f > 0):
                raise ValueError(f"radius must be a positive number or None, got {radius!r}.")
        check_int(n_neighs, "n_neighs")
        slide = slide_labels(adata, library_key)
        names = _slide_names(adata, library_key)
        conn, dist = _generic_graph(coords, slide, radius_f, int(n_neighs), names)
        params.update(n_neighbors=int(n_neighs))
        if radius_f is not None:
            params["radius"] = radius_f
        logger.info(
            "spatial_graph: generic graph "
            + (f"within radius {radius_f}." if radius_f is not None else f"on {n_neighs} nearest spots.")
        )

    _warn_small_slides(adata, slide, library_key)
    n_isolated = int((np.diff(conn.indptr) == 0).sum())
    if n_isolated:
        logger.info(f"spatial_graph: {n_isolated} spot(s) have no neighbour (isolated nodes).")
    conn_key, dist_key, uns_key = (
        Key.connectivities(key_added),
        Key.distances(key_added),
        Key.neighbors_uns(key_added),
    )
    for where, key in (("obsp", conn_key), ("obsp", dist_key), ("uns", uns_key)):
        if key in getattr(adata, where):
            logger.info(f"spatial_graph: overwriting adata.{where}[{key!r}].")
    adata.obsp[conn_key] = conn
    adata.obsp[dist_key] = dist
    adata.uns[uns_key] = {"connectivities_key": conn_key, "distances_key": dist_key, "params": params}
    return adata if copy else None
