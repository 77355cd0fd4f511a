from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sps

import spared_tools as sp


def batched(seed=0, n=90, g=25):
    rng = np.random.default_rng(seed)
    batch = np.repeat(["s1", "s2", "s3"], n // 3)
    shift = {"s1": 0.0, "s2": 1.5, "s3": -0.7}
    scale = {"s1": 1.0, "s2": 2.0, "s3": 0.5}
    base = rng.gamma(2.0, 1.0, (n, g))
    X = np.stack([base[i] * scale[b] + shift[b] for i, b in enumerate(batch)]) + 3
    a = ad.AnnData(X=rng.poisson(5, (n, g)).astype(np.float32))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.obs["slide_id"] = pd.Categorical(batch)
    a.obs["patient"] = pd.Categorical(np.where(batch == "s3", "P2", "P1"))
    a.obs["depth"] = rng.normal(size=n)
    a.layers["median"] = X
    return a


def test_combat_equals_scanpy():
    a = batched()
    X_before = a.X.copy()
    sp.pp.combat(a)
    ref = a.copy()
    ref.X = ref.layers["median"].copy()
    sc.pp.combat(ref, key="slide_id")
    np.testing.assert_allclose(a.layers["combat"], ref.X, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(a.X, X_before)
    assert a.uns["combat"]["params"]["n_batches"] == 3
    # the batch means are equalised
    means = pd.DataFrame(a.layers["combat"]).groupby(a.obs["slide_id"].to_numpy()).mean()
    assert (
        np.ptp(means.to_numpy(), axis=0).max()
        < 0.5
        * np.ptp(
            pd.DataFrame(a.layers["median"]).groupby(a.obs["slide_id"].to_numpy()).mean().to_numpy(), axis=0
        ).max()
    )


def test_combat_patient_key_sparse_layer_and_covariates():
    a = batched(1)
    a.layers["lg"] = sps.csr_matrix(a.layers["median"])
    sp.pp.combat(a, key="patient", layer="lg", key_added="c2", covariates=["depth"])
    ref = ad.AnnData(X=a.layers["median"].copy(), obs=a.obs.copy())
    sc.pp.combat(ref, key="patient", covariates=["depth"])
    np.testing.assert_allclose(a.layers["c2"], ref.X, rtol=1e-10, atol=1e-10)
    out = sp.pp.combat(a, key="patient", layer="lg", key_added="c3", copy=True)
    assert "c3" in out.layers and "c3" not in a.layers


def test_combat_errors():
    a = batched()
    with pytest.raises(KeyError, match="no batch column"):
        sp.pp.combat(a, key="batch")
    with pytest.raises(KeyError, match="Layer 'nope' not found"):
        sp.pp.combat(a, layer="nope")
    one = a[a.obs.slide_id == "s1"].copy()
    with pytest.raises(ValueError, match="single batch"):
        sp.pp.combat(one)
    b = a.copy()
    b.obs["slide_id"] = pd.Categorical(["lonely"] + list(b.obs["slide_id"].astype(str)[1:]))
    with pytest.raises(ValueError, match="one spot"):
        sp.pp.combat(b)
    c = a.copy()
    c.layers["median"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.combat(c)
    with pytest.raises(ValueError, match="overwrite the input layer"):
        sp.pp.combat(a, key_added="median")
