"""One training runner for every Lightning model of the package (SpaCKLE, GeneQuery, the linear head).

scvi-tools' ``TrainRunner`` idea, reduced to what the models here need:

* :func:`make_trainer` is the only place in the package that builds a :class:`pytorch_lightning.Trainer`
  (accelerator / devices / strategy / precision / progress bar / quiet defaults);
* :class:`BestState` is the one best-weights mechanism: it keeps the weights with the lowest monitored
  validation metric (or the running mean of the late epochs' weights), records the validation history,
  restores the selected weights at the end and hands them to the calling process under DDP;
* :class:`UnitProgressBar` shows one bar in the unit of the run: steps out of ``max_steps`` for
  step-based training, epochs out of ``max_epochs`` for epoch-based training;
* :func:`run_training` runs ``fit`` (optionally resuming from a checkpoint, optionally writing
  checkpoints to resume from) and returns a :class:`TrainResult`.

Tensors only: nothing here reads AnnData.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from spared_tools._settings import seed_everything, settings

from ._callbacks import BestState, UnitProgressBar, _EpochCheckpoint, _HandOver

__all__ = [
    "BestState",
    "RunOptions",
    "TrainResult",
    "UnitProgressBar",
    "make_trainer",
    "run_training",
    "show_progress",
]

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")


def show_progress(progress: bool | None = None) -> bool:
    """Whether a progress bar is shown: ``progress``, or ``sp.settings.progress`` with verbosity ≥ 2."""
    if progress is not None:
        return bool(progress) and settings.verbosity > 0
    return bool(settings.progress and settings.verbosity >= 2)


@dataclass(frozen=True)
class RunOptions:
    """How one training run is carried out, never what it learns: the runner's share of ``train(...)``.

    Every model's ``train`` hands these to its ``_fit`` as one object, and :meth:`runner_kwargs` turns
    them into the keywords of :func:`run_training`.

    Attributes
    ----------
    progress
        Progress bar (``None``: ``sp.settings.progress`` with verbosity ≥ 2; see :func:`show_progress`).
    checkpoint_dir
        Write a resumable ``last.ckpt`` there after every epoch (removed when training finishes).
    ckpt_path
        Resume an interrupted training from such a checkpoint, to the result of an uninterrupted run.
    trainer_kwargs
        Further keywords of :class:`pytorch_lightning.Trainer` (``callbacks`` join the runner's own).
    """

    progress: bool | None = None
    checkpoint_dir: str | os.PathLike | None = None
    ckpt_path: str | os.PathLike | None = None
    trainer_kwargs: Mapping[str, Any] | None = None

    @classmethod
    def from_keywords(cls, options: Mapping[str, Any], owner: str) -> RunOptions:
        """The options given to ``owner.train`` as keywords; a ``TypeError`` names any other keyword."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"{owner}.train got unexpected options {unknown}; it takes {sorted(cls.__dataclass_fields__)}."
            )
        return cls(**options)

    def runner_kwargs(self, member: int | None = None) -> dict[str, Any]:
        """Keywords of :func:`run_training` for this run.

        Parameters
        ----------
        member
            Network ``k`` of an ensemble: it writes its checkpoints to ``checkpoint_dir/member<k>``, and
            only network 0 resumes from ``ckpt_path``. ``None``: a single network, writing to
            ``checkpoint_dir`` itself.

        Returns
        -------
        ``progress``, ``checkpoint_dir``, ``ckpt_path``, ``callbacks`` and the other Trainer keywords.
        """
        extra = dict(self.trainer_kwargs or {})
        checkpoint_dir = self.checkpoint_dir
        if member is not None and checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir) / f"member{member}"
        return {
            **extra,
            "callbacks": list(extra.get("callbacks") or []),
            "progress": show_progress(self.progress),
            "checkpoint_dir": checkpoint_dir,
            "ckpt_path": self.ckpt_path if not member else None,
        }


