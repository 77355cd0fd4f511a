from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import spared_tools as sp
from spared_tools._kernels.lattice import (
    _neighbor_lookup_sorted,
    lattice_offsets,
    lattice_ring,
    neighbor_lookup,
)

# ---------------------------------------------------------------------------------------------------
# helpers


def make_lattice(geometry: str, n_rows: int, n_cols: int, *, holes=(), slides: int = 1, shift_col: int = 0):
    """Full lattice block (per slide) as AnnData with integer array coordinates and pixel coordinates."""
    recs = []
    for s in range(slides):
        for r in range(n_rows):
            for c in range(n_cols):
                if geometry in ("hex", "checkerboard") and (r + c) % 2:
                    continue
                if (r, c) in holes:
                    continue
                recs.append((f"s{s}", r, c + s * shift_col))
    obs = pd.DataFrame(recs, columns=["slide_id", "array_row", "array_col"])
    obs.index = [f"spot{i}" for i in range(len(obs))]
    obs["slide_id"] = obs["slide_id"].astype("category")
    r = obs["array_row"].to_numpy(float)
    c = obs["array_col"].to_numpy(float)
    if geometry == "hex":
        xy = np.stack([c * 50.0, r * 50.0 * np.sqrt(3)], axis=1)
    else:
        xy = np.stack([c * 100.0, r * 100.0], axis=1)
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.poisson(2.0, size=(len(obs), 5)).astype(np.float32), obs=obs)
    a.obsm["spatial"] = xy
    return a


def brute_force_table(slide, rows, cols, geometry, n_rings):
    offsets, ring = lattice_offsets(geometry, n_rings)
    pos = {(int(o[0]), int(o[1])): k for k, o in enumerate(offsets)}
    n = len(rows)
    out = np.full((n, len(offsets)), -1, dtype=np.int64)
    for i in range(n):
        for j in range(n):
            if i == j or slide[i] != slide[j]:
                continue
            k = pos.get((int(rows[j] - rows[i]), int(cols[j] - cols[i])))
            if k is not None:
                out[i, k] = j
    return out


def degree(adata, key="spatial_connectivities"):
    return np.diff(adata.obsp[key].indptr)


def spot(adata, r, c, slide="s0"):
    m = (adata.obs.array_row == r) & (adata.obs.array_col == c) & (adata.obs.slide_id == slide)
    (idx,) = np.flatnonzero(m.to_numpy())
    return idx


# ---------------------------------------------------------------------------------------------------
# offsets and rings


@pytest.mark.parametrize(("geometry", "per_ring"), [("hex", 6), ("square", 4), ("checkerboard", 4)])
def test_offsets_ring_sizes_and_order(geometry, per_ring):
    offsets, ring = lattice_offsets(geometry, 4)
    assert np.array_equal(np.bincount(ring)[1:], per_ring * np.arange(1, 5))
    assert np.all(np.diff(ring) >= 0)
    assert np.array_equal(lattice_ring(offsets[:, 0], offsets[:, 1], geometry), ring)
    # symmetric set: -offset present for each offset
    s = {tuple(o) for o in offsets}
    assert all((-a, -b) in s for a, b in s)
    assert len(s) == len(offsets)


def test_ring1_offsets_exact():
    assert {tuple(o) for o in lattice_offsets("hex", 1)[0]} == {
        (0, 2),
        (0, -2),
        (1, 1),
        (1, -1),
        (-1, 1),
        (-1, -1),
    }
    assert {tuple(o) for o in lattice_offsets("square", 1)[0]} == {(0, 1), (0, -1), (1, 0), (-1, 0)}
    assert {tuple(o) for o in lattice_offsets("checkerboard", 1)[0]} == {(1, 1), (1, -1), (-1, 1), (-1, -1)}
    # ring 2 of the hex lattice: the 12 spots at hex distance 2
    off2, ring2 = lattice_offsets("hex", 2)
    assert {tuple(o) for o in off2[ring2 == 2]} == {
        (0, 4), (0, -4), (2, 0), (-2, 0), (2, 2), (2, -2), (-2, 2), (-2, -2),
        (1, 3), (1, -3), (-1, 3), (-1, -3),
    }  # fmt: skip
    with pytest.raises(ValueError, match="geometry"):
        lattice_offsets("triangle", 1)
    with pytest.raises(ValueError, match="n_rings"):
        lattice_offsets("hex", -1)


# ---------------------------------------------------------------------------------------------------
# neighbor_table against brute force


@pytest.mark.parametrize("geometry", ["hex", "square", "checkerboard"])
@pytest.mark.parametrize("n_rings", [1, 2, 3])
def test_neighbor_table_brute_force(geometry, n_rings):
    rng = np.random.default_rng(n_rings)
    a = make_lattice(geometry, 9, 14, slides=3)
    a = a[rng.permutation(a.n_obs)[: int(0.8 * a.n_obs)]].copy()  # holes + shuffled order
    table, ring = sp.pp.neighbor_table(a, n_rings=n_rings, geometry=geometry)
    slide = a.obs.slide_id.cat.codes.to_numpy()
    rows, cols = a.obs.array_row.to_numpy(), a.obs.array_col.to_numpy()
    ref = brute_force_table(slide, rows, cols, geometry, n_rings)
    assert table.dtype == np.int64 and ring.dtype == np.int64
    assert np.array_equal(table[:, 0], np.arange(a.n_obs))
    assert np.array_equal(table[:, 1:], ref)
    assert ring[0] == 0 and np.array_equal(ring[1:], lattice_offsets(geometry, n_rings)[1])
    # the sort-based fallback gives the same table
    offsets = lattice_offsets(geometry, n_rings)[0]
    assert np.array_equal(_neighbor_lookup_sorted(slide, rows, cols, offsets), ref)


def test_neighbor_table_auto_geometry_and_zero_rings():
    a = make_lattice("hex", 6, 10)
    table, ring = sp.pp.neighbor_table(a, n_rings=0)
    assert table.shape == (a.n_obs, 1) and np.array_equal(ring, [0])
    table, ring = sp.pp.neighbor_table(a, n_rings=2)
    assert table.shape == (a.n_obs, 19)


def test_neighbor_lookup_huge_coordinates_uses_fallback():
    rows = np.array([0, 0, 1, 10**6, 10**6], dtype=np.int64)
    cols = np.array([0, 2, 1, 10**6, 10**6 + 2], dtype=np.int64)
    slide = np.zeros(5, dtype=np.int64)
    offsets = lattice_offsets("hex", 1)[0]
    out = neighbor_lookup(slide, rows, cols, offsets)
    assert np.array_equal(out, brute_force_table(slide, rows, cols, "hex", 1))


def test_duplicate_positions_error():
    a = make_lattice("square", 3, 3)
    a.obs.loc[a.obs_names[1], ["array_row", "array_col"]] = a.obs.iloc[0][
        ["array_row", "array_col"]
    ].to_numpy()
    with pytest.raises(ValueError, match="share the array position"):
        sp.pp.neighbor_table(a, geometry="square")
    slide = np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match="share the array position"):
        _neighbor_lookup_sorted(slide, np.array([3, 3]), np.array([1, 1]), lattice_offsets("square", 1)[0])
