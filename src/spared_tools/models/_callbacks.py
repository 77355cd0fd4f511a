"""The training runner's callbacks: the one best-state rule, the DDP hand-over, resumable checkpoints, the bar.

* :class:`BestState` keeps the weights with the lowest validation metric (or the mean of the late epochs'
  weights), records the validations, and saves / restores the random-number states with checkpoints;
* :class:`_HandOver` carries rank 0's record to the calling process under DDP;
* :class:`_EpochCheckpoint` writes ``last.ckpt`` atomically at epoch ends in a state Lightning resumes;
* :class:`UnitProgressBar` counts steps out of ``max_steps`` or epochs out of ``max_epochs``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})


class BestState(pl.Callback):
    """Keep the weights with the lowest validation ``monitor`` (or the mean of the late epochs' weights).

    The one best-state mechanism of the package. At each validation of ``fit`` it reads ``monitor`` from
    the logged metrics (values logged in ``validation_step`` or in ``on_validation_epoch_end``), records
    the validation, and keeps a copy of the plan's weights when the value is the lowest so far. At the end
    of each training epoch it records the epoch's logged losses and, with ``average_from``, folds the
    weights into a running mean (Polyak averaging). :meth:`restore` loads the selected weights.

    Parameters
    ----------
    monitor
        Logged validation metric to minimise (``"val_loss"``, ``"val_MSE"``); never logged (no validation)
        means the last weights are kept.
    average_from
        When set, select the mean of the weights at the end of epochs ``average_from`` to the last
        instead (floating-point parameters and buffers averaged in float64, integer buffers taken from the
        last epoch), whatever the validation metric.
    patience
        Early stopping: ask the trainer to stop once ``patience`` validations in a row have not improved
        ``monitor`` (by more than ``min_delta``) and at least ``min_steps`` steps are done (``None``: never
        stop early). The best weights are still the ones restored.
    min_steps
        Never stop early before this global step.
    min_delta
        Relative improvement that counts for the patience: ``value < best - min_delta * |best|`` (the best
        weights are kept on any improvement).

    Attributes
    ----------
    best_score
        Lowest monitored value, or ``None``.
    best_epoch
        Epoch (0-based) of the best value, or ``None``.
    best_step
        Global step of the best value, or ``None``.
    best_state
        Copy of the weights at the best value, or ``None``.
    average_state
        With ``average_from``: the running mean of the weights (float64), or ``None``.
    n_averaged
        Epochs averaged into :attr:`average_state`.
    epochs
        Per-epoch ``{"epoch", "train_loss", "val_loss"}`` records (the logged values present).
    validations
        Per-validation ``{"epoch", "step", <every logged val_* metric>}`` records.
    wait
        Validations since the last improvement that counted for the patience.
    stopped_step
        Global step at which early stopping asked the trainer to stop, or ``None``.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        average_from: int | None = None,
        *,
        patience: int | None = None,
        min_steps: int = 0,
        min_delta: float = 0.0,
    ) -> None:
        if patience is not None and (isinstance(patience, bool) or int(patience) != patience or patience < 1):
            raise ValueError(f"patience must be a positive integer or None, got {patience!r}.")
        if isinstance(min_steps, bool) or int(min_steps) != min_steps or min_steps < 0:
            raise ValueError(f"min_steps must be a non-negative integer, got {min_steps!r}.")
        if not (math.isfinite(float(min_delta)) and float(min_delta) >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}.")
        self.monitor = monitor
        self.average_from = average_from
        self.patience = None if patience is None else int(patience)
        self.min_steps = int(min_steps)
        self.min_delta = float(min_delta)
        self.wait = 0
        self.stopped_step: int | None = None
        self._ref_score: float | None = None  # the score the patience counts from
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.average_state: dict[str, torch.Tensor] | None = None
        self.n_averaged = 0
        self.epochs: list[dict[str, float]] = []
        self.validations: list[dict[str, float]] = []
        self.track_validate = False  # set by run_training for the final validation after fit
        self._trainer: pl.Trainer | None = None

    # ---- Lightning hooks -------------------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn != "fit" and not self.track_validate:  # a trainer.validate() of the result
            return
        self.observe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rec: dict[str, float] = {"epoch": int(trainer.current_epoch)}
        for key in ("train_loss", "val_loss"):
            if key in trainer.callback_metrics:
                rec[key] = float(trainer.callback_metrics[key])
        self.epochs.append(rec)
        if self.average_from is not None and trainer.current_epoch >= self.average_from:
            state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            self.n_averaged += 1
            if self.average_state is None:  # copies: .cpu() of a CPU parameter shares its storage
                self.average_state = {
                    k: v.to(torch.float64, copy=True) if v.is_floating_point() else v.clone()
                    for k, v in state.items()
                }
            else:
                for k, v in state.items():
                    avg = self.average_state[k]
                    if v.is_floating_point():
                        avg += (v.double() - avg) / self.n_averaged
                    else:
                        self.average_state[k] = v.clone()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (saved in Lightning checkpoints), with the random-number states."""
        return {
            "rng": _rng_states(self._trainer),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "average_state": self.average_state,
            "n_averaged": self.n_averaged,
            "epochs": list(self.epochs),
            "validations": list(self.validations),
            "wait": self.wait,
            "stopped_step": self.stopped_step,
            "_ref_score": self._ref_score,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        rng = state.pop("rng", None)
        for key, value in state.items():
            setattr(self, key, value)
        if rng is not None and self._trainer is not None:
            # resuming: restored before the training loader's first batch is drawn, so the random
            # streams (shuffling, dropout, augmentation) continue where the interrupted run stopped
            _set_rng_states(rng, self._trainer)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    # ---- public helpers --------------------------------------------------------------------------------
    def observe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the current validation metrics and keep the weights when ``monitor`` improved."""
        rec: dict[str, float] = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        for key, logged in trainer.callback_metrics.items():
            if key.startswith("val_"):
                rec[key] = float(logged)
        if len(rec) > 2:
            self.validations.append(rec)
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            return
        value = float(metric)
        if math.isfinite(value) and (self.best_score is None or value < self.best_score):
            self.best_score = value
            self.best_epoch = int(trainer.current_epoch)
            self.best_step = int(trainer.global_step)
            self.best_state = _cpu_state(pl_module)
        if self.patience is None or self.track_validate:
            return
        ref = self._ref_score
        if math.isfinite(value) and (ref is None or value < ref - self.min_delta * abs(ref)):
            self._ref_score = value
            self.wait = 0
        else:
            self.wait += 1
        stop = self.wait >= self.patience and int(trainer.global_step) >= self.min_steps
        stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_step = int(trainer.global_step)

    @property
    def selected(self) -> str:
        """``"average"``, ``"best"`` or ``"last"``: which weights :meth:`restore` loads."""
        if self.average_state is not None:
            return "average"
        return "best" if self.best_state is not None else "last"

    def restore(self, pl_module: pl.LightningModule) -> None:
        """Load the selected weights into ``pl_module`` (nothing for ``"last"``)."""
        if self.average_state is not None:
            ref = pl_module.state_dict()
            pl_module.load_state_dict({k: v.to(ref[k].dtype) for k, v in self.average_state.items()})
        elif self.best_state is not None:
            pl_module.load_state_dict(self.best_state)


