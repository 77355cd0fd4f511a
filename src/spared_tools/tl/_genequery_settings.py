"""GeneQuery's parameters by concern (scvi-tools style).

* network hyper-parameters and the inputs' encoders: :class:`~spared_tools.tl.GeneQueryModel`'s
  constructor;
* data keys and optimisation: :meth:`~spared_tools.tl.GeneQueryModel.train` (the rarely changed ones in
  its ``plan_kwargs``, Lightning's own in ``trainer_kwargs``);
* inference: :meth:`~spared_tools.tl.GeneQueryModel.predict`.

Every setting of the last two groups is an attribute of the model (kept between calls, saved with it,
changed by ``train`` / ``predict`` / ``set_params``); this module holds their defaults and the one
validation they all go through. A setting given to the constructor, as before the split, is a
``TypeError`` that says where it went.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from spared_tools._keys import Key
from spared_tools._validation import check_rate

__all__ = [
    "PLAN_SETTINGS",
    "PREDICT_SETTINGS",
    "SETTINGS",
    "TRAIN_SETTINGS",
    "check_settings",
    "moved_message",
]

#: ``train(...)`` keywords: data keys and the optimisation people change.
TRAIN_SETTINGS: dict[str, Any] = {
    "features_key": Key.IMAGE_FEATURES,
    "patches_key": Key.PATCHES,
    "library_key": Key.SLIDE,
    "spatial_key": Key.SPATIAL,
    "max_epochs": 20,
    "batch_size": 8,
    "lr": 1e-3,
    "n_models": 1,
    "checkpoint": "best",
    "augment": True,
    "precision": "32-true",
    "accelerator": "auto",
    "devices": "auto",
    "strategy": "auto",
}
#: ``train(plan_kwargs={...})``: knobs the HER2+ benchmarks found neutral or specialised.
PLAN_SETTINGS: dict[str, Any] = {
    "weight_decay": 1e-4,
    "encoder_lr": 1e-4,
    "finetune_spots": 64,
    "finetune_genes": 256,
    "encoder_chunk": 8,
    "image_dropout": 0.0,
    "identity_dropout": 0.5,
    "standardize": True,
    "max_len": 512,
}
#: ``predict(...)`` keywords.
PREDICT_SETTINGS: dict[str, Any] = {
    "tta": False,
    "use_identity": True,
    "inference_precision": "auto",
    "device": None,
}
SETTINGS: dict[str, Any] = {**TRAIN_SETTINGS, **PLAN_SETTINGS, **PREDICT_SETTINGS}


def moved_message(names: list[str]) -> str:
    """The error for settings given to the constructor: where each one goes now."""
    parts = []
    for name in names:
        if name in TRAIN_SETTINGS:
            parts.append(f"{name} -> model.train(adata, {name}=...)")
        elif name in PLAN_SETTINGS:
            parts.append(f"{name} -> model.train(adata, plan_kwargs={{{name!r}: ...}})")
        else:
            parts.append(f"{name} -> model.predict(adata, {name}=...)")
    return (
        "GeneQueryModel() takes the network and its encoders only; "
        + "; ".join(parts)
        + " (or model.set_params(...)). sp.tl.genequery_predict(adata, ...) still takes them all."
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_settings(values: Mapping[str, Any], *, finetune: bool) -> dict[str, Any]:
    """Validated, normalised copies of the settings in ``values`` (names of :data:`SETTINGS` only)."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise TypeError(f"Unknown GeneQuery settings {unknown}; the settings are {sorted(SETTINGS)}.")
    out = dict(values)
    for name in ("max_len", "batch_size", "max_epochs", "n_models", "finetune_spots", "finetune_genes"):
        if name in out:
            out[name] = _positive_int(out[name], name)
    for name in ("augment", "tta", "use_identity", "standardize"):
        if name in out:
            out[name] = _flag(out[name], name)
    if "encoder_lr" in out:
        if not out["encoder_lr"] > 0:
            raise ValueError(f"encoder_lr must be > 0, got {out['encoder_lr']!r}.")
        out["encoder_lr"] = float(out["encoder_lr"])
    if "encoder_chunk" in out and out["encoder_chunk"] is not None:
        chunk = out["encoder_chunk"]
        if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
            raise ValueError(f"encoder_chunk must be a positive integer or None, got {chunk!r}.")
        out["encoder_chunk"] = int(chunk)
    if "n_models" in out and finetune and out["n_models"] > 1:
        raise ValueError(
            f"n_models={out['n_models']} with finetune=True: each member would fine-tune its own copy of the "
            "image encoder, which this model does not do; use n_models=1 with finetune=True, or frozen "
            "features (finetune=False) for an ensemble."
        )
    if "checkpoint" in out and out["checkpoint"] not in ("best", "average"):
        raise ValueError(f"checkpoint must be 'best' or 'average', got {out['checkpoint']!r}.")
    for name in ("image_dropout", "identity_dropout"):
        if name in out:
            out[name] = check_rate(out[name], name)
    for name in ("lr", "weight_decay"):
        if name in out:
            out[name] = float(out[name])
    if "inference_precision" in out and out["inference_precision"] not in ("auto", "32", "bf16"):
        raise ValueError(
            f"inference_precision must be 'auto', '32' or 'bf16', got {out['inference_precision']!r}."
        )
    return out
