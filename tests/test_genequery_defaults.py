"""GeneQuery's defaults (issue 19), the old forms of the moved settings, the ensemble's spread, spot resampling."""

from __future__ import annotations

import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import spared_tools as sp
from spared_tools.models.genequery import SpotDataset
from spared_tools.tl import GeneQueryModel, genequery_predict

TINY = {"width": 16, "n_heads": 2, "ff_dim": 32, "n_layers": 1, "dropout": 0.0}


def _data(n_slides: int = 4, side: int = 6, n_genes: int = 10, seed: int = 0):
    """Spots on a square lattice with low-rank log1p expression; slide 0..n-3 train, then val, test."""
    rng = np.random.default_rng(seed)
    n = n_slides * side * side
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    emb = rng.normal(size=(n_genes, 6)).astype(np.float32)
    y = np.log1p(np.exp(feats[:, :2] @ rng.normal(size=(2, n_genes)))).astype(np.float32)
    rr, cc = np.divmod(np.arange(side * side), side)
    genes = [f"G{j}" for j in range(n_genes)]
    obs = pd.DataFrame(
        {
            "slide_id": np.repeat([f"s{k}" for k in range(n_slides)], side * side),
            "array_row": np.tile(rr, n_slides),
            "array_col": np.tile(cc, n_slides),
            "split": np.repeat(["train"] * (n_slides - 2) + ["val", "test"], side * side),
        },
        index=[f"spot{i}" for i in range(n)],
    )
    a = ad.AnnData(X=np.expm1(y), obs=obs, var=pd.DataFrame(index=genes))
    a.layers["log1p"] = y
    a.obsm["X_image_features"] = feats
    a.obsm["spatial"] = np.column_stack([np.tile(cc, n_slides), np.tile(rr, n_slides)]).astype(float)
    table = pd.DataFrame(emb, index=genes)
    table.loc["NOVEL"] = emb[0]
    return a, table


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_defaults_are_the_validated_configuration():
    # the winner on the validation sections (experiments/results/genequery_selection*.txt, docs/differences.md)
    m = GeneQueryModel()
    assert (m.mode, m.width, m.ff_dim, m.n_layers, m.n_heads) == ("gene", 128, 256, 2, 8)
    assert (m.context_rings, m.gene_identity, m.n_models, m.checkpoint) == (1, 0, 3, "average")
    assert (m.max_epochs, m.augment, m.tta, m.spot_resample) == (7, True, "features", None)
    assert m.ridge_blend == 0.5  # experiments/results/genequery_layers.txt
    # the image features of the same run: EfficientNet-Lite0's last layer and its stages
    assert m.image_encoder == "efficientnet-lite0-stages"
    assert sp.tl.RidgePredictor().encoder == sp.tl.LinearHeadPredictor().encoder == m.image_encoder
    # spot mode's own weight (genequery_blend_second_spot.txt); fine-tune mode has no ridge head
    assert GeneQueryModel(mode="spot").ridge_blend == 0.65
    assert GeneQueryModel(mode="spot", finetune=True).ridge_blend == 0.0
    assert m.scaling == "standard"
    assert GeneQueryModel(mode="spot").scaling == "minmax"
    assert inspect.signature(genequery_predict).parameters["mode"].default == "gene"
    # fine-tune mode cannot use the neighbourhood nor an ensemble: its own defaults, no error
    f = GeneQueryModel(finetune=True)
    assert (f.context_rings, f.n_models) == (0, 1)
    # the knobs nobody needs to turn are not in the public signatures any more
    for name in ("context_rings", "gene_identity", "n_models", "checkpoint"):
        assert name not in inspect.signature(GeneQueryModel).parameters
        assert name not in inspect.signature(GeneQueryModel.train).parameters


