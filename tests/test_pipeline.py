from __future__ import annotations

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

# ---------------------------------------------------------------- synthetic input


def synthetic_collection(seed=0, n_slides=3, n_rows=14, n_cols=16, n_genes=400, hex_=False, organism="human"):
    """Square (legacy ST) or hexagonal (Visium) slides with real gene symbols and spatial structure."""
    rng = np.random.default_rng(seed)
    table = sp.pp.gene_lengths(organism)
    names = table.loc[table.gene_type == "protein_coding", "gene_name"].drop_duplicates()
    genes = list(names.iloc[:: max(1, len(names) // n_genes)][:n_genes])
    parts = []
    for s in range(n_slides):
        rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        if hex_:
            cc = 2 * cc + (rr % 2)
        keep = rng.random(rr.size) > 0.1
        rr, cc = rr[keep], cc[keep]
        # smooth spatial fields drive half of the genes; rates span rare to ubiquitous genes
        field = np.sin(rr[:, None] / 3.0 + rng.random(n_genes)) + np.cos(
            cc[:, None] / 4.0 + rng.random(n_genes)
        )
        spatial = np.arange(n_genes) % 2 == 0
        lam = rng.gamma(0.7, 2.0, n_genes)[None, :] * np.exp(0.8 * field * spatial[None, :])
        lam = lam * (1 + 0.3 * s)  # a batch effect
        counts = rng.poisson(lam).astype(np.float32)
        counts[rng.random(rr.size) < 0.03] = 0  # a few empty spots
        a = ad.AnnData(X=sps.csr_matrix(counts))
        a.var_names = genes
        a.obs_names = [f"S{s}_{r}x{c}" for r, c in zip(rr, cc)]
        a.obs["slide_id"] = f"S{s}"
        a.obs["patient"] = f"P{s // 2}"
        a.obs["array_row"] = rr
        a.obs["array_col"] = cc
        parts.append(a)
    out = ad.concat(parts, merge="same")
    out.obs["slide_id"] = pd.Categorical(out.obs["slide_id"])
    return out


@pytest.fixture(scope="module")
def collection():
    return synthetic_collection()


@pytest.fixture(scope="module")
def processed(collection):
    a = collection.copy()
    sp.pp.split_by(a, key="slide_id", train=["S0", "S1"], test=["S2"])
    return a, sp.pp.spared_pipeline(a, organism="human", split_key="split", top_moran_genes=40)


def test_pipeline_layout_and_input_untouched(collection, processed):
    a, out = processed
    before = collection.copy()
    assert set(out.layers) >= {"counts", "tpm", "log1p", "median", "combat", "deltas", "mask"}
    for col in ("exp_frac", "glob_exp_frac", "gene_length", "moran_I", "spared_selected", "train_mean"):
        assert col in out.var
    assert "moran_I_per_slide" in out.varm and "spatial_connectivities" in out.obsp
    assert out.n_vars == 40 and out.var["spared_selected"].all()
    # X keeps raw counts of the kept spots/genes; the input object is unchanged
    ref = a[out.obs_names, out.var_names].X.toarray()
    np.testing.assert_array_equal(out.X.toarray(), ref)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), ref)
    np.testing.assert_array_equal(out.layers["mask"], ref > 0)
    assert a.shape == before.shape and "tpm" not in a.layers
    np.testing.assert_array_equal(a.X.toarray(), before.X.toarray())
    # spots keep their input order
    pos = a.obs_names.get_indexer(out.obs_names)
    assert (np.diff(pos) > 0).all()
    params = out.uns["spared"]["params"]
    assert params["organism"] == "human" and params["real_data_percentage"] == 0.7
    assert params["top_moran_genes"] == 40 and params["split_key"] == "split"
    assert out.uns["spared"]["stats"]["moran_fitted_on"].startswith("training slides")
    gs = out.uns["spared"]["gene_stats"]
    assert gs["spared_selected"].sum() == 40 and len(gs) > 40


def test_pipeline_layers_equal_step_by_step(collection, processed):
    a, out = processed
    # redo the steps by hand on the same input
    b = a.copy()
    sp.pp.filter_spared(b, split_key="split")
    sp.pp.tpm(b, organism="human")
    sp.pp.log1p(b)
    sp.pp.median_complete(b)
    sel = out.var_names
    np.testing.assert_array_equal(b.obs_names, out.obs_names)
    np.testing.assert_allclose(b[:, sel].layers["tpm"].toarray(), out.layers["tpm"].toarray(), rtol=1e-6)
    np.testing.assert_allclose(b.layers["tpm"].sum(1), 1e6, rtol=1e-4)  # over all retained genes
    np.testing.assert_array_equal(b[:, sel].layers["median"], out.layers["median"])
    # Moran's I on the training slides of the completed layer selects the top genes
    sp.pp.spatial_graph(b)
    sp.pp.moran(b, layer="median", slides=["S0", "S1"])
    top = b.var["moran_I"].sort_values(ascending=False, kind="stable").index[:40]
    assert set(top) == set(sel)
    c = b[:, sel].copy()
    sp.pp.combat(c, key="slide_id", layer="median")
    np.testing.assert_allclose(out.layers["combat"], c.layers["combat"], rtol=1e-5, atol=1e-5)
    train = (out.obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(
        out.var["train_mean"], out.layers["combat"][train].mean(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(out.layers["deltas"][train].mean(0, dtype=np.float64), 0, atol=1e-4)


def test_pipeline_statistics_ignore_test_slide(collection, processed):
    a, out = processed
    b = a.copy()
    rng = np.random.default_rng(9)
    test = (b.obs["split"] == "test").to_numpy()
    X = b.X.toarray()
    X[test] = rng.poisson(3.0, (test.sum(), b.n_vars))
    b.X = sps.csr_matrix(X)
    out_b = sp.pp.spared_pipeline(b, organism="human", split_key="split", top_moran_genes=40)
    assert list(out_b.var_names) == list(out.var_names)
    np.testing.assert_allclose(out_b.var["moran_I"], out.var["moran_I"])
    np.testing.assert_allclose(out_b.var["exp_frac"], out.var["exp_frac"])


def test_pipeline_hex_no_split_patient_combat_auto_top():
    a = synthetic_collection(seed=1, hex_=True, n_genes=300, organism="mouse")
    out = sp.pp.spared_pipeline(a, organism="mouse", combat_key="patient", hex_geometry=True)
    assert out.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    assert out.n_vars == min(32 if out.uns["spared"]["stats"]["n_vars_out"] <= 320 else 128, out.n_vars)
    assert out.uns["combat"]["params"]["key"] == "patient"
    np.testing.assert_allclose(out.var["train_mean"], out.layers["combat"].mean(0), rtol=1e-5, atol=1e-6)


def test_pipeline_wildcard_genes_and_single_batch():
    a = synthetic_collection(seed=2, n_slides=1)
    genes = list(a.var_names[:5])
    out = sp.pp.spared_pipeline(a, organism="human", wildcard_genes=genes)
    assert list(out.var_names) == genes
    assert "combat" not in out.layers and out.uns["spared"]["stats"]["combat"] == "skipped"
    np.testing.assert_allclose(
        out.layers["deltas"], out.layers["median"] - out.layers["median"].mean(0), atol=1e-5
    )


def test_pipeline_errors(collection):
    a = collection.copy()
    with pytest.raises(ValueError, match="Unknown organism"):
        sp.pp.spared_pipeline(a, organism="rat")
    b = a.copy()
    del b.obs["slide_id"]
    with pytest.raises(KeyError, match="no slide column"):
        sp.pp.spared_pipeline(b, organism="human")
    c = a.copy()
    c.X = c.X.toarray()
    c.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.spared_pipeline(c, organism="human")
    c.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        sp.pp.spared_pipeline(c, organism="human")
    d = ad.AnnData(X=np.ones((4, 3), dtype=bool), obs=a.obs.iloc[:4].copy())
    with pytest.raises(TypeError, match="numeric"):
        sp.pp.spared_pipeline(d, organism="human")
    with pytest.raises(ValueError, match="All genes were filtered out"):
        sp.pp.spared_pipeline(a, organism="human", real_data_percentage=1.0)
    e = a.copy()
    del e.obs["array_row"]
    with pytest.raises(KeyError, match="array_row"):
        sp.pp.spared_pipeline(e, organism="human")
    # a slide with a single spot
    f = a.copy()
    f.obs["slide_id"] = f.obs["slide_id"].cat.add_categories("lonely")
    big = np.flatnonzero(np.asarray(f.X.sum(1)).ravel() > 100)[0]
    f.obs.iloc[big, f.obs.columns.get_loc("slide_id")] = "lonely"
    with pytest.raises(ValueError, match="fewer than two spots"):
        sp.pp.spared_pipeline(f, organism="human")
    with pytest.raises(KeyError, match="combat_key"):
        sp.pp.spared_pipeline(a, organism="human", combat_key="batch")
    with pytest.raises(KeyError, match="no split column"):
        sp.pp.spared_pipeline(a, organism="human", split_key="split")


# ---------------------------------------------------------------- deltas and split_by


def test_deltas_and_split_by():
    a = synthetic_collection(seed=3, n_slides=3, n_genes=20)
    sp.pp.split_by(a, key="slide_id", train=None, val="S1", test=["S2"])
    assert a.obs.groupby("slide_id", observed=True)["split"].first().tolist() == ["train", "val", "test"]
    assert a.uns["split"]["params"]["train"] == ["S0"]
    a.layers["x"] = a.X.toarray()
    sp.pp.deltas(a, layer="x", split_key="split")
    train = (a.obs["split"] == "train").to_numpy()
    mean = a.layers["x"][train].mean(0)
    np.testing.assert_allclose(a.var["train_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(a.layers["deltas"], a.layers["x"] - mean, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="both"):
        sp.pp.split_by(a, key="slide_id", train=["S0"], test=["S0", "S1", "S2"])
    with pytest.raises(ValueError, match="in no split"):
        sp.pp.split_by(a, key="slide_id", train=["S0"])
    with pytest.raises(KeyError, match="not found"):
        sp.pp.split_by(a, key="slide_id", train=["S0", "S9"], val=["S1", "S2"])
    with pytest.raises(KeyError, match="no column"):
        sp.pp.split_by(a, key="sample", train=None)
    with pytest.raises(ValueError, match="No spot has"):
        sp.pp.deltas(a, layer="x", split_key="split", train_value="training")


# ---------------------------------------------------------------- real data


def _read_her2st_counts(folder: Path, sections) -> ad.AnnData:
    parts = []
    for s in sections:
        df = pd.read_csv(folder / "ST-cnts" / f"{s}.tsv.gz", sep="\t", index_col=0)
        if df.columns.has_duplicates:  # a few symbols may repeat within a section
            df = df.T.groupby(level=0).sum().T
        xy = df.index.to_series().str.split("x", expand=True).astype(int)
        p = ad.AnnData(sps.csr_matrix(df.to_numpy(dtype=np.float32)))
        p.var_names = df.columns.astype(str)
        p.obs_names = [f"{s}_{i}" for i in df.index]
        p.obs["slide_id"] = s
        p.obs["patient"] = s[0]
        p.obs["array_row"] = xy[1].to_numpy()
        p.obs["array_col"] = xy[0].to_numpy()
        parts.append(p)
    out = ad.concat(parts, join="outer", fill_value=0)
    out.obs["slide_id"] = pd.Categorical(out.obs["slide_id"])
    return out


@pytest.mark.slow
def test_pipeline_all_28_her2st_sections():
    folder = shared_path("her2st_raw")
    sections = sorted(p.name.split(".")[0] for p in (folder / "ST-cnts").glob("*.tsv.gz"))
    assert len(sections) == 28
    a = _read_her2st_counts(folder, sections)
    sp.pp.split_by(a, key="patient", train=None, val=["E"], test=["F"])
    out = sp.pp.spared_pipeline(
        a, organism="human", split_key="split", combat_key="patient", hex_geometry=False
    )
    assert out.obs["slide_id"].nunique() == 28
    assert out.n_vars == 128
    assert out.uns["spatial_neighbors"]["params"]["geometry"] == "square"
    st = out.uns["spared"]["stats"]
    assert st["n_obs_out"] == out.n_obs and out.n_obs > 0.95 * a.n_obs
    # the genes kept by the filter (fitted on training spots) have a mean glob_exp_frac >= 0.7
    res = sp.pp.filter_spared(a, split_key="split", inplace=False)
    assert res["glob_exp_frac"][res["var_mask"]].mean() >= 0.7
    assert set(out.uns["spared"]["gene_stats"].index) <= set(a.var_names[res["var_mask"]])
    np.testing.assert_array_equal(out.layers["mask"], out.X.toarray() > 0)
    med, log = out.layers["median"], out.layers["log1p"].toarray()
    np.testing.assert_array_equal(med[out.layers["mask"]], log[out.layers["mask"]])
    assert (med[~out.layers["mask"]] > 0).mean() > 0.9
    train = (out.obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(out.layers["deltas"][train].mean(0, dtype=np.float64), 0, atol=1e-4)
    assert np.isfinite(out.layers["combat"]).all()


def test_pipeline_visium_slide(visium_hex):
    a = visium_hex
    out = sp.pp.spared_pipeline(a, organism="mouse", combat_key=None)
    assert out.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    assert out.n_vars == min(32, out.uns["spared"]["stats"]["n_vars_out"])
    assert out.uns["spared"]["stats"]["n_genes_without_length"] < 0.1 * a.n_vars
    assert "combat" not in out.layers
    np.testing.assert_array_equal(
        out.layers["mask"], out.X.toarray() > 0 if sps.issparse(out.X) else out.X > 0
    )


# ---------------------------------------------------------------- scverse inputs (issue 20 item 2, 4, 8)


def _layers_equal(x, y):
    for k in ("tpm", "log1p", "median", "deltas", "mask", "counts"):
        xa, ya = x.layers[k], y.layers[k]
        xa = xa.toarray() if sps.issparse(xa) else np.asarray(xa)
        ya = ya.toarray() if sps.issparse(ya) else np.asarray(ya)
        np.testing.assert_array_equal(xa, ya, err_msg=k)


def test_pipeline_library_key_none_is_one_slide():
    a = synthetic_collection(seed=4, n_slides=1)
    ref = sp.pp.spared_pipeline(a, organism="human")
    b = a.copy()
    del b.obs["slide_id"]
    out = sp.pp.spared_pipeline(b, organism="human", library_key=None)
    assert "slide_id" not in out.obs.columns  # nothing invented in obs
    assert list(out.var_names) == list(ref.var_names) and list(out.obs_names) == list(ref.obs_names)
    _layers_equal(out, ref)
    np.testing.assert_array_equal(out.var["moran_I"], ref.var["moran_I"])
    assert out.uns["spared"]["params"]["library_key"] is None
    assert out.uns["spared"]["params"]["combat_key"] is None and "combat" not in out.layers
    # with a split that mixes the one slide, Moran's I uses the training spots of that slide
    b.obs["split"] = np.where(np.arange(b.n_obs) % 4 == 0, "test", "train")
    c = a.copy()
    c.obs["split"] = b.obs["split"].to_numpy()
    out_b = sp.pp.spared_pipeline(b, organism="human", library_key=None, split_key="split")
    out_c = sp.pp.spared_pipeline(c, organism="human", split_key="split")
    assert out_b.uns["spared"]["stats"]["moran_fitted_on"] == "training spots"
    np.testing.assert_array_equal(out_b.var["moran_I"], out_c.var["moran_I"])
    _layers_equal(out_b, out_c)
    # the error names the missing column and the fix
    with pytest.raises(KeyError, match="library_key=None"):
        sp.pp.spared_pipeline(b, organism="human")


def test_pipeline_combat_key_follows_library_key(collection):
    ref = sp.pp.spared_pipeline(collection, organism="human", top_moran_genes=40)
    b = collection.copy()
    b.obs["section"] = b.obs.pop("slide_id")
    out = sp.pp.spared_pipeline(b, organism="human", library_key="section", top_moran_genes=40)
    assert out.uns["combat"]["params"]["key"] == "section"
    assert out.uns["spared"]["params"]["combat_key"] == "section"
    np.testing.assert_array_equal(out.layers["combat"], ref.layers["combat"])
    np.testing.assert_array_equal(out.var["moran_I"], ref.var["moran_I"])
    # ComBat on another column, or skipped
    assert (
        sp.pp.spared_pipeline(b, organism="human", library_key="section", combat_key="patient").uns["combat"][
            "params"
        ]["key"]
        == "patient"
    )


def test_pipeline_refuses_log_transformed_counts(collection):
    a = collection.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X.log1p()
    with pytest.raises(ValueError, match=r"non-integer values.*layer='counts'"):
        sp.pp.spared_pipeline(a, organism="human")
    out = sp.pp.spared_pipeline(a, organism="human", layer="counts", top_moran_genes=40)
    ref = sp.pp.spared_pipeline(collection, organism="human", top_moran_genes=40)
    _layers_equal(out, ref)
    del a.layers["counts"]
    with pytest.raises(ValueError, match="pass layer= naming a layer with the raw counts"):
        sp.pp.spared_pipeline(a, organism="human")


def test_pipeline_refuses_nan_in_split(collection):
    a = collection.copy()
    sp.pp.split_by(a, key="slide_id", train=["S0", "S1"], test=["S2"])
    a.obs.iloc[:7, a.obs.columns.get_loc("split")] = np.nan
    with pytest.raises(ValueError, match=r"adata.obs\['split'\] has 7 missing values"):
        sp.pp.spared_pipeline(a, organism="human", split_key="split")
    with pytest.raises(ValueError, match="7 missing values"):
        sp.pp.filter_spared(a, split_key="split")


def test_pipeline_declares_log2_for_scanpy(processed):
    import scanpy as sc

    _, out = processed
    assert out.uns["log1p"] == {"base": 2}
    b = out.copy()
    sc.tl.rank_genes_groups(b, "slide_id", groups=["S0"], reference="rest", layer="log1p", method="t-test")
    lfc = pd.Series(
        b.uns["rank_genes_groups"]["logfoldchanges"]["S0"].astype(float),
        index=b.uns["rank_genes_groups"]["names"]["S0"],
    )
    # brute force: log2 of the ratio of mean TPM + pseudo-count expm1 on the log2 scale
    log = out.layers["log1p"].toarray()
    g = (out.obs["slide_id"] == "S0").to_numpy()
    m1 = np.expm1(log[g].mean(0) * np.log(2))
    m0 = np.expm1(log[~g].mean(0) * np.log(2))
    ref = pd.Series(np.log2((m1 + 1e-9) / (m0 + 1e-9)), index=out.var_names)
    np.testing.assert_allclose(lfc.to_numpy(), ref[lfc.index].to_numpy(), rtol=1e-4, atol=1e-4)
    # sp.pp.log1p declares its base when nothing is declared yet, and leaves another base alone
    c = ad.AnnData(X=sps.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3)))
    sp.pp.log1p(c, layer=None, key_added="l2")
    assert c.uns["log1p"] == {"base": 2}
    c.uns["log1p"] = {"base": None}
    sp.pp.log1p(c, layer=None, key_added="l10", base=10)
    assert c.uns["log1p"] == {"base": None}


def _warnings_of(fn):
    import logging

    from spared_tools._logging import logger

    records: list[logging.LogRecord] = []
    h = logging.Handler(level=logging.WARNING)
    h.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(h)
    try:
        fn()
    finally:
        logger.removeHandler(h)
    return [r.getMessage() for r in records]


def test_filter_warns_when_under_ten_percent_kept(collection):
    a = collection.copy()
    msg = _warnings_of(lambda: sp.pp.filter_spared(a, real_data_percentage=0.97))
    kept = a.n_vars
    assert kept < 0.1 * collection.n_vars
    assert len(msg) == 1 and f"only {kept} of {collection.n_vars} genes" in msg[0]
    assert "real_data_percentage=0.97 removed" in msg[0]
    b = collection.copy()
    assert _warnings_of(lambda: sp.pp.filter_spared(b)) == []
    c = collection.copy()
    msg = _warnings_of(lambda: sp.pp.filter_spared(c, cell_min_counts=1500))
    assert len(msg) == 1 and f"only {c.n_obs} of {collection.n_obs} spots" in msg[0]
    assert "cell_min_counts=1500" in msg[0]


def test_pipeline_scanpy_layout_straight_in(visium_hex):
    """scanpy's read_visium layout (no slide column, float32 counts, one library) goes in as one slide."""
    import scanpy as sc

    ref = sp.pp.spared_pipeline(visium_hex, organism="mouse", combat_key=None)
    a = ad.AnnData(
        X=visium_hex.X.astype(np.float32),
        obs=visium_hex.obs[["in_tissue", "array_row", "array_col"]].copy(),
        var=visium_hex.var.copy(),
        obsm={"spatial": visium_hex.obsm["spatial"].copy()},
        uns={"spatial": dict(visium_hex.uns["spatial"])},
    )
    with pytest.raises(KeyError, match="library_key=None"):
        sp.pp.spared_pipeline(a, organism="mouse")
    out = sp.pp.spared_pipeline(a, organism="mouse", library_key=None)
    assert list(out.var_names) == list(ref.var_names) and list(out.obs_names) == list(ref.obs_names)
    _layers_equal(out, ref)
    assert out.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    # scanpy continues on the result
    sc.pp.pca(out, layer="median", n_comps=5)
    sc.pp.neighbors(out, use_rep="X_pca")
    assert out.obsm["X_pca"].shape == (out.n_obs, 5) and "connectivities" in out.obsp


def test_pipeline_float16_counts_and_duplicated_spot_names(collection):
    ref = sp.pp.spared_pipeline(collection, organism="human", top_moran_genes=40)
    a = collection.copy()
    a.X = a.X.toarray().astype(np.float16)  # small integer counts are exact in float16
    out = sp.pp.spared_pipeline(a, organism="human", top_moran_genes=40)
    _layers_equal(out, ref)
    b = collection.copy()
    b.obs_names = [b.obs_names[0]] * 2 + list(b.obs_names[2:])
    with pytest.raises(ValueError, match="duplicated spot name"):
        sp.pp.spared_pipeline(b, organism="human")
