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