def _train_generator(trainer: pl.Trainer | None) -> torch.Generator | None:
    """The generator of the training loader's sampler, when it has its own (``DataLoader(generator=...)``)."""
    if trainer is None:
        return None
    try:
        loader = trainer.fit_loop._data_source.instance  # the loader as given to fit
    except AttributeError:
        return None
    sampler = getattr(loader, "sampler", None)
    gen = getattr(sampler, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _rng_states(trainer: pl.Trainer | None) -> dict[str, Any]:
    import random

    import numpy as np

    gen = _train_generator(trainer)
    # the legacy global NumPy state Lightning and users draw from, in types a weights-only load accepts
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]  # noqa: NPY002
    keys = np.asarray(keys)
    return {
        "python": random.getstate(),
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "sampler": None if gen is None else gen.get_state(),
    }


def _set_rng_states(state: dict[str, Any], trainer: pl.Trainer) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen = _train_generator(trainer)
    if gen is not None and state.get("sampler") is not None:
        gen.set_state(state["sampler"])


class _EpochCheckpoint(pl.callbacks.Checkpoint):
    """Write ``last.ckpt`` (atomically) at the end of every ``every``-th epoch, in a state Lightning resumes.

    Epoch-based runs save at the end of the epoch (after its validation and the plan's epoch-end hook);
    step-based runs (``max_steps``) save at the epoch's last step, and again after that step's validation
    when there is one, since Lightning resumes step-based runs from there (not from the epoch-end hook).
    """

    def __init__(self, path: Path, every: int, step_based: bool) -> None:
        self.path = path
        self.every = int(every)
        self.step_based = step_based

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every == 0

    def _save(self, trainer: pl.Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if (
            self.step_based
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            and self._due(trainer)
        ):
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self.step_based
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            and self._due(trainer)
        ):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.step_based and self._due(trainer):
            self._save(trainer)


