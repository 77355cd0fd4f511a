from __future__ import annotations

import gzip
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps

import spared_tools as sp

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path
from spared_tools._kernels.median import (
    adaptive_median_numba,
    adaptive_median_torch,
    slide_nonzero_median,
)

# ---------------------------------------------------------------- helpers (independent of the package)


def lattice_distance(dr: np.ndarray, dc: np.ndarray, geometry: str) -> np.ndarray:
    dr, dc = np.abs(dr), np.abs(dc)
    if geometry == "square":
        return dr + dc
    # Visium doubled-column coordinates: neighbours at (0, ±2) and (±1, ±1)
    return dr + np.maximum(0, (dc - dr) // 2)


def offsets(n_rings: int, geometry: str) -> tuple[list[tuple[int, int]], list[int]]:
    span = 2 * n_rings + 1
    cand = []
    for dr in range(-span, span + 1):
        for dc in range(-span, span + 1):
            if geometry == "hex" and (dr + dc) % 2:
                continue
            d = int(lattice_distance(np.array(dr), np.array(dc), geometry))
            if d <= n_rings:
                cand.append((d, np.arctan2(dr, dc), dr, dc))
    cand.sort()
    return [(dr, dc) for _, _, dr, dc in cand], [d for d, _, _, _ in cand]


def build_table(rows, cols, slides, n_rings, geometry):
    """Neighbour table following the DEVELOPMENT.md contract, built by dictionary look-up."""
    where = {(s, r, c): i for i, (s, r, c) in enumerate(zip(slides, rows, cols))}
    offs, ring = offsets(n_rings, geometry)
    table = np.full((len(rows), len(offs)), -1, dtype=np.int64)
    for i, (s, r, c) in enumerate(zip(slides, rows, cols)):
        for j, (dr, dc) in enumerate(offs):
            table[i, j] = where.get((s, r + dr, c + dc), -1)
    return table, np.asarray(ring)


def brute_force(X, rows, cols, slides, n_rings, geometry):
    """Spot-by-spot SpaRED rule (np.median on explicit windows found from coordinates)."""
    X = np.asarray(X, dtype=np.float64)
    out = X.copy()
    for s in np.unique(slides):
        idx = np.flatnonzero(slides == s)
        Xs = X[idx]
        dist = lattice_distance(
            rows[idx][:, None] - rows[idx][None, :], cols[idx][:, None] - cols[idx][None, :], geometry
        )
        gmed = np.zeros(X.shape[1])
        for j in range(X.shape[1]):
            nz = Xs[:, j][Xs[:, j] != 0]
            gmed[j] = np.median(nz) if nz.size else 0.0
        for a, i in enumerate(idx):
            for j in range(X.shape[1]):
                if X[i, j] != 0:
                    continue
                val = gmed[j]
                for k in range(1, n_rings + 1):
                    med = np.median(Xs[dist[a] <= k, j])
                    if med != 0:
                        val = med
                        break
                out[i, j] = val
    return out


def random_lattice(rng, n_rows, n_cols, geometry, p_hole=0.15):
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    if geometry == "hex":
        cc = 2 * cc + (rr % 2)
    keep = rng.random(rr.size) > p_hole
    return rr[keep], cc[keep]


def synthetic(rng, geometry="square", n_slides=2, n_genes=40):
    rows, cols, slides = [], [], []
    for s in range(n_slides):
        r, c = random_lattice(rng, 9 + s, 11, geometry)
        rows.append(r)
        cols.append(c)
        slides.append(np.full(r.size, s))
    rows, cols, slides = map(np.concatenate, (rows, cols, slides))
    # sparse-ish log expression with genes of very different detection rates (incl. all-zero genes)
    p = np.linspace(0.0, 0.9, n_genes)
    X = np.where(rng.random((rows.size, n_genes)) < p, rng.gamma(2.0, 1.0, (rows.size, n_genes)), 0.0)
    if n_genes > 3:
        X[:, 3] = np.where(rng.random(rows.size) < 0.5, 1.0, 0.0)  # ties -> even-window medians
    return X, rows, cols, slides


def make_adata(X, rows, cols, slides):
    a = ad.AnnData(X=X.astype(np.float32))
    a.obs_names = [f"s{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{j}" for j in range(a.n_vars)]
    a.obs["slide_id"] = pd.Categorical([f"slide{s}" for s in slides])
    a.obs["array_row"] = rows
    a.obs["array_col"] = cols
    a.layers["log1p"] = X.astype(np.float64)
    return a


# ---------------------------------------------------------------- kernel vs brute force


@pytest.mark.parametrize("geometry", ["square", "hex"])
def test_kernels_match_brute_force_synthetic(geometry):
    rng = np.random.default_rng(0)
    X, rows, cols, slides = synthetic(rng, geometry)
    table, ring = build_table(rows, cols, slides, 4, geometry)
    expected = brute_force(X, rows, cols, slides, 4, geometry)
    got = adaptive_median_numba(X, X == 0, table, ring, slides, n_rings=4)
    np.testing.assert_array_equal(got, expected)
    # missing=None means "the zeros"; the same through the preallocated-output path
    out = np.empty_like(X)
    adaptive_median_numba(X, None, table, ring, slides, n_rings=4, out=out)
    np.testing.assert_array_equal(out, expected)
    got_t = adaptive_median_torch(X, X == 0, table, ring, slides, n_rings=4, max_elements=5000)
    np.testing.assert_array_equal(got_t, expected)


@pytest.mark.parametrize("p_hole", [0.0, 0.05])
def test_numba_kernel_fast_paths_match_brute_force(p_hole):
    # Hole-free hexagonal interiors take the median-of-7 network, short windows the rank-counting
    # selection and long ones quickselect; integer-valued data makes ties everywhere.
    rng = np.random.default_rng(7)
    rows, cols = random_lattice(rng, 14, 15, "hex", p_hole=p_hole)
    slides = np.zeros(rows.size, dtype=np.int64)
    p = np.linspace(0.05, 0.95, 37)
    X = np.where(rng.random((rows.size, 37)) < p, rng.integers(1, 4, (rows.size, 37)), 0).astype(np.float32)
    X[:, 5] = rng.gamma(2.0, 1.0, rows.size) * (rng.random(rows.size) < 0.8)
    table, ring = build_table(rows, cols, slides, 4, "hex")
    expected = brute_force(X.astype(np.float64), rows, cols, slides, 4, "hex").astype(np.float32)
    got = adaptive_median_numba(X, X == 0, table, ring, slides, n_rings=4)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n", [1, 5, 7, 13, 19, 25, 37, 41, 61])
def test_median_network_selects_the_median(n):
    from spared_tools._kernels.median import median_network

    pairs, out = median_network(n)
    rng = np.random.default_rng(n)
    for trial in range(2000):
        x = rng.integers(0, 3 if trial % 2 else 10**6, n).astype(float)  # many ties, then distinct values
        y = x.copy()
        for a, b in pairs:
            y[a], y[b] = min(y[a], y[b]), max(y[a], y[b])
        assert y[out] == np.median(x)
    with pytest.raises(ValueError, match="odd"):
        median_network(8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_slide_nonzero_median_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    X = np.where(
        rng.random((300, 37)) < 0.6, rng.integers(1, 6, (300, 37)) + rng.random((300, 37)) * 0.5, 0.0
    )
    X[:, 2] = 0.0
    X[:, 4] = np.where(X[:, 4] > 0, 1e-30, 0.0)  # tiny values and ties; float32 uses the radix path
    X = X.astype(dtype)
    codes = rng.integers(0, 3, 300)
    got = slide_nonzero_median(X, codes, 3)
    assert got.dtype == dtype
    for s in range(3):
        for j in range(37):
            v = X[codes == s, j]
            v = v[v != 0]
            assert got[s, j] == (np.median(v.astype(np.float64)).astype(dtype) if v.size else 0.0)


def test_kernel_column_order_and_extra_rings_do_not_matter():
    rng = np.random.default_rng(1)
    X, rows, cols, slides = synthetic(rng, "square", n_slides=1, n_genes=12)
    table, ring = build_table(rows, cols, slides, 5, "square")
    perm = np.r_[0, 1 + rng.permutation(table.shape[1] - 1)]
    a = adaptive_median_numba(X, X == 0, table, ring, slides, n_rings=3)
    b = adaptive_median_numba(X, X == 0, table[:, perm], ring[perm], slides, n_rings=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, brute_force(X, rows, cols, slides, 3, "square"))


def test_slide_nonzero_median():
    X = np.array([[0, 1, 0], [2, 3, 0], [4, 0, 0], [0, 5, 7.0]])
    codes = np.array([0, 0, 0, 1])
    got = slide_nonzero_median(X, codes, 2)
    np.testing.assert_array_equal(got, [[3.0, 2.0, 0.0], [0.0, 5.0, 7.0]])


def test_hand_example_rules():
    # 1-D strip of a square grid: spots at columns 0..4, one gene.
    X = np.array([[0.0], [0.0], [2.0], [0.0], [0.0]])
    rows = np.zeros(5, dtype=int)
    cols = np.arange(5)
    slides = np.zeros(5, dtype=int)
    table, ring = build_table(rows, cols, slides, 4, "square")
    got = adaptive_median_numba(X, X == 0, table, ring, slides, n_rings=4)[:, 0]
    # spot 1: window k=1 = {0, 0, 2} -> median 0; k=2 = {0,0,2,0} -> 0; ... all zero -> slide median of non-zeros = 2
    # spot 0: k=1 {0,0} -> 0, k=2 {0,0,2} -> 0 ... -> 2 (fallback)
    np.testing.assert_array_equal(got, [2.0, 2.0, 2.0, 2.0, 2.0])
    X2 = np.array([[0.0], [4.0], [2.0], [0.0], [0.0]])
    got2 = adaptive_median_numba(X2, X2 == 0, table, ring, slides, n_rings=4)[:, 0]
    # spot 0: k=1 {0, 4} -> 2 (mean of the two middle values, as np.median)
    # spot 3: k=1 {2, 0, 0} -> 0; k=2 {4, 2, 0, 0} -> 1
    # spot 4: k=1 {0, 0} -> 0; k=2 {2,0,0} -> 0; k=3 {4,2,0,0} -> 1
    np.testing.assert_array_equal(got2, [2.0, 4.0, 2.0, 1.0, 1.0])


# ---------------------------------------------------------------- AnnData wrapper


def test_median_complete_anndata_writes_layers_and_params():
    rng = np.random.default_rng(2)
    X, rows, cols, slides = synthetic(rng, "hex")
    a = make_adata(X, rows, cols, slides)
    nb = build_table(rows, cols, slides, 4, "hex")
    X_before = a.X.copy()
    sp.pp.median_complete(a, neighbors=nb, gene_chunk_size=7)
    np.testing.assert_array_equal(a.layers["median"], brute_force(X, rows, cols, slides, 4, "hex"))
    np.testing.assert_array_equal(a.layers["mask"], X != 0)
    np.testing.assert_array_equal(a.X, X_before)
    assert a.uns["median_complete"]["params"]["n_rings"] == 4
    assert a.uns["median_complete"]["params"]["backend"] == "numba"


def test_median_complete_sparse_layer_torch_backend_and_mask_layer():
    rng = np.random.default_rng(3)
    X, rows, cols, slides = synthetic(rng, "square")
    a = make_adata(X, rows, cols, slides)
    a.layers["log1p"] = sps.csr_matrix(X)
    nb = build_table(rows, cols, slides, 4, "square")
    b = sp.pp.median_complete(a, neighbors=nb, backend="torch", device="cpu", copy=True)
    assert "median" not in a.layers
    np.testing.assert_array_equal(b.layers["median"], brute_force(X, rows, cols, slides, 4, "square"))
    # an explicit mask: entries marked missing are completed even if non-zero; observed zeros stay 0
    mask = X != 0
    mask[0, :] = False
    mask[1, 0] = True
    a.layers["obs_mask"] = mask
    sp.pp.median_complete(a, neighbors=nb, mask_layer="obs_mask", key_added="med2")
    med2 = a.layers["med2"]
    np.testing.assert_array_equal(med2[mask], X[mask])
    assert "mask" not in a.layers  # only derived masks are stored


def test_median_complete_errors():
    rng = np.random.default_rng(4)
    X, rows, cols, slides = synthetic(rng, "square", n_slides=1, n_genes=5)
    a = make_adata(X, rows, cols, slides)
    nb = build_table(rows, cols, slides, 4, "square")
    with pytest.raises(KeyError, match="not found in adata.layers"):
        sp.pp.median_complete(a, layer="nope", neighbors=nb)
    bad = a.copy()
    bad.layers["log1p"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.median_complete(bad, neighbors=nb)
    with pytest.raises(ValueError, match="overwrite the input layer"):
        sp.pp.median_complete(a, key_added="log1p", neighbors=nb)
    with pytest.raises(ValueError, match="reaches ring"):
        sp.pp.median_complete(a, neighbors=build_table(rows, cols, slides, 2, "square"))
    a.layers["intmask"] = (X != 0).astype(int)
    with pytest.raises(TypeError, match="boolean"):
        sp.pp.median_complete(a, neighbors=nb, mask_layer="intmask")
    with pytest.raises(KeyError, match="slide column"):
        sp.pp.median_complete(a, neighbors=nb, library_key="batch")
    with pytest.raises(ValueError, match="backend"):
        sp.pp.median_complete(a, neighbors=nb, backend="cupy")
    two = make_adata(*synthetic(rng, "square", n_slides=2, n_genes=3))
    codes = two.obs["slide_id"].cat.codes.to_numpy()
    t, r = build_table(two.obs.array_row.values, two.obs.array_col.values, codes, 4, "square")
    t[0, 1] = np.flatnonzero(codes != codes[0])[0]
    with pytest.raises(ValueError, match="different slides"):
        sp.pp.median_complete(two, neighbors=(t, r))


# ---------------------------------------------------------------- real her2st sections


def read_her2st_section(name: str, n_genes: int = 60, genes=None) -> ad.AnnData:
    """One section's counts of ``genes`` (absent ones 0), by default ``n_genes`` of its own."""
    path = shared_path("her2st_raw", "ST-cnts", f"{name}.tsv.gz")
    with gzip.open(path, "rt") as fh:
        df = pd.read_csv(fh, sep="\t", index_col=0)
    if genes is None:  # genes spanning detection rates: the most, middling and rarely detected ones
        det = (df > 0).mean(0).sort_values(ascending=False, kind="stable")
        pick = det.index[np.linspace(0, min(len(det) - 1, 3000), n_genes).astype(int)]
    else:
        pick = pd.Index(genes)
    xy = df.index.str.split("x", expand=True).to_frame().astype(int).to_numpy()
    counts = df.reindex(columns=pick, fill_value=0).to_numpy(dtype=np.float64)
    a = ad.AnnData(X=counts)
    a.obs_names = [f"{name}_{i}" for i in df.index]
    a.var_names = list(pick)
    a.obs["slide_id"] = name
    a.obs["array_col"], a.obs["array_row"] = xy[:, 0], xy[:, 1]
    tot = counts.sum(1, keepdims=True)
    a.layers["log1p"] = np.log2(counts / np.where(tot > 0, tot, 1) * 1e6 + 1)
    return a


@pytest.mark.parametrize("sections", [("A1",), ("B3", "E2")])
def test_median_complete_equals_brute_force_on_her2st(sections):
    # the first section's genes in every section (picked per section, two sections may share none)
    parts = [read_her2st_section(sections[0])]
    parts += [read_her2st_section(s, genes=parts[0].var_names) for s in sections[1:]]
    a = ad.concat(parts, merge="same")
    assert a.n_vars == 60
    a.obs["slide_id"] = pd.Categorical(a.obs["slide_id"])
    rows, cols = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    slides = a.obs["slide_id"].cat.codes.to_numpy()
    nb = build_table(rows, cols, slides, 4, "square")
    sp.pp.median_complete(a, neighbors=nb)
    expected = brute_force(a.layers["log1p"], rows, cols, slides, 4, "square")
    np.testing.assert_array_equal(a.layers["median"], expected)
    assert (a.layers["median"][~a.layers["mask"]] != 0).mean() > 0.5


@pytest.mark.parametrize("geometry", ["square", "hex"])
def test_default_neighbor_table_gives_the_same_result(geometry):
    rng = np.random.default_rng(6)
    X, rows, cols, slides = synthetic(rng, geometry, n_genes=15)
    a = make_adata(X, rows, cols, slides)
    sp.pp.median_complete(a, geometry=geometry)
    np.testing.assert_array_equal(a.layers["median"], brute_force(X, rows, cols, slides, 4, geometry))


@pytest.mark.gpu
def test_torch_backend_on_cuda_equals_brute_force():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(7)
    X, rows, cols, slides = synthetic(rng, "hex")
    a = make_adata(X, rows, cols, slides)
    nb = build_table(rows, cols, slides, 4, "hex")
    sp.pp.median_complete(a, neighbors=nb, device="cuda")
    assert a.uns["median_complete"]["params"]["backend"] == "torch"
    np.testing.assert_array_equal(a.layers["median"], brute_force(X, rows, cols, slides, 4, "hex"))


def test_parallel_copy_equals_numpy_copy():
    from spared_tools._kernels.median import parallel_copy

    rng = np.random.default_rng(3)
    src = rng.random((257, 33)).astype(np.float32)
    dst = np.full_like(src, np.nan)
    parallel_copy(dst, src)
    np.testing.assert_array_equal(dst, src)
    # non-contiguous destination: falls back to numpy, same result
    big = np.zeros((257, 66), np.float32)
    parallel_copy(big[:, ::2], src)
    np.testing.assert_array_equal(big[:, ::2], src)
    with pytest.raises(ValueError, match="same shape and dtype"):
        parallel_copy(dst, src.astype(np.float64))