@contextlib.contextmanager
def lightning_quiet(*, validation: bool = True, eval_modules: bool = False) -> Iterator[None]:
    """Lightning's chatter follows ``sp.settings.verbosity``; its known irrelevant warnings stay local.

    At verbosity ≤ 2 Lightning's info lines ("GPU available", "Seed set") are dropped, at verbosity 0 its
    warnings too. Without validation data the "validation_step but no val_dataloader" warning is dropped;
    ``eval_modules`` drops the warning about modules kept in eval mode on purpose (frozen batch norms).
    The deprecation warning Lightning's own code triggers in torch's ``_pytree`` (``LeafSpec``) is
    dropped here, for the duration of the call only (no global filter).
    """
    saved = {n: logging.getLogger(n).level for n in _LIGHTNING_LOGGERS}
    level = (
        logging.INFO
        if settings.verbosity >= 3
        else logging.WARNING
        if settings.verbosity > 0
        else logging.ERROR
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=r".*treespec.*")
            if not validation:
                warnings.filterwarnings("ignore", message=".*validation_step.*but have no .val_dataloader")
            if eval_modules:
                warnings.filterwarnings(
                    "ignore", message=r".*module\(s\) in eval mode at the start of training"
                )
            if settings.verbosity == 0:
                warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
            for n in _LIGHTNING_LOGGERS:
                logging.getLogger(n).setLevel(level)
            yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


def make_trainer(
    *,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    accelerator: str = "auto",
    devices: Any = "auto",
    strategy: Any = "auto",
    num_nodes: int = 1,
    precision: Any = "32-true",
    progress: bool = False,
    desc: str = "training",
    callbacks: Sequence[pl.Callback] = (),
    default_root_dir: str | os.PathLike | None = None,
    validation: bool = True,
    val_check_interval: int | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """The only place in the package that builds a :class:`pytorch_lightning.Trainer`.

    Parameters
    ----------
    max_epochs
        Epoch budget (epoch-based training); ``None`` with ``max_steps``.
    max_steps
        Step budget (step-based training: ``max_epochs`` becomes unlimited).
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``...).
    devices
        Lightning devices (``"auto"``, a count or a list).
    strategy
        Lightning strategy (``"auto"``, ``"ddp"``, ``"ddp_spawn"``...).
    num_nodes
        Nodes for multi-node DDP.
    precision
        Lightning precision (``"32-true"``, ``"bf16-mixed"``...).
    progress
        Show :class:`UnitProgressBar` (steps or epochs, as the run is counted).
    desc
        Label of the progress bar.
    callbacks
        Further callbacks.
    default_root_dir
        Lightning's working directory (``None``: a directory the caller removes; nothing is written
        unless checkpoints are asked for).
    validation
        Whether validation data will be given (without it validation is switched off).
    val_check_interval
        Step-based training: validate every this many steps (``None``: at each epoch's end).
    **trainer_kwargs
        Further :class:`pytorch_lightning.Trainer` arguments; they override the defaults above.

    Returns
    -------
    The trainer.
    """
    if (max_steps is None) == (max_epochs is None):
        raise ValueError("make_trainer needs exactly one of max_epochs and max_steps.")
    cbs = [*callbacks, *(trainer_kwargs.pop("callbacks", None) or [])]
    if progress:
        cbs.append(UnitProgressBar(desc, "steps" if max_steps is not None else "epochs"))
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "strategy": strategy,
        "num_nodes": int(num_nodes),
        "precision": precision,
        "logger": False,
        "enable_checkpointing": any(isinstance(c, pl.callbacks.Checkpoint) for c in cbs),
        "enable_model_summary": False,
        "enable_progress_bar": bool(progress),
        "num_sanity_val_steps": 0,
        "callbacks": cbs,
    }
    if default_root_dir is not None:
        kwargs["default_root_dir"] = str(default_root_dir)
    if max_steps is not None:
        kwargs.update(
            max_steps=int(max_steps), max_epochs=-1, log_every_n_steps=max(1, min(50, int(max_steps)))
        )
        if validation and val_check_interval is not None:
            kwargs.update(
                val_check_interval=min(int(val_check_interval), int(max_steps)), check_val_every_n_epoch=None
            )
    else:
        kwargs["max_epochs"] = int(max_epochs)  # type: ignore[arg-type]
    if not validation:
        kwargs["limit_val_batches"] = 0
    kwargs.update(trainer_kwargs)
    return pl.Trainer(**kwargs)


