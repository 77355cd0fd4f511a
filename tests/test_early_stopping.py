"""Early stopping in the one training runner (``run_training`` / ``BestState``): when it stops, what it keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

import spared_tools as sp
from spared_tools.models._runner import BestState, run_training

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


class _Plan(pl.LightningModule):
    """Gradient descent on (w - 1)^2 (so w after k steps is 1 - 0.8**k) with scripted validation losses."""

    def __init__(self, val_losses):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.val_losses = list(val_losses)
        self.n_val = 0

    def training_step(self, batch, batch_idx):
        return ((self.w - 1.0) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.val_losses[self.n_val], on_epoch=True, batch_size=1)

    def on_validation_epoch_end(self):
        self.n_val += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 1):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(n, 1)), batch_size=1)


def _w(steps: int) -> float:
    return 1 - 0.8**steps


def _expected_stop(losses, patience, min_steps, every, min_delta=0.0):
    """Brute force: the step at which training stops (None: runs to the end) and the best step."""
    best, ref, wait = None, None, 0
    for i, v in enumerate(losses):
        step = (i + 1) * every
        if best is None or v < best[0]:
            best = (v, step)
        if ref is None or v < ref - min_delta * abs(ref):
            ref, wait = v, 0
        else:
            wait += 1
        if wait >= patience and step >= min_steps:
            return step, best[1]
    return None, best[1]


LOSSES = [5.0, 4.0, 3.0, 3.5, 2.9, 3.1, 3.2, 3.3, 3.4, 3.0, 1.0, 0.5]


@pytest.mark.parametrize(
    ("patience", "min_steps", "min_delta"), [(2, 0, 0.0), (3, 0, 0.0), (2, 16, 0.0), (1, 0, 0.05)]
)
def test_stops_after_patience_validations_without_improvement(patience, min_steps, min_delta):
    every = 2
    stop, best_step = _expected_stop(LOSSES, patience, min_steps, every, min_delta)
    assert stop is not None  # the cases are chosen to stop before the budget
    plan = _Plan(LOSSES)
    res = run_training(
        plan,
        _loader(5),  # 5 steps per epoch: stopping happens inside an epoch
        _loader(),
        max_steps=len(LOSSES) * every,
        val_check_interval=every,
        patience=patience,
        min_steps=min_steps,
        min_delta=min_delta,
        accelerator="cpu",
    )
    assert res.stopped_early and res.global_step == stop == res.best.stopped_step
    assert res.best.best_step == best_step and res.selected == "best"
    assert len(res.best.validations) == stop // every
    # the best weights are the ones restored (closed form of gradient descent at the best step)
    assert float(plan.w.detach()) == pytest.approx(_w(best_step), rel=1e-6)


def test_no_patience_trains_to_the_end_and_min_steps_blocks_stopping():
    plan = _Plan(LOSSES)
    res = run_training(plan, _loader(5), _loader(), max_steps=24, val_check_interval=2, accelerator="cpu")
    assert not res.stopped_early and res.global_step == 24 and res.best.best_step == 24
    plan = _Plan(LOSSES)
    res = run_training(
        plan,
        _loader(5),
        _loader(),
        max_steps=24,
        val_check_interval=2,
        patience=2,
        min_steps=100,
        accelerator="cpu",
    )
    assert not res.stopped_early and res.global_step == 24


def test_without_validation_early_stopping_is_inert():
    plan = _Plan(LOSSES)
    res = run_training(plan, _loader(5), None, max_steps=10, patience=1, accelerator="cpu")
    assert not res.stopped_early and res.global_step == 10 and res.selected == "last"
    assert float(plan.w.detach()) == pytest.approx(_w(10), rel=1e-6)


def test_epoch_based_training_stops_too():
    plan = _Plan(LOSSES)
    res = run_training(plan, _loader(1), _loader(), max_epochs=len(LOSSES), patience=2, accelerator="cpu")
    stop, best_step = _expected_stop(LOSSES, 2, 0, 1)
    assert res.global_step == stop and res.best.best_step == best_step


def test_bad_early_stopping_arguments():
    with pytest.raises(ValueError, match="patience"):
        BestState(patience=0)
    with pytest.raises(ValueError, match="min_steps"):
        BestState(patience=2, min_steps=-1)
    with pytest.raises(ValueError, match="min_delta"):
        BestState(patience=2, min_delta=float("nan"))


def test_resumed_run_stops_where_the_uninterrupted_one_does(tmp_path):
    class _Interrupt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step >= 6:
                raise KeyboardInterrupt

    kw = {"max_steps": 24, "val_check_interval": 2, "patience": 2, "accelerator": "cpu"}
    full = run_training(_Plan(LOSSES), _loader(2), _loader(), **kw)
    with pytest.raises(KeyboardInterrupt):
        run_training(
            _Plan(LOSSES), _loader(2), _loader(), checkpoint_dir=tmp_path, callbacks=[_Interrupt()], **kw
        )
    plan = _Plan(LOSSES)
    plan.n_val = 2  # the scripted losses continue where the interrupted run was (its state, not the runner's)
    res = run_training(plan, _loader(2), _loader(), ckpt_path=tmp_path / "last.ckpt", **kw)
    assert res.global_step == full.global_step and res.best.best_step == full.best.best_step
    assert res.best.wait == full.best.wait and res.best.stopped_step == full.best.stopped_step


def test_progress_bar_counts_out_of_max_steps_and_says_where_it_stopped(capfd):
    sp.settings.progress, sp.settings.verbosity = True, 2
    run_training(
        _Plan(LOSSES),
        _loader(5),
        _loader(),
        max_steps=24,
        val_check_interval=2,
        patience=2,
        accelerator="cpu",
        progress=True,
        desc="toy",
    )
    err = capfd.readouterr().err
    stop, best_step = _expected_stop(LOSSES, 2, 0, 2)
    assert f"{stop}/24" in err
    assert f"early stop at step {stop} (best step {best_step})" in err
    assert np.isfinite(stop)


# ------------------------------------------------------------------------------------ SpaCKLE
def _spackle_adata():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _synthetic_spackle import make_adata

    return make_adata(n_slides=3, side=8, n_genes=12)


TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32}


@pytest.fixture
def _short_min_steps(monkeypatch):
    """The package's minimum of 300 steps before stopping, cut to 20 for these small runs."""
    import spared_tools.tl._spackle as mod

    monkeypatch.setattr(mod, "_MIN_STEPS", 20)


