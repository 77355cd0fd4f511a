from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spared_tools as sp
from spared_tools.models.spackle import (
    MetricSums,
    NeighbourhoodCollate,
    SpackleEncoder,
    predict_centers,
)

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic_spackle import make_adata
from conftest import shared_path

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 2, "dim_feedforward": 32}
FAST = {"max_steps": 6, "batch_size": 32, "val_check_interval": 3}


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
    a = make_adata()
    m = sp.tl.SpackleModel(seed=3, **TINY)
    m.train(a, **FAST)
    return a, m


@pytest.fixture
def trained(_trained):
    return _trained


def _brute_table(adata, n_rings):
    """Square-lattice neighbour table by brute force (Manhattan rings, same slide)."""
    r = adata.obs["array_row"].to_numpy()
    c = adata.obs["array_col"].to_numpy()
    s = adata.obs["slide_id"].to_numpy()
    offs = sorted(
        {
            (dr, dc)
            for dr in range(-n_rings, n_rings + 1)
            for dc in range(-n_rings, n_rings + 1)
            if 0 < abs(dr) + abs(dc) <= n_rings
        }
    )
    out = {}
    for i in range(adata.n_obs):
        nb = set()
        for j in range(adata.n_obs):
            if j != i and s[j] == s[i] and (r[j] - r[i], c[j] - c[i]) in offs:
                nb.add(j)
        out[i] = nb
    return out


# ---------------------------------------------------------------------------------------------- encoder


def _random_batch(B=5, L=7, g=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(B, L, g, generator=gen)
    k = torch.rand(B, L, g, generator=gen) > 0.3
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, 5:] = True
    pad[3, 2] = True
    pos = torch.tensor([0, 1, 1, 1, 2, 2, 2])
    return v, k, pad, pos


