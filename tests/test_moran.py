from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps
from tests.conftest import shared_path

import spared_tools as sp
from spared_tools._kernels.moran import (
    moran_from_sums,
    moran_sums_cpu,
    moran_sums_torch,
    restrict_weights,
    weight_moments,
)

sq = pytest.importorskip("squidpy")

ATOL = 1e-6


# ---------------------------------------------------------------------------------------------------
# helpers


def hex_slides(n_slides=3, n_rows=8, n_cols=16, n_genes=12, seed=0, sparse=False):
    """Hex-lattice slides with spatially smooth and noise genes."""
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n_slides):
        for r in range(n_rows):
            for c in range(n_cols):
                if (r + c) % 2 == 0:
                    recs.append((f"s{s}", r, c))
    obs = pd.DataFrame(recs, columns=["slide_id", "array_row", "array_col"])
    obs.index = [f"spot{i}" for i in range(len(obs))]
    obs["slide_id"] = obs["slide_id"].astype("category")
    r = obs.array_row.to_numpy(float)
    c = obs.array_col.to_numpy(float)
    X = np.empty((len(obs), n_genes))
    for g in range(n_genes):
        phase = rng.uniform(0, 2 * np.pi)
        smooth = np.sin(r / (1.5 + g % 4) + phase) + np.cos(c / (3 + g % 5))
        X[:, g] = np.maximum(0, 2 + (g % 3) * smooth + rng.normal(0, 0.5 + 0.3 * (g % 4), len(obs)))
    a = ad.AnnData(X.astype(np.float32), obs=obs)
    a.var_names = [f"g{g}" for g in range(n_genes)]
    if sparse:
        a.X = sps.csr_matrix(a.X)
    a.obsm["spatial"] = np.stack([c * 50.0, r * 50.0 * np.sqrt(3)], axis=1)
    sp.pp.spatial_graph(a)
    return a


def squidpy_moran(a, layer=None, genes=None):
    genes = list(a.var_names) if genes is None else list(genes)
    df = sq.gr.spatial_autocorr(
        a,
        mode="moran",
        n_perms=None,
        layer=layer,
        genes=genes,
        copy=True,
        connectivity_key="spatial_connectivities",
    )
    return df.loc[genes]


def brute_moran(W, x, transformation=True):
    W = np.asarray(W, dtype=float)
    if transformation:
        rs = W.sum(1, keepdims=True)
        W = np.divide(W, rs, out=np.zeros_like(W), where=rs != 0)
    z = x - x.mean()
    return len(x) / W.sum() * (z @ W @ z) / (z @ z)


# ---------------------------------------------------------------------------------------------------
# kernels