@dataclass
class TrainResult:
    """What :func:`run_training` returns (the plan itself holds the restored weights).

    Attributes
    ----------
    best
        The :class:`BestState` callback (best score, epoch, step, validation history, per-epoch losses).
    selected
        ``"best"``, ``"average"`` or ``"last"``: the weights now in the plan.
    global_step
        Steps trained (fewer than ``max_steps`` when early stopping ended the run).
    stopped_early
        Whether early stopping ended the run (``best.stopped_step`` is the step).
    current_epoch
        Epochs trained.
    seconds
        Wall time of ``fit``.
    restored_metrics
        With ``validate_restored``: the validation metrics of the restored weights.
    trainer
        The trainer (for a further ``validate``).
    """

    best: BestState
    selected: str
    global_step: int
    current_epoch: int
    seconds: float
    stopped_early: bool = False
    restored_metrics: dict[str, float] = field(default_factory=dict)
    trainer: Any = None


def run_training(
    plan: pl.LightningModule,
    train_loader: Any,
    val_loader: Any = None,
    *,
    monitor: str = "val_loss",
    average_from: int | None = None,
    patience: int | None = None,
    min_steps: int = 0,
    min_delta: float = 0.0,
    seed: int | None = None,
    validate_last: bool = False,
    validate_restored: bool = False,
    eval_modules: bool = False,
    ckpt_path: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    callbacks: Sequence[pl.Callback] = (),
    **trainer_args: Any,
) -> TrainResult:
    """Fit ``plan`` with the package's trainer and best-state rule; the selected weights end up in ``plan``.

    Parameters
    ----------
    plan
        The Lightning training plan.
    train_loader
        Training data loader.
    val_loader
        Validation data loader, or ``None`` (the last weights are kept).
    monitor
        Validation metric to minimise (see :class:`BestState`).
    average_from
        Select the mean of the weights from this epoch on instead (see :class:`BestState`).
    patience
        Early stopping: stop when ``monitor`` has not improved for this many validations in a row, once
        ``min_steps`` steps are done (``None``: train to the end); the best weights are restored as always
        (see :class:`BestState`). Deterministic: the same seed stops at the same step.
    min_steps
        Never stop early before this global step.
    min_delta
        Relative improvement of ``monitor`` that resets the patience.
    seed
        Seed Python, NumPy and torch right before the trainer is built (``None``: the caller has seeded).
    validate_last
        Step-based training: validate the final weights too when the last step is not a validation step
        (single process only), so that they can be selected.
    validate_restored
        Validate the restored weights once more and return their metrics (e.g. for averaged weights).
    eval_modules
        The plan keeps some modules in eval mode on purpose (silences Lightning's warning about them).
    ckpt_path
        Resume from this checkpoint (``last.ckpt`` of an interrupted run with ``checkpoint_dir``): weights,
        optimiser, scheduler, loop position, best-state record and random-number states are restored, so
        the run continues to the same result as an uninterrupted one with the same arguments.
    checkpoint_dir
        Working directory (on a shared file system for multi-node DDP): the DDP hand-over files and a
        resumable ``last.ckpt`` written at the end of every ``checkpoint_every``-th epoch. The checkpoint
        is removed once training finishes and kept when it is interrupted. ``None``: a temporary
        directory, removed afterwards, and no checkpoints.
    checkpoint_every
        Epochs between checkpoints (``None``: 1).
    callbacks
        Further callbacks (e.g. early stopping).
    **trainer_args
        Arguments of :func:`make_trainer` (``max_epochs`` or ``max_steps``, ``accelerator``, ``devices``,
        ``strategy``, ``precision``, ``progress``, ``desc``, ``val_check_interval``, Trainer keywords).

    Returns
    -------
    The :class:`TrainResult`.
    """
    best = BestState(
        monitor, average_from=average_from, patience=patience, min_steps=min_steps, min_delta=min_delta
    )
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} is not a checkpoint file.")
    own_dir = checkpoint_dir is None
    work = Path(tempfile.mkdtemp(prefix="spared_tools_fit_")) if own_dir else Path(checkpoint_dir)  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    dump = str(work / f"handover_{os.getpid()}_{time.time_ns()}.pt")
    cbs: list[pl.Callback] = [best, _HandOver(best, dump), *callbacks]
    step_based = trainer_args.get("max_steps") is not None
    ckpt_cb = None
    if not own_dir:  # resumable checkpoints at the end of every (checkpoint_every-th) epoch
        ckpt_cb = _EpochCheckpoint(work / "last.ckpt", int(checkpoint_every or 1), step_based)
        cbs.append(ckpt_cb)
    t0 = time.perf_counter()
    sigint = signal.getsignal(signal.SIGINT)
    trainer: pl.Trainer | None = None
    try:
        with lightning_quiet(validation=val_loader is not None, eval_modules=eval_modules):
            if seed is not None:
                seed_everything(seed)
            trainer = make_trainer(
                callbacks=cbs, default_root_dir=work, validation=val_loader is not None, **trainer_args
            )
            try:
                trainer.fit(
                    plan,
                    train_dataloaders=train_loader,
                    val_dataloaders=val_loader,
                    ckpt_path=None if ckpt_path is None else str(ckpt_path),
                )
            except SystemExit as exc:  # Lightning turns Ctrl+C into sys.exit(1) and ignores SIGINT after
                signal.signal(signal.SIGINT, sigint)
                if trainer.state.status != "interrupted":
                    raise
                where = (
                    f"resume with ckpt_path={str(work / 'last.ckpt')!r}"
                    if ckpt_cb is not None and (work / "last.ckpt").exists()
                    else "give checkpoint_dir= to be able to resume an interrupted training"
                )
                raise KeyboardInterrupt(
                    f"Training interrupted at step {trainer.global_step}; {where}."
                ) from exc
            rank_file = Path(f"{dump}.rank{trainer.global_rank}")
            if not rank_file.exists():
                rank_file = Path(f"{dump}.rank0")
            if (
                rank_file.exists()
            ):  # DDP: rank 0's record (ddp_spawn: the caller's plan has its final weights)
                payload = torch.load(rank_file, map_location="cpu", weights_only=False)
                best.load_state_dict({k: v for k, v in payload["best"].items() if k != "rng"})
                plan.load_state_dict(payload["final_state"])
                global_step, current_epoch = int(payload["global_step"]), int(payload["current_epoch"])
            else:
                global_step, current_epoch = int(trainer.global_step), int(trainer.current_epoch)
            if (
                validate_last
                and val_loader is not None
                and trainer.world_size == 1
                and (not best.validations or best.validations[-1]["step"] != trainer.global_step)
            ):
                best.track_validate = True
                try:
                    trainer.validate(plan, dataloaders=val_loader, verbose=False)
                finally:
                    best.track_validate = False
            best.restore(plan)
            restored: dict[str, float] = {}
            if validate_restored and val_loader is not None and best.selected != "last":
                out = trainer.validate(plan, dataloaders=val_loader, verbose=False)
                restored = {k: float(v) for k, v in (out[0] if out else {}).items()}
        if ckpt_cb is not None:  # finished: the resumable checkpoint has served its purpose
            (work / "last.ckpt").unlink(missing_ok=True)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for f in work.glob(Path(dump).name + ".rank*"):
                f.unlink(missing_ok=True)
    return TrainResult(
        best=best,
        selected=best.selected,
        global_step=global_step,
        current_epoch=current_epoch,
        seconds=time.perf_counter() - t0,
        stopped_early=best.stopped_step is not None,
        restored_metrics=restored,
        trainer=trainer,
    )
