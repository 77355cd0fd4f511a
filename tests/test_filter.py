from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps

import spared_tools as sp


def hand_adata(sparse=False):
    #              g0  g1  g2  g3  g4
    X = np.array(
        [
            [1, 1, 1, 1, 0],  # a0 total 4
            [1, 1, 1, 0, 0],  # a1 total 3
            [2, 1, 0, 0, 0],  # a2 total 3
            [2, 1, 0, 0, 0],  # a3 total 3
            [1, 0, 0, 0, 0],  # a5 total 1  -> below cell_min_counts=2
            [50, 0, 0, 0, 0],  # a6 total 50 -> not below cell_max_counts=50
            [1, 1, 1, 0, 2],  # b0 total 5
            [2, 0, 1, 0, 0],  # b1 total 3
            [0, 0, 0, 3, 0],  # b2 total 3, only g3 -> empty once g3 is filtered
        ],
        dtype=np.float32,
    )
    a = ad.AnnData(X=sps.csr_matrix(X) if sparse else X)
    a.obs_names = ["a0", "a1", "a2", "a3", "a5", "a6", "b0", "b1", "b2"]
    a.var_names = ["g0", "g1", "g2", "g3", "g4"]
    a.obs["slide_id"] = pd.Categorical(["A"] * 6 + ["B"] * 3)
    return a


KW = {"cell_min_counts": 2, "cell_max_counts": 50, "gene_min_counts": 2, "gene_max_counts": 1e6}


@pytest.mark.parametrize("sparse", [False, True])
def test_hand_computed_example(sparse):
    # Fit spots: a0..a3 (slide A, 4 spots), b0, b1, b2 (slide B, 3 spots).
    # g0: A 4/4, B 2/3 -> exp_frac 2/3, glob 6/7 ; g1: A 4/4, B 1/3 -> 1/3, 5/7
    # g2: A 2/4, B 2/3 -> 1/2, 4/7           ; g3: A 1/4, B 1/3 -> 1/4, 2/7
    # g4: total count 2 (not > 2) -> removed by gene counts.
    # Sorted by exp_frac: g0, g2, g1, g3 ; running mean glob: 6/7=.857, 10/14=.714, 15/21=.714, 17/28=.607
    # real_data_percentage 0.7 -> keep g0, g2, g1; then b2 has no counts left -> removed.
    a = hand_adata(sparse)
    res = sp.pp.filter_spared(a, **KW, inplace=False)
    assert a.shape == (9, 5)  # untouched
    np.testing.assert_allclose(res["exp_frac"].to_numpy(), [2 / 3, 1 / 3, 1 / 2, 1 / 4, 0])
    np.testing.assert_allclose(res["glob_exp_frac"].to_numpy(), [6 / 7, 5 / 7, 4 / 7, 2 / 7, 1 / 7])
    assert res["var_mask"].tolist() == [True, True, True, False, False]
    assert res["obs_mask"].tolist() == [True, True, True, True, False, False, True, True, False]
    assert res["stats"]["n_obs_below_cell_min_counts"] == 1
    assert res["stats"]["n_obs_above_cell_max_counts"] == 1
    assert res["stats"]["n_obs_zero_after_gene_filter"] == 1
    assert res["stats"]["n_vars_gene_counts"] == 1
    assert res["stats"]["n_vars_exp_frac"] == 1

    sp.pp.filter_spared(a, **KW)
    assert list(a.obs_names) == ["a0", "a1", "a2", "a3", "b0", "b1"]  # order preserved
    assert list(a.var_names) == ["g0", "g1", "g2"]
    np.testing.assert_allclose(a.var["exp_frac"], [2 / 3, 1 / 3, 1 / 2])
    np.testing.assert_allclose(a.var["glob_exp_frac"], [6 / 7, 5 / 7, 4 / 7])
    assert a.uns["filter_spared"]["params"]["real_data_percentage"] == 0.7
    assert a.uns["filter_spared"]["stats"]["n_obs_out"] == 6