@pytest.mark.parametrize("transformation", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_kernels_brute_force(transformation, sparse):
    rng = np.random.default_rng(1)
    n, G = 80, 37
    W = sps.random(n, n, density=0.08, random_state=2, format="csr")  # asymmetric, weighted
    slide = rng.integers(0, 3, n)
    slide[:4] = -1  # spots left out of the fit
    X = rng.normal(size=(n, G))
    X[:, 5] = 3.0  # constant gene
    Xin = sps.csr_matrix(X) if sparse else X
    Wr, n_cross = restrict_weights(W, slide, row_normalise=transformation)
    mom = weight_moments(Wr, slide, 3)
    for fn in (moran_sums_cpu, moran_sums_torch):
        means, num, den = fn(Wr, slide, 3, Xin, chunk=10)
        I, const = moran_from_sums(num, den, means, mom)  # noqa: E741
        for s in range(3):
            idx = np.flatnonzero(slide == s)
            Ws = W.toarray()[np.ix_(idx, idx)]
            for g in range(G):
                if g == 5:
                    assert const[s, g] and np.isnan(I[s, g])
                    continue
                assert I[s, g] == pytest.approx(brute_moran(Ws, X[idx, g], transformation), abs=1e-12)
    Wd = W.toarray()
    cross = sum(
        1 for i, j in zip(*np.nonzero(Wd)) if slide[i] >= 0 and slide[j] >= 0 and slide[i] != slide[j]
    )
    assert n_cross == cross


def test_parallel_kernels_match_serial(monkeypatch):
    from spared_tools._kernels import moran as km

    rng = np.random.default_rng(4)
    n, G = 300, 45
    W = sps.random(n, n, density=0.03, random_state=5, format="csr")
    slide = rng.integers(-1, 4, n)
    X = rng.gamma(2.0, size=(n, G)).astype(np.float32)
    Wr, _ = restrict_weights(W, slide, row_normalise=True)
    ip, ix = Wr.indptr.astype(np.int64), Wr.indices.astype(np.int64)
    rs = np.asarray(Wr.sum(axis=1)).ravel()
    mu = km._slide_sums_serial(X, slide, 4)
    np.testing.assert_allclose(km._slide_sums_parallel(X, slide, 4, 7), mu, rtol=1e-12)
    ser = km._moran_sums_serial(ip, ix, Wr.data, rs, slide, X, mu, 4)
    par = km._moran_sums_parallel(ip, ix, Wr.data, rs, slide, X, mu, 4, 7)
    for a_, b_ in zip(ser, par):
        np.testing.assert_allclose(b_, a_, rtol=1e-10, atol=1e-10)
    # the public path through the parallel kernels
    ref = moran_sums_cpu(Wr, slide, 4, X)
    monkeypatch.setattr(km, "PARALLEL_MIN_ENTRIES", 0)
    assert km._n_chunks(4, G, X.size) >= (2 if km.numba.get_num_threads() > 1 else 1)
    for a_, b_ in zip(ref, moran_sums_cpu(Wr, slide, 4, X)):
        np.testing.assert_allclose(b_, a_, rtol=1e-10, atol=1e-10)


def _log_counts_csr(n, G, seed, density=0.4):
    """log1p of sparse Poisson counts as a CSR float32 matrix (about ``density`` of entries stored)."""
    rng = np.random.default_rng(seed)
    lam = -np.log(1 - density) * rng.gamma(2.0, 0.5, size=(1, G))
    counts = rng.poisson(lam * rng.gamma(3.0, 1 / 3.0, size=(n, 1)), size=(n, G)).astype(np.float32)
    counts[:, 0] = 0.0  # a gene never observed
    counts[:, 1] = 2.0  # observed everywhere with one value: constant
    return sps.csr_matrix(np.log1p(counts))


@pytest.mark.parametrize("parallel", [False, True])
def test_csr_kernel_brute_force(monkeypatch, parallel):
    from spared_tools._kernels import moran as km

    if parallel:
        monkeypatch.setattr(km, "PARALLEL_MIN_ENTRIES", 0)
    rng = np.random.default_rng(7)
    n, G = 150, 33
    W = sps.random(n, n, density=0.05, random_state=8, format="csr")
    slide = rng.integers(0, 3, n)
    slide[:6] = -1
    X = _log_counts_csr(n, G, seed=9)
    # duplicates and an explicit zero: the same matrix, not in canonical form
    data, ind, ptr = [], [], [0]
    for i in range(n):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        extra = [2] if i == 3 and 2 not in X.indices[lo:hi] else []
        data += [*(0.25 * X.data[lo:hi]), *(0.75 * X.data[lo:hi]), *([0.0] * len(extra))]
        ind += [*X.indices[lo:hi], *X.indices[lo:hi], *extra]
        ptr.append(len(ind))
    dup = sps.csr_matrix((np.asarray(data, np.float32), np.asarray(ind), np.asarray(ptr)), shape=X.shape)
    assert not dup.has_canonical_format
    Xd = X.toarray().astype(np.float64)
    Wr, _ = restrict_weights(W, slide, row_normalise=True)
    mom = weight_moments(Wr, slide, 3)
    dense = moran_sums_cpu(Wr, slide, 3, Xd)
    for Xin in (X, dup, X.tocsc(), X.astype(np.float64)):
        sums = moran_sums_cpu(Wr, slide, 3, Xin)
        for d_, s_ in zip(dense, sums):
            np.testing.assert_allclose(s_, d_, rtol=1e-9, atol=1e-9)
        I, const = moran_from_sums(sums[1], sums[2], sums[0], mom)  # noqa: E741
        assert const[:, 0].all() and const[:, 1].all()
        for s in range(3):
            idx = np.flatnonzero(slide == s)
            Ws = W.toarray()[np.ix_(idx, idx)]
            for g in (2, 5, 17, 32):
                assert I[s, g] == pytest.approx(brute_moran(Ws, Xd[idx, g]), abs=1e-12)
    cols = np.array([4, 9, 30])
    part = moran_sums_cpu(Wr, slide, 3, X, cols)
    for d_, p_ in zip(dense, part):
        np.testing.assert_allclose(p_, d_[:, cols], rtol=1e-9, atol=1e-9)


def test_sparse_nonfinite_is_a_named_error():
    a = hex_slides(n_slides=2, n_genes=6, seed=2)
    X = a.X.copy()
    X[5, 3] = np.inf
    X[7, 4] = np.nan
    a.X = sps.csr_matrix(X)
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 gene\(s\).*'g3', 'g4'"):
        sp.pp.moran(a)


def test_sparse_log_counts_match_squidpy_and_dense():
    a = hex_slides(n_slides=2, n_genes=25, seed=5)
    a.X = _log_counts_csr(a.n_obs, 25, seed=6)
    a.layers["dense"] = a.X.toarray()
    sp.pp.moran(a)
    sparse_I = a.var["moran_I"].to_numpy().copy()
    sp.pp.moran(a, layer="dense")
    np.testing.assert_allclose(sparse_I, a.var["moran_I"], rtol=1e-10, atol=1e-12, equal_nan=True)
    per = a.varm["moran_I_per_slide"]
    varying = list(a.var_names[2:])
    for s in per.columns:
        sub = a[a.obs.slide_id == s].copy()
        ref = squidpy_moran(sub, layer="dense", genes=varying)
        sub.X = sps.csr_matrix(sub.layers["dense"])
        sp.pp.moran(sub, library_key=None)
        np.testing.assert_allclose(sub.var.loc[varying, "moran_I"], ref["I"], atol=ATOL)
        np.testing.assert_allclose(sub.var.loc[varying, "moran_pval_norm"], ref["pval_norm"], atol=ATOL)
    assert np.isnan(sparse_I[:2]).all()  # never observed / constant: no Moran's I


def test_kernel_gene_subset_and_dtypes():
    a = hex_slides(n_slides=2, n_genes=40)
    Wr, _ = restrict_weights(
        a.obsp["spatial_connectivities"], a.obs.slide_id.cat.codes.to_numpy(), row_normalise=True
    )
    slide = a.obs.slide_id.cat.codes.to_numpy().astype(np.int64)
    cols = np.array([3, 7, 39])
    counts = np.round(a.X * 10).astype(np.int32)
    for X in (a.X, np.asfortranarray(a.X), counts, sps.csr_matrix(counts)):
        full = moran_sums_cpu(
            Wr, slide, 2, np.asarray(X.toarray() if sps.issparse(X) else X, dtype=np.float64)
        )
        part = moran_sums_cpu(Wr, slide, 2, X, cols, chunk=2)
        for f, p in zip(full, part):
            np.testing.assert_allclose(p, f[:, cols], rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# squidpy equality


@pytest.mark.parametrize("sparse", [False, True])
def test_single_slide_matches_squidpy(sparse):
    a = hex_slides(n_slides=1, n_genes=30)
    ref = squidpy_moran(a)  # squidpy on the dense matrix (its sparse path compiles for ~30 s)
    if sparse:
        a.X = sps.csr_matrix(a.X)
    sp.pp.moran(a)
    np.testing.assert_allclose(a.var["moran_I"], ref["I"], atol=ATOL)
    np.testing.assert_allclose(a.var["moran_pval_norm"], ref["pval_norm"], atol=ATOL)
    np.testing.assert_allclose(a.var["moran_pval_norm_fdr_bh"], ref["pval_norm_fdr_bh"], atol=ATOL)


def test_multi_slide_matches_squidpy_per_slide():
    a = hex_slides(n_slides=3, n_genes=15, seed=3)
    sp.pp.moran(a)
    per = a.varm["moran_I_per_slide"]
    assert list(per.columns) == ["s0", "s1", "s2"]
    exp, var = [], []
    for s in per.columns:
        sub = a[a.obs.slide_id == s].copy()
        ref = squidpy_moran(sub)
        np.testing.assert_allclose(per[s], ref["I"], atol=ATOL)
        exp.append(-1.0 / (sub.n_obs - 1))
        var.append(ref["var_norm"].iloc[0])
    np.testing.assert_allclose(a.var["moran_I"], per.mean(axis=1), atol=1e-12)
    # p-value of the mean of independent per-slide statistics
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    z = (a.var["moran_I"] - np.mean(exp)) / np.sqrt(np.sum(var) / 9.0)
    p = stats.norm.sf(np.abs(z))
    # (squidpy's var_norm is computed from float32 weights: relative precision ~1e-7)
    np.testing.assert_allclose(a.var["moran_pval_norm"], p, rtol=1e-5, atol=1e-12)
    fdr = multipletests(p, method="fdr_bh")[1]
    np.testing.assert_allclose(a.var["moran_pval_norm_fdr_bh"], fdr, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("fixture", ["her2st_c2_block", "mob1", "visium_hex"])
def test_real_fixtures_match_squidpy(fixture, request):
    a = request.getfixturevalue(fixture)
    X = a.X.toarray() if sps.issparse(a.X) else np.asarray(a.X)
    a.layers["log"] = np.log1p(X).astype(np.float32)
    varying = np.asarray(a.layers["log"].std(axis=0) > 0)
    genes = list(a.var_names[varying])  # squidpy's p-values are undefined for constant genes
    sp.pp.spatial_graph(a)
    sp.pp.moran(a, layer="log", genes=genes)
    ref = squidpy_moran(a, layer="log", genes=genes)
    ours = a.var.loc[genes]
    np.testing.assert_allclose(ours["moran_I"], ref["I"], atol=ATOL)
    np.testing.assert_allclose(ours["moran_pval_norm"], ref["pval_norm"], atol=ATOL)
    np.testing.assert_allclose(ours["moran_pval_norm_fdr_bh"], ref["pval_norm_fdr_bh"], atol=ATOL)
    assert a.var.loc[~varying, "moran_I"].isna().all()


def test_her2st_sections_match_squidpy():
    import pandas as pd

    parts = []
    for s in ("B1", "C1"):
        df = pd.read_csv(shared_path("her2st_raw", "ST-cnts", f"{s}.tsv.gz"), sep="\t", index_col=0)
        xy = df.index.to_series().str.split("x", expand=True).astype(int)
        obs = pd.DataFrame({"slide_id": s, "array_row": xy[1].to_numpy(), "array_col": xy[0].to_numpy()})
        obs.index = [f"{s}_{i}" for i in df.index]
        parts.append(ad.AnnData(df.to_numpy(np.float32), obs=obs, var=pd.DataFrame(index=df.columns)))
    a = ad.concat(parts, join="inner")
    a.obs["slide_id"] = a.obs["slide_id"].astype("category")
    top = np.argsort(-a.X.sum(0))[:150]
    a = a[:, np.sort(top)].copy()
    a.layers["log"] = np.log1p(a.X)
    sp.pp.spatial_graph(a)
    assert a.uns["spatial_neighbors"]["params"]["geometry"] == "square"
    sp.pp.moran(a, layer="log")
    for s in ("B1", "C1"):
        sub = a[a.obs.slide_id == s].copy()
        ref = squidpy_moran(sub, layer="log")
        np.testing.assert_allclose(a.varm["moran_I_per_slide"][s], ref["I"], atol=ATOL)
    sp.pp.moran(a, layer="log", slides=["C1"])
    ref = squidpy_moran(a[a.obs.slide_id == "C1"].copy(), layer="log")
    np.testing.assert_allclose(a.var["moran_I"], ref["I"], atol=ATOL)
    np.testing.assert_allclose(a.var["moran_pval_norm"], ref["pval_norm"], atol=ATOL)
    np.testing.assert_allclose(a.var["moran_pval_norm_fdr_bh"], ref["pval_norm_fdr_bh"], atol=ATOL)


# ---------------------------------------------------------------------------------------------------
# behaviour


def test_torch_backend_matches_numba():
    a = hex_slides(n_slides=2, n_genes=25, sparse=True)
    ours = sp.pp.moran(a, inplace=False, backend="numba")
    tor = sp.pp.moran(a, inplace=False, backend="torch", device="cpu", chunk_size=7)
    pd.testing.assert_frame_equal(ours, tor, atol=1e-10, rtol=1e-10)


@pytest.mark.gpu
def test_torch_backend_cuda_matches_numba():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    a = hex_slides(n_slides=4, n_genes=300)
    ours = sp.pp.moran(a, inplace=False, backend="numba")
    gpu = sp.pp.moran(a, inplace=False, backend="auto", device="cuda")
    pd.testing.assert_frame_equal(ours, gpu, atol=1e-9, rtol=1e-9)


def test_constant_gene_on_one_slide_is_nanmean():
    a = hex_slides(n_slides=3, n_genes=6)
    a.X[(a.obs.slide_id == "s1").to_numpy(), 2] = 1.5
    sp.pp.moran(a)
    per = a.varm["moran_I_per_slide"]
    assert np.isnan(per.loc["g2", "s1"]) and per.loc["g2"].notna().sum() == 2
    assert a.var.loc["g2", "moran_I"] == pytest.approx(per.loc["g2", ["s0", "s2"]].mean())
    assert a.uns["moran"]["n_constant_per_slide"] == {"s0": 0, "s1": 1, "s2": 0}
    out = sp.pp.moran(a, inplace=False)
    assert out.loc["g2", "n_slides"] == 2 and out.loc["g0", "n_slides"] == 3


def test_slides_subset_equals_subset_data():
    a = hex_slides(n_slides=3, n_genes=8)
    sp.pp.moran(a, slides=["s0", "s2"])
    sub = a[a.obs.slide_id.isin(["s0", "s2"])].copy()
    sp.pp.moran(sub)
    np.testing.assert_allclose(a.var["moran_I"], sub.var["moran_I"], atol=1e-12)
    np.testing.assert_allclose(a.var["moran_pval_norm"], sub.var["moran_pval_norm"], atol=1e-12)
    assert list(a.varm["moran_I_per_slide"].columns) == ["s0", "s2"]
    assert a.uns["moran"]["params"]["slides"] == ["s0", "s2"]


def test_mask_equals_subset_then_graph():
    a = hex_slides(n_slides=3, n_genes=8, seed=7)
    rng = np.random.default_rng(0)
    fit = rng.random(a.n_obs) < 0.7
    fit[(a.obs.slide_id == "s2").to_numpy()] = False  # a slide with no fitted spot is dropped
    sp.pp.moran(a, mask=fit)
    sub = a[fit].copy()
    sp.pp.spatial_graph(sub)
    sp.pp.moran(sub)
    np.testing.assert_allclose(a.var["moran_I"], sub.var["moran_I"], atol=1e-12)
    np.testing.assert_allclose(a.var["moran_pval_norm"], sub.var["moran_pval_norm"], atol=1e-12)
    assert list(a.varm["moran_I_per_slide"].columns) == ["s0", "s1"]
    assert a.uns["moran"]["params"]["n_spots_fitted"] == int(fit.sum())
    a.obs["train"] = fit
    out = sp.pp.moran(a, mask="train", slides=["s1"], inplace=False)
    ref = sp.pp.moran(sub, slides=["s1"], inplace=False)
    pd.testing.assert_frame_equal(out, ref)
    with pytest.raises(ValueError, match="boolean array"):
        sp.pp.moran(a, mask=fit[:-1])
    with pytest.raises(TypeError, match="boolean"):
        sp.pp.moran(a, mask="slide_id")
    with pytest.raises(ValueError, match="no spot"):
        sp.pp.moran(a, mask=np.zeros(a.n_obs, dtype=bool))


def test_unused_slide_categories_are_ignored():
    a = hex_slides(n_slides=2, n_genes=4)
    ref = sp.pp.moran(a, inplace=False)
    a.obs["slide_id"] = (
        a.obs["slide_id"].cat.add_categories(["ghost"]).cat.reorder_categories(["ghost", "s0", "s1"])
    )
    pd.testing.assert_frame_equal(sp.pp.moran(a, inplace=False), ref)
    sp.pp.moran(a)
    assert list(a.varm["moran_I_per_slide"].columns) == ["s0", "s1"]


def test_cross_slide_edges_are_ignored():
    a = hex_slides(n_slides=2, n_genes=5)
    ref = sp.pp.moran(a, inplace=False)
    # add one weight joining the two slides: it must be ignored
    W = a.obsp["spatial_connectivities"].tolil()
    W[0, a.n_obs - 1] = 1.0
    W[a.n_obs - 1, 0] = 1.0
    a.obsp["linked"] = W.tocsr()
    out = sp.pp.moran(a, inplace=False, connectivity_key="linked")
    pd.testing.assert_frame_equal(out, ref)


def test_genes_argument_and_outputs(tmp_path):
    a = hex_slides(n_slides=2, n_genes=10)
    X0 = a.X.copy()
    sp.pp.moran(a, genes=["g3", "g1"])
    assert a.var["moran_I"].notna().sum() == 2
    assert a.var.loc[["g1", "g3"], "moran_I"].notna().all()
    np.testing.assert_array_equal(a.X, X0)
    full = sp.pp.moran(a, inplace=False)
    np.testing.assert_allclose(a.var.loc[["g1", "g3"], "moran_I"], full.loc[["g1", "g3"], "I"], atol=1e-12)
    assert set(a.uns["moran"]["params"]) >= {"layer", "library_key", "connectivity_key", "transformation"}
    a.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad")
    np.testing.assert_allclose(back.var["moran_I"], a.var["moran_I"])
    c = sp.pp.moran(a, copy=True, transformation=False)
    assert c is not a and c.uns["moran"]["params"]["transformation"] is False


def test_moran_errors():
    a = hex_slides(n_slides=2, n_genes=4)
    with pytest.raises(KeyError, match="Layer 'nope'"):
        sp.pp.moran(a, layer="nope")
    with pytest.raises(KeyError, match="not in adata.var_names"):
        sp.pp.moran(a, genes=["g0", "BRCA1"])
    with pytest.raises(KeyError, match="slides"):
        sp.pp.moran(a, slides=["s9"])
    with pytest.raises(KeyError, match="spatial graph"):
        sp.pp.moran(a, connectivity_key="missing")
    with pytest.raises(KeyError, match="slide column"):
        sp.pp.moran(a, library_key="batch")
    with pytest.raises(ValueError, match="exclusive"):
        sp.pp.moran(a, copy=True, inplace=False)
    b = a.copy()
    b.X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        sp.pp.moran(b)
    b = a.copy()
    b.layers["flag"] = b.X > 2
    with pytest.raises(TypeError, match="numeric"):
        sp.pp.moran(b, layer="flag")
    # a single-spot slide
    c = a.copy()
    c.obs["slide_id"] = c.obs["slide_id"].cat.add_categories("lonely")
    c.obs.loc[c.obs_names[0], "slide_id"] = "lonely"
    sp.pp.spatial_graph(c)
    with pytest.raises(ValueError, match="'lonely' \\(1 spot"):
        sp.pp.moran(c)
    sp.pp.moran(c, slides=["s0", "s1"])  # excluded explicitly: fine
    assert np.isfinite(c.var["moran_I"]).all()


# ---------------------------------------------------------------------------------------------------
# select_genes


def test_select_genes_rule_and_order():
    rng = np.random.default_rng(0)
    for n_genes, expected in ((400, 128), (320, 32), (50, 32)):
        a = ad.AnnData(np.zeros((3, n_genes), dtype=np.float32))
        a.var_names = [f"g{i}" for i in range(n_genes)]
        score = rng.normal(size=n_genes)
        a.var["moran_I"] = score
        sp.pp.select_genes(a)
        assert a.var["spared_selected"].sum() == expected
        top = np.argsort(-score, kind="stable")[:expected]
        assert set(np.flatnonzero(a.var["spared_selected"])) == set(top)
        assert a.uns["spared_selected"]["genes"] == [f"g{i}" for i in top]
        sp.pp.select_genes(a, n_top=0)
        assert a.var["spared_selected"].sum() == expected


def test_select_genes_semantics():
    a = ad.AnnData(np.arange(40, dtype=np.float32).reshape(4, 10))
    a.var_names = [f"g{i}" for i in range(10)]
    a.var["moran_I"] = [0.1, 0.5, np.nan, 0.5, 0.9, -0.2, 0.3, 0.0, 0.8, 0.2]
    mask = sp.pp.select_genes(a, n_top=3, inplace=False)
    assert "spared_selected" not in a.var
    # tie at 0.5 between g1 and g3: var order wins -> g1
    assert set(mask[mask].index) == {"g1", "g4", "g8"}
    c = sp.pp.select_genes(a, n_top=3, subset=True, copy=True)
    assert list(c.var_names) == ["g1", "g4", "g8"] and a.n_vars == 10 and c.n_obs == a.n_obs
    np.testing.assert_array_equal(c.X, a.X[:, [1, 4, 8]])
    sp.pp.select_genes(a, n_top=20)  # more than scored: keeps the 9 finite
    assert a.var["spared_selected"].sum() == 9 and not a.var.loc["g2", "spared_selected"]
    sp.pp.select_genes(a, wildcard_genes=["g7", "g2"])
    assert set(a.var_names[a.var["spared_selected"]]) == {"g2", "g7"}
    assert a.uns["spared_selected"]["genes"] == ["g7", "g2"]
    sp.pp.select_genes(a, n_top=2, subset=True)
    assert list(a.var_names) == ["g4", "g8"]


def test_select_genes_errors():
    a = ad.AnnData(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(KeyError, match="run sp.pp.moran"):
        sp.pp.select_genes(a)
    a.var["moran_I"] = ["a"] * 5
    with pytest.raises(TypeError, match="numeric"):
        sp.pp.select_genes(a)
    a.var["moran_I"] = np.arange(5.0)
    with pytest.raises(KeyError, match="wildcard genes"):
        sp.pp.select_genes(a, wildcard_genes=["nope"])
    with pytest.raises(ValueError, match="empty"):
        sp.pp.select_genes(a, wildcard_genes=[])
    with pytest.raises(ValueError, match="n_top"):
        sp.pp.select_genes(a, n_top=2.5)
    with pytest.raises(ValueError, match="subset=True"):
        sp.pp.select_genes(a, subset=True, inplace=False)


def test_pipeline_moran_then_select_on_real_fixture(visium_hex):
    a = visium_hex
    a.layers["log"] = np.log1p(a.X.toarray() if sps.issparse(a.X) else a.X)
    sp.pp.spatial_graph(a)
    sp.pp.moran(a, layer="log")
    sp.pp.select_genes(a)
    ref = squidpy_moran(a, layer="log")
    top = ref["I"].dropna().sort_values(ascending=False, kind="stable").index[:32]
    assert set(a.var_names[a.var["spared_selected"]]) == set(top)
