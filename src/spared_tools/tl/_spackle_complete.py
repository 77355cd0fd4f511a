"""``sp.tl.spackle_complete``: SpaCKLE completion of the missing entries in one line (builds, trains, completes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_device
from spared_tools._validation import (
    check_adata,
    check_new_key,
)
from spared_tools.tl._signatures import renamed_keywords
from spared_tools.tl._spackle import SpackleModel
from spared_tools.tl._spackle_data import _expression_arrays, _gene_index

__all__ = ["spackle_complete"]


# ---------------------------------------------------------------------------------------------------------
# one-line API
# ---------------------------------------------------------------------------------------------------------
@renamed_keywords(mask_prob="mask_frac")
def spackle_complete(
    adata: AnnData,
    *,
    layer: str | None = Key.MEDIAN,
    mask_layer: str | None = Key.MASK,
    key_added: str = Key.SPACKLE,
    model: SpackleModel | None = None,
    train: bool | None = None,
    library_key: str | None = Key.SLIDE,
    split_key: str | None = Key.SPLIT,
    val_slides: Sequence[str] | None = None,
    n_rings: int | None = None,
    max_steps: int = 1200,
    batch_size: int = 256,
    lr: float = 1e-3,
    mask_frac: float | tuple[float, float] = 0.3,
    d_model: int = 128,
    n_heads: int = 4,
    n_layers: int = 2,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    strategy: str | Any = "auto",
    seed: int | None = None,
    device: str | None = None,
    inference_precision: Literal["32", "bf16"] = "32",
    overwrite: bool = True,
    copy: bool = False,
    **train_kwargs: Any,
) -> AnnData | None:
    """Complete missing expression entries with SpaCKLE, in one line.

    Builds a :class:`SpackleModel`, trains it on ``adata`` (Lightning; best validation checkpoint; by
    default the ``split`` column decides the train/validation slides), and writes the completed matrix:
    observed entries of ``layer`` unchanged, originally missing entries (``~adata.layers[mask_layer]``)
    predicted from each spot's own observed genes and its lattice neighbourhood. With ``model=`` a trained
    (or loaded) model is used as it is, with the data keys it was trained with.

    Parameters
    ----------
    adata
        Spots × genes with integer array coordinates, a slide column, ``layer`` and ``mask_layer``.
    layer
        Layer to complete (default ``"median"``, written by :func:`spared_tools.pp.median_complete` /
        :func:`spared_tools.pp.spared_pipeline`; it is not computed implicitly); ``None`` for ``adata.X``.
    mask_layer
        Bool layer, True where an entry was measured (default ``"mask"``); ``None`` treats zeros of
        ``layer`` as missing.
    key_added
        Layer receiving the completed matrix; parameters and validation metrics go to ``adata.uns[key_added]``.
    model
        A trained :class:`SpackleModel` (e.g. from :meth:`SpackleModel.load`), which keeps the ``layer``,
        ``mask_layer`` and ``library_key`` it was trained with, or an untrained one (trained here with the
        keys above); ``None`` builds a new one.
    train
        Train the model on ``adata`` before completing. ``None`` (default): train a new or untrained model,
        use a trained ``model`` as it is. ``True`` with ``model`` continues training it on ``adata`` (fine-tuning).
    library_key
        ``adata.obs`` slide column (``None``: one slide).
    split_key
        ``adata.obs`` column with ``train`` / ``val`` (/ ``test``) labels; see :meth:`SpackleModel.train`.
    val_slides
        Validation slides, instead of the ``val`` label.
    n_rings
        Neighbourhood rings (``None``: 2 on Visium → 18 neighbours; 3 on square grids → 24).
    max_steps
        Most training steps; training stops early once the validation MSE has not improved for 5 checks
        (every 50 steps, from step 300 on; ``early_stopping_patience=None`` trains them all). The steps run
        and the best step are recorded in ``adata.uns[key_added]["train"]``.
    batch_size
        Neighbourhoods per training step.
    lr
        Adam learning rate.
    mask_frac
        Fraction of observed entries hidden per training neighbourhood (paper: 0.3), or a ``(low, high)``
        range.
    d_model
        Transformer width.
    n_heads
        Attention heads.
    n_layers
        Transformer layers.
    accelerator
        Lightning accelerator (``"auto"`` → GPU when present).
    devices
        Lightning devices.
    strategy
        Lightning strategy (``"ddp"`` for several GPUs or nodes).
    seed
        Seed of initialisation, masks and data order (``None`` → ``sp.settings.seed``); recorded.
    device
        Torch device for the completion pass (``None`` → ``sp.settings.device``).
    inference_precision
        ``"32"`` (float32) or ``"bf16"`` (bfloat16 autocast for the completion pass, about 3× faster on
        CPUs with AVX-512 BF16 / AMX; see :meth:`SpackleModel.complete`).
    overwrite
        Replace an existing ``adata.layers[key_added]``.
    copy
        Work on and return a copy of ``adata``.
    **train_kwargs
        Further arguments of :meth:`SpackleModel.train` (``val_check_interval``,
        ``early_stopping_patience``, ``loss_on``, ``num_nodes``, ``precision``, ``trainer_kwargs`` ...) or
        of the :class:`SpackleModel` constructor (``dim_feedforward``, ``dropout``, ``geometry``).

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    ``adata.layers[key_added]``
        ``float32`` completed matrix (same shape as ``adata``).
    ``adata.uns[key_added]``
        ``params`` (every parameter, seed and resolved neighbourhood), ``train`` (training record: slides
        per split, steps, best step, wall time), ``validation`` (best validation metrics, or ``None``),
        ``history`` (validation metrics per check, DataFrame) and ``n_completed`` (entries replaced).
    """
    check_adata(adata)
    check_new_key(adata.layers, key_added, where="adata.layers", overwrite=overwrite)
    if key_added == layer or key_added == mask_layer:
        raise ValueError(f"key_added={key_added!r} would overwrite an input layer; choose another name.")
    if copy:
        adata = adata.copy()
    ctor_keys = {"dim_feedforward", "dropout", "geometry"}
    ctor_extra = {k: train_kwargs.pop(k) for k in list(train_kwargs) if k in ctor_keys}
    if model is None:
        if train is False:
            raise ValueError("train=False needs a trained model= (e.g. SpackleModel.load(dir, adata)).")
        model = SpackleModel(
            n_rings=n_rings, d_model=d_model, n_heads=n_heads, n_layers=n_layers, seed=seed, **ctor_extra
        )
        train = True
    else:
        if not isinstance(model, SpackleModel):
            raise TypeError(f"model must be a SpackleModel, got {type(model).__name__}.")
        if ctor_extra:
            raise ValueError(f"{sorted(ctor_extra)} only apply when a new model is built (model=None).")
        train = not model.is_trained if train is None else bool(train)
    if train:
        if model.is_trained:  # fine-tuning keeps the model's data keys
            layer, mask_layer, library_key = model.layer, model.mask_layer, model.library_key
        model.train(
            adata,
            layer=layer,
            mask_layer=mask_layer,
            library_key=library_key,
            max_steps=max_steps,
            batch_size=batch_size,
            lr=lr,
            mask_frac=mask_frac,
            split_key=split_key,
            val_slides=val_slides,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            **train_kwargs,
        )
    elif train_kwargs:
        raise ValueError(f"{sorted(train_kwargs)} are training arguments but the model is not trained here.")
    completed = model.complete(adata, device=device, precision=inference_precision)
    _, observed = _expression_arrays(adata, model.layer, model.mask_layer, _gene_index(adata, model.genes))
    adata.layers[key_added] = completed
    info = model.train_info_
    adata.uns[key_added] = {
        "params": {
            "layer": model.layer,
            "mask_layer": model.mask_layer,
            "library_key": model.library_key,
            "geometry": model.geometry,
            "n_rings": model.n_rings,
            "n_neighbors": int(len(model.ring) - 1),
            "seed": int(model.seed),
            "trained_here": bool(train),
            "device": str(resolve_device(device)),
            "inference_precision": inference_precision,
            **{k: v for k, v in model.hparams.items()},
            **{
                k: v
                for k, v in info.items()
                if k
                in (
                    "max_steps",
                    "batch_size",
                    "lr",
                    "mask_frac",
                    "loss_on",
                    "accelerator",
                    "devices",
                    "strategy",
                )
            },
        },
        "train": {k: v for k, v in info.items() if k not in ("best_val",)},
        "validation": info.get("best_val"),
        "history": model.history_.copy(),
        "n_completed": int((~observed).sum()),
    }
    logger.info(
        f"SpaCKLE: completed {int((~observed).sum())} missing entries into adata.layers[{key_added!r}]."
    )
    return adata if copy else None
