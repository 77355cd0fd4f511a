from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spared_tools as sp
from spared_tools.tl._evaluate_completion import completion_metrics, summarise

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic_spackle import make_adata
from conftest import shared_path

TINY = {"d_model": 32, "n_heads": 2, "n_layers": 2, "dim_feedforward": 64}


@pytest.fixture(autouse=True)
def _quiet():
    prev = (sp.settings.progress, sp.settings.verbosity)
    sp.settings.progress = False
    sp.settings.verbosity = 1
    yield
    sp.settings.progress, sp.settings.verbosity = prev


@pytest.fixture(scope="module")
def _trained():
    sp.settings.progress = False
    sp.settings.verbosity = 1
    a = make_adata(n_slides=3, side=10, n_genes=16, seed=1)
    m = sp.tl.SpackleModel(seed=0, **TINY)
    m.train(a, max_steps=120, batch_size=64, lr=3e-3, val_check_interval=40)
    return a, m


@pytest.fixture
def trained(_trained):
    a, m = _trained
    return a, m


def test_completion_metrics_brute_force():
    from scipy.stats import pearsonr

    rng = np.random.default_rng(0)
    t = rng.normal(size=(30, 5))
    p = 0.5 * t + rng.normal(size=t.shape)
    s = rng.random(t.shape) < 0.6
    got = completion_metrics(t, p, s)
    assert got["MSE"] == pytest.approx(((t - p)[s] ** 2).mean())
    assert got["MAE"] == pytest.approx(np.abs(t - p)[s].mean())
    assert got["PCC-gene"] == pytest.approx(
        np.mean([pearsonr(t[s[:, j], j], p[s[:, j], j])[0] for j in range(5)])
    )
    assert got["PCC-spot"] == pytest.approx(
        np.mean([pearsonr(t[i, s[i]], p[i, s[i]])[0] for i in range(30) if s[i].sum() >= 2])
    )
    with pytest.raises(ValueError, match="one shape"):
        completion_metrics(t, p[:, :2], s)


def test_median_method_equals_median_complete_on_the_masked_data():
    a = make_adata(n_slides=2, side=7, n_genes=6, splits=("train", "test"))
    res = sp.tl.evaluate_completion(a, methods=["median"], mask_frac=0.4, n_masks=2, seed=7, key_added=None)
    assert list(res["method"]) == ["median", "median"]
    # rebuild mask 0 by hand (same generator) and run the peer function on the masked test slide
    test = np.flatnonzero(a.obs["split"] == "test")
    vals = a.layers["median"][test]
    obs = a.layers["mask"][test]
    hidden = (np.random.default_rng([7, 0, 0]).random(obs.shape) < 0.4) & obs
    b = a[test].copy()
    b.layers["masked"] = np.where(obs & ~hidden, vals, 0).astype(np.float32)
    b.layers["known"] = obs & ~hidden
    sp.pp.median_complete(b, layer="masked", mask_layer="known", key_added="med", mask_key_added=None)
    mse = ((b.layers["med"] - vals)[hidden] ** 2).mean()
    assert res["MSE"].iloc[0] == pytest.approx(mse, rel=1e-6)
    assert res["n_hidden"].iloc[0] == hidden.sum()
    assert hidden.sum() == pytest.approx(0.4 * obs.sum(), rel=0.15)


def test_spackle_beats_median_and_records_results(trained):
    a, m = trained
    a = a.copy()
    res = sp.tl.evaluate_completion(a, model=m, mask_frac=[0.3, 0.6], n_masks=3, seed=1)
    assert set(res["method"]) == {"spackle", "median"} and len(res) == 12
    # both methods are scored on identical masks
    piv = res.pivot_table(index=["mask_frac", "mask"], columns="method", values="n_hidden")
    assert (piv["spackle"] == piv["median"]).all()
    s = a.uns["spackle_evaluation"]["summary"]
    for f in (0.3, 0.6):
        sk = s[(s.method == "spackle") & (s.mask_frac == f)].iloc[0]
        md = s[(s.method == "median") & (s.mask_frac == f)].iloc[0]
        assert sk["MSE_mean"] < 0.7 * md["MSE_mean"]
        assert sk["PCC-gene_mean"] > md["PCC-gene_mean"]
        assert sk["MSE_reduction_vs_median"] == pytest.approx(1 - sk["MSE_mean"] / md["MSE_mean"])
    p = a.uns["spackle_evaluation"]["params"]
    assert p["eval_slides"] == ["s2"] and p["model_train_slides"] == ["s0"] and p["seed"] == 1
    # reproducible masks
    again = sp.tl.evaluate_completion(a, model=m, mask_frac=[0.3, 0.6], n_masks=3, seed=1, key_added=None)
    pd.testing.assert_frame_equal(again, res)
    # SpackleModel.evaluate is the SpaCKLE half of the same protocol
    own = m.evaluate(a, mask_frac=[0.3, 0.6], n_masks=3, seed=1)
    pd.testing.assert_frame_equal(
        own.reset_index(drop=True), res[res.method == "spackle"].reset_index(drop=True)
    )


