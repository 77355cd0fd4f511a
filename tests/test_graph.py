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


# ---------------------------------------------------------------------------------------------------
# exact neighbour counts


def test_hex_counts_interior_edges_corners_holes():
    a = make_lattice("hex", 8, 16, holes={(4, 8)})
    sp.pp.spatial_graph(a, geometry="hex")
    deg = degree(a)
    assert deg[spot(a, 0, 0)] == 2  # corner: (0, 2), (1, 1)
    assert deg[spot(a, 0, 4)] == 4  # top edge: (0, ±2), (1, ±1)
    assert deg[spot(a, 2, 0)] == 3  # left edge: (0, 2), (±1, 1)
    assert deg[spot(a, 7, 15)] == 2  # opposite corner: (0, -2), (-1, -1)
    assert deg[spot(a, 2, 6)] == 6  # interior
    for dr, dc in ((0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        assert deg[spot(a, 4 + dr, 8 + dc)] == 5  # around the hole
    d = a.obsp["spatial_distances"]
    assert set(np.unique(d.data)) == {1.0}
    # two rings: 18 for an interior spot, squidpy-style distances 1 and 2
    sp.pp.spatial_graph(a, geometry="hex", n_rings=2)
    assert degree(a)[spot(a, 3, 9)] == 18 - 1  # the hole (4, 8) is ring 1 of (3, 9)
    assert degree(a)[spot(a, 5, 5)] == 18 - 1  # (4, 8) is offset (-1, 3): ring 2 of (5, 5)
    full = make_lattice("hex", 10, 20)
    sp.pp.spatial_graph(full, geometry="hex", n_rings=2)
    assert degree(full)[spot(full, 5, 9)] == 18
    assert degree(full)[spot(full, 0, 0)] == 2 + 4  # corner: (0, 2), (1, 1) + (0, 4), (1, 3), (2, 2), (2, 0)
    assert set(np.unique(a.obsp["spatial_distances"].data)) == {1.0, 2.0}
    assert a.uns["spatial_neighbors"]["params"]["n_rings"] == 2


def test_square_counts():
    a = make_lattice("square", 5, 6, holes={(2, 3)})
    sp.pp.spatial_graph(a, geometry="square")
    deg = degree(a)
    assert deg[spot(a, 0, 0)] == 2 and deg[spot(a, 4, 5)] == 2  # corners
    assert deg[spot(a, 0, 2)] == 3 and deg[spot(a, 3, 0)] == 3  # edges
    assert deg[spot(a, 1, 1)] == 4  # interior
    for r, c in ((1, 3), (3, 3), (2, 2), (2, 4)):
        assert deg[spot(a, r, c)] == 3  # next to the hole
    sp.pp.spatial_graph(a, geometry="square", n_rings=2)
    full = make_lattice("square", 7, 7)
    sp.pp.spatial_graph(full, geometry="square", n_rings=2)
    assert degree(full)[spot(full, 3, 3)] == 12


def test_checkerboard_counts():
    a = make_lattice("checkerboard", 6, 8)
    sp.pp.spatial_graph(a, geometry="checkerboard")
    deg = degree(a)
    assert deg[spot(a, 0, 0)] == 1  # corner: (1, 1) only
    assert deg[spot(a, 0, 2)] == 2  # top edge: (1, ±1)
    assert deg[spot(a, 2, 0)] == 2  # left edge: (±1, 1)
    assert deg[spot(a, 2, 4)] == 4  # interior: the four diagonals
    conn = a.obsp["spatial_connectivities"]
    i = spot(a, 2, 4)
    nbrs = {(int(a.obs.array_row.iloc[j]), int(a.obs.array_col.iloc[j])) for j in conn[i].indices}
    assert nbrs == {(1, 3), (1, 5), (3, 3), (3, 5)}
    sp.pp.spatial_graph(a, geometry="checkerboard", n_rings=2)
    assert degree(a)[spot(a, 2, 4)] == 12


def test_two_slides_side_by_side_never_linked():
    # identical coordinates on two slides, and a second pair of slides that abut in array space
    a = make_lattice("hex", 6, 10, slides=2)
    b = make_lattice("hex", 6, 10, slides=2, shift_col=10)
    for adata in (a, b):
        sp.pp.spatial_graph(adata, geometry="hex", n_rings=3)
        conn = adata.obsp["spatial_connectivities"].tocoo()
        codes = adata.obs.slide_id.cat.codes.to_numpy()
        assert conn.nnz > 0 and np.all(codes[conn.row] == codes[conn.col])
        one = make_lattice("hex", 6, 10)
        sp.pp.spatial_graph(one, geometry="hex", n_rings=3)
        np.testing.assert_array_equal(degree(adata)[codes == 0], degree(one))
        np.testing.assert_array_equal(degree(adata)[codes == 1], degree(one))
    # without library_key the abutting slides become one lattice (and link), as documented
    sp.pp.spatial_graph(b, geometry="hex", library_key=None)
    conn = b.obsp["spatial_connectivities"].tocoo()
    codes = b.obs.slide_id.cat.codes.to_numpy()
    assert np.any(codes[conn.row] != codes[conn.col])


def test_graph_is_symmetric_sorted_without_self_loops():
    rng = np.random.default_rng(5)
    a = make_lattice("hex", 10, 20, slides=2)
    a = a[rng.permutation(a.n_obs)[:250]].copy()
    sp.pp.spatial_graph(a, n_rings=2)
    c, d = a.obsp["spatial_connectivities"], a.obsp["spatial_distances"]
    assert c.dtype == np.float32 and d.dtype == np.float32
    assert (c != c.T).nnz == 0 and (d != d.T).nnz == 0
    assert c.diagonal().sum() == 0 and c.has_sorted_indices
    np.testing.assert_array_equal(c.indices, d.indices)
    # matches the neighbour table
    table, ring = sp.pp.neighbor_table(a, n_rings=2)
    for i in range(0, a.n_obs, 17):
        assert set(c[i].indices) == set(table[i, 1:][table[i, 1:] >= 0])


# ---------------------------------------------------------------------------------------------------
# peers and real data


def test_matches_squidpy_grid_on_visium_fixture(visium_hex):
    import squidpy as sq

    a = visium_hex
    sp.pp.spatial_graph(a)
    assert a.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    ref = sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=6, copy=True, library_key="slide_id")
    assert (a.obsp["spatial_connectivities"] != ref[0]).nnz == 0
    assert (a.obsp["spatial_distances"] != ref[1]).nnz == 0
    # two rings: squidpy walks the ring-1 graph, we use lattice distance. They agree except for spots at
    # lattice distance 2 whose two connecting spots are both missing (squidpy misses those pairs).
    ring1 = a.obsp["spatial_connectivities"].copy()
    sp.pp.spatial_graph(a, n_rings=2)
    ref2 = sq.gr.spatial_neighbors(
        a, coord_type="grid", n_neighs=6, n_rings=2, copy=True, library_key="slide_id"
    )
    ours, theirs = a.obsp["spatial_connectivities"], ref2[0]
    assert (theirs > ours).nnz == 0
    extra = (ours > theirs).tocoo()
    assert extra.nnz > 0  # this fixture has such holes
    common = (ring1 @ ring1).tocsr()
    for i, j in zip(extra.row, extra.col):
        assert common[i, j] == 0 and a.obsp["spatial_distances"][i, j] == 2
    shared = theirs.toarray() > 0
    np.testing.assert_array_equal(a.obsp["spatial_distances"].toarray()[shared], ref2[1].toarray()[shared])


def test_matches_squidpy_grid_on_square_fixture(her2st_c2_block):
    import squidpy as sq

    a = her2st_c2_block
    sp.pp.spatial_graph(a)
    assert a.uns["spatial_neighbors"]["params"]["geometry"] == "square"
    ref = sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=4, copy=True, library_key="slide_id")
    assert (a.obsp["spatial_connectivities"] != ref[0]).nnz == 0


