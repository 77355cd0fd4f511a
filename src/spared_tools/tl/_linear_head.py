"""``sp.tl.LinearHeadPredictor``: an image encoder and a linear head over all genes (STNet-style baseline)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from torch import nn

from spared_tools._keys import Key
from spared_tools._settings import resolve_device
from spared_tools.tl._base import register_model
from spared_tools.tl._baselines import _encoder_param
from spared_tools.tl._predictor import Predictor, Scaling

__all__ = ["LinearHeadPredictor"]


class _LinearHeadNet(nn.Module):
    """Image encoder (optional) followed by one linear layer to all genes."""

    def __init__(self, encoder: nn.Module | None, in_dim: int, n_genes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(in_dim, n_genes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            x = self.encoder(x)
        return self.head(x)


def _lightning_module(net: _LinearHeadNet, lr: float, head_lr: float, weight_decay: float):
    import pytorch_lightning as pl

    class _Plan(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.history: dict[str, list[float]] = {"train_loss": []}
            self._train_losses: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log(
                "train_loss",
                loss,
                prog_bar=True,
                on_epoch=True,
                on_step=False,
                sync_dist=True,
                batch_size=len(y),
            )
            self._train_losses.append(float(loss.detach()))
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y, reduction="sum") / y.shape[1]
            self.log(
                "val_loss",
                loss / len(y),
                prog_bar=True,
                on_epoch=True,
                on_step=False,
                sync_dist=True,
                batch_size=len(y),
            )

        def on_train_epoch_end(self) -> None:
            if self._train_losses:
                self.history["train_loss"].append(float(np.mean(self._train_losses)))
            self._train_losses = []

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["train_loss_history"] = list(self.history["train_loss"])

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.history["train_loss"] = list(checkpoint.get("train_loss_history", []))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            groups = [{"params": self.net.head.parameters(), "lr": head_lr}]
            if self.net.encoder is not None:
                enc = [p for p in self.net.encoder.parameters() if p.requires_grad]
                if enc:
                    groups.append({"params": enc, "lr": lr})
            return torch.optim.AdamW(groups, weight_decay=weight_decay)

    return _Plan()


class _PatchTargets(torch.utils.data.Dataset):
    """(uint8 image, scaled targets) pairs from a :class:`~spared_tools.pp.PatchDataset`."""

    def __init__(self, patches: Any, Z: np.ndarray) -> None:
        self.patches = patches
        self.Z = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos, img = self.patches[i]
        return img, self.Z[pos]


@register_model("LinearHead")
class LinearHeadPredictor(Predictor):
    """Image encoder + linear head over all genes, trained end to end (STNet-style) or on frozen features.

    Training minimises the MSE of the scaled targets with AdamW under PyTorch Lightning
    (``accelerator``, ``devices`` and ``strategy`` are passed to the Trainer, so the same code runs on
    CPU, one GPU or DDP). Training patches get random dihedral augmentation (fine-tune mode); the
    weights of the epoch with the lowest validation loss are kept (the last epoch without validation).
    Besides the data keywords, :meth:`train` takes the runner's options: ``progress`` (a bar over the
    epochs), ``checkpoint_dir`` (a resumable ``last.ckpt`` after every epoch), ``ckpt_path`` (resume from
    it, to the result of an uninterrupted run) and ``trainer_kwargs`` (e.g. ``callbacks``); any other
    keyword raises a ``TypeError`` that names it.

    Parameters
    ----------
    encoder
        A registered encoder name (default ``"efficientnet-lite0-stages"``, the features of
        :func:`spared_tools.pp.image_features`; ``"efficientnet-lite0"`` for the last layer alone) or a torch
        module (see :func:`spared_tools.models.image.load_image_encoder`).
    finetune
        Train the encoder too (``True``) or a head on frozen, cached features (``False``).
    max_epochs
        Training epochs.
    batch_size
        Spots per batch.
    lr
        Learning rate of the encoder (fine-tune mode).
    head_lr
        Learning rate of the linear head.
    weight_decay
        AdamW weight decay.
    augment
        Random dihedral augmentation of training patches (fine-tune mode only; frozen features are not
        augmented).
    tta
        Average predictions (fine-tune) or features (frozen) over the 8 dihedral symmetries at prediction.
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``...).
    devices
        Lightning devices.
    strategy
        Lightning strategy (e.g. ``"ddp"``).
    num_workers
        DataLoader workers.
    features_key
        ``obsm`` key of cached frozen features (frozen mode).
    patches_key
        Key of the patches from :func:`spared_tools.pp.extract_patches`.
    scaling
        Per-gene target scaling fit on the training split.
    seed
        Seed for initialisation, shuffling and augmentation.
    """

    def __init__(
        self,
        *,
        encoder: str | nn.Module = "efficientnet-lite0-stages",
        finetune: bool = True,
        max_epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-4,
        head_lr: float = 1e-3,
        weight_decay: float = 1e-4,
        augment: bool = True,
        tta: bool = False,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        num_workers: int = 0,
        features_key: str = Key.IMAGE_FEATURES,
        patches_key: str = Key.PATCHES,
        scaling: Scaling = "minmax",
        seed: int | None = None,
    ) -> None:
        super().__init__(patches_key=patches_key, scaling=scaling, seed=seed)
        if max_epochs < 1 or batch_size < 1:
            raise ValueError("max_epochs and batch_size must be positive.")
        if lr <= 0 or head_lr <= 0 or weight_decay < 0:
            raise ValueError("lr and head_lr must be positive and weight_decay >= 0.")
        self.encoder = encoder
        self.finetune = bool(finetune)
        self.max_epochs = int(max_epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.head_lr = float(head_lr)
        self.weight_decay = float(weight_decay)
        self.augment = bool(augment)
        self.tta = bool(tta)
        self.accelerator = accelerator
        self.devices = devices
        self.strategy = strategy
        self.num_workers = int(num_workers)
        self.features_key = features_key
        self.net_: _LinearHeadNet | None = None

    def _params_for_save(self) -> dict[str, Any]:
        params = self.get_params()
        params["encoder"] = _encoder_param(self.encoder)
        return params

    def _image_encoder(self):
        from spared_tools.models.image import (
            ImageEncoder,
            _default_encoder,
            is_registered_name,
            load_image_encoder,
        )

        if isinstance(self.encoder, ImageEncoder):
            return self.encoder
        if is_registered_name(self.encoder):
            return _default_encoder(self.encoder)  # loaded once per process; fine-tuning works on a deep copy
        return load_image_encoder(self.encoder)

    def _frozen_features(self, adata: AnnData, tta: bool) -> np.ndarray:
        from spared_tools.pp import image_features

        return image_features(
            adata,
            patches_key=self.patches_key,
            encoder=self._image_encoder(),
            batch_size=None,
            tta=tta,
            key_added=self.features_key,
        )

    def _build_net(self, n_genes: int, enc: Any) -> _LinearHeadNet:
        if self.finetune:
            return _LinearHeadNet(copy.deepcopy(enc), enc.out_dim, n_genes)
        return _LinearHeadNet(None, enc.out_dim, n_genes)

    def _fit(
        self, adata: AnnData, Z: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, **options: Any
    ) -> None:
        """Train the head (and the encoder when fine-tuning).

        ``options`` are the runner's keywords of :meth:`train` (:class:`~spared_tools.models._runner.RunOptions`):
        ``checkpoint_dir`` writes a resumable checkpoint after every epoch (``last.ckpt``, removed when
        training finishes); ``ckpt_path`` resumes an interrupted training from it, to the same result as an
        uninterrupted run; ``progress`` shows a bar; ``trainer_kwargs`` go to
        :class:`pytorch_lightning.Trainer` (e.g. ``callbacks``).
        """
        from spared_tools.models._runner import RunOptions, run_training
        from spared_tools.pp._patches import PatchDataset

        run = RunOptions.from_keywords(options, type(self).__name__)
        enc = self._image_encoder()
        # Seed after the encoder is in hand: loading the default encoder draws from the global generator
        # the first time only (it is cached per process), which made the head's initialisation, and so
        # the trained model, depend on whether an earlier model in the process had loaded it.
        torch.manual_seed(self.seed)
        net = self._build_net(Z.shape[1], enc)
        if self.finetune:
            train_ds: torch.utils.data.Dataset = _PatchTargets(
                PatchDataset(adata, self.patches_key, augment=self.augment, indices=train_idx), Z
            )
            val_ds: torch.utils.data.Dataset = _PatchTargets(
                PatchDataset(adata, self.patches_key, augment=False, indices=val_idx), Z
            )
        else:
            F = torch.from_numpy(
                np.ascontiguousarray(self._frozen_features(adata, self.tta), dtype=np.float32)
            )
            Zt = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32))
            train_ds = torch.utils.data.TensorDataset(F[train_idx], Zt[train_idx])
            val_ds = torch.utils.data.TensorDataset(F[val_idx], Zt[val_idx])
        gen = torch.Generator().manual_seed(self.seed)
        train_dl = torch.utils.data.DataLoader(
            train_ds, batch_size=self.batch_size, shuffle=True, generator=gen, num_workers=self.num_workers
        )
        val_dl = (
            torch.utils.data.DataLoader(
                val_ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
            )
            if val_idx.size
            else None
        )
        net.train()
        plan = _lightning_module(net, self.lr, self.head_lr, self.weight_decay)
        fit = run_training(
            plan,
            train_dl,
            val_dl,
            monitor="val_loss",
            max_epochs=self.max_epochs,
            accelerator=self.accelerator,
            devices=self.devices,
            strategy=self.strategy,
            desc="LinearHead",
            deterministic=True if not torch.cuda.is_available() else "warn",
            **run.runner_kwargs(),
        )
        self.net_ = net.cpu().eval()
        self.history_ = {
            "train_loss": plan.history["train_loss"],
            "val_loss": [v["val_loss"] for v in fit.best.validations if "val_loss" in v],
            "best_val_loss": fit.best.best_score,
        }

    @torch.no_grad()
    def _predict(self, adata: AnnData, genes: list[str]) -> np.ndarray:
        from spared_tools.models.image import default_batch_size, dihedral
        from spared_tools.pp._patches import get_patches

        assert self.net_ is not None and self.genes_ is not None
        pos = {g: i for i, g in enumerate(self.genes_)}
        cols = [pos[g] for g in genes]
        dev = resolve_device(None)
        net = self.net_.to(dev).eval()
        try:
            if not self.finetune:
                F = torch.from_numpy(
                    np.ascontiguousarray(self._frozen_features(adata, self.tta), dtype=np.float32)
                )
                return net.head(F.to(dev)).cpu().numpy()[:, cols]
            patches = get_patches(adata, self.patches_key)
            out = np.empty((adata.n_obs, len(self.genes_)), dtype=np.float32)
            step = default_batch_size(dev)
            for s in range(0, adata.n_obs, step):
                x = torch.from_numpy(np.array(patches[s : s + step], dtype=np.uint8))
                x = x.permute(0, 3, 1, 2).to(dev)
                y = sum(net(dihedral(x, k)) for k in range(8)) / 8.0 if self.tta else net(x)
                out[s : s + x.shape[0]] = y.cpu().numpy()
            return out[:, cols]
        finally:
            self.net_ = net.cpu()

    def _state(self) -> dict[str, Any]:
        assert self.net_ is not None
        return {"net": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()}}

    def _set_state(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        assert self.genes_ is not None
        net = self._build_net(len(self.genes_), self._image_encoder())
        net.load_state_dict(state["net"])
        self.net_ = net.eval()
