from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sparse
from scipy.stats import pearsonr

import spared_tools as sp
from spared_tools.tl._evaluate_prediction import pearson_per_gene


def _data(n=40, g=8, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.gamma(1.0, 1.0 + np.arange(g), size=(n, g))
    pred = truth + rng.normal(scale=2.0, size=(n, g))
    truth[:, 3] = 0.0  # never expressed in the test spots: undefined PCC
    return truth, pred


def _scipy_pcc(truth, pred):
    out = []
    for j in range(truth.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(pearsonr(truth[:, j], pred[:, j])[0])
    return np.asarray(out, dtype=float)


def test_pcc_matches_scipy():
    truth, pred = _data()
    pred[:, 5] = 1.5  # constant prediction: undefined too
    np.testing.assert_allclose(
        pearson_per_gene(truth, pred), _scipy_pcc(truth, pred), rtol=1e-10, equal_nan=True
    )


def test_all_heg_hvg_by_hand():
    truth, pred = _data()
    genes = [f"g{i}" for i in range(truth.shape[1])]
    res = sp.tl.evaluate_prediction(truth, pred, genes=genes, n_top=3)
    r = _scipy_pcc(truth, pred)
    heg = np.argsort(-truth.sum(0))[:3]
    hvg = np.argsort(-truth.var(0))[:3]
    assert res["pcc_all"] == pytest.approx(np.nanmean(r))
    assert res["pcc_heg"] == pytest.approx(np.nanmean(r[heg]))
    assert res["pcc_hvg"] == pytest.approx(np.nanmean(r[hvg]))
    assert res["heg_genes"] == [genes[i] for i in heg]
    assert res["hvg_genes"] == [genes[i] for i in hvg]
    assert res["n_nan_genes"] == 1 and res["nan_genes"] == ["g3"]
    assert res["mse"] == pytest.approx(((truth - pred) ** 2).mean())
    assert res["mae"] == pytest.approx(np.abs(truth - pred).mean())
    pg = res["per_gene"]
    assert list(pg.index) == genes and pg["heg"].sum() == 3 and pg["hvg"].sum() == 3
    np.testing.assert_allclose(pg["pcc"], r, equal_nan=True)
    assert res["n_spots"] == 40 and res["n_genes"] == 8 and res["n_top"] == 3


def test_n_top_larger_than_genes_uses_all():
    truth, pred = _data(g=4)
    res = sp.tl.evaluate_prediction(truth, pred)
    assert res["n_top"] == 4 and res["pcc_heg"] == pytest.approx(res["pcc_all"]) == pytest.approx(
        res["pcc_hvg"]
    )


def test_anndata_inputs_and_layer_name():
    truth, pred = _data()
    a = ad.AnnData(sparse.csr_matrix(truth.astype(np.float32)))
    a.var_names = [f"g{i}" for i in range(8)]
    a.layers["log1p"] = a.X.copy()
    a.layers["pred"] = pred.astype(np.float32)
    ref = sp.tl.evaluate_prediction(a.layers["log1p"].toarray(), pred.astype(np.float32), n_top=3)
    res = sp.tl.evaluate_prediction(a, "pred", n_top=3)
    assert res["pcc_all"] == pytest.approx(ref["pcc_all"]) and res["heg_genes"][0].startswith("g")
    p = ad.AnnData(pred.astype(np.float32), obs=a.obs.copy())
    p.var_names = a.var_names
    res2 = sp.tl.evaluate_prediction(a, p[:, ::-1], genes=["g1", "g2"])
    sub = sp.tl.evaluate_prediction(truth[:, 1:3], pred[:, 1:3])
    assert res2["pcc_all"] == pytest.approx(sub["pcc_all"], rel=1e-6)


def test_errors():
    truth, pred = _data()
    with pytest.raises(ValueError, match="shape"):
        sp.tl.evaluate_prediction(truth, pred[:, :3])
    bad = pred.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.tl.evaluate_prediction(truth, bad)
    with pytest.raises(ValueError, match="at least 2 spots"):
        sp.tl.evaluate_prediction(truth[:1], pred[:1])
    with pytest.raises(ValueError, match="n_top"):
        sp.tl.evaluate_prediction(truth, pred, n_top=0)
    with pytest.raises(TypeError, match="layer name"):
        sp.tl.evaluate_prediction(truth, "pred")
    a = ad.AnnData(truth.astype(np.float32))
    with pytest.raises(KeyError, match="layer"):
        sp.tl.evaluate_prediction(a, pred, layer="log1p")
    with pytest.raises(KeyError, match="missing"):
        sp.tl.evaluate_prediction(a, pred[:, :1], layer=None, genes=["nope"])
    b = a.copy()
    b.obs_names = [f"x{i}" for i in range(b.n_obs)]
    with pytest.raises(ValueError, match="obs_names"):
        sp.tl.evaluate_prediction(a, b, layer=None)