def test_checkerboard_detected_on_st2k_fixture(mob1):
    sp.pp.spatial_graph(mob1)
    params = mob1.uns["spatial_neighbors"]["params"]
    assert params["geometry"] == "checkerboard" and params["n_neighbors"] == 4
    # ring-1 neighbours are the nearest spots in pixels
    coords = mob1.obsm["spatial"]
    c = mob1.obsp["spatial_connectivities"].tocoo()
    d1 = np.linalg.norm(coords[c.row] - coords[c.col], axis=1)
    table, ring = sp.pp.neighbor_table(mob1, n_rings=2)
    ok = table[:, ring == 2] >= 0
    i = np.repeat(np.arange(mob1.n_obs)[:, None], ok.shape[1], axis=1)[ok]
    d2 = np.linalg.norm(coords[i] - coords[table[:, ring == 2][ok]], axis=1)
    assert d1.max() < d2.min()


def test_detect_geometry_without_pixels():
    a = make_lattice("hex", 4, 8)
    del a.obsm["spatial"]
    sp.pp.spatial_graph(a)
    assert a.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    b = make_lattice("checkerboard", 4, 8)
    sp.pp.spatial_graph(b)
    assert b.uns["spatial_neighbors"]["params"]["geometry"] == "checkerboard"
    sq_ = make_lattice("square", 4, 4)
    del sq_.obsm["spatial"]
    sp.pp.spatial_graph(sq_)
    assert sq_.uns["spatial_neighbors"]["params"]["geometry"] == "square"


