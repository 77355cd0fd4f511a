"""Lattice geometry kernels: ring offsets, neighbour look-up tables and geometry detection.

Pure array code (numpy / numba); never imports AnnData.

Three lattices are supported, all addressed by integer ``(row, col)`` array coordinates:

``"hex"`` (10x Visium)
    Spots sit where ``row + col`` is even ("doubled" columns). Ring 1 is the six offsets
    ``(0, ±2)`` and ``(±1, ±1)``. The ring of an offset ``(dr, dc)`` is the hexagonal distance
    ``|dr| + max(0, (|dc| - |dr|) / 2)``; ring ``k`` holds ``6 k`` offsets.
``"square"`` (legacy ST 1k arrays, e.g. HER2ST)
    Every integer ``(row, col)`` is a spot. Ring 1 is the four offsets ``(0, ±1)`` and ``(±1, 0)``;
    the ring of ``(dr, dc)`` is the Manhattan distance ``|dr| + |dc|``; ring ``k`` holds ``4 k`` offsets.
``"checkerboard"`` (ST 2k arrays, e.g. the STUtility mouse olfactory bulb)
    Spots sit where ``row + col`` is even, but the array is a square lattice turned by 45°: the four
    nearest spots are the diagonal offsets ``(±1, ±1)`` while ``(0, ±2)`` and ``(±2, 0)`` are about
    √2 times further away. The ring of ``(dr, dc)`` is the Manhattan distance on the rotated lattice,
    which equals ``max(|dr|, |dc|)``; ring ``k`` holds ``4 k`` offsets.

Rings are lattice distances, so they never depend on which other spots were filtered out.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np
import scipy.sparse as sp

from spared_tools._checks import check_int

Geometry = Literal["hex", "square", "checkerboard"]
GEOMETRIES: tuple[str, ...] = ("hex", "square", "checkerboard")
#: Number of ring-1 neighbours of each geometry.
RING1_SIZE = {"hex": 6, "square": 4, "checkerboard": 4}

# Largest dense look-up grid (cells) before switching to the sort-based look-up.
_MAX_GRID_CELLS = 50_000_000


def _check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}.")


def lattice_ring(dr: np.ndarray, dc: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Ring (lattice distance) of offsets ``(dr, dc)``.

    Parameters
    ----------
    dr
        Row offsets (integer array).
    dc
        Column offsets (integer array, same shape as ``dr``).
    geometry
        ``"hex"``, ``"square"`` or ``"checkerboard"`` (see the module docstring).

    Returns
    -------
    Integer array of lattice distances; ``-1`` where the offset does not join two sites of the lattice
    (odd ``dr + dc`` on hex and checkerboard lattices).
    """
    _check_geometry(geometry)
    adr = np.abs(np.asarray(dr, dtype=np.int64))
    adc = np.abs(np.asarray(dc, dtype=np.int64))
    if geometry == "square":
        return adr + adc
    out = np.where(
        geometry == "hex",
        adr + np.maximum(0, (adc - adr) // 2),
        np.maximum(adr, adc),
    )
    return np.where((adr + adc) % 2 == 0, out, -1).astype(np.int64)


def lattice_offsets(geometry: Geometry, n_rings: int) -> tuple[np.ndarray, np.ndarray]:
    """Every lattice offset within ``n_rings`` rings, ordered by ring, then angle.

    Parameters
    ----------
    geometry
        ``"hex"``, ``"square"`` or ``"checkerboard"``.
    n_rings
        Number of rings (``>= 0``).

    Returns
    -------
    offsets
        ``int64`` array ``(K, 2)`` of ``(d_row, d_col)`` offsets, the origin excluded.
    ring
        ``int64`` array ``(K,)``, the ring of each offset (1 … ``n_rings``).

    Notes
    -----
    Within a ring, offsets are sorted by the angle of the offset in physical space measured from the
    ``+col`` direction towards ``+row`` (on the hex lattice a column step is half a spot pitch and a
    row step √3/2 of it), starting at 0 and increasing.
    """
    _check_geometry(geometry)
    check_int(n_rings, "n_rings", min=0)
    n_rings = int(n_rings)
    span_c = 2 * n_rings if geometry == "hex" else n_rings
    dr2, dc2 = np.meshgrid(np.arange(-n_rings, n_rings + 1), np.arange(-span_c, span_c + 1), indexing="ij")
    dr, dc = dr2.ravel(), dc2.ravel()
    ring = lattice_ring(dr, dc, geometry)
    keep = (ring >= 1) & (ring <= n_rings)
    dr, dc, ring = dr[keep], dc[keep], ring[keep]
    x = dc * (0.5 if geometry == "hex" else 1.0)
    y = dr * (np.sqrt(3.0) / 2.0 if geometry == "hex" else 1.0)
    angle = np.mod(np.arctan2(y, x), 2 * np.pi)
    angle = np.round(angle, 12)  # make ties exact so the lexsort falls back to (dr, dc)
    order = np.lexsort((dc, dr, angle, ring))
    offsets = np.stack([dr[order], dc[order]], axis=1).astype(np.int64)
    return offsets, ring[order].astype(np.int64)


@numba.njit(cache=True)
def _fill_grid(slide, rows, cols, rmin, cmin, width, base, grid):
    """Write each spot's index into its grid cell; return ``(i, j)`` of the first duplicate or ``(-1, -1)``."""
    for i in range(slide.shape[0]):
        s = slide[i]
        cell = base[s] + (rows[i] - rmin[s]) * width[s] + (cols[i] - cmin[s])
        if grid[cell] >= 0:
            return grid[cell], i
        grid[cell] = i
    return -1, -1


@numba.njit(cache=True, parallel=True)
def _lookup_grid(slide, rows, cols, rmin, cmin, height, width, base, grid, offsets, out):
    n = slide.shape[0]
    k = offsets.shape[0]
    for i in numba.prange(n):
        s = slide[i]
        r0 = rows[i] - rmin[s]
        c0 = cols[i] - cmin[s]
        h = height[s]
        w = width[s]
        b = base[s]
        for j in range(k):
            r = r0 + offsets[j, 0]
            c = c0 + offsets[j, 1]
            if r >= 0 and r < h and c >= 0 and c < w:
                out[i, j] = grid[b + r * w + c]
            else:
                out[i, j] = -1


def _duplicate_error(slide: np.ndarray, rows: np.ndarray, cols: np.ndarray, i: int, j: int) -> ValueError:
    return ValueError(
        f"Spots {i} and {j} share the array position (row={rows[j]}, col={cols[j]}) on the same slide "
        f"(slide code {slide[j]}); lattice graphs need one spot per position per slide."
    )


def neighbor_lookup(slide: np.ndarray, rows: np.ndarray, cols: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Index of the spot at each lattice offset of each spot, within its own slide.

    Parameters
    ----------
    slide
        Integer slide code per spot ``(n,)``, values in ``0 … n_slides - 1``.
    rows
        Integer array row per spot ``(n,)``.
    cols
        Integer array column per spot ``(n,)``.
    offsets
        ``(K, 2)`` integer ``(d_row, d_col)`` offsets.

    Returns
    -------
    ``int64`` array ``(n, K)``: the index of the spot at ``(row + d_row, col + d_col)`` on the same slide,
    ``-1`` where there is none.

    Raises
    ------
    ValueError
        If two spots of one slide share a position, or the inputs have mismatched shapes.
    """
    slide = np.ascontiguousarray(slide, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = slide.shape[0]
    if rows.shape != (n,) or cols.shape != (n,):
        raise ValueError("slide, rows and cols must be 1-D arrays of the same length.")
    out = np.full((n, offsets.shape[0]), -1, dtype=np.int64)
    if n == 0 or offsets.shape[0] == 0:
        return out
    if slide.min() < 0:
        raise ValueError("slide codes must be non-negative.")
    n_slides = int(slide.max()) + 1
    big = np.iinfo(np.int64).max
    rmin = np.full(n_slides, big, dtype=np.int64)
    cmin = np.full(n_slides, big, dtype=np.int64)
    rmax = np.full(n_slides, -big, dtype=np.int64)
    cmax = np.full(n_slides, -big, dtype=np.int64)
    np.minimum.at(rmin, slide, rows)
    np.minimum.at(cmin, slide, cols)
    np.maximum.at(rmax, slide, rows)
    np.maximum.at(cmax, slide, cols)
    present = rmax >= rmin
    height = np.where(present, rmax - rmin + 1, 0)
    width = np.where(present, cmax - cmin + 1, 0)
    rmin = np.where(present, rmin, 0)
    cmin = np.where(present, cmin, 0)
    cells = height * width
    if cells.sum() <= max(_MAX_GRID_CELLS, 0):
        base = np.concatenate([[0], np.cumsum(cells)[:-1]]).astype(np.int64)
        grid = np.full(int(cells.sum()), -1, dtype=np.int64)
        i, j = _fill_grid(slide, rows, cols, rmin, cmin, width, base, grid)
        if i >= 0:
            raise _duplicate_error(slide, rows, cols, i, j)
        _lookup_grid(slide, rows, cols, rmin, cmin, height, width, base, grid, offsets, out)
        return out
    return _neighbor_lookup_sorted(slide, rows, cols, offsets)


def _neighbor_lookup_sorted(
    slide: np.ndarray, rows: np.ndarray, cols: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Sort-based look-up used when the coordinate range is too large for a dense grid."""
    n = slide.shape[0]
    pad = int(np.abs(offsets).max()) if offsets.size else 0
    r0 = rows - rows.min() + pad
    c0 = cols - cols.min() + pad
    h = int(r0.max()) + pad + 1
    w = int(c0.max()) + pad + 1
    if float(slide.max() + 1) * h * w >= 2.0**62:
        raise ValueError("Array coordinates span too large a range to index; check array_row/array_col.")
    keys = (slide * h + r0) * w + c0
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size:
        a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise _duplicate_error(slide, rows, cols, a, b)
    out = np.full((n, offsets.shape[0]), -1, dtype=np.int64)
    for k, (dr, dc) in enumerate(offsets):
        q = (slide * h + (r0 + dr)) * w + (c0 + dc)
        pos = np.searchsorted(sk, q)
        pos_c = np.minimum(pos, n - 1)
        hit = sk[pos_c] == q
        out[hit, k] = order[pos_c[hit]]
    return out


def detect_geometry(
    slide: np.ndarray, rows: np.ndarray, cols: np.ndarray, coords: np.ndarray | None = None
) -> tuple[Geometry, str]:
    """Guess the lattice from array coordinates (and pixel coordinates when given).

    Parameters
    ----------
    slide
        Integer slide code per spot ``(n,)``.
    rows
        Integer array row per spot ``(n,)``.
    cols
        Integer array column per spot ``(n,)``.
    coords
        Optional ``(n, 2)`` pixel coordinates used to tell hexagonal from checkerboard arrays.

    Returns
    -------
    geometry
        ``"square"`` when any slide holds spots with both parities of ``row + col``; otherwise
        ``"checkerboard"`` when the pixel distance of ``(0, ±2)`` neighbours is more than 1.2 times
        that of ``(±1, ±1)`` neighbours (√2 on ST 2k arrays, 1 on Visium), else ``"hex"``.
    reason
        A sentence explaining the decision (for the log).
    """
    slide = np.asarray(slide, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    parity = (rows + cols) % 2
    n_slides = int(slide.max()) + 1 if slide.size else 0
    mixed = np.zeros(n_slides, dtype=bool)
    if slide.size:
        has0 = np.bincount(slide[parity == 0], minlength=n_slides) > 0
        has1 = np.bincount(slide[parity == 1], minlength=n_slides) > 0
        mixed = has0 & has1
    if mixed.any():
        return "square", f"{int(mixed.sum())} slide(s) hold spots with both parities of row + col"
    if coords is None:
        return "hex", "row + col has one parity per slide and no pixel coordinates were given; assuming hex"
    coords = np.asarray(coords, dtype=np.float64)
    probe = np.array([[0, 2], [1, 1]], dtype=np.int64)
    table = neighbor_lookup(slide, rows, cols, probe)
    dists = []
    for k in range(2):
        ok = table[:, k] >= 0
        if not ok.any():
            return "hex", (
                "row + col has one parity per slide but no (0, 2)/(1, 1) neighbour pairs exist to "
                "compare; assuming hex"
            )
        dists.append(float(np.median(np.linalg.norm(coords[ok] - coords[table[ok, k]], axis=1))))
    if dists[1] <= 0 or not np.isfinite(dists).all():
        return "hex", "pixel coordinates do not separate neighbours; assuming hex"
    ratio = dists[0] / dists[1]
    if ratio > 1.2:
        return "checkerboard", f"(0, 2) neighbours lie {ratio:.2f}x further than (1, 1) neighbours in pixels"
    return "hex", f"(0, 2) and (1, 1) neighbours lie at the same pixel distance (ratio {ratio:.2f})"


def table_to_graph(table: np.ndarray, ring: np.ndarray, n_rings: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Connectivity and ring-distance matrices from a neighbour table.

    Parameters
    ----------
    table
        ``(n, 1 + K)`` table from :func:`neighbor_lookup` with the spot itself in column 0.
    ring
        ``(1 + K,)`` ring of each column (0 for column 0).
    n_rings
        Keep neighbours with ``1 <= ring <= n_rings``.

    Returns
    -------
    connectivities
        ``float32`` CSR ``(n, n)``, 1 for every neighbour (no self loops), sorted indices.
    distances
        ``float32`` CSR ``(n, n)`` with the same pattern holding the ring of each neighbour.
    """
    n = table.shape[0]
    cols = np.flatnonzero((ring >= 1) & (ring <= n_rings))
    sub = table[:, cols]
    hit = sub >= 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(hit.sum(axis=1), out=indptr[1:])
    indices = sub[hit]
    dist = np.broadcast_to(ring[cols].astype(np.float32), sub.shape)[hit]
    idx_dtype = np.int32 if n < np.iinfo(np.int32).max and indices.size < np.iinfo(np.int32).max else np.int64
    dist_m = sp.csr_matrix((dist, indices.astype(idx_dtype), indptr.astype(idx_dtype)), shape=(n, n))
    dist_m.sort_indices()
    conn = dist_m.copy()
    conn.data = np.ones_like(conn.data)
    return conn, dist_m


def neighbour_mean(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each spot and the neighbours listed in its row of ``table``.

    Parameters
    ----------
    values
        ``(n, ...)`` array, one entry per spot (e.g. image features ``(n, d)`` or ``(n, n_views, d)``).
    table
        ``(n, 1 + K)`` neighbour table (:func:`neighbor_lookup` with the spot itself in column 0), ``-1``
        where no spot sits at an offset.

    Returns
    -------
    ``float`` array shaped like ``values`` (``float32`` for ``float32`` input, else ``float64``): row ``i``
    is the mean of ``values[j]`` over the entries ``j >= 0`` of ``table[i]``. A row with no valid entry
    (impossible when column 0 is the spot itself) is 0.

    Notes
    -----
    One pass per table column, so the memory is two arrays the size of ``values`` whatever ``K`` is.
    """
    values = np.asarray(values)
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[0] != values.shape[0]:
        raise ValueError(f"table must be (n, 1 + K) with n = {values.shape[0]}, got {table.shape}.")
    dtype = np.float32 if values.dtype == np.float32 else np.float64
    out = np.zeros(values.shape, dtype=dtype)
    count = np.zeros(values.shape[0], dtype=np.int64)
    for k in range(table.shape[1]):
        idx = table[:, k]
        hit = np.flatnonzero(idx >= 0)
        out[hit] += values[idx[hit]]
        count[hit] += 1
    shape = (-1,) + (1,) * (values.ndim - 1)
    out /= np.maximum(count, 1).reshape(shape).astype(dtype)
    return out
