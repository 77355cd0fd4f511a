"""The one contract of the models of ``sp.tl`` (issue 18): data bound in ``train(adata)``, one base class,
one save format, one name for the masking fraction; the old forms raise errors naming the new ones."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spared_tools as sp
from spared_tools.cli import main
from spared_tools.tl._base import BaseModel, load_model
from spared_tools.tl._predictor import Predictor

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic_spackle import make_adata

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32}
FAST = {"max_steps": 2, "batch_size": 32, "accelerator": "cpu"}
MODELS = (sp.tl.SpackleModel, sp.tl.GeneQueryModel, sp.tl.MeanPredictor, sp.tl.RidgePredictor)


@pytest.fixture(autouse=True)
def _quiet():
    prev = (sp.settings.progress, sp.settings.verbosity)
    sp.settings.progress, sp.settings.verbosity = False, 1
    yield
    sp.settings.progress, sp.settings.verbosity = prev


def test_both_model_families_subclass_the_one_base_class():
    public = [getattr(sp.tl, n) for n in sp.tl.__all__ if inspect.isclass(getattr(sp.tl, n))]
    assert set(public) == {*MODELS, sp.tl.LinearHeadPredictor}  # every public class is a model
    for cls in public:
        assert issubclass(cls, BaseModel), cls
    assert issubclass(Predictor, BaseModel) and not issubclass(sp.tl.SpackleModel, Predictor)
    # one contract: keyword-only constructor without data; train(adata, ...) binds the data
    for cls in (*MODELS, sp.tl.LinearHeadPredictor):
        ctor = inspect.signature(cls.__init__).parameters
        assert "adata" not in ctor and all(
            p.kind != p.POSITIONAL_OR_KEYWORD for n, p in ctor.items() if n != "self"
        )
        assert list(inspect.signature(cls.train).parameters)[:2] == ["self", "adata"], cls
        for name in ("save", "load"):
            assert getattr(cls, name).__qualname__ == f"BaseModel.{name}", (cls, name)
    keys = inspect.signature(sp.tl.SpackleModel.train).parameters
    assert {"layer", "mask_layer", "library_key", "mask_frac"} <= set(keys) and "mask_prob" not in keys
    assert len(inspect.signature(sp.tl.SpackleModel.__init__).parameters) - 1 <= 16


def test_old_spackle_constructor_names_the_new_form():
    a = make_adata(n_slides=2, side=4, n_genes=4)
    with pytest.raises(
        TypeError, match=r"SpackleModel\(\) no longer takes an AnnData.*\.train\(adata, layer="
    ):
        sp.tl.SpackleModel(a, seed=0)
    with pytest.raises(TypeError, match=r"no longer takes layer=, library_key=.*\.train\(adata"):
        sp.tl.SpackleModel(layer="median", library_key="slide_id")
    with pytest.raises(TypeError, match="no longer takes adata="):
        sp.tl.SpackleModel(adata=a)


def test_mask_prob_names_mask_frac_everywhere(tmp_path, capsys):
    a = make_adata(n_slides=2, side=4, n_genes=4)
    model = sp.tl.SpackleModel(**TINY)
    with pytest.raises(TypeError, match=r"SpackleModel.train\(\) takes mask_frac= instead of mask_prob="):
        model.train(a, mask_prob=0.3)
    with pytest.raises(TypeError, match=r"spackle_complete\(\) takes mask_frac= instead of mask_prob="):
        sp.tl.spackle_complete(a, mask_prob=0.3)
    with pytest.raises(TypeError, match="mask_frac= instead of mask_prob="):  # through train_kwargs
        sp.tl.evaluate_completion(a, split_key=None, train_kwargs={"mask_prob": 0.3})
    assert not model.is_trained and "layer" not in a.uns
    with pytest.raises(SystemExit) as exc:
        main(["complete", "x.h5ad", "-o", str(tmp_path / "y.h5ad"), "--mask-prob", "0.3"])
    assert exc.value.code == 2 and "--mask-prob is now --mask-frac" in capsys.readouterr().err
    # the new name works: training hides that fraction and records it under the one name
    a2 = make_adata(n_slides=2, side=4, n_genes=4)
    sp.tl.spackle_complete(a2, mask_frac=(0.2, 0.4), seed=0, **TINY, **FAST)
    assert list(a2.uns["spackle"]["params"]["mask_frac"]) == [0.2, 0.4]


def test_genequery_predict_return_model_names_the_new_form():
    a = sp.datasets.example()
    with pytest.raises(TypeError, match=r"return_model.*GeneQueryModel\(\.\.\.\).*model=model"):
        sp.tl.genequery_predict(a, return_model=True)


def test_spackle_binds_data_in_train_and_round_trips_through_the_base_class(tmp_path):
    a = make_adata(n_slides=2, side=5, n_genes=6)
    model = sp.tl.SpackleModel(seed=0, **TINY)
    assert not model.is_trained and model.n_rings is None and model.genes == []
    with pytest.raises(RuntimeError, match=r"not trained; call model.train\(adata\)"):
        model.complete(a)
    with pytest.raises(RuntimeError, match="not trained"):
        model.save(tmp_path / "untrained")
    assert model.train(a, layer="median", mask_layer="mask", library_key="slide_id", **FAST) is model
    # what train bound and resolved
    assert model.adata is a and model.genes == list(a.var_names)
    assert (model.layer, model.mask_layer, model.library_key) == ("median", "mask", "slide_id")
    assert model.n_rings == 3 and len(model.ring) - 1 == 24  # square lattice: 3 rings, 24 neighbours
    assert model.get_params() == {
        "n_rings": 3, "geometry": "auto", "d_model": 16, "n_heads": 2, "n_layers": 1,
        "dim_feedforward": 32, "dropout": 0.0, "seed": 0,
    }  # fmt: skip
    assert "SpackleModel(n_rings=3" in repr(model) and "trained on 6 genes" in repr(model)
    out = model.complete()
    np.testing.assert_array_equal(out, model.complete(a))
    # save / load through the base class (and the registry), with and without data
    model.save(tmp_path / "m")
    for loaded in (BaseModel.load(tmp_path / "m", a), load_model(tmp_path / "m", a)):
        assert type(loaded) is sp.tl.SpackleModel and loaded.is_trained and loaded.adata is a
        np.testing.assert_array_equal(loaded.complete(), out)
        assert loaded.get_params() == model.get_params() and loaded.train_info_ == model.train_info_
        pd.testing.assert_frame_equal(loaded.history_, model.history_)
    bare = sp.tl.SpackleModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match="holds no AnnData"):
        bare.complete()
    np.testing.assert_array_equal(bare.complete(a), out)
    # a second train continues training (fine-tuning) on data with the same genes
    before = {k: v.clone() for k, v in bare.encoder.state_dict().items()}
    bare.train(a, **FAST)
    assert any(not np.array_equal(before[k], v) for k, v in bare.encoder.state_dict().items())
    with pytest.raises(ValueError, match="genes of adata differ"):
        bare.train(a[:, :5].copy(), **FAST)
    assert bare.adata is a  # a failed train keeps the previous binding
    with pytest.raises(TypeError, match="holds a SpaCKLE model, not a Predictor"):
        Predictor.load(tmp_path / "m")


def test_predictor_round_trips_through_the_base_class(tmp_path):
    rng = np.random.default_rng(0)
    import anndata as ad

    a = ad.AnnData(
        rng.random((30, 4)).astype(np.float32), obs=pd.DataFrame(index=[f"s{i}" for i in range(30)])
    )
    a.var_names = [f"G{j}" for j in range(4)]
    a.layers["log1p"] = a.X.copy()
    a.obs["split"] = np.repeat(["train", "val", "test"], 10)
    model = sp.tl.MeanPredictor(seed=0)
    assert not model.is_trained and model.train_info_ == {} and model.history_ == {}
    with pytest.raises(RuntimeError, match=r"MeanPredictor is not trained; call model.train\(adata\)"):
        model.save(tmp_path / "x")
    model.train(a)
    assert model.train_info_["n_train"] == 10 and model.train_params_ is model.train_info_
    model.save(tmp_path / "mean")
    loaded = BaseModel.load(tmp_path / "mean", a)
    assert type(loaded) is sp.tl.MeanPredictor and loaded.train_info_ == model.train_info_
    np.testing.assert_array_equal(loaded.predict(a), model.predict(a))
    np.testing.assert_allclose(model.predict(a)[0], a.layers["log1p"][:10].mean(0), rtol=1e-6)
    with pytest.raises(TypeError, match="holds a Mean model, not a SpackleModel"):
        sp.tl.SpackleModel.load(tmp_path / "mean", a)