# ---------------------------------------------------------------------------------------------------
# generic (pixel) graphs


def brute_radius(coords, slide, radius):
    n = len(coords)
    d = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    return (d <= radius) & (slide[:, None] == slide[None]) & ~np.eye(n, dtype=bool)


def test_generic_radius_and_knn_against_brute_force():
    rng = np.random.default_rng(0)
    n = 120
    coords = rng.uniform(0, 100, size=(n, 2))
    coords[-1] = [1000.0, 1000.0]  # isolated spot
    slide = rng.integers(0, 2, n)
    obs = pd.DataFrame(
        {"slide_id": pd.Categorical([f"s{s}" for s in slide])}, index=[f"c{i}" for i in range(n)]
    )
    a = ad.AnnData(np.ones((n, 2), dtype=np.float32), obs=obs)
    a.obsm["spatial"] = coords
    sp.pp.spatial_graph(a, radius=15.0)  # no array coords: generic
    assert a.uns["spatial_neighbors"]["params"]["coord_type"] == "generic"
    ref = brute_radius(coords, slide, 15.0)
    c = a.obsp["spatial_connectivities"].toarray() > 0
    np.testing.assert_array_equal(c, ref)
    assert degree(a)[-1] == 0
    dist = a.obsp["spatial_distances"].toarray()
    full = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.testing.assert_allclose(dist[ref], full[ref], rtol=1e-6)
    # kNN: symmetric union of each spot's k nearest in its own slide
    sp.pp.spatial_graph(a, coord_type="generic", n_neighs=5)
    c = a.obsp["spatial_connectivities"].toarray() > 0
    ref = np.zeros((n, n), dtype=bool)
    for i in range(n):
        same = np.flatnonzero((slide == slide[i]) & (np.arange(n) != i))
        nn = same[np.argsort(full[i, same], kind="stable")[:5]]
        ref[i, nn] = True
    ref |= ref.T
    np.testing.assert_array_equal(c, ref)


def test_generic_refuses_coincident_spots():
    """Spots of one slide at the same pixel position would give zero-length edges: named ValueError."""
    rng = np.random.default_rng(1)
    n = 40
    coords = rng.uniform(0, 100, size=(n, 2))
    obs = pd.DataFrame(
        {"slide_id": pd.Categorical(["A"] * 20 + ["B"] * 20)}, index=[f"c{i}" for i in range(n)]
    )
    a = ad.AnnData(np.ones((n, 2), dtype=np.float32), obs=obs)
    a.obsm["spatial"] = coords.copy()
    a.obsm["spatial"][25] = a.obsm["spatial"][30]  # two spots of slide B at one position
    with pytest.raises(
        ValueError, match=r"2 spots of slide 'B' share their pixel position.*zero-length edges"
    ):
        sp.pp.spatial_graph(a, coord_type="generic", n_neighs=4)
    assert "spatial_connectivities" not in a.obsp
    # every spot at one position (the probe's case), with a radius too
    same = a.copy()
    same.obsm["spatial"] = np.zeros((n, 2))
    with pytest.raises(ValueError, match=r"20 spots of slide 'A' share.*zero-length"):
        sp.pp.spatial_graph(same, coord_type="generic", radius=5.0)
    # the same position in two different slides is fine (slides are never joined)
    ok = a.copy()
    ok.obsm["spatial"] = coords.copy()
    ok.obsm["spatial"][25] = ok.obsm["spatial"][5]
    sp.pp.spatial_graph(ok, coord_type="generic", n_neighs=4)
    assert ok.obsp["spatial_distances"].data.min() > 0


# ---------------------------------------------------------------------------------------------------
# bad input


