"""The one model format: atomic save, overwrite protection, clear load errors, the model registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import spared_tools as sp
from spared_tools.tl._base import MODEL_FILE, WEIGHTS_FILE, load_model, model_class, to_json, to_uns

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic_spackle import make_adata as spackle_adata

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32}


@pytest.fixture(autouse=True)
def _quiet():
    prev = sp.settings.progress
    sp.settings.progress = False
    yield
    sp.settings.progress = prev


def _adata(n=30, g=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.random((n, g)).astype(np.float32))
    a.var_names = [f"G{j}" for j in range(g)]
    a.obs_names = [f"s{i}" for i in range(n)]
    a.layers["log1p"] = a.X.copy()
    a.obs["split"] = pd.Categorical(np.resize(["train", "train", "val"], n))
    a.obsm["feats"] = rng.normal(size=(n, 3))
    a.obsm["patches"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    a.uns["patches"] = {"params": {"size": size}, "store": "memory"}
    return a


def test_every_model_saves_in_one_format_and_loads_through_the_registry(tmp_path):
    a = _adata()
    ridge = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats").train(a)
    ridge.save(tmp_path / "ridge")
    s = spackle_adata(n_genes=6)
    spk = sp.tl.SpackleModel(seed=0, **TINY).train(s, max_steps=2, batch_size=32, accelerator="cpu")
    spk.save(tmp_path / "spackle")
    for name, model, data in (("Ridge", ridge, a), ("SpaCKLE", spk, s)):
        d = tmp_path / name.lower()
        assert sorted(p.name for p in d.iterdir()) == [MODEL_FILE, WEIGHTS_FILE]
        header = json.loads((d / MODEL_FILE).read_text())
        assert header["model"] == name and header["format_version"] == 2
        assert header["genes"] == list(data.var_names)
        assert model_class(name) is type(model)
        loaded = load_model(d, data)  # the class comes from the registry
        assert type(loaded) is type(model)
    np.testing.assert_array_equal(load_model(tmp_path / "ridge", a).predict(a), ridge.predict(a))
    np.testing.assert_array_equal(load_model(tmp_path / "spackle", s).complete(), spk.complete())
    with pytest.raises(ValueError, match="Unknown model 'Nope'; the registered models are"):
        model_class("Nope")
    with pytest.raises(TypeError, match="holds a Ridge model, not a SpackleModel"):
        sp.tl.SpackleModel.load(tmp_path / "ridge", s)


def test_save_refuses_to_overwrite_and_is_atomic(tmp_path, monkeypatch):
    a = _adata()
    m1 = sp.tl.MeanPredictor().train(a)
    d = tmp_path / "model"
    m1.save(d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    m2 = sp.tl.MeanPredictor().train(_adata(seed=1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        m2.save(d)  # overwrite=False is the default
    # a crash half-way through writing the weights leaves the old model untouched and no debris
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        m2.save(d, overwrite=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    np.testing.assert_array_equal(sp.tl.MeanPredictor.load(d).predict(a), m1.predict(a))
    m2.save(d, overwrite=True)
    np.testing.assert_array_equal(sp.tl.MeanPredictor.load(d).predict(a), m2.predict(a))


def test_load_errors_name_genes_image_size_and_version(tmp_path):
    a = _adata()
    m = sp.tl.RidgePredictor(encoder="precomputed", features_key="feats").train(a)
    m.uses_images, m.image_size_ = True, (8, 8)  # as an image model trained on 8 px patches
    m.save(tmp_path / "m")
    other = a[:, ["G0", "G1"]].copy()
    with pytest.raises(
        KeyError, match=r"trained on 4 genes; 2 of them are not in adata.var_names \('G2', 'G3'\)"
    ):
        sp.tl.RidgePredictor.load(tmp_path / "m", other)
    loaded = sp.tl.RidgePredictor.load(tmp_path / "m")
    assert loaded.image_size_ == (8, 8)
    loaded.uses_images = True  # the check an image model runs when it is loaded for data
    with pytest.raises(
        ValueError, match="trained on 8x8 px patches but adata's 'patches' patches are 12x12 px"
    ):
        loaded.check_compatible(_adata(size=12))
    header = json.loads((tmp_path / "m" / MODEL_FILE).read_text())
    header["format_version"] = 99
    (tmp_path / "m" / MODEL_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="saved in model format 99 .*upgrade spared_tools"):
        sp.tl.RidgePredictor.load(tmp_path / "m", a)
    with pytest.raises(FileNotFoundError, match="does not hold a saved model"):
        sp.tl.RidgePredictor.load(tmp_path / "nothing", a)
    s = spackle_adata(n_genes=6)
    spk = sp.tl.SpackleModel(seed=0, **TINY).train(s, max_steps=1, batch_size=32, accelerator="cpu")
    spk.save(tmp_path / "s")
    with pytest.raises(ValueError, match="genes of adata differ .*G5"):
        sp.tl.SpackleModel.load(tmp_path / "s", s[:, :5].copy())


def test_sanitisers(tmp_path):
    out = to_json({"a": np.int64(3), "b": (np.float32(0.5), float("nan")), "c": np.arange(2), "d": Path("x")})
    assert out == {"a": 3, "b": [0.5, None], "c": [0, 1], "d": "x"}
    assert json.loads(json.dumps(out)) == out
    with pytest.raises(TypeError, match="A object cannot be written to JSON"):
        to_json(object())
    uns = to_uns({"x": None, "rec": [{"a": 1}, {"a": 2}], "s": ["u", "v"], "n": [1, 2.5]})
    assert set(uns) == {"rec", "s", "n"} and list(uns["rec"]["a"]) == [1, 2]
    np.testing.assert_array_equal(uns["n"], [1.0, 2.5])
    # records that hold lists (an ensemble's per-network epoch histories) become one group each, and the
    # result is writable to .h5ad and reads back with the same values
    nested = to_uns(
        {"members": [{"seed": 0, "epochs": [{"loss": 1.0}, {"loss": 0.5}]}, {"seed": 1, "epochs": []}]}
    )
    assert set(nested["members"]) == {"0", "1"} and nested["members"]["1"]["seed"] == 1
    a = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    a.uns["h"] = nested
    a.write_h5ad(tmp_path / "nested.h5ad")
    back = ad.read_h5ad(tmp_path / "nested.h5ad").uns["h"]["members"]
    assert list(back["0"]["epochs"]["loss"]) == [1.0, 0.5] and int(back["1"]["seed"]) == 1
