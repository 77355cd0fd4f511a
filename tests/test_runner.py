"""The training runner: one Trainer factory, one best-state rule, resume after an interruption, progress bars."""

from __future__ import annotations

import inspect
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

import spared_tools as sp
from spared_tools.models._runner import BestState, RunOptions, make_trainer, run_training
from spared_tools.tl import GeneQueryModel

sys.path.insert(0, str(Path(__file__).parent))
from _genequery_legacy import LEGACY
from _synthetic_spackle import make_adata as spackle_adata


def _gq(**kw) -> GeneQueryModel:
    """GeneQueryModel from flat keywords: the network's to the constructor, the settings via set_params."""
    ctor = set(inspect.signature(GeneQueryModel.__init__).parameters) - {"self"}
    kw = {**LEGACY, **kw}  # the settings these references were made with (before issue 19's defaults)
    model = GeneQueryModel(**{k: v for k, v in kw.items() if k in ctor})
    return model.set_params(**{k: v for k, v in kw.items() if k not in ctor})


TINY = {"d_model": 16, "n_heads": 2, "n_layers": 2, "dim_feedforward": 32}
SMALL = {"width": 32, "n_heads": 4, "ff_dim": 64, "n_layers": 1, "dropout": 0.1, "lr": 3e-3}


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


class _Interrupt(pl.Callback):
    """Raise KeyboardInterrupt (what Ctrl+C does) once training reaches ``step`` (or the start of ``epoch``)."""

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self.step is not None and trainer.global_step >= self.step:
            raise KeyboardInterrupt

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.epoch is not None and trainer.current_epoch >= self.epoch:
            raise KeyboardInterrupt


