from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import spared_tools as sp
from spared_tools.models.image import load_image_encoder
from spared_tools.tl._predictor import Predictor, TargetScaler

from .conftest import shared_path

SPLITS = np.array(["train"] * 24 + ["val"] * 8 + ["test"] * 8)


def make_adata(n=40, g=5, size=8, d=6, seed=0) -> ad.AnnData:
    """Spots whose log1p targets depend linearly on features and on the patches' mean colour."""
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    colour = patches.reshape(n, -1, 3).mean(1) / 255.0
    feats = rng.normal(size=(n, d))
    W = rng.normal(size=(d, g))
    Y = 2.0 + feats @ W * 0.3 + colour @ rng.normal(size=(3, g)) + 0.05 * rng.normal(size=(n, g))
    Y = np.clip(Y, 0, None).astype(np.float32)
    a = ad.AnnData(np.round(np.expm1(Y)).astype(np.float32))
    a.obs_names = [f"s{i}" for i in range(n)]
    a.var_names = [f"G{j}" for j in range(g)]
    a.layers["log1p"] = Y
    a.obs["split"] = pd.Categorical(SPLITS[:n] if n == 40 else np.resize(SPLITS, n))
    a.obsm["feats"] = feats
    a.obsm["patches"] = patches
    a.uns["patches"] = {"params": {"size": size}, "store": "memory"}
    return a


class _ChannelMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class _TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------ base class
def test_target_scaler_fit_on_training_only_and_roundtrip():
    a = make_adata()
    m = sp.tl.MeanPredictor().train(a)
    train = a.layers["log1p"][SPLITS == "train"]
    np.testing.assert_allclose(m.scaler_.offset, train.min(0), rtol=1e-6)
    np.testing.assert_allclose(m.scaler_.scale, train.max(0) - train.min(0), rtol=1e-6)
    for method in ("minmax", "standard", "none"):
        s = TargetScaler(method).fit(train, list(a.var_names))
        np.testing.assert_allclose(s.inverse_transform(s.transform(train)), train, rtol=1e-5, atol=1e-5)
    s = TargetScaler("standard").fit(np.ones((3, 1)), ["c"])
    assert s.scale[0] == 1.0  # constant gene never divides by zero
    assert m.train_params_["n_train"] == 24 and m.train_params_["n_val"] == 8 and m.train_params_["seed"] == 0