@pytest.mark.usefixtures("_short_min_steps")
def test_spackle_same_seed_same_result_with_early_stopping():
    a = _spackle_adata()
    kw = {
        "max_steps": 400,
        "batch_size": 32,
        "val_check_interval": 10,
        "early_stopping_patience": 2,
        "lr": 3e-2,
    }
    m1 = sp.tl.SpackleModel(seed=3, **TINY).train(a, **kw)
    m2 = sp.tl.SpackleModel(seed=3, **TINY).train(a, **kw)
    info = m1.train_info_
    # it stopped early, at the rule's step: min_steps passed and `patience` checks without a new best
    assert info["stopped_early"] and info["steps"] < kw["max_steps"]
    assert info["steps"] >= info["early_stopping_min_steps"]
    mse = m1.history_["MSE"].to_numpy()
    steps = m1.history_["step"].to_numpy()
    assert info["best_step"] == steps[np.argmin(mse)]
    assert steps[-1] == info["steps"] and np.all(mse[-2:] >= mse[:-2].min())
    # same seed => same stop, same history, same completion
    assert m2.train_info_["steps"] == info["steps"] and m2.train_info_["best_step"] == info["best_step"]
    assert m1.history_.equals(m2.history_)
    np.testing.assert_array_equal(m1.complete(a), m2.complete(a))
    # another seed trains differently
    m3 = sp.tl.SpackleModel(seed=4, **TINY).train(a, **kw)
    assert not np.array_equal(m3.complete(a), m1.complete(a))