def test_stricter_percentage_keeps_shorter_prefix():
    a = hand_adata()
    res = sp.pp.filter_spared(a, **KW, real_data_percentage=0.75, inplace=False)
    assert res["var_mask"].tolist() == [True, False, False, False, False]


def test_logs_what_was_removed(caplog):
    logger = logging.getLogger("spared_tools")
    logger.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="spared_tools"):
            sp.pp.filter_spared(hand_adata(), **KW)
    finally:
        logger.propagate = False
    assert "removed 3 of 9 spots" in caplog.text
    assert "2 of 5 genes" in caplog.text


def reference_filter(X, slides, kw, rdp):
    """Line-by-line restatement of SpaRED's filter_dataset with pandas (no split)."""
    tot = X.sum(1)
    keep_obs = (tot > kw["cell_min_counts"]) & (tot < kw["cell_max_counts"])
    Xs, ss = X[keep_obs], slides[keep_obs]
    fr = pd.DataFrame(Xs > 0).groupby(ss).mean()
    var = pd.DataFrame({"exp_frac": fr.min(0).to_numpy(), "glob_exp_frac": (Xs > 0).mean(0)})
    gc = Xs.sum(0)
    var = var[(gc > kw["gene_min_counts"]) & (gc < kw["gene_max_counts"])]
    df = var.sort_values("exp_frac", ascending=False, kind="stable")
    df["vol"] = df["glob_exp_frac"].cumsum() / np.arange(1, len(df) + 1)
    last = np.where(df["vol"] >= rdp)[0][-1]
    genes = np.sort(df.index[: last + 1].to_numpy())
    obs_idx = np.flatnonzero(keep_obs)
    nz = X[np.ix_(obs_idx, genes)].sum(1) > 0
    return obs_idx[nz], genes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_restatement_random(seed):
    rng = np.random.default_rng(seed)
    n, g = 120, 80
    slides = rng.integers(0, 3, n)
    p = rng.beta(0.6, 0.8, g)
    X = (rng.random((n, g)) < p) * rng.poisson(2.0, (n, g))
    X[:5] = 0
    a = ad.AnnData(X=X.astype(np.float64))
    a.obs["slide_id"] = pd.Categorical(slides.astype(str))
    kw = {"cell_min_counts": 10, "cell_max_counts": 1e6, "gene_min_counts": 10, "gene_max_counts": 1e6}
    obs, genes = reference_filter(X, slides, kw, 0.7)
    res = sp.pp.filter_spared(a, **kw, inplace=False)
    np.testing.assert_array_equal(np.flatnonzero(res["obs_mask"]), obs)
    np.testing.assert_array_equal(np.flatnonzero(res["var_mask"]), genes)


def test_split_fits_gene_statistics_on_training_spots_only():
    rng = np.random.default_rng(5)
    n, g = 150, 60
    X = (rng.random((n, g)) < rng.beta(0.6, 0.8, g)) * rng.poisson(2.0, (n, g))
    a = ad.AnnData(X=X.astype(np.float64))
    a.obs["slide_id"] = pd.Categorical(np.repeat(["s1", "s2", "s3"], 50))
    a.obs["split"] = np.repeat(["train", "train", "test"], 50)
    res = sp.pp.filter_spared(a, split_key="split", inplace=False)
    # changing the test slide must not change the genes kept or the fitted fractions
    b = a.copy()
    b.X[100:] = rng.poisson(5.0, (50, g))
    res_b = sp.pp.filter_spared(b, split_key="split", inplace=False)
    np.testing.assert_array_equal(res["var_mask"], res_b["var_mask"])
    np.testing.assert_allclose(res["exp_frac"], res_b["exp_frac"])
    # equals fitting on the training spots alone
    train = a[:100].copy()
    res_t = sp.pp.filter_spared(train, inplace=False)
    np.testing.assert_array_equal(res["var_mask"], res_t["var_mask"])
    np.testing.assert_allclose(res["glob_exp_frac"], res_t["glob_exp_frac"])
    # fit_obs gives the same
    res_m = sp.pp.filter_spared(a, fit_obs=(a.obs["split"] == "train").to_numpy(), inplace=False)
    np.testing.assert_array_equal(res["var_mask"], res_m["var_mask"])