class _HandOver(pl.Callback):
    """Under DDP, broadcast rank 0's :class:`BestState` and final weights and write them for the caller.

    Every strategy works: in-process (nothing is written), ``ddp`` (each rank continues the user's script)
    and ``ddp_spawn`` (the workers' memory is lost when they exit, so the result travels through a file).
    """

    def __init__(self, best: BestState, path: str) -> None:
        self.best = best
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        payload = {
            "best": self.best.state_dict(),
            "final_state": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
            "global_step": int(trainer.global_step),
            "current_epoch": int(trainer.current_epoch),
        }
        payload = trainer.strategy.broadcast(payload, src=0)
        torch.save(payload, f"{self.path}.rank{trainer.global_rank}")


class UnitProgressBar(pl.callbacks.ProgressBar):
    """One tqdm bar in the unit of the run: steps out of ``max_steps``, or epochs out of ``max_epochs``.

    Lightning's own bar counts batches within an epoch and prints ``Epoch 49/-2`` for step-based training
    (``max_epochs=-1``); this one counts what the user asked for and shows the last logged losses.

    Parameters
    ----------
    desc
        Label of the bar (the model's name).
    unit
        ``"steps"`` or ``"epochs"``.
    """

    def __init__(self, desc: str, unit: str) -> None:
        super().__init__()
        self.desc = desc
        self.unit = unit
        self._bar: Any = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _postfix(self, trainer: pl.Trainer) -> dict[str, str]:
        out: dict[str, str] = {}
        for key in ("train_loss", "val_loss", "val_MSE"):
            if key in trainer.callback_metrics:
                out[key] = f"{float(trainer.callback_metrics[key]):.4g}"
        return out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from tqdm.auto import tqdm

        if not (self._enabled and trainer.is_global_zero):
            return
        total = trainer.max_steps if self.unit == "steps" else trainer.max_epochs
        done = trainer.global_step if self.unit == "steps" else trainer.current_epoch
        self._bar = tqdm(
            total=total,
            initial=done,
            desc=self.desc,
            unit=self.unit[:-1],
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._bar is not None and self.unit == "steps":
            self._bar.n = int(trainer.global_step)
            self._bar.set_postfix(self._postfix(trainer), refresh=False)
            self._bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None and self.unit == "epochs":
            self._bar.n = int(trainer.current_epoch) + 1
            self._bar.set_postfix(self._postfix(trainer), refresh=False)
            self._bar.refresh()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            for cb in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(cb, BestState) and cb.stopped_step is not None:
                    self._bar.set_postfix_str(
                        f"early stop at step {cb.stopped_step} (best step {cb.best_step})", refresh=True
                    )
            self._bar.close()
            self._bar = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_end(trainer, pl_module)