@pytest.mark.usefixtures("_short_min_steps")
def test_spackle_complete_records_steps_run_and_best_step():
    a = _spackle_adata()
    sp.tl.spackle_complete(
        a,
        max_steps=400,
        batch_size=32,
        val_check_interval=10,
        early_stopping_patience=2,
        lr=3e-2,
        seed=0,
        **TINY,
    )
    tr = a.uns["spackle"]["train"]
    assert tr["stopped_early"] and tr["steps"] < tr["max_steps"] == 400
    hist = a.uns["spackle"]["history"]
    assert tr["best_step"] == int(hist["step"].iloc[int(np.argmin(hist["MSE"].to_numpy()))])
    # no early stopping: every step is run
    b = _spackle_adata()
    sp.tl.spackle_complete(
        b, max_steps=40, batch_size=32, val_check_interval=10, early_stopping_patience=None, seed=0, **TINY
    )
    assert b.uns["spackle"]["train"]["steps"] == 40 and not b.uns["spackle"]["train"]["stopped_early"]


# ------------------------------------------------------------------------------------ per-slide centring
def test_group_offsets_match_brute_force():
    from spared_tools.tl._spackle_data import _CENTRE_PRIOR, _group_offsets

    rng = np.random.default_rng(0)
    # three slides, the spots of each interleaved in the order (as slides of a concatenation need not be)
    n, g = 10, 3
    slides = np.array([2, 0, 0, 1, 0, 1, 2, 0, 1, 5])
    values = rng.normal(size=(n, g)).astype(np.float32)
    known = rng.random((n, g)) < 0.7
    prior = rng.normal(size=g).astype(np.float32)
    out = _group_offsets(values, known, slides, prior)
    for s in np.unique(slides):
        members = np.flatnonzero(slides == s)
        for j in range(g):
            k = known[members, j]
            want = (values[members, j][k].sum() + _CENTRE_PRIOR * prior[j]) / (k.sum() + _CENTRE_PRIOR)
            np.testing.assert_allclose(out[members, j], want, rtol=1e-5)
    # entries that are not known never matter
    other = np.where(known, values, 1e6).astype(np.float32)
    np.testing.assert_allclose(_group_offsets(other, known, slides, prior), out, rtol=1e-6)


def test_centring_groups_are_slides_not_split_pieces():
    """A split that cuts a slide (a band split) leaves one centring group: training and completion agree."""
    a = _spackle_adata()
    m = sp.tl.SpackleModel(seed=0, **TINY).train(a, max_steps=2, batch_size=32, early_stopping_patience=None)
    codes = m._slides(a)
    assert len(np.unique(codes)) == a.obs["slide_id"].nunique()
    np.testing.assert_array_equal(pd.factorize(a.obs["slide_id"].astype(str))[0], pd.factorize(codes)[0])
    m.library_key = None
    np.testing.assert_array_equal(m._slides(a), np.zeros(a.n_obs, dtype=np.int64))


def test_centring_follows_a_slide_shift_and_leaves_observed_entries():
    a = _spackle_adata()
    m = sp.tl.SpackleModel(seed=0, **TINY).train(a, max_steps=30, batch_size=32, val_check_interval=10)
    out = m.complete(a)
    obs = a.layers["mask"]
    np.testing.assert_array_equal(out[obs], a.layers["median"][obs])
    # a test slide measured 2 units higher: its completions follow the shift (the offsets move by
    # 2 * n / (n + 10) for n observed entries of a gene; the small rest reaches the network as input)
    b = a.copy()
    test = (b.obs["split"] == "test").to_numpy()
    b.layers["median"] = b.layers["median"].copy()
    b.layers["median"][test] += 2.0
    moved = (m.complete(b)[test] - out[test])[~obs[test]]
    assert abs(float(moved.mean()) - 2.0) < 0.5 and float(moved.min()) > 1.0
