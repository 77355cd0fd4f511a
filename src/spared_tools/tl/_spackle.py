"""SpaCKLE completion of missing gene-expression entries (``sp.tl.spackle_complete``, ``sp.tl.SpackleModel``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._checks import check_int, check_number
from spared_tools._kernels.masking import check_mask_fraction, hide_entries
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_seed
from spared_tools.tl._base import register_model
from spared_tools.tl._signatures import binds_data_in_train, renamed_keywords
from spared_tools.tl._spackle_data import _observed_mean
from spared_tools.tl._spackle_use import HISTORY_COLUMNS, _SpackleUse

__all__ = ["SpackleModel"]

#: early stopping never ends a training before this step (chosen from validation curves:
#: experiments/results/spackle_selection_stopping.txt)
_MIN_STEPS = 300


@register_model("SpaCKLE")
class SpackleModel(_SpackleUse):
    """SpaCKLE: transformer completion of missing gene-expression entries from the lattice neighbourhood.

    The model of Mejia et al. (SpaRED/SpaCKLE, §4) with the reference implementation's defects fixed:
    every spot is one token (its gene vector → linear adapter to ``d_model``), and self-attention runs over
    the spot and its lattice neighbours (hexagonal 2 rings = 18 neighbours on Visium), never across the
    mini-batch. Neighbours come from :func:`spared_tools.pp.neighbor_table` (per slide, lattice offsets);
    absent neighbours at tissue edges are padding tokens that are never attended. Training hides a random
    fraction of the observed ("real") entries (``M_s ⊙ M_rand``) and learns to predict them; completion
    replaces only the originally missing entries of each spot and leaves observed values untouched.

    The constructor takes the network's settings and the seed; :meth:`train` binds the data (the layers,
    the slide column, and through them the genes and the lattice), like every model of :mod:`spared_tools.tl`::

        model = sp.tl.SpackleModel(seed=0).train(adata, layer="median", mask_layer="mask")
        completed = model.complete()  # the AnnData bound by train; or model.complete(other)

    Differences from the paper, and why:

    * a token also carries the 0/1 indicator of which of its entries are known, so that a hidden or
      missing entry (input 0) is distinguishable from a measured value (needed on ComBat-corrected or
      centred layers, where 0 is an ordinary value);
    * originally missing entries are removed from the input in training *and* in completion (the paper
      feeds their median pre-completion during training but removes them at inference);
    * genes are standardised with the training spots' observed entries, and the loss is the MSE of the
      hidden entries in the layer's own units (``loss_on``; the paper's full-matrix loss is available);
    * a learned embedding of each token's lattice ring tells the centre spot from its neighbours;
    * per-slide centring: the input of each slide (each value of ``library_key``) is its genes'
      deviation from their mean over the slide's readable entries (shrunk to the training mean with 10
      pseudo-entries), and that mean is added back to the prediction. Slides of other patients or
      conditions differ mostly by such gene-wise shifts; on the validation slides of the benchmark sets
      centring lowered the MSE by 10–40 % (``experiments/results/spackle_selection.txt``).

    Parameters
    ----------
    n_rings
        Lattice rings of the neighbourhood. ``None`` (default) picks, when :meth:`train` first sees the
        data, the smallest ring count with at least 18 neighbour positions, the size of the paper's
        hexagonal 2-ring neighbourhood: 2 rings (18 neighbours) on Visium, 3 rings (24 neighbours,
        Manhattan distance ≤ 3) on the square legacy-ST and the checkerboard ST-2k lattices.
    geometry
        Lattice geometry passed to :func:`~spared_tools.pp.neighbor_table` (``"auto"`` detects it).
    d_model
        Transformer width (paper: 128).
    n_heads
        Attention heads (must divide ``d_model``).
    n_layers
        Transformer encoder layers.
    dim_feedforward
        Width of each layer's feed-forward block.
    dropout
        Dropout inside the transformer during training.
    seed
        Seed of the weight initialisation, the training masks, the data order and the validation mask
        (``None`` → ``sp.settings.seed``); recorded with the model.

    Attributes
    ----------
    genes
        The model's genes (in the order of its input vector), from the AnnData of the first :meth:`train`.
    n_rings
        The ring count (resolved by the first :meth:`train` when ``None`` was given); ``ring`` holds the
        ring of each neighbourhood position.
    layer, mask_layer, library_key
        The data keys of the last :meth:`train` (used by :meth:`complete` and :meth:`evaluate`).
    history_
        ``pandas.DataFrame`` of the validation metrics at each validation check of the last training.
    train_info_
        Dict describing the last training: slides and spot counts per split, steps, best step and best
        validation metrics, wall time, trainer settings.
    """

    @binds_data_in_train(
        "SpackleModel(n_rings=..., d_model=..., seed=...).train(adata, layer=..., mask_layer=..., "
        "library_key=...)",
        moved=("adata", "layer", "mask_layer", "library_key"),
    )
    def __init__(
        self,
        *,
        n_rings: int | None = None,
        geometry: Literal["auto", "hex", "square", "checkerboard"] = "auto",
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 256,
        dropout: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.n_rings = check_int(n_rings, "n_rings", min=0, allow_none=True)
        self.geometry = geometry
        self.d_model = check_int(d_model, "d_model")
        self.n_heads = check_int(n_heads, "n_heads")
        self.n_layers = check_int(n_layers, "n_layers")
        self.dim_feedforward = check_int(dim_feedforward, "dim_feedforward")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
        self.dropout = check_number(dropout, "dropout", min=0.0, max=1.0, max_inclusive=False)
        self.seed = resolve_seed(seed)
        # bound by train (or load)
        self.adata = None
        self.layer = self.mask_layer = self.library_key = None
        self.genes: list[str] = []
        self.ring = np.zeros(0, dtype=np.int64)
        self._table = np.zeros((0, 0), dtype=np.int64)
        self.gene_mean = self.gene_std = np.zeros(0, dtype=np.float32)
        self.centre_mean: np.ndarray | None = None
        self._trained = False
        self.history_ = pd.DataFrame(columns=HISTORY_COLUMNS)
        self.train_info_: dict[str, Any] = {}

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` (or :meth:`load`) has provided weights."""
        return self._trained

    @property
    def hparams(self) -> dict[str, Any]:
        """The transformer's hyper-parameters (the constructor's ``d_model`` ... ``dropout``)."""
        return {
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_layers": self.n_layers,
            "dim_feedforward": self.dim_feedforward,
            "dropout": self.dropout,
        }

    def _build_encoder(self) -> None:
        import torch

        from spared_tools.models.spackle import SpackleEncoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = SpackleEncoder(len(self.genes), int(self.ring.max()) + 1, **self.hparams)

    def _repr_state(self) -> str:
        if not self.genes:
            return "untrained"
        return (
            f"{'trained' if self.is_trained else 'untrained'} on {len(self.genes)} genes, "
            f"{len(self.ring) - 1} neighbours, layer={self.layer!r}"
        )

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.gene_mean) / self.gene_std).astype(np.float32, copy=False)

    # ---- training ----------------------------------------------------------------------------------------
    @renamed_keywords(mask_prob="mask_frac")
    def train(
        self,
        adata: AnnData,
        *,
        layer: str | None = Key.MEDIAN,
        mask_layer: str | None = Key.MASK,
        library_key: str | None = Key.SLIDE,
        max_steps: int = 1200,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mask_frac: float | tuple[float, float] = 0.3,
        loss_on: Literal["hidden", "observed", "all"] = "hidden",
        split_key: str | None = Key.SPLIT,
        train_value: str = Key.TRAIN,
        val_value: str = Key.VAL,
        val_slides: Sequence[str] | None = None,
        val_check_interval: int = 50,
        early_stopping_patience: int | None = 5,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        strategy: str | Any = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        num_workers: int = 0,
        enable_progress_bar: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        ckpt_path: str | os.PathLike | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
    ) -> SpackleModel:
        """Train with PyTorch Lightning on the training slides of ``adata``, keeping the best-validation weights.

        The first training binds the model to ``adata``'s genes and lattice (the ring count, the encoder's
        size); a later call continues training (fine-tuning) on data with the same genes and lattice.

        Parameters
        ----------
        adata
            Spots × genes with integer ``array_row`` / ``array_col``, a slide column and the layers below.
            The first training builds the model for exactly these genes; the model keeps this AnnData for
            :meth:`complete` and :meth:`evaluate` without arguments.
        layer
            Expression layer to complete: by default the median pre-completed ``log1p`` layer written by
            :func:`spared_tools.pp.median_complete` / :func:`spared_tools.pp.spared_pipeline`; ``None`` for
            ``adata.X``. Any real-valued layer works (e.g. ``"combat"``). Its observed entries are the
            training targets and the untouched part of the output.
        mask_layer
            Bool layer, True where an entry was really measured (the pipeline's ``"mask"``, counts > 0).
            ``None`` treats the zeros of ``layer`` as missing. There is no silent fallback: a missing layer
            is an error that says which function writes it.
        library_key
            ``adata.obs`` column naming each spot's slide (neighbourhoods never cross slides); ``None`` for a
            single slide.
        max_steps
            Most optimiser steps (the paper trains 10,000 at batch 256); early stopping usually ends sooner.
            1,200 steps of batch 256 take about 3 minutes on 2 CPU cores at 10,000 spots × 128 genes
            (``benchmarks/results/spackle_default10k.txt``).
        batch_size
            Neighbourhoods per step.
        lr
            Adam learning rate (paper: 1e-3).
        weight_decay
            Adam weight decay.
        mask_frac
            Fraction ρ of observed entries hidden in every training neighbourhood (paper: 0.3), or a
            ``(low, high)`` range drawn per neighbourhood (robust over many evaluation masking levels).
        loss_on
            ``"hidden"`` (MSE of the hidden entries), ``"observed"`` (all observed entries) or ``"all"``
            (every entry of ``layer``, including median pre-completed ones: the paper's equation 5).
        split_key
            ``adata.obs`` column with train/val/test labels (``sp.pp.split_by``); spots labelled
            ``train_value`` train, ``val_value`` validate; other spots (test) are not used.
        train_value
            Label of training spots in ``split_key``.
        val_value
            Label of validation spots in ``split_key``.
        val_slides
            Slides to validate on instead (overrides the ``val_value`` label). Without ``split_key`` and
            ``val_slides``, 20 % of the slides (at least one, drawn with ``seed``) validate; a single slide
            trains without validation (the last weights are kept).
        val_check_interval
            Validate every this many steps (and at the end).
        early_stopping_patience
            Stop once this many validations in a row have not lowered the validation MSE, after at least
            300 steps (``None``: train all ``max_steps``). The best-validation weights are kept either way;
            ``train_info_`` records the steps run, whether training stopped early and the best step.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        devices
            Lightning devices (``"auto"``, a count or a list).
        strategy
            Lightning strategy (``"auto"``, ``"ddp"``, ``"ddp_spawn"``, ...); DDP splits every batch of
            neighbourhoods across processes and reduces the validation metrics over them.
        num_nodes
            Nodes for multi-node DDP (give ``checkpoint_dir`` on a shared file system).
        precision
            Lightning precision (``"32-true"``, ``"bf16-mixed"``, ...).
        num_workers
            DataLoader worker processes (neighbourhoods are gathered in the collate function).
        enable_progress_bar
            Lightning progress bar; ``None`` → ``sp.settings.progress`` and verbosity ≥ 2.
        checkpoint_dir
            Working directory of the run: processes hand over the best weights there under DDP (give one
            on a shared file system for multi-node runs), and a resumable ``last.ckpt`` is written there
            at the end of every epoch over the training spots, removed once training finishes (``None``:
            a temporary directory, removed afterwards; nothing is written to the working directory).
        ckpt_path
            Resume an interrupted training from this checkpoint (``checkpoint_dir / "last.ckpt"`` of the
            interrupted run, with the same data and arguments): the result equals an uninterrupted run.
        trainer_kwargs
            Further keyword arguments for :class:`pytorch_lightning.Trainer`.

        Returns
        -------
        ``self``, trained, with :attr:`history_` and :attr:`train_info_` filled in.
        """
        import torch

        from spared_tools.models._runner import RunOptions, run_training
        from spared_tools.models.spackle import (
            IndexDataset,
            NeighbourhoodCollate,
            SpackleTrainingPlan,
        )

        for name, val in (
            ("max_steps", max_steps),
            ("batch_size", batch_size),
            ("val_check_interval", val_check_interval),
        ):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}.")
        if early_stopping_patience is not None and (
            isinstance(early_stopping_patience, bool)
            or not isinstance(early_stopping_patience, int | np.integer)
            or early_stopping_patience < 1
        ):
            raise ValueError(
                f"early_stopping_patience must be a positive integer or None, got {early_stopping_patience!r}."
            )
        if not (float(lr) > 0):
            raise ValueError(f"lr must be positive, got {lr!r}.")
        if loss_on not in ("hidden", "observed", "all"):
            raise ValueError(f"loss_on must be 'hidden', 'observed' or 'all', got {loss_on!r}.")
        mp = check_mask_fraction(mask_frac, "mask_frac")
        values, observed, table = self._bind(adata, layer, mask_layer, library_key)
        is_train, is_val, how = self._split(adata, split_key, train_value, val_value, val_slides)

        # neighbourhoods never cross the train/val/other border
        split_code = np.where(is_train, 0, np.where(is_val, 1, 2))
        cut = table.copy()
        nb = cut >= 0
        cut[nb & (split_code[np.maximum(cut, 0)] != split_code[:, None])] = -1
        # the validation score's hidden entries (a fixed draw of the seed)
        val_idx = np.flatnonzero(is_val)
        hidden = np.zeros_like(observed)
        if len(val_idx):
            hidden[val_idx] = hide_entries(
                observed[val_idx], float(np.mean(mp)), np.random.default_rng(self.seed + 1)
            )
        # per-slide centring: each slide (library_key) minus its genes' mean over the entries the model may
        # read, the same groups in training and completion even where a split cuts a slide (the training mean is the prior; experiments/results/spackle_selection.txt)
        if not self.is_trained:
            self.centre_mean = _observed_mean(values[is_train], observed[is_train])
        values = values - self._offsets(values, observed & ~hidden, self._slides(adata))

        # gene standardisation from the training spots' observed entries (fixed after the first training)
        if not self.is_trained:
            obs_t = observed[is_train]
            v_t = values[is_train].astype(np.float64)
            cnt = obs_t.sum(0)
            mean = np.where(cnt > 0, (v_t * obs_t).sum(0) / np.maximum(cnt, 1), 0.0)
            var = np.where(cnt > 1, (((v_t - mean) * obs_t) ** 2).sum(0) / np.maximum(cnt - 1, 1), 1.0)
            std = np.sqrt(var)
            std = np.where(std > 1e-6, std, 1.0)
            self.gene_mean = mean.astype(np.float32)
            self.gene_std = std.astype(np.float32)
            if (cnt == 0).any():
                logger.warning(
                    f"{int((cnt == 0).sum())} genes have no observed entry in the training spots; "
                    "SpaCKLE cannot learn them (their completions follow the other genes only)."
                )
        z = self._standardise(values)

        train_idx = np.flatnonzero(is_train)
        # shuffling draws from the global torch RNG, seeded by seed_everything() right before fit (an explicit
        # DataLoader generator cannot be pickled into spawned DDP workers)
        train_loader = torch.utils.data.DataLoader(
            IndexDataset(train_idx),
            batch_size=int(batch_size),
            shuffle=True,
            collate_fn=NeighbourhoodCollate(z, observed, cut),
            num_workers=int(num_workers),
            drop_last=len(train_idx) > int(batch_size),
        )
        val_loader = None
        if len(val_idx):
            val_loader = torch.utils.data.DataLoader(
                IndexDataset(val_idx),
                batch_size=max(int(batch_size), 1024),
                shuffle=False,
                collate_fn=NeighbourhoodCollate(z, observed, cut, hidden=hidden),
                num_workers=int(num_workers),
            )

        plan = SpackleTrainingPlan(
            self.encoder,
            self.ring,
            self.gene_std,
            mask_prob=mp,
            loss_on=loss_on,
            lr=float(lr),
            weight_decay=float(weight_decay),
            seed=self.seed,
        )
        run = RunOptions(enable_progress_bar, checkpoint_dir, ckpt_path, trainer_kwargs)
        result = run_training(
            plan,
            train_loader,
            val_loader,
            monitor="val_MSE",
            patience=None if early_stopping_patience is None else int(early_stopping_patience),
            min_steps=_MIN_STEPS,
            seed=self.seed,
            validate_last=True,
            max_steps=int(max_steps),
            val_check_interval=int(val_check_interval),
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=int(num_nodes),
            precision=precision,
            desc="SpaCKLE",
            **run.runner_kwargs(),
        )
        elapsed = result.seconds
        history = [
            {"step": rec["step"], **{k[4:]: rec[k] for k in rec if k.startswith("val_")}}
            for rec in result.best.validations
        ]
        best = None
        if result.selected == "best":
            best_rec = next(r for r in history if r["step"] == result.best.best_step)
            best = {"record": best_rec}
        self.encoder.cpu().eval()
        self._trained = True
        self.history_ = pd.DataFrame(history, columns=HISTORY_COLUMNS)
        slides = (
            adata.obs[self.library_key].astype(str).to_numpy()
            if self.library_key is not None and self.library_key in adata.obs
            else np.full(adata.n_obs, "slide", dtype=object)
        )
        self.train_info_ = {
            "layer": layer,
            "mask_layer": mask_layer,
            "library_key": library_key,
            "split": how,
            "train_slides": sorted(set(slides[is_train].tolist())),
            "val_slides": sorted(set(slides[is_val].tolist())),
            "n_train_spots": int(is_train.sum()),
            "n_val_spots": int(is_val.sum()),
            "steps": int(result.global_step),
            "stopped_early": bool(result.stopped_early),
            "best_step": None if best is None else int(best["record"]["step"]),
            "best_val": None
            if best is None
            else {k: float(v) for k, v in best["record"].items() if k != "step"},
            "checkpoint": "best validation MSE" if best is not None else "last step (no validation)",
            "seconds": float(elapsed),
            "max_steps": int(max_steps),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "mask_frac": list(mp),
            "loss_on": loss_on,
            "val_check_interval": int(val_check_interval),
            "early_stopping_patience": early_stopping_patience,
            "early_stopping_min_steps": _MIN_STEPS,
            "accelerator": str(accelerator),
            "devices": str(devices),
            "strategy": str(strategy),
            "num_nodes": int(num_nodes),
            "precision": str(precision),
            "seed": self.seed,
        }
        if best is not None:
            logger.info(
                f"SpaCKLE: {self.train_info_['steps']} steps in {elapsed:.1f} s; best validation MSE "
                f"{best['record']['MSE']:.4f} at step {best['record']['step']}."
            )
        return self