def test_wildcard_genes():
    a = hand_adata()
    sp.pp.filter_spared(a, **KW, wildcard_genes=["g3", "g4"])
    assert list(a.var_names) == ["g3", "g4"]
    # spots without counts in g3/g4 are removed
    assert list(a.obs_names) == ["a0", "b0", "b2"]
    with pytest.raises(KeyError, match="wildcard genes"):
        sp.pp.filter_spared(hand_adata(), wildcard_genes=["nope"])


def test_errors():
    a = hand_adata()
    with pytest.raises(ValueError, match="All genes were filtered out"):
        sp.pp.filter_spared(a, **KW, real_data_percentage=0.99)
    with pytest.raises(ValueError, match="No spot has a total count"):
        sp.pp.filter_spared(a, cell_min_counts=1000, cell_max_counts=1e6)
    with pytest.raises(ValueError, match="No gene has a total count"):
        sp.pp.filter_spared(a, **{**KW, "gene_min_counts": 500, "gene_max_counts": 1e6})
    with pytest.raises(KeyError, match="no slide column"):
        sp.pp.filter_spared(a, library_key="sample")
    with pytest.raises(KeyError, match="no split column"):
        sp.pp.filter_spared(a, split_key="split")
    with pytest.raises(ValueError, match="either fit_obs= or split_key="):
        sp.pp.filter_spared(a, split_key="x", fit_obs=np.ones(a.n_obs, bool))
    with pytest.raises(TypeError, match="boolean mask"):
        sp.pp.filter_spared(a, fit_obs=np.ones(a.n_obs))
    a.obs["split"] = "val"
    with pytest.raises(ValueError, match="No spot has adata.obs"):
        sp.pp.filter_spared(a, split_key="split")
    bad = hand_adata()
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.filter_spared(bad)
    bad.X[0, 0] = -3
    with pytest.raises(ValueError, match="negative"):
        sp.pp.filter_spared(bad)
    s = ad.AnnData(X=np.array([["1", "2"]], dtype=object))
    with pytest.raises(TypeError, match="numeric"):
        sp.pp.filter_spared(s, library_key=None)
    with pytest.raises(ValueError, match="real_data_percentage"):
        sp.pp.filter_spared(hand_adata(), real_data_percentage=70)
    with pytest.raises(ValueError, match="below cell_max_counts"):
        sp.pp.filter_spared(hand_adata(), cell_min_counts=10, cell_max_counts=5)


def test_filter_warns_on_the_cytassist_section():
    """Issue 20 item 8: SpaRED's defaults keep 29 of 19,465 genes of the CytAssist section: a warning says so."""
    import logging
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import shared_path
    from spared_tools._logging import logger

    a = sp.io.read_visium(shared_path("visium_cytassist_mouse_raw"), load_images=False)
    n_vars = a.n_vars
    records: list[logging.LogRecord] = []
    h = logging.Handler(level=logging.WARNING)
    h.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(h)
    try:
        sp.pp.filter_spared(a, library_key=None)
    finally:
        logger.removeHandler(h)
    msgs = [r.getMessage() for r in records if r.getMessage().startswith("filter_spared")]
    assert a.n_vars < 0.01 * n_vars
    assert len(msgs) == 1 and f"only {a.n_vars} of {n_vars} genes" in msgs[0]
    assert "real_data_percentage=0.7 removed" in msgs[0] and "gene_min_counts=10" in msgs[0]