def test_old_forms_name_the_new_place():
    a, table = _data()
    for name, value in (("context_rings", 0), ("gene_identity", 0)):
        with pytest.raises(TypeError, match=rf"{name} -> model.train\(adata, plan_kwargs="):
            GeneQueryModel(**{name: value})
    m = GeneQueryModel(gene_embeddings=table, **TINY)
    for name, value in (("n_models", 1), ("checkpoint", "best")):
        with pytest.raises(TypeError, match=rf"takes \['{name}'\] in plan_kwargs now"):
            m.train(a, **{name: value})
    with pytest.raises(TypeError, match="Unknown plan_kwargs"):
        m.train(a, plan_kwargs={"n_model": 1})
    with pytest.raises(ValueError, match="context_rings=1 with finetune=True"):
        GeneQueryModel(finetune=True).set_params(context_rings=1)
    # once trained, what shapes the networks is fixed (train again to change it)
    m.train(a, max_epochs=1, plan_kwargs={"n_models": 2, "context_rings": 0, "gene_identity": 4})
    with pytest.raises(ValueError, match="train again to change them"):
        m.set_params(context_rings=1)
    m.set_params(context_rings=0, tta=False)  # unchanged values and inference settings are fine
    m.train(a, max_epochs=1, plan_kwargs={"n_models": 1})
    assert len(m.nets_) == 1