def test_graph_errors():
    a = make_lattice("square", 3, 3)
    b = a.copy()
    del b.obs["array_row"]
    with pytest.raises(KeyError, match="array_row"):
        sp.pp.spatial_graph(b, coord_type="grid")
    with pytest.raises(KeyError, match="array_row"):
        sp.pp.neighbor_table(b)
    b = a.copy()
    b.obs["array_row"] = b.obs["array_row"].astype(float)
    b.obs.loc[b.obs_names[2], "array_row"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.spatial_graph(b)
    b.obs["array_row"] = a.obs["array_row"] + 0.5
    with pytest.raises(ValueError, match="integer"):
        sp.pp.spatial_graph(b)
    b = a.copy()
    b.obs["array_row"] = "x"
    with pytest.raises(TypeError, match="numeric"):
        sp.pp.neighbor_table(b)
    with pytest.raises(ValueError, match="geometry"):
        sp.pp.spatial_graph(a, geometry="triangle")
    with pytest.raises(ValueError, match="mix both parities"):
        sp.pp.spatial_graph(a, geometry="hex")
    with pytest.raises(ValueError, match="n_rings"):
        sp.pp.spatial_graph(a, n_rings=0)
    with pytest.raises(ValueError, match="coord_type"):
        sp.pp.spatial_graph(a, coord_type="delaunay")
    with pytest.raises(KeyError, match="slide column"):
        sp.pp.spatial_graph(a, library_key="section")
    b = a.copy()
    del b.obsm["spatial"]
    with pytest.raises(KeyError, match="pixel coordinates"):
        sp.pp.spatial_graph(b, coord_type="generic")
    b = a.copy()
    b.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.spatial_graph(b, coord_type="generic")
    with pytest.raises(ValueError, match="radius"):
        sp.pp.spatial_graph(a, coord_type="generic", radius=-1.0)
    with pytest.raises(TypeError, match="AnnData"):
        sp.pp.spatial_graph(np.zeros((3, 3)))


def test_single_spot_slide_is_isolated_node(tmp_path):
    a = make_lattice("hex", 4, 8, slides=2)
    a.obs["slide_id"] = a.obs["slide_id"].cat.add_categories("lonely")
    a.obs.loc[a.obs_names[0], "slide_id"] = "lonely"
    sp.pp.spatial_graph(a)
    assert degree(a)[0] == 0
    table, _ = sp.pp.neighbor_table(a)
    assert np.all(table[0, 1:] == -1)
    # one spot in total: no crash either
    one = a[:1].copy()
    sp.pp.spatial_graph(one, geometry="hex")
    assert one.obsp["spatial_connectivities"].nnz == 0
    sp.pp.spatial_graph(one, coord_type="generic", n_neighs=3)
    assert one.obsp["spatial_connectivities"].nnz == 0
    # results round-trip through h5ad (uns params are serialisable)
    a.write_h5ad(tmp_path / "g.h5ad")
    back = ad.read_h5ad(tmp_path / "g.h5ad")
    assert back.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    assert (back.obsp["spatial_connectivities"] != a.obsp["spatial_connectivities"]).nnz == 0


def test_copy_leaves_input_untouched():
    a = make_lattice("square", 3, 4)
    out = sp.pp.spatial_graph(a, copy=True, key_added="lattice")
    assert "lattice_connectivities" in out.obsp and "lattice_connectivities" not in a.obsp
    assert out.uns["lattice_neighbors"]["connectivities_key"] == "lattice_connectivities"


def test_stutility_mob_sections_checkerboard():
    from tests.conftest import shared_path

    parts = []
    for i in range(1, 5):
        src = ad.read_h5ad(shared_path("stutility_mob", f"stutility_MOB{i}.h5ad"), backed="r")
        part = ad.AnnData(
            np.zeros((src.n_obs, 1), dtype=np.float32),
            obs=src.obs[["slide_id", "array_row", "array_col"]].copy(),
        )
        part.obsm["spatial"] = np.asarray(src.obsm["spatial"], dtype=np.float64)
        src.file.close()
        parts.append(part)
    a = ad.concat(parts)
    a.obs["slide_id"] = a.obs["slide_id"].astype(str).astype("category")
    assert a.obs["slide_id"].nunique() == 4
    sp.pp.spatial_graph(a)
    assert a.uns["spatial_neighbors"]["params"]["geometry"] == "checkerboard"
    conn = a.obsp["spatial_connectivities"].tocoo()
    codes = a.obs["slide_id"].cat.codes.to_numpy()
    assert np.all(codes[conn.row] == codes[conn.col])
    assert degree(a).max() == 4
    # every ring-1 edge is shorter (in pixels) than every ring-2 pair
    xy = a.obsm["spatial"]
    d1 = np.linalg.norm(xy[conn.row] - xy[conn.col], axis=1)
    table, ring = sp.pp.neighbor_table(a, n_rings=2)
    t2 = table[:, ring == 2]
    ok = t2 >= 0
    i = np.broadcast_to(np.arange(a.n_obs)[:, None], t2.shape)[ok]
    d2 = np.linalg.norm(xy[i] - xy[t2[ok]], axis=1)
    assert d1.max() < d2.min()


# ---------------------------------------------------------------------------------------------------
# neighbourhood image context


def _brute_context(a, F, n_rings, geometry):
    """Mean over the spot and every same-slide spot within n_rings lattice rings (double loop)."""
    rows, cols = a.obs.array_row.to_numpy(), a.obs.array_col.to_numpy()
    slide = a.obs.slide_id.to_numpy()
    out = np.zeros_like(F, dtype=np.float64)
    for i in range(a.n_obs):
        near = [
            j
            for j in range(a.n_obs)
            if slide[j] == slide[i]
            and lattice_ring(np.array([rows[j] - rows[i]]), np.array([cols[j] - cols[i]]), geometry)[0]
            <= n_rings
        ]
        out[i] = F[near].mean(0)
    return out


@pytest.mark.parametrize(
    ("geometry", "n_rings"), [("square", 1), ("square", 2), ("hex", 1), ("checkerboard", 1)]
)
def test_context_features_brute_force(geometry, n_rings):
    from spared_tools.pp import context_features

    a = make_lattice(geometry, 6, 8, holes={(2, 2), (3, 3), (0, 4)}, slides=2)
    rng = np.random.default_rng(1)
    F = rng.normal(size=(a.n_obs, 5)).astype(np.float32)
    out = context_features(a, F, n_rings=n_rings, geometry=geometry)
    assert out.shape == (a.n_obs, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :5], F)
    np.testing.assert_allclose(out[:, 5:], _brute_context(a, F, n_rings, geometry), rtol=1e-5, atol=1e-6)
    # views: view k of a spot is averaged with view k of its neighbours
    V = rng.normal(size=(a.n_obs, 3, 4)).astype(np.float32)
    outv = context_features(a, V, n_rings=n_rings, geometry=geometry)
    assert outv.shape == (a.n_obs, 3, 8)
    for k in range(3):
        np.testing.assert_allclose(
            outv[:, k, 4:], _brute_context(a, V[:, k], n_rings, geometry), rtol=1e-5, atol=1e-6
        )
    # slides are never mixed: moving slide s1's features leaves slide s0's context unchanged
    G = F.copy()
    G[(a.obs.slide_id == "s1").to_numpy()] += 100.0
    s0 = (a.obs.slide_id == "s0").to_numpy()
    np.testing.assert_allclose(context_features(a, G, n_rings=n_rings, geometry=geometry)[s0], out[s0])