def _genequery_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_slides, side, n_genes = 4, 6, 10
    n = n_slides * side * side
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    emb = rng.normal(size=(n_genes, 6)).astype(np.float32)
    y = np.log1p(np.exp(feats[:, :3] @ rng.normal(size=(3, 3)) @ (emb[:, :3] @ rng.normal(size=(3, 3))).T))
    rr, cc = np.divmod(np.arange(side * side), side)
    genes = [f"G{j}" for j in range(n_genes)]
    obs = pd.DataFrame(
        {
            "slide_id": np.repeat([f"s{k}" for k in range(n_slides)], side * side),
            "array_row": np.tile(rr, n_slides),
            "array_col": np.tile(cc, n_slides),
            "split": np.repeat(["train", "train", "val", "test"], side * side),
        },
        index=[f"spot{i}" for i in range(n)],
    )
    import anndata as ad

    a = ad.AnnData(np.round(np.expm1(y)).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    a.layers["log1p"] = y.astype(np.float32)
    a.obsm["X_image_features"] = feats
    a.obsm["spatial"] = np.column_stack([np.tile(cc, n_slides), np.tile(rr, n_slides)]).astype(float)
    return a, pd.DataFrame(emb, index=genes)


# ------------------------------------------------------------------------------------------ resume
def test_spackle_resumes_to_the_uninterrupted_result(tmp_path):
    kw = {"max_steps": 6, "batch_size": 32, "val_check_interval": 3, "accelerator": "cpu"}
    a = spackle_adata()
    full = sp.tl.SpackleModel(seed=0, **TINY).train(a, **kw)
    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    # 64 training spots / 32 per step: an epoch ends every 2 steps; interrupted at step 3, after the
    # checkpoint of step 2 and before the validation of step 3
    with pytest.raises(KeyboardInterrupt, match="ckpt_path="):
        sp.tl.SpackleModel(seed=0, **TINY).train(
            a, checkpoint_dir=run, trainer_kwargs={"callbacks": [_Interrupt(step=3)]}, **kw
        )
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl+C still works afterwards
    ckpt = run / "last.ckpt"
    assert ckpt.is_file()
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    resumed = sp.tl.SpackleModel(seed=0, **TINY).train(a, ckpt_path=ckpt, checkpoint_dir=run, **kw)
    np.testing.assert_array_equal(resumed.complete(), full.complete())
    pd.testing.assert_frame_equal(resumed.history_, full.history_)
    assert resumed.train_info_["best_step"] == full.train_info_["best_step"]
    assert not ckpt.exists()  # a finished run removes its checkpoint
    # a model resumed from the wrong point differs (the test can fail)
    other = sp.tl.SpackleModel(seed=1, **TINY).train(a, **kw)
    assert not np.array_equal(other.complete(), full.complete())


@pytest.mark.parametrize("checkpoint", ["best", "average"])
def test_genequery_resumes_to_the_uninterrupted_result(tmp_path, checkpoint):
    a, table = _genequery_data()
    kw = {
        **SMALL,
        "gene_embeddings": table,
        "max_epochs": 4,
        "batch_size": 8,
        "seed": 0,
        "accelerator": "cpu",
    }
    kw["checkpoint"] = checkpoint
    full = _gq(**kw).train(a)
    run = tmp_path / checkpoint
    with pytest.raises(KeyboardInterrupt):
        _gq(**kw).train(a, checkpoint_dir=run, trainer_kwargs={"callbacks": [_Interrupt(epoch=3)]})
    ckpt = run / "member0" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 2
    resumed = _gq(**kw).train(a, ckpt_path=ckpt)
    np.testing.assert_array_equal(resumed.predict(a), full.predict(a))
    assert resumed.history_["epochs"] == full.history_["epochs"]
    assert resumed.history_["best_epoch"] == full.history_["best_epoch"]
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        _gq(**kw).train(a, ckpt_path=tmp_path / "nothing.ckpt")


def test_linear_head_resumes_to_the_uninterrupted_result(tmp_path):
    from spared_tools.models.image import load_image_encoder

    rng = np.random.default_rng(0)
    a, _ = _genequery_data()
    a.obsm["patches"] = rng.integers(0, 256, (a.n_obs, 8, 8, 3), dtype=np.uint8)
    a.uns["patches"] = {"params": {"size": 8}, "store": "memory"}

    def model():
        torch.manual_seed(0)
        enc = load_image_encoder(_TinyConv(), name="tiny")
        return sp.tl.LinearHeadPredictor(encoder=enc, finetune=True, max_epochs=3, batch_size=16, seed=0)

    full = model().train(a)
    with pytest.raises(KeyboardInterrupt):
        model().train(a, checkpoint_dir=tmp_path, trainer_kwargs={"callbacks": [_Interrupt(epoch=2)]})
    resumed = model().train(a, ckpt_path=tmp_path / "last.ckpt")
    np.testing.assert_array_equal(resumed.predict(a), full.predict(a))
    assert resumed.history_ == full.history_


class _TinyConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


# ------------------------------------------------------------------------------------ best state
class _Plan(pl.LightningModule):
    """A linear model whose validation loss is a given sequence (to test the best-state rule)."""

    def __init__(self, val_losses):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.val_losses = list(val_losses)

    def training_step(self, batch, batch_idx):
        return ((self.w - 1.0) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.val_losses[self.current_epoch], on_epoch=True, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1, 1)), batch_size=1)


def test_best_state_keeps_the_lowest_validation_and_the_average():
    losses = [3.0, 1.0, 2.0, 0.5, 4.0]
    plan = _Plan(losses)
    # brute force: gradient descent on (w-1)^2 with lr 0.1 gives w_k = 1 - 0.8**k after k steps
    ws = [1 - 0.8 ** (k + 1) for k in range(5)]
    res = run_training(plan, _loader(), _loader(), max_epochs=5, accelerator="cpu")
    assert res.selected == "best" and res.best.best_epoch == 3 and res.best.best_score == 0.5
    assert float(plan.w.detach()) == pytest.approx(ws[3], rel=1e-6)
    assert [v["val_loss"] for v in res.best.validations] == losses
    plan = _Plan(losses)
    res = run_training(plan, _loader(), _loader(), max_epochs=5, average_from=2, accelerator="cpu")
    assert res.selected == "average" and res.best.n_averaged == 3
    assert float(plan.w.detach()) == pytest.approx(np.mean(ws[2:]), rel=1e-6)
    plan = _Plan(losses)
    res = run_training(plan, _loader(), None, max_epochs=5, accelerator="cpu")
    assert res.selected == "last" and float(plan.w.detach()) == pytest.approx(ws[4], rel=1e-6)