def test_output_independent_of_other_spots_in_batch():
    torch.manual_seed(0)
    enc = SpackleEncoder(6, 3, **TINY).eval()
    v, k, pad, pos = _random_batch()
    with torch.no_grad():
        full = enc(v, k, pad, pos)
        perm = torch.tensor([3, 0, 4, 2, 1])
        permuted = enc(v[perm], k[perm], pad[perm], pos)
        alone = enc(v[2:3], k[2:3], pad[2:3], pos)
        other = v.clone()
        other[[0, 1, 3, 4]] = torch.randn(4, 7, 6)
        changed = enc(other, k, pad, pos)
    torch.testing.assert_close(permuted, full[perm], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alone[0], full[2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(changed[2], full[2], atol=1e-6, rtol=1e-5)


def test_output_depends_on_neighbours_but_not_on_padding():
    torch.manual_seed(0)
    enc = SpackleEncoder(6, 3, **TINY).eval()
    v, k, pad, pos = _random_batch()
    with torch.no_grad():
        base = enc(v, k, pad, pos, center_only=True)
        v2 = v.clone()
        v2[:, 1] += 3.0  # a present neighbour of every spot (column 1 is never padding here)
        moved = enc(v2, k, pad, pos, center_only=True)
        v3, k3 = v.clone(), k.clone()
        v3[0, 5:] = 100.0  # padding tokens of spot 0
        k3[0, 5:] = True
        padded = enc(v3, k3, pad, pos, center_only=True)
    assert (moved - base).abs().amax(1).min() > 1e-4
    torch.testing.assert_close(padded, base, atol=1e-6, rtol=1e-5)
    # hidden entries are not read: changing an unknown value does nothing
    v4 = v.clone()
    v4[~k] = 50.0
    with torch.no_grad():
        torch.testing.assert_close(enc(v4, k, pad, pos, center_only=True), base, atol=1e-6, rtol=1e-5)


def test_center_only_and_fast_inference_match_full_forward():
    a = make_adata(n_slides=2, side=6, n_genes=5)
    table, ring = sp.pp.neighbor_table(a, n_rings=2)
    rng = np.random.default_rng(0)
    values = rng.normal(size=a.shape).astype(np.float32)
    observed = rng.random(a.shape) > 0.4
    torch.manual_seed(0)
    enc = SpackleEncoder(5, int(ring.max()) + 1, **TINY).eval()
    col = NeighbourhoodCollate(values, observed, table)
    centers = np.arange(a.n_obs)[::-1].copy()
    b = col.gather(torch.as_tensor(centers))
    with torch.no_grad():
        full = enc(b["values"], b["observed"], b["padding"], torch.as_tensor(ring))[:, 0]
        center = enc(b["values"], b["observed"], b["padding"], torch.as_tensor(ring), center_only=True)
    fast_small = predict_centers(enc, col, ring, centers, batch_size=7)
    fast_big = predict_centers(enc, col, ring, centers[::-1].copy(), batch_size=1000)[::-1]
    np.testing.assert_allclose(center.numpy(), full.numpy(), atol=1e-5)
    np.testing.assert_allclose(fast_small, full.numpy(), atol=1e-5)
    np.testing.assert_allclose(fast_big, fast_small, atol=1e-6)


def test_gather_matches_brute_force():
    a = make_adata(n_slides=2, side=5, n_genes=4)
    table, ring = sp.pp.neighbor_table(a, n_rings=2)
    brute = _brute_table(a, 2)
    for i in range(a.n_obs):
        assert set(table[i, 1:][table[i, 1:] >= 0].tolist()) == brute[i]
    values = np.arange(a.n_obs * 4, dtype=np.float32).reshape(a.n_obs, 4)
    observed = np.ones(a.shape, bool)
    hidden = np.zeros(a.shape, bool)
    hidden[3, 1] = True
    b = NeighbourhoodCollate(values, observed, table, hidden=hidden).gather(torch.arange(a.n_obs))
    for i in range(a.n_obs):
        for j, t in enumerate(table[i]):
            if t < 0:
                assert b["padding"][i, j] and not b["observed"][i, j].any() and (b["values"][i, j] == 0).all()
            else:
                np.testing.assert_array_equal(b["values"][i, j].numpy(), values[t])
                np.testing.assert_array_equal(b["observed"][i, j].numpy(), ~hidden[t])
    assert b["target"][3, 1] and b["target"].sum() == 1


def test_metric_sums_match_numpy():
    from scipy.stats import pearsonr

    rng = np.random.default_rng(1)
    t = rng.normal(size=(40, 6))
    p = t + rng.normal(scale=0.5, size=t.shape)
    s = rng.random(t.shape) < 0.5
    s[:, 5] = False
    s[0, 5] = True  # gene 5: a single scored entry -> excluded from PCC-gene
    m = MetricSums(6)
    for lo in range(0, 40, 13):  # shards add up
        m.update(
            torch.from_numpy(t[lo : lo + 13]),
            torch.from_numpy(p[lo : lo + 13]),
            torch.from_numpy(s[lo : lo + 13]),
        )
    got = m.compute()
    d = (t - p)[s]
    genes = [pearsonr(t[s[:, j], j], p[s[:, j], j])[0] for j in range(6) if s[:, j].sum() >= 2]
    spots = [pearsonr(t[i, s[i]], p[i, s[i]])[0] for i in range(40) if s[i].sum() >= 2]
    assert got["MSE"] == pytest.approx(np.mean(d**2), rel=1e-10)
    assert got["MAE"] == pytest.approx(np.mean(np.abs(d)), rel=1e-10)
    assert got["PCC-gene"] == pytest.approx(np.mean(genes), rel=1e-9)
    assert got["PCC-spot"] == pytest.approx(np.mean(spots), rel=1e-9)
    assert got["n_scored"] == s.sum()


# ---------------------------------------------------------------------------------------------- model


def test_neighbourhood_size_follows_the_lattice():
    sq = make_adata(n_slides=1, side=5, n_genes=4, geometry="square", splits=("train",))
    hx = make_adata(n_slides=1, side=5, n_genes=4, geometry="hex", splits=("train",))
    one = {"max_steps": 1, "batch_size": 8}  # the ring count is resolved when train first sees the data
    m_sq = sp.tl.SpackleModel(**TINY).train(sq, **one)
    m_hx = sp.tl.SpackleModel(**TINY).train(hx, **one)
    assert (m_sq.n_rings, len(m_sq.ring) - 1) == (3, 24)
    assert (m_hx.n_rings, len(m_hx.ring) - 1) == (2, 18)
    assert len(sp.tl.SpackleModel(n_rings=1, **TINY).train(sq, **one).ring) == 5


def test_same_seed_identical_and_observed_untouched(trained):
    a, m = trained
    a2 = a.copy()
    m2 = sp.tl.SpackleModel(seed=3, **TINY).train(a2, **FAST)
    for (k, v), v2 in zip(m.encoder.state_dict().items(), m2.encoder.state_dict().values()):
        assert torch.equal(v, v2), k
    out = m.complete()
    np.testing.assert_array_equal(out, m2.complete(a2))
    m3 = sp.tl.SpackleModel(seed=4, **TINY).train(a.copy(), **FAST)
    assert not np.allclose(m3.complete(), out)
    obs = a.layers["mask"]
    np.testing.assert_array_equal(out[obs], a.layers["median"][obs])
    assert not np.allclose(out[~obs], a.layers["median"][~obs])
    assert np.isfinite(out).all()
    assert m.train_info_["train_slides"] == ["s0"] and m.train_info_["val_slides"] == ["s1"]
    assert list(m.history_["step"])[-1] == FAST["max_steps"]
    assert m.train_info_["best_val"]["MSE"] == pytest.approx(m.history_["MSE"].min())


def test_spackle_complete_writes_layer_and_params(trained):
    a, m = trained
    a = a.copy()
    before = {k: v.copy() for k, v in a.layers.items()}
    X0, names = a.X.copy(), a.obs_names.copy()
    sp.tl.spackle_complete(a, model=m)
    np.testing.assert_array_equal(a.X, X0)
    assert list(a.obs_names) == list(names)
    for k, v in before.items():
        np.testing.assert_array_equal(a.layers[k], v)
    np.testing.assert_array_equal(a.layers["spackle"], m.complete(a))
    p = a.uns["spackle"]["params"]
    assert p["seed"] == 3 and p["n_neighbors"] == 24 and p["layer"] == "median" and not p["trained_here"]
    assert a.uns["spackle"]["n_completed"] == int((~a.layers["mask"]).sum())
    b = sp.tl.spackle_complete(
        a, key_added="sp2", seed=5, max_steps=3, val_check_interval=2, copy=True, **TINY
    )
    assert b.uns["sp2"]["params"]["seed"] == 5 and b.uns["sp2"]["params"]["trained_here"]
    assert b.uns["sp2"]["validation"]["MSE"] > 0 and "sp2" not in a.layers


def test_save_load_roundtrip_and_gene_checks(trained, tmp_path):
    a, m = trained
    m.save(tmp_path / "m")
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m")
    loaded = sp.tl.SpackleModel.load(tmp_path / "m", a)
    np.testing.assert_array_equal(loaded.complete(), m.complete())
    assert loaded.train_info_ == m.train_info_ and loaded.is_trained
    # same genes, another order: outputs follow the var order
    perm = a[:, a.var_names[::-1]].copy()
    np.testing.assert_array_equal(
        sp.tl.SpackleModel.load(tmp_path / "m", perm).complete(), m.complete()[:, ::-1]
    )
    with pytest.raises(ValueError, match="genes of adata differ"):
        sp.tl.SpackleModel.load(tmp_path / "m", a[:, 1:].copy())
    renamed = a.copy()
    renamed.var_names = [f"X{i}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="absent from adata"):
        sp.tl.SpackleModel.load(tmp_path / "m", renamed)
    hexa = make_adata(n_slides=1, side=5, n_genes=12, geometry="hex", splits=("train",))
    with pytest.raises(ValueError, match="neighbour positions"):
        sp.tl.SpackleModel.load(tmp_path / "m", hexa)
    with pytest.raises(FileNotFoundError):
        sp.tl.SpackleModel.load(tmp_path / "nothing", a)


def test_bf16_inference_close_to_float32(trained):
    a, m = trained
    exact = m.complete()
    fast = m.complete(precision="bf16")
    obs = a.layers["mask"]
    np.testing.assert_array_equal(fast[obs], exact[obs])
    scale = a.layers["median"].std(0)
    assert np.abs(fast - exact).max(0).max() < 0.1 * scale.max()
    with pytest.raises(ValueError, match="precision"):
        m.complete(precision="16")


def test_single_slide_trains_without_validation_and_one_spot_slide():
    a = make_adata(n_slides=1, side=5, n_genes=6, splits=("train",))
    del a.obs["split"]
    m = sp.tl.SpackleModel(**TINY).train(a, max_steps=3, batch_size=8)
    assert m.train_info_["best_val"] is None and "no validation" in m.train_info_["checkpoint"]
    # a slide with a single spot: the spot attends to itself only
    b = make_adata(n_slides=2, side=4, n_genes=6)
    keep = np.r_[np.flatnonzero(b.obs["slide_id"] == "s0"), np.flatnonzero(b.obs["slide_id"] == "s1")[:1]]
    b = b[keep].copy()
    out = (
        sp.tl.SpackleModel(**TINY)
        .train(b, max_steps=2, batch_size=8, split_key=None, val_slides=["s1"])
        .complete()
    )
    assert out.shape == b.shape and np.isfinite(out).all()


def test_bad_input_errors(trained):
    a, m = trained
    b = a.copy()
    del b.layers["median"]
    with pytest.raises(KeyError, match="median_complete"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    b = a.copy()
    del b.layers["mask"]
    with pytest.raises(KeyError, match="mask_layer"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    b = a.copy()
    b.layers["mask"] = b.layers["mask"].astype(np.int8)
    with pytest.raises(TypeError, match="boolean"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    b = a.copy()
    b.layers["median"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    b = a.copy()
    b.layers["mask"][:] = False
    with pytest.raises(ValueError, match="no observed entries"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    b = a.copy()
    del b.obs["array_row"]
    with pytest.raises(KeyError, match="array_row"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    b = a.copy()
    del b.obs["slide_id"]
    with pytest.raises(KeyError, match="slide"):
        sp.tl.SpackleModel().train(b, max_steps=1)
    with pytest.raises(TypeError, match="AnnData"):
        sp.tl.SpackleModel().train(a.X)
    with pytest.raises(ValueError, match="divisible"):
        sp.tl.SpackleModel(d_model=10, n_heads=3)
    fresh = sp.tl.SpackleModel(**TINY)
    with pytest.raises(RuntimeError, match="not trained"):
        fresh.complete()
    with pytest.raises(ValueError, match="mask_frac"):
        fresh.train(a, mask_frac=1.5)
    with pytest.raises(ValueError, match="max_steps"):
        fresh.train(a, max_steps=0)
    with pytest.raises(KeyError, match="val_slides"):
        fresh.train(a, val_slides=["nope"])
    b = a.copy()
    b.obs["split"] = "test"
    with pytest.raises(ValueError, match="No training spots"):
        sp.tl.SpackleModel(**TINY).train(b, max_steps=1)
    with pytest.raises(ValueError, match="train=False"):
        sp.tl.spackle_complete(a.copy(), train=False)
    with pytest.raises(ValueError, match="overwrite an input layer"):
        sp.tl.spackle_complete(a.copy(), model=m, key_added="median")
    b = a.copy()
    b.layers["spackle"] = b.layers["median"]
    with pytest.raises(KeyError, match="already exists"):
        sp.tl.spackle_complete(b, model=m, overwrite=False)
    with pytest.raises(ValueError, match="training arguments"):
        sp.tl.spackle_complete(a.copy(), model=m, val_check_interval=3)


def test_zeros_as_missing_when_no_mask_layer():
    a = make_adata(n_slides=2, side=5, n_genes=6, splits=("train", "val"))
    m = sp.tl.SpackleModel(**TINY).train(a, layer="log1p", mask_layer=None, max_steps=2, batch_size=16)
    out = m.complete()
    zero = a.layers["log1p"] == 0
    np.testing.assert_array_equal(out[~zero], a.layers["log1p"][~zero])
    assert (out[zero] != 0).all()


def test_real_visium_fixture_hex_neighbourhood(visium_hex):
    shared_path("fixtures", "visium_hex_cytassist.h5ad")
    a = visium_hex
    a.layers["log1p"] = np.log1p(
        np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X, dtype=np.float32)
    )
    sp.pp.median_complete(a, layer="log1p")
    m = sp.tl.SpackleModel(**TINY).train(
        a, library_key="slide_id", max_steps=2, batch_size=64, split_key=None
    )
    assert len(m.ring) - 1 == 18
    out = m.complete()
    obs = a.layers["mask"]
    np.testing.assert_array_equal(out[obs], a.layers["median"][obs])


@pytest.mark.slow
def test_ddp_two_processes_cpu(tmp_path):
    a = make_adata()
    single = sp.tl.SpackleModel(seed=0, **TINY).train(a, max_steps=4, batch_size=16, val_check_interval=2)
    ddp = sp.tl.SpackleModel(seed=0, **TINY).train(
        a,
        max_steps=4,
        batch_size=16,
        val_check_interval=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        checkpoint_dir=tmp_path,
    )
    assert ddp.is_trained and ddp.train_info_["steps"] == 4
    assert ddp.complete().shape == single.complete().shape == a.shape
    assert ddp.train_info_["best_val"] is not None and np.isfinite(ddp.history_["MSE"]).all()
    assert not list(tmp_path.iterdir())  # hand-over files removed


@pytest.mark.gpu
def test_gpu_training_and_inference_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    a = make_adata()
    m = sp.tl.SpackleModel(seed=0, **TINY).train(a, max_steps=4, batch_size=16, accelerator="gpu", devices=1)
    np.testing.assert_allclose(m.complete(device="cuda"), m.complete(device="cpu"), atol=1e-4)