def test_context_features_zero_rings_and_errors():
    from spared_tools._kernels.lattice import neighbour_mean
    from spared_tools.pp import context_features

    a = make_lattice("square", 3, 3)
    F = np.arange(a.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    np.testing.assert_array_equal(context_features(a, F, n_rings=0), F)
    # isolated spot (no neighbour present): its own features
    np.testing.assert_array_equal(
        neighbour_mean(F, np.array([[0, -1], [1, 0], [2, -1]] + [[i, -1] for i in range(3, a.n_obs)])),
        np.vstack([F[0], F[:2].mean(0), F[2:]]),
    )
    with pytest.raises(ValueError, match="n_rings"):
        context_features(a, F, n_rings=-1)
    with pytest.raises(ValueError, match="features must be"):
        context_features(a, F[:3], n_rings=1)
    b = a.copy()
    del b.obs["array_row"]
    with pytest.raises(KeyError, match="array_row.*context_rings=0"):
        context_features(b, F, n_rings=1)


def test_context_features_needs_the_slide_column():
    from spared_tools.pp import context_features

    a = make_lattice("square", 3, 3)
    F = np.ones((a.n_obs, 2), dtype=np.float32)
    del a.obs["slide_id"]
    with pytest.raises(KeyError, match="no slide column 'slide_id'.*library_key=None"):
        context_features(a, F, n_rings=1)
    # one slide: library_key=None
    np.testing.assert_array_equal(context_features(a, F, n_rings=1, library_key=None)[:, 2:], F)