def test_hidden_entries_are_not_visible_to_spackle(trained):
    """Changing the true value of hidden entries must not change SpaCKLE's scores' predictions."""
    a, m = trained
    test = np.flatnonzero(a.obs["split"] == "test")
    obs = a.layers["mask"]
    hidden = np.zeros_like(obs)
    hidden[test] = (np.random.default_rng(0).random((len(test), a.n_vars)) < 0.3) & obs[test]
    vals = a.layers["median"].copy()
    _, _, table, _ = m._arrays(a)
    slides = m._slides(a)
    p1 = m._predict(vals, obs, table, slides, test, hidden=hidden)
    vals[hidden] += 10.0
    p2 = m._predict(vals, obs, table, slides, test, hidden=hidden)
    np.testing.assert_allclose(p1, p2, atol=1e-5)


def test_leakage_warning_and_training_inside(trained):
    a, m = trained
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("spared_tools")
    logger.addHandler(handler)
    try:
        sp.tl.evaluate_completion(a, model=m, slides=["s0"], n_masks=1, key_added=None)
    finally:
        logger.removeHandler(handler)
    assert any("used to train" in r.getMessage() for r in records)
    b = make_adata(n_slides=3, side=6, n_genes=8)
    res = sp.tl.evaluate_completion(
        b,
        n_masks=1,
        train_kwargs={"max_steps": 3, "batch_size": 16, "d_model": 16, "n_heads": 2, "n_layers": 1},
    )
    assert set(res["method"]) == {"spackle", "median"}
    assert b.uns["spackle_evaluation"]["params"]["model_train_slides"] == ["s0"]


def test_bad_arguments(trained):
    a, m = trained
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        sp.tl.evaluate_completion(a, model=m, mask_frac=1.2)
    with pytest.raises(ValueError, match="n_masks"):
        sp.tl.evaluate_completion(a, model=m, n_masks=0)
    with pytest.raises(ValueError, match="methods"):
        sp.tl.evaluate_completion(a, model=m, methods=["knn"])
    with pytest.raises(KeyError, match="not in adata.obs"):
        sp.tl.evaluate_completion(a, model=m, slides=["zz"])
    with pytest.raises(ValueError, match="No spot has"):
        sp.tl.evaluate_completion(a, model=m, eval_value="holdout")
    with pytest.raises(TypeError, match="SpackleModel"):
        sp.tl.evaluate_completion(a, model="model")
    with pytest.raises(RuntimeError, match="not trained"):
        sp.tl.evaluate_completion(a, model=sp.tl.SpackleModel(**TINY))


def test_summarise_reduction_column():
    res = pd.DataFrame(
        {
            "method": ["spackle", "median", "spackle", "median"],
            "mask_frac": [0.3, 0.3, 0.3, 0.3],
            "mask": [0, 0, 1, 1],
            "MSE": [1.0, 4.0, 3.0, 4.0],
            "MAE": [1.0] * 4,
            "PCC-gene": [0.5] * 4,
            "PCC-spot": [0.5] * 4,
            "n_hidden": [10] * 4,
        }
    )
    s = summarise(res).set_index("method")
    assert s.loc["spackle", "MSE_mean"] == 2.0 and s.loc["spackle", "MSE_std"] == 1.0
    assert s.loc["spackle", "MSE_reduction_vs_median"] == pytest.approx(0.5)
    assert np.isnan(s.loc["median", "MSE_reduction_vs_median"])