@pytest.mark.parametrize("mode", ["gene", "spot"])
def test_std_is_the_spread_of_the_ensembles_networks(mode):
    a, table = _data()
    genes = [f"G{j}" for j in range(6)]
    query = ["G0", "G3", "G8", "NOVEL"]  # trained, trained, not trained, text only
    ens = GeneQueryModel(mode=mode, gene_embeddings=table, seed=3, **TINY)
    # the networks alone (the ridge head, calibrated to each model's networks, has its own test below)
    ens.train(a.copy(), genes=genes, max_epochs=2, plan_kwargs={"ridge_blend": 0.0})  # n_models=3 by default
    mean, std = ens.predict_with_std(a, query)
    np.testing.assert_array_equal(mean, ens.predict(a, query))
    # brute force: member k is the single model of seed 3 + k (tests/test_genequery.py checks that)
    singles = [
        GeneQueryModel(mode=mode, gene_embeddings=table, seed=s, **TINY).train(
            a.copy(), genes=genes, max_epochs=2, plan_kwargs={"n_models": 1, "ridge_blend": 0.0}
        )
        for s in (3, 4, 5)
    ]
    each = np.stack([m.predict(a, query) for m in singles])
    np.testing.assert_allclose(mean, each.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, each.std(0, ddof=1), rtol=1e-3, atol=1e-5)
    assert std.dtype == np.float32 and (std > 0).mean() > 0.9
    with pytest.raises(ValueError, match="needs an ensemble"):
        singles[0].predict_with_std(a, query)
    # genequery_predict writes the spread next to the prediction, NaN where nothing was predicted
    b = a.copy()
    unseen = genequery_predict(b, genes=query, model=ens, train=False)
    pos = b.var_names.get_indexer(["G0", "G3", "G8"])
    np.testing.assert_allclose(b.layers["genequery_std"][:, pos], std[:, :3], rtol=1e-5, atol=1e-6)
    assert np.isnan(np.delete(b.layers["genequery_std"], pos, axis=1)).all()
    np.testing.assert_allclose(unseen.layers["genequery_std"][:, 0], std[:, 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.obsm["genequery_unseen_std"]["NOVEL"], std[:, 3], rtol=1e-5, atol=1e-6)
    # one network: no spread is written (and an old one is removed)
    single = singles[0]
    genequery_predict(b, genes=query, model=single, train=False)
    assert "genequery_std" not in b.layers and "genequery_unseen_std" not in b.obsm


def test_spot_resample_repartitions_each_sequence_every_epoch():
    feats = np.arange(40, dtype=np.float32).reshape(20, 2)
    emb = np.eye(3, dtype=np.float32)
    seqs = [np.arange(0, 13), np.arange(13, 20)]
    ds = SpotDataset(feats, emb, np.zeros((20, 3)), seqs, batch_size=2, augment=True, seed=0, resample=5)
    parts0 = [s.numpy() for s in ds.sequences]
    # 13 spots -> 3 parts, 7 -> 2 parts, each within its slide, sizes at most 5, every spot once
    assert sorted(len(p) for p in parts0) == [3, 4, 4, 4, 5]
    for given in seqs:
        mine = [p for p in parts0 if np.isin(p, given).all()]
        np.testing.assert_array_equal(np.sort(np.concatenate(mine)), given)
    assert len(ds) == 5 * 2  # parts x gene blocks of 2
    ds.set_epoch(1)
    parts1 = [s.numpy() for s in ds.sequences]
    assert {tuple(p) for p in parts1} != {tuple(p) for p in parts0}
    # validation / prediction (no augmentation) keep the sequences as given
    val = SpotDataset(feats, emb, None, seqs, batch_size=2, augment=False, resample=5)
    assert [s.numpy().tolist() for s in val.sequences] == [s.tolist() for s in seqs]
    with pytest.raises(ValueError, match="resample must be a positive integer"):
        SpotDataset(feats, emb, None, seqs, resample=0)


def test_default_checkpoint_keeps_the_mean_of_the_late_epochs_not_an_early_one():
    # the issue: validation on one section kept epoch 1 on 746 genes; the default rule cannot do that
    a, table = _data()
    m = GeneQueryModel(gene_embeddings=table, seed=0, **TINY).train(a, plan_kwargs={"n_models": 1})
    assert m.history_["selected"] == "mean of the weights of epochs 3-6"
    assert m.train_params_["max_epochs"] == 7


def test_a_model_saved_with_the_settings_in_the_constructor_still_loads(tmp_path):
    # before the defaults moved, context_rings / gene_identity were constructor parameters and were saved
    # among them: such a model loads with the same settings and gives the same predictions
    import json

    a, table = _data()
    m = GeneQueryModel(gene_embeddings=table, seed=0, **TINY).train(
        a, max_epochs=2, plan_kwargs={"n_models": 1, "context_rings": 1, "gene_identity": 4}
    )
    m.save(tmp_path / "new")
    path = tmp_path / "new" / "model.json"
    header = json.loads(path.read_text())
    settings = header["config"]["extra"]["settings"]
    header["config"]["params"].update(
        context_rings=settings.pop("context_rings"), gene_identity=settings.pop("gene_identity")
    )
    path.write_text(json.dumps(header))
    old = GeneQueryModel.load(tmp_path / "new")
    assert (old.context_rings, old.gene_identity) == (1, 4)
    np.testing.assert_array_equal(old.predict(a), m.predict(a))


@pytest.mark.parametrize(("mode", "n_views"), [("gene", 1), ("spot", 1), ("gene", 8), ("spot", 8)])
def test_ridge_head_equals_a_brute_force_ridge_blended_on_the_networks_scale(mode, n_views, tmp_path):
    a, table = _data(n_slides=5)
    if n_views > 1:  # the 8 views' features (n_obs, 8, d), as image_features(views=True) stores them
        rng = np.random.default_rng(3)
        f = a.obsm["X_image_features"]
        a.obsm["X_image_features"] = (f[:, None] + 0.3 * rng.normal(size=(a.n_obs, 8, f.shape[1]))).astype(
            np.float32
        )
    genes = [f"G{j}" for j in range(8)]
    kw = dict(mode=mode, gene_embeddings=table, seed=0, **TINY)
    model = GeneQueryModel(**kw).train(
        a, genes=genes, max_epochs=3, accelerator="cpu", plan_kwargs={"n_models": 2}
    )
    w = {"gene": 0.5, "spot": 0.65}[mode]  # the validated defaults of each mode
    assert model.ridge_blend == w and model.history_["ridge_head"]["ridge_blend"] == w
    query = ["G1", "G9", "G4", "NOVEL"]  # trained, not trained, trained, text only
    pred, std = model.predict_with_std(a, query)
    nets = GeneQueryModel.load(_saved(model, tmp_path), a)  # the same networks, without the head
    nets.ridge_blend, nets.ridge_head_ = 0.0, None
    net_pred, net_std = nets.predict_with_std(a, query)
    net_train = nets.predict(a, genes)

    # brute force: the networks' input (features, then their ring-1 neighbourhood mean) of the views'
    # mean; with 8 views the training samples are each view's input (stacked), standardised with their
    # statistics; ridge in closed form for every penalty, chosen on validation PCC of the views' mean
    tr = (a.obs["split"] == "train").to_numpy()
    va = (a.obs["split"] == "val").to_numpy()
    V = np.asarray(sp_context(a), dtype=np.float64).reshape(a.n_obs, n_views, -1)
    Xtr = V[tr].reshape(-1, V.shape[-1])
    mu, sd = Xtr.mean(0), Xtr.std(0)
    X, Xtr = (V.mean(1) - mu) / sd, (Xtr - mu) / sd
    Y = np.asarray(a[:, genes].layers["log1p"], dtype=np.float64)
    Ytr = np.repeat(Y[tr], n_views, axis=0)
    ym = Ytr.mean(0)
    n, p = Xtr.shape

    def ridge(alpha):
        W = np.linalg.solve(Xtr.T @ Xtr + alpha * n * np.eye(p), Xtr.T @ (Ytr - ym))
        return X @ W + ym

    def pcc(u, v):
        u, v = u - u.mean(0), v - v.mean(0)
        return ((u * v).sum(0) / np.sqrt((u**2).sum(0) * (v**2).sum(0))).mean()

    alphas = [10.0**k for k in range(-3, 8)]
    best = alphas[int(np.argmax([pcc(ridge(al)[va], Y[va]) for al in alphas]))]
    assert model.history_["ridge_head"]["alpha"] == best
    assert model.history_["ridge_head"]["samples_per_spot"] == n_views
    R = ridge(best)
    m_r, s_r = R[tr].mean(0), R[tr].std(0)
    m_n, s_n = net_train[tr].mean(0), net_train[tr].std(0)
    head = m_n + s_n / s_r * (R - m_r)  # ridge on the networks' scale (the mix is scale-free)
    col = {g: j for j, g in enumerate(genes)}
    for k, g in enumerate(query):
        if g in col:
            ref = (1 - w) * net_pred[:, k] + w * head[:, col[g]]
            np.testing.assert_allclose(pred[:, k], ref, rtol=1e-4, atol=1e-4, err_msg=g)
            np.testing.assert_allclose(std[:, k], (1 - w) * net_std[:, k], rtol=1e-4, atol=1e-5)
        else:  # not trained on: the networks alone
            np.testing.assert_allclose(pred[:, k], net_pred[:, k], rtol=1e-5, atol=1e-6, err_msg=g)
            np.testing.assert_allclose(std[:, k], net_std[:, k], rtol=1e-5, atol=1e-6)
    # the head changes the trained genes' prediction, and survives saving
    assert np.abs(pred[:, 0] - net_pred[:, 0]).max() > 1e-3
    again = GeneQueryModel.load(_saved(model, tmp_path, "again"), a)
    np.testing.assert_array_equal(again.predict(a, query), model.predict(a, query))
    # genequery_predict records the weight and the head's penalty, and the AnnData still writes
    out = a.copy()
    genequery_predict(out, genes=genes, model=model, train=False)
    np.testing.assert_allclose(out.layers["genequery"][:, :8], model.predict(a, genes), rtol=1e-6)
    assert out.uns["genequery"]["params"]["ridge_blend"] == w
    assert out.uns["genequery"]["history"]["ridge_head"]["alpha"] == best
    out.write_h5ad(tmp_path / "out.h5ad")
    with pytest.raises(ValueError, match="train again"):
        model.set_params(ridge_blend=0.2)
    with pytest.raises(ValueError, match=r"ridge_blend must be in \[0, 1\)"):
        GeneQueryModel().set_params(ridge_blend=1.5)
    with pytest.raises(ValueError, match="ridge_blend=0.35 with finetune=True"):
        GeneQueryModel(finetune=True).set_params(ridge_blend=0.35)


def test_networks_read_the_last_layer_and_the_ridge_head_every_column(tmp_path):
    """Features of the stages encoder: the networks see its first columns (its last layer), the head all."""
    from spared_tools.models.image import NETWORK_COLUMNS

    a, table = _data(n_slides=5)
    genes = [f"G{j}" for j in range(8)]
    last = a.obsm["X_image_features"]  # 8 columns: the "last layer"
    extra = np.random.default_rng(1).normal(size=(a.n_obs, 3)).astype(np.float32)
    b = a.copy()  # as sp.pp.image_features(b, encoder="efficientnet-lite0-stages") records them
    b.obsm["X_image_features"] = np.hstack([last, a.obsm["spatial"][:, :1].astype(np.float32) / 5, extra])
    b.uns["X_image_features"] = {"params": {"encoder": "efficientnet-lite0-stages", "views": 1}}
    kw = dict(gene_embeddings=table, seed=0, **TINY)
    old = NETWORK_COLUMNS["efficientnet-lite0-stages"]
    NETWORK_COLUMNS["efficientnet-lite0-stages"] = 8
    try:
        m = GeneQueryModel(**kw).train(b, genes=genes, max_epochs=2, accelerator="cpu")
    finally:
        NETWORK_COLUMNS["efficientnet-lite0-stages"] = old
    assert (m.feature_dim_, m.network_columns_, m.image_dim_) == (12, 8, 16)  # features + ring-1 mean
    assert m.ridge_head_ is not None and m.ridge_head_["coef"].shape == (24, 8)
    # the networks are those of a model trained on the last layer alone (same seed, no head) ...
    ref = GeneQueryModel(**kw).train(
        a, genes=genes, max_epochs=2, accelerator="cpu", plan_kwargs={"ridge_blend": 0.0}
    )
    nets = GeneQueryModel.load(_saved(m, tmp_path), b)
    assert (nets.feature_dim_, nets.network_columns_) == (12, 8)
    np.testing.assert_array_equal(nets.predict(b, genes), m.predict(b, genes))
    nets.ridge_blend, nets.ridge_head_ = 0.0, None
    np.testing.assert_allclose(nets.predict(b, genes), ref.predict(a, genes), rtol=1e-6, atol=1e-6)
    # ... and the head reads every column (the 4 the networks do not see move the prediction)
    head = sp.tl.RidgePredictor(
        encoder="precomputed", context_rings=1, alphas=[10.0**k for k in range(-3, 8)]
    )
    assert not np.allclose(m.predict(b, genes), ref.predict(a, genes), atol=1e-3)
    head.train(b, genes=genes)
    assert m.history_["ridge_head"]["alpha"] == head.alpha_  # the same choice on the same 24 columns
    with pytest.raises(ValueError, match="has 8 features per spot but the model was trained on 12"):
        m.predict(a, genes)
    # fine-tune mode (no head) trains the networks' part of the default encoder: its last layer
    tuned = GeneQueryModel(finetune=True)._fresh_encoder()
    assert (tuned.name, tuned.out_dim) == ("efficientnet-lite0", 1280)


def _saved(model, tmp_path, name="m"):
    model.save(tmp_path / name, overwrite=True)
    return tmp_path / name


def sp_context(a):
    from spared_tools.pp import context_features

    return context_features(a, a.obsm["X_image_features"], n_rings=1, library_key="slide_id")