def test_predictor_errors():
    a = make_adata()
    m = sp.tl.MeanPredictor()
    with pytest.raises(RuntimeError, match="not trained"):
        m.predict(a)
    with pytest.raises(KeyError, match="not in adata.var_names"):
        m.train(a, genes=["G0", "nope"])
    with pytest.raises(ValueError, match="No training spots"):
        m.train(a, train_value="none")
    with pytest.raises(ValueError, match="overlap"):
        m.train(a, val_value=["train", "val"])
    with pytest.raises(KeyError, match="split column"):
        m.train(a, split_key="fold")
    bad = a.copy()
    bad.layers["log1p"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.train(bad)
    bad.layers["log1p"][0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        m.train(bad)
    with pytest.raises(KeyError, match="Layer"):
        m.train(a, layer="counts")
    m.train(a, genes=["G0", "G1"])
    with pytest.raises(KeyError, match="cannot predict genes it was not trained on"):
        m.predict(a, genes=["G2"])
    with pytest.raises(ValueError, match="scaling"):
        sp.tl.MeanPredictor(scaling="log")
    with pytest.raises(ValueError, match="seed"):
        sp.tl.MeanPredictor(seed=-1)


def test_mean_predictor_exact(tmp_path):
    a = make_adata()
    m = sp.tl.MeanPredictor().train(a, genes=["G3", "G1"])
    P = m.predict(a)
    ref = a[SPLITS == "train", ["G3", "G1"]].layers["log1p"].mean(0)
    np.testing.assert_allclose(P, np.tile(ref, (a.n_obs, 1)), rtol=1e-6)
    np.testing.assert_allclose(m.predict(a, genes=["G1"])[:, 0], ref[1], rtol=1e-6)
    # evaluation on the test split: constant predictions have undefined PCC, MSE by hand
    res = m.evaluate(a)
    test = a[SPLITS == "test", ["G3", "G1"]].layers["log1p"]
    assert res["n_nan_genes"] == 2 and res["n_spots"] == 8
    assert res["mse"] == pytest.approx(((test - ref) ** 2).mean(), rel=1e-5)
    m.save(tmp_path / "m")
    m2 = Predictor.load(tmp_path / "m", a)
    assert isinstance(m2, sp.tl.MeanPredictor) and m2.genes_ == ["G3", "G1"]
    np.testing.assert_array_equal(m2.predict(a), P)
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m")
    other = a[:, ["G0", "G1"]].copy()
    with pytest.raises(KeyError, match="not in adata.var_names"):
        sp.tl.MeanPredictor.load(tmp_path / "m", other)
    with pytest.raises(TypeError, match="not a RidgePredictor"):
        sp.tl.RidgePredictor.load(tmp_path / "m")


# ------------------------------------------------------------------------------------------ ridge
def _ridge_reference(X, Y, alpha):
    """sklearn-free closed form: standardised X, centred Y, (XᵀX + αI)⁻¹ XᵀY."""
    mu, sd = X.mean(0), X.std(0)
    Xs = (X - mu) / sd
    ym = Y.mean(0)
    W = np.linalg.solve(Xs.T @ Xs + alpha * np.eye(X.shape[1]), Xs.T @ (Y - ym))
    return lambda Xn: ((Xn - mu) / sd) @ W + ym


def test_ridge_equals_closed_form_and_validation_choice():
    a = make_adata()
    alphas = [1e-3, 0.1, 10.0]
    m = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats", alphas=alphas).train(a)
    assert not m.uses_images
    X = a.obsm["feats"]
    tr, va = SPLITS == "train", SPLITS == "val"
    Z = m.scaler_.transform(a.layers["log1p"])
    # brute force: each alpha's validation mean PCC, then the chosen model's predictions
    scores = []
    for al in alphas:
        P = _ridge_reference(X[tr], Z[tr], al * tr.sum())(X[va])
        scores.append(np.mean([np.corrcoef(Z[va][:, j], P[:, j])[0, 1] for j in range(Z.shape[1])]))
    np.testing.assert_allclose(m.history_["scores"], scores, rtol=1e-6)
    assert m.alpha_ == alphas[int(np.argmax(scores))]
    ref = _ridge_reference(X[tr], Z[tr], m.alpha_ * tr.sum())(X)
    np.testing.assert_allclose(m.predict(a), m.scaler_.inverse_transform(ref), rtol=1e-5, atol=1e-5)
    # scaling does not change ridge predictions
    m2 = sp.tl.RidgePredictor(
        encoder="precomputed", features_key="feats", alphas=[m.alpha_], scaling="none"
    ).train(a)
    np.testing.assert_allclose(m2.predict(a), m.predict(a), rtol=1e-4, atol=1e-4)


def test_ridge_gcv_without_validation():
    a = make_adata()
    alphas = [1e-2, 1.0, 100.0]
    m = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats", alphas=alphas)
    m.train(a, val_value=None)
    assert m.history_["criterion"] == "GCV"
    X, Z = a.obsm["feats"][SPLITS == "train"], m.scaler_.transform(a.layers["log1p"])[SPLITS == "train"]
    n = X.shape[0]
    Xs = (X - X.mean(0)) / X.std(0)
    Zc = Z - Z.mean(0)
    gcv = []
    for al in alphas:  # explicit hat matrix
        H = Xs @ np.linalg.solve(Xs.T @ Xs + al * n * np.eye(X.shape[1]), Xs.T)
        gcv.append(n * ((Zc - H @ Zc) ** 2).sum() / (n - np.trace(H)) ** 2)
    np.testing.assert_allclose(-np.asarray(m.history_["scores"]), gcv, rtol=1e-6)
    assert m.alpha_ == alphas[int(np.argmin(gcv))]


@pytest.mark.parametrize("d", [6, 200])  # more stacked rows than inputs, and fewer (a rank-deficient Gram)
def test_ridge_on_stacked_views_equals_closed_form(d):
    """fit_ridge(views=...): every view of a training spot a sample, validation and prediction on the mean."""
    from spared_tools.tl._baselines import fit_ridge

    rng = np.random.default_rng(1)
    n, k, g = 30, 8, 4
    V = rng.normal(size=(n, k, d)) + 3.0 * rng.normal(size=(n, 1, d))  # views share a spot part
    Y = V.mean(1) @ rng.normal(size=(d, g)) + 0.1 * rng.normal(size=(n, g))
    tr, va = np.arange(20), np.arange(20, 30)
    F = V.mean(1)
    alphas = [1e-3, 0.1, 10.0]
    fit = fit_ridge(F, Y, tr, va, alphas, views=(k, lambda j: V[:, j]), edge_warning=False)
    # brute force: the stacked training rows (standardised on their own mean and std), the closed form
    X = V[tr].reshape(-1, d)  # spot-major: row i * k + j is view j of spot i
    Ys = np.repeat(Y[tr], k, axis=0)
    scores = []
    for al in alphas:
        P = _ridge_reference(X, Ys, al * X.shape[0])(F[va])
        scores.append(np.mean([np.corrcoef(Y[va][:, j], P[:, j])[0, 1] for j in range(g)]))
    np.testing.assert_allclose(fit.history["scores"], scores, rtol=1e-6)
    assert fit.alpha == alphas[int(np.argmax(scores))]
    ref = _ridge_reference(X, Ys, fit.alpha * X.shape[0])
    np.testing.assert_allclose(fit.predict(F), ref(F), rtol=1e-6, atol=1e-8)
    # for a linear map the views' mean predicts the mean of the views' predictions
    np.testing.assert_allclose(
        fit.predict(F), np.mean([fit.predict(V[:, j]) for j in range(k)], 0), atol=1e-10
    )
    # GCV on the stacked rows, with the explicit hat matrix
    gcv_fit = fit_ridge(F, Y, tr, np.array([], dtype=int), alphas, views=(k, lambda j: V[:, j]))
    Xs = (X - X.mean(0)) / X.std(0)
    Yc = Ys - Ys.mean(0)
    N = X.shape[0]
    gcv = []
    for al in alphas:
        H = Xs @ np.linalg.solve(Xs.T @ Xs + al * N * np.eye(d), Xs.T)
        gcv.append(N * ((Yc - H @ Yc) ** 2).sum() / (N - np.trace(H)) ** 2)
    np.testing.assert_allclose(-np.asarray(gcv_fit.history["scores"]), gcv, rtol=1e-6)
    with pytest.raises(ValueError, match="View 0 has inputs of shape"):
        fit_ridge(F, Y, tr, va, alphas, views=(k, lambda j: V[:, j, :-1]))


def test_ridge_on_image_features_save_load(tmp_path):
    a = make_adata()
    enc = load_image_encoder(_ChannelMean(), name="channel-mean")
    m = sp.tl.RidgePredictor(encoder=enc, alphas=[1e-3]).train(a)
    feats = a.obsm["X_image_features"]
    assert feats.shape == (40, 3)
    tr = SPLITS == "train"
    Z = m.scaler_.transform(a.layers["log1p"])
    ref = _ridge_reference(feats[tr], Z[tr], 1e-3 * tr.sum())(feats)
    np.testing.assert_allclose(m.predict(a), m.scaler_.inverse_transform(ref), rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="precomputed"):
        m.save(tmp_path / "r")
    # default (named) encoder round-trips; a different patch size is refused
    m = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats").train(a)
    m.save(tmp_path / "r2")
    m2 = Predictor.load(tmp_path / "r2", a)
    np.testing.assert_array_equal(m2.predict(a), m.predict(a))
    with pytest.raises(KeyError, match="obsm"):
        m.predict(ad.AnnData(np.ones((3, 5), np.float32)))


def test_ridge_with_neighbourhood_context(tmp_path):
    from spared_tools.pp import context_features

    a = make_adata()
    a.obs["slide_id"] = pd.Categorical(np.repeat(["s0", "s1"], 20))
    a.obs["array_row"], a.obs["array_col"] = np.tile(np.divmod(np.arange(20), 5), 2)
    ctx = context_features(a, a.obsm["feats"], n_rings=1)
    assert ctx.shape == (40, 12) and ctx.dtype == np.float64
    m = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats", context_rings=1).train(a)
    # the closed form on [features, neighbourhood mean], penalty chosen as without context
    tr = SPLITS == "train"
    Z = m.scaler_.transform(a.layers["log1p"])
    ref = _ridge_reference(ctx[tr], Z[tr], m.alpha_ * tr.sum())(ctx)
    np.testing.assert_allclose(m.predict(a), m.scaler_.inverse_transform(ref), rtol=1e-5, atol=1e-5)
    a.obsm["ctx"] = ctx
    m0 = sp.tl.RidgePredictor(encoder="precomputed", features_key="ctx").train(a)
    np.testing.assert_allclose(m.predict(a), m0.predict(a), rtol=1e-10, atol=1e-10)
    m.save(tmp_path / "r")
    back = Predictor.load(tmp_path / "r", a)
    assert back.context_rings == 1
    np.testing.assert_array_equal(back.predict(a), m.predict(a))
    with pytest.raises(ValueError, match="context_rings"):
        sp.tl.RidgePredictor(context_rings=-2)
    b = a.copy()
    del b.obs["slide_id"]
    with pytest.raises(KeyError, match="slide_id"):
        m.predict(b)


# ------------------------------------------------------------------------------------------ linear head
def test_linear_head_frozen_converges_to_least_squares():
    a = make_adata()
    enc = load_image_encoder(_ChannelMean(), name="channel-mean")
    m = sp.tl.LinearHeadPredictor(
        encoder=enc, finetune=False, max_epochs=120, batch_size=64, head_lr=0.1, weight_decay=0.0, seed=1
    )
    sp.settings.progress = False
    try:
        m.train(a, val_value=None)
    finally:
        sp.settings.progress = True
    F = a.obsm["X_image_features"]
    tr = SPLITS == "train"
    Z = m.scaler_.transform(a.layers["log1p"])
    A = np.c_[F[tr], np.ones(tr.sum())]
    coef = np.linalg.lstsq(A, Z[tr], rcond=None)[0]
    ref = np.c_[F, np.ones(len(F))] @ coef
    np.testing.assert_allclose(m.scaler_.transform(m.predict(a)), ref, atol=0.05)


def test_linear_head_finetune_seed_save_load(tmp_path):
    a = make_adata(size=10)
    kw = {
        "encoder": load_image_encoder(_TinyConv(), name="tiny"),
        "max_epochs": 2,
        "batch_size": 8,
        "seed": 3,
    }
    sp.settings.progress = False
    try:
        torch.manual_seed(0)
        m1 = sp.tl.LinearHeadPredictor(**kw).train(a)
        torch.manual_seed(123)  # the model's own seed must decide, not the global state
        m2 = sp.tl.LinearHeadPredictor(**kw).train(a)
        m3 = sp.tl.LinearHeadPredictor(**{**kw, "seed": 4}).train(a)
    finally:
        sp.settings.progress = True
    P1 = m1.predict(a)
    np.testing.assert_array_equal(P1, m2.predict(a))
    assert not np.array_equal(P1, m3.predict(a))
    assert len(m1.history_["val_loss"]) == 2
    assert m1.history_["best_val_loss"] == pytest.approx(min(m1.history_["val_loss"]))
    # best-validation weights are kept: recompute the validation loss of the returned model
    va = SPLITS == "val"
    Zva = m1.scaler_.transform(a.layers["log1p"][va])
    val_loss = ((m1.scaler_.transform(P1[va]) - Zva) ** 2).mean()
    assert val_loss == pytest.approx(m1.history_["best_val_loss"], rel=1e-4)
    # tta averages the 8 symmetries
    m1.tta = True
    Ptta = m1.predict(a)
    assert Ptta.shape == P1.shape and not np.allclose(Ptta, P1)
    m1.tta = False
    # a custom module cannot be serialised; a named encoder can
    with pytest.raises(TypeError, match="custom image module"):
        m1.save(tmp_path / "lh")


@pytest.mark.slow
def test_linear_head_efficientnet_save_load_and_patch_size(tmp_path):
    a = make_adata(size=32)
    sp.settings.progress = False
    try:
        m = sp.tl.LinearHeadPredictor(max_epochs=1, batch_size=16).train(a)
    finally:
        sp.settings.progress = True
    m.save(tmp_path / "lh")
    m2 = Predictor.load(tmp_path / "lh", a)
    np.testing.assert_allclose(m2.predict(a), m.predict(a), rtol=1e-5, atol=1e-5)
    small = make_adata(size=16)
    with pytest.raises(ValueError, match="32x32 px"):
        Predictor.load(tmp_path / "lh", small)


def test_patch_size_mismatch_refused():
    a = make_adata(size=8)
    m = sp.tl.RidgePredictor(encoder=load_image_encoder(_ChannelMean(), name="cm")).train(a)
    with pytest.raises(ValueError, match="8x8 px"):
        m.predict(make_adata(size=12))


def test_baselines_on_her2st_fixture(her2st_c2_block):
    shared_path("fixtures", "her2st_C2_block.h5ad")
    a = her2st_c2_block
    a.layers["log1p"] = np.log1p(a.X.toarray()).astype(np.float32)
    a.obs["split"] = np.array(["train", "train", "val", "test"])[np.arange(a.n_obs) % 4]
    genes = list(a.var_names[np.argsort(-np.asarray(a.X.sum(0)).ravel())[:20]])
    sp.pp.extract_patches(a, size=16)
    enc = load_image_encoder(_ChannelMean(), name="cm")
    mean = sp.tl.MeanPredictor().train(a, genes=genes)
    ridge = sp.tl.RidgePredictor(encoder=enc).train(a, genes=genes)
    rm, rr = mean.evaluate(a), ridge.evaluate(a)
    truth = a[a.obs["split"] == "test", genes].layers["log1p"]
    assert rm["mse"] == pytest.approx(
        ((truth - mean.predict(a[a.obs["split"] == "test"])) ** 2).mean(), rel=1e-5
    )
    assert rr["n_genes"] == 20 and np.isfinite(rr["pcc_all"])


@pytest.mark.gpu
def test_features_and_linear_head_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    from spared_tools.models.image import encode_patches

    a = make_adata(size=16)
    enc = load_image_encoder(_TinyConv(), name="tiny")
    cpu = encode_patches(a.obsm["patches"], enc, device="cpu")
    gpu = encode_patches(a.obsm["patches"], enc, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    sp.settings.progress = False
    try:
        m = sp.tl.LinearHeadPredictor(encoder=enc, max_epochs=1, batch_size=8, accelerator="gpu", devices=1)
        m.train(a)
    finally:
        sp.settings.progress = True
    assert m.predict(a).shape == (40, 5) and len(m.history_["val_loss"]) == 1


def test_linear_head_training_is_quiet_below_verbosity_3(assert_lightning_quiet):
    a = make_adata()
    enc = load_image_encoder(_ChannelMean(), name="channel-mean")
    assert_lightning_quiet(
        lambda: sp.tl.LinearHeadPredictor(encoder=enc, finetune=False, max_epochs=1, seed=0).train(a)
    )


def test_linear_head_does_not_depend_on_the_encoder_cache(monkeypatch):
    """The first model of a process loads (and caches) the default encoder; later ones reuse it. Loading
    draws from the global generator, which must not change the trained model."""
    from spared_tools.models import image as image_mod

    a = make_adata(size=8)
    cache: dict = {}
    monkeypatch.setattr(image_mod, "_DEFAULT_CACHE", cache)

    def load(name, **kw):  # a tiny stand-in for EfficientNet-Lite0 whose construction draws random numbers
        torch.randn(1000)
        torch.manual_seed(7)  # the same weights every time
        return load_image_encoder(_TinyConv(), name="tiny")

    monkeypatch.setattr(image_mod, "load_image_encoder", load)
    kw = {"encoder": "efficientnet-lite0", "finetune": False, "max_epochs": 3, "batch_size": 8, "seed": 2}
    sp.settings.progress = False
    try:
        first = sp.tl.LinearHeadPredictor(**kw).train(a)  # loads the encoder
        assert "efficientnet-lite0" in cache
        second = sp.tl.LinearHeadPredictor(**kw).train(a)  # cached: no draws
    finally:
        sp.settings.progress = True
    np.testing.assert_array_equal(first.predict(a), second.predict(a))


def test_ridge_warns_when_validation_picks_the_edge_of_the_grid(spared_log):
    import logging

    caplog = spared_log
    a = make_adata()
    edges = []
    for alphas in ([1e-6, 1e-3, 1.0], [1e-2, 1.0, 100.0], [1e5, 1e6, 1e7]):
        caplog.clear()
        m = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats", alphas=alphas).train(a)
        at_edge = m.alpha_ in (alphas[0], alphas[-1])
        edges.append(at_edge)
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and "grid" in r.message]
        assert bool(warned) == at_edge, (m.alpha_, alphas)
        if warned:
            assert f"alpha={m.alpha_:g}" in warned[0].message and "wider alphas=" in warned[0].message
    assert any(edges) and not all(edges), edges  # both cases were met
    # a one-penalty grid has no edge to warn about
    caplog.clear()
    sp.tl.RidgePredictor(encoder="precomputed", features_key="feats", alphas=[1.0]).train(a)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