def test_make_trainer_is_the_one_trainer_and_checks_its_budget():
    with pytest.raises(ValueError, match="exactly one of max_epochs and max_steps"):
        make_trainer()
    t = make_trainer(max_steps=7, accelerator="cpu", progress=False)
    assert t.max_steps == 7 and t.max_epochs == -1 and t.logger is None
    root = Path(__file__).parents[1] / "src" / "spared_tools"
    builders = [
        p for p in root.rglob("*.py") if "pl.Trainer(" in p.read_text() or "Trainer(**" in p.read_text()
    ]
    assert [p.relative_to(root).as_posix() for p in builders] == ["models/_runner.py"]
    assert isinstance(BestState(), pl.Callback)


def test_run_options_are_the_runners_share_of_train(tmp_path):
    cb = _Interrupt(epoch=1)
    sp.settings.progress, sp.settings.verbosity = True, 2
    run = RunOptions(None, tmp_path, tmp_path / "last.ckpt", {"callbacks": [cb], "log_every_n_steps": 3})
    assert run.runner_kwargs() == {
        "callbacks": [cb],
        "log_every_n_steps": 3,
        "progress": True,
        "checkpoint_dir": tmp_path,
        "ckpt_path": tmp_path / "last.ckpt",
    }
    # network k of an ensemble: its own checkpoint folder; only network 0 resumes
    assert run.runner_kwargs(member=0)["checkpoint_dir"] == tmp_path / "member0"
    assert run.runner_kwargs(member=0)["ckpt_path"] == tmp_path / "last.ckpt"
    assert run.runner_kwargs(member=2)["checkpoint_dir"] == tmp_path / "member2"
    assert run.runner_kwargs(member=2)["ckpt_path"] is None
    sp.settings.verbosity = 0  # progress=True never speaks at verbosity 0; None follows the settings
    assert RunOptions(progress=True).runner_kwargs()["progress"] is False
    sp.settings.verbosity = 2
    assert RunOptions().runner_kwargs() == {
        "callbacks": [],
        "progress": True,
        "checkpoint_dir": None,
        "ckpt_path": None,
    }
    assert RunOptions.from_keywords({"progress": False}, "M") == RunOptions(progress=False)
    with pytest.raises(TypeError, match=r"M.train got unexpected options \['epochs'\]; it takes"):
        RunOptions.from_keywords({"epochs": 3, "progress": False}, "M")
    from spared_tools.models.image import load_image_encoder

    a, _ = _genequery_data()
    a.obsm["patches"] = np.zeros((a.n_obs, 8, 8, 3), dtype=np.uint8)
    a.uns["patches"] = {"params": {"size": 8}, "store": "memory"}
    head = sp.tl.LinearHeadPredictor(encoder=load_image_encoder(_TinyConv(), name="tiny"), max_epochs=1)
    with pytest.raises(TypeError, match=r"LinearHeadPredictor.train got unexpected options \['max_epoch'\]"):
        head.train(a, max_epoch=3)
    assert head.genes_ is None  # nothing half-trained is left behind


# ------------------------------------------------------------------------------------ progress bars
def test_progress_bars_count_steps_or_epochs_and_follow_the_settings(capfd):
    a = spackle_adata()
    sp.settings.progress, sp.settings.verbosity = True, 2
    sp.tl.SpackleModel(seed=0, **TINY).train(
        a, max_steps=5, batch_size=32, val_check_interval=5, accelerator="cpu"
    )
    err = capfd.readouterr().err
    assert "SpaCKLE" in err and "5/5" in err and "step" in err
    assert "Epoch" not in err and "/-" not in err  # not Lightning's "Epoch 49/-2" bar
    g, table = _genequery_data()
    _gq(**SMALL, gene_embeddings=table, max_epochs=2, batch_size=8, accelerator="cpu").train(g)
    err = capfd.readouterr().err
    assert "GeneQuery" in err and "2/2" in err and "epoch" in err and "Epoch" not in err
    # progress off, or verbosity 0: nothing on the terminal at all
    for progress, verbosity in ((False, 2), (True, 0)):
        sp.settings.progress, sp.settings.verbosity = progress, verbosity
        sp.tl.SpackleModel(seed=0, **TINY).train(a, max_steps=3, batch_size=32, accelerator="cpu")
        _gq(**SMALL, gene_embeddings=table, max_epochs=1, batch_size=8, accelerator="cpu").train(g)
        out, err = capfd.readouterr()
        assert out == "" and err == "", (progress, verbosity, out, err)