def test_real_st_fixture_median_protocol(her2st_c2_block):
    shared_path("fixtures", "her2st_C2_block.h5ad")
    a = her2st_c2_block
    X = np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X, dtype=np.float32)
    tpm = X / X.sum(1, keepdims=True).clip(1) * 1e6
    a.layers["log1p"] = np.log2(tpm + 1).astype(np.float32)
    sp.pp.median_complete(a, layer="log1p")
    res = sp.tl.evaluate_completion(a, methods=["median"], split_key=None, mask_frac=[0.1, 0.5], n_masks=2)
    s = a.uns["spackle_evaluation"]["summary"].set_index("mask_frac")
    # hiding more real entries makes the median method worse (the paper's Fig. 4 trend)
    assert s.loc[0.5, "MSE_mean"] > s.loc[0.1, "MSE_mean"]
    assert (res["n_hidden"] > 0).all()


def test_stored_values_match_first_mask_and_feed_the_scatter_plot(trained):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, m = trained
    a = a.copy()
    res = sp.tl.evaluate_completion(a, model=m, mask_frac=[0.1, 0.3, 0.6], n_masks=2, seed=3)
    ev = a.uns["spackle_evaluation"]
    vals = ev["values"]
    assert ev["params"]["values_mask_frac"] == 0.3
    assert list(vals.columns) == ["obs_name", "gene", "true", "spackle", "median"]
    first = res[(res.mask_frac == 0.3) & (res["mask"] == 0)].set_index("method")
    assert len(vals) == first.loc["spackle", "n_hidden"]
    for method in ("spackle", "median"):
        mse = float(np.mean((vals[method] - vals["true"]) ** 2))
        assert mse == pytest.approx(first.loc[method, "MSE"], rel=1e-6)
    # true values are the layer's values at (obs_name, gene)
    truth = a[vals["obs_name"].to_numpy()].to_df(layer="median")
    got = truth.to_numpy()[np.arange(len(vals)), a.var_names.get_indexer(vals["gene"])]
    np.testing.assert_allclose(got, vals["true"].to_numpy(), rtol=1e-6)
    fig = sp.pl.completion(a, show=False)
    assert len(fig.axes) == 3  # one scatter per method + the error curve
    plt.close(fig)
    # capped sample
    b = a.copy()
    sp.tl.evaluate_completion(b, model=m, mask_frac=0.3, n_masks=1, seed=3, max_values=50)
    assert len(b.uns["spackle_evaluation"]["values"]) == 50
    with pytest.raises(ValueError, match="max_values"):
        sp.tl.evaluate_completion(b, model=m, mask_frac=0.3, n_masks=1, max_values=-1)


def _records(fn):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("spared_tools")
    logger.addHandler(handler)
    try:
        fn()
    finally:
        logger.removeHandler(handler)
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_warns_when_scoring_a_slide_that_validated_the_model():
    # no split column: SpaCKLE holds out a slide of its own choice for validation
    a = make_adata(n_slides=3, side=6, n_genes=8)
    del a.obs["split"]
    m = sp.tl.SpackleModel(seed=0, **TINY).train(a, max_steps=2, batch_size=32, split_key=None)
    (val,) = m.train_info_["val_slides"]
    other = next(s for s in ("s0", "s1", "s2") if s != val)
    msgs = _records(lambda: sp.tl.evaluate_completion(a, model=m, slides=[val], n_masks=1, key_added=None))
    assert any("validated the model" in t and repr(val) in t for t in msgs), msgs
    msgs = _records(lambda: sp.tl.evaluate_completion(a, model=m, slides=[other], n_masks=1, key_added=None))
    assert not any("validated the model" in t for t in msgs)


def test_missing_split_labels_are_refused_naming_the_column_and_count():
    a = make_adata(n_slides=3, side=6, n_genes=8)
    split = a.obs["split"].astype(object)
    split.iloc[:5] = np.nan
    a.obs["split"] = split
    with pytest.raises(ValueError, match=r"adata.obs\['split'\] has 5 missing values"):
        sp.tl.spackle_complete(a, max_steps=1, batch_size=32, **TINY)
    assert "spackle" not in a.layers
