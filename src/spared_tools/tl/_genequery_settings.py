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

The ``plan_kwargs`` of :meth:`~spared_tools.tl.GeneQueryModel.train`. The first five hold the defaults
chosen on validation sections only by ``experiments/genequery_selection.py`` (``docs/differences.md``);
nobody needs to turn them:

``context_rings``
    Neighbourhood context of the image: each spot's features are followed by their mean over the spot
    and its lattice neighbours within this many rings on the same slide
    (:func:`~spared_tools.pp.context_features`; needs ``obs['array_row']`` / ``obs['array_col']``), so
    the image input is twice as wide. Default 1 (0 in fine-tune mode, where the trained encoder sees
    each patch on its own). Predicting on a subset of a slide averages over the neighbours in that
    subset only. Two rings scored below one on the validation sections (``genequery_context_rings.txt``:
    0.2000 against 0.2011 over the 128 and 785 genes). Earlier HER2+ runs:
    ``experiments/results/genequery_context_average.txt``.
``gene_identity``
    Width of a fixed random identity code appended to each training gene's text embedding
    (:func:`~spared_tools.models.genequery.gene_identity_codes`, a function of the gene symbol alone;
    default 0: text only). The code lets the network fit what is particular to a gene beyond what its
    description says. Genes not trained on get the mean code, so they are predicted from their text
    alone, and ``identity_dropout`` trains the network for that case; ``predict(use_identity=False)``
    predicts every gene from its text. 384 was the default until the validation selection
    (``experiments/results/genequery_selection_identity0.txt``), where text alone scored higher in both
    modes (spot-aware 0.218 against 0.209, gene-aware 0.213 against 0.208). Earlier HER2+ runs:
    ``experiments/results/genequery_identity_gene_average.txt``, ``genequery_unseen_id384.txt``.
``n_models``
    Networks trained, each from its own seed (``seed``, ``seed + 1``, ...; the first is the network
    ``n_models=1`` trains), on the same data, scaling and validation split; ``predict`` returns the mean
    of their predictions and ``predict_with_std`` / ``genequery_predict`` their spread
    (``layers[key_added + "_std"]``). Training and prediction take ``n_models`` times as long. Default 3
    (1 in fine-tune mode, which fine-tunes one encoder). ``history_`` holds the first network's record at
    the top level and every network's, with its seed, under ``"members"``. Earlier HER2+ runs:
    ``experiments/results/genequery_ensemble_average.txt``.
``checkpoint``
    Which weights training keeps: ``"average"`` (default), the mean of the weights at the end of each
    epoch of the second half of training (epochs ``max_epochs // 2`` to the last; Polyak averaging), whose
    validation loss is recorded in ``history_`` but chooses nothing; or ``"best"``, the weights of the
    epoch with the lowest validation loss (the last epoch's without a validation split). With a few
    sections the validation block is a few dozen spots whose loss varies little between epochs after
    the first few, so ``"best"`` keeps an early, barely trained epoch by chance (on 746 genes it kept
    epoch 1) and one network's accuracy moves a lot with the seed; ``"average"`` cannot keep an epoch of
    the first half. When training has not converged (validation loss lowest at the last epoch; logged)
    the average lags behind the last epoch. Earlier HER2+ runs:
    ``experiments/results/genequery_ensemble.txt`` / ``..._ensemble_average.txt``.
``ridge_blend``
    Weight of a ridge head in the prediction of the trained genes: after the networks, ridge regression
    of every trained gene on the image features (the mean of the views' features, all their columns,
    followed by their neighbourhood mean with ``context_rings``; with the default encoder the networks
    read only its last layer, the head also its stages' statistics) is fit on the training spots (each
    of a training spot's 8 views is a sample, its own features followed by their neighbourhood mean, so
    the map is fitted to hold whatever the tissue's orientation, as the networks' augmentation asks of
    them: ``experiments/genequery_head_views.py``, validation score 0.2410 / 0.1828 on the 128 / 785
    genes against 0.2380 / 0.1818 for the fit on the views' mean in gene mode;
    ``genequery_head_views_spot.py``, 0.2424 / 0.1744 against 0.2388 / 0.1732 in spot mode),
    its penalty chosen on the validation spots (their mean per-gene Pearson correlation; without them by
    generalised cross-validation) from ``1e-3`` to ``1e7`` times the number of training spots. Both
    predictions are standardised per gene with the mean and standard deviation of their own predictions
    on the training spots, mixed as ``(1 - ridge_blend) * networks + ridge_blend * ridge`` and put back
    on the networks' scale (so the mix does not depend on how much the penalty shrinks ridge). Genes not
    trained on are predicted by the networks alone; ``layers[key_added + "_std"]`` is the spread of the
    networks' part. Default 0.5 in gene mode and 0.65 in spot mode (0 in fine-tune mode; 0 turns the
    head off). Gene mode's weight and the head's input were chosen on the validation sections only by
    ``experiments/genequery_head_stages.py`` (``experiments/results/genequery_head_stages.txt``:
    three-seed score 0.2380 on the 128 genes and 0.1783 on the 785 against 0.2295 / 0.1740 for the head
    on the last layer at 0.35; the stages head at 0.35, 0.2365 / 0.1798, tied). Before it, the head read the networks' input (the last layer) at 0.35 (``genequery_blend_second.txt``:
    0.2296 against 0.2179 for the networks alone; ``genequery_blend_second_785.txt``: 0.1725), a head on a
    two-ring neighbourhood had not gained the 0.005 its rule asked for (``genequery_head_rings.txt``), and
    the networks on the stages too had won on validation and lost on the held-out sections
    (``genequery_layers.txt``, ``docs/differences.md``). Spot mode's 0.65 was chosen with the head on the
    last layer (``genequery_blend_second_spot.txt``: spot-aware 0.2298 at 0.65, the largest weight tried,
    against 0.2224 at 0.35 and 0.2025 for the networks alone) and re-chosen with the head on the stages
    (``genequery_head_stages_spot.txt``: 0.2060 over the two gene sets at 0.65, 0.2071 at 0.5, under
    the 0.002 gain its rule asked; 0.65 stays), and again with the head fitted on the views
    (``genequery_head_views_spot.txt``: 0.2084 at 0.65, 0.2082 at 0.5, 0.2022 at 0.8).
``spot_resample``
    Spot mode: every epoch, split each training slide's spots at random into sequences of at most this
    many spots (re-drawn each epoch), so a spot meets different neighbours in every step instead of the
    same slide-long sequence; ``None`` (default) trains on the slides as they are (chunks of ``max_len``).
    Validation and prediction always use whole slides.

``weight_decay``
    AdamW weight decay.
``encoder_lr``
    Learning rate of the image encoder in fine-tune mode.
``finetune_spots``
    Fine-tune mode: patches that go through the encoder (with gradients) per training step. Spot
    mode trains on spatially compact chunks of at most this many spots of a slide (prediction still
    uses chunks of ``max_len``); gene mode on blocks of this many spots. Without checkpointing
    (``encoder_chunk=None``) it sets the training memory: 64 patches of 224 px through
    EfficientNet-Lite0 peaked about 6 GiB above the process size on CPU.
``finetune_genes``
    Fine-tune mode: genes per training step. Each chunk (spot mode) or spot block (gene mode) is
    paired with one random set of this many genes per epoch, so every patch is encoded once per
    epoch.
``encoder_chunk``
    Fine-tune mode: the encoder runs on chunks of this many patches with gradient checkpointing
    (activations recomputed in the backward pass), so training memory follows ``encoder_chunk``
    rather than ``finetune_spots`` at the cost of one extra forward pass; ``None`` disables it
    (faster where memory allows, e.g. on a large GPU). Memory and time per epoch of both settings
    are in ``benchmarks/results/genequery_finetune_C2.txt``.
``image_dropout``
    While training, the probability that each (standardised) image feature is zeroed before the
    image projection (inverted dropout; off at prediction). For a linear projection this is a
    ridge-like penalty on the image weights, scaled by each feature's variance. On HER2+ (gene-aware,
    ``context_rings=1``, identity code, 0.8 against 0, three seeds) it raised HEG on two of four
    held-out sections and lowered it on the other two, no change on average:
    ``benchmarks/results/genequery_image_dropout_gene_average.txt``.
``identity_dropout``
    While training, the probability that a gene's identity code is replaced by the mean code in a
    step (only with ``gene_identity > 0``).
``standardize``
    Standardise the image features and the gene embeddings per dimension before the projections,
    with the mean and standard deviation of the training spots' features (fine-tune mode: of the
    untrained encoder's features of the training patches) and of the training genes' embeddings.
    Stored with the network and applied unchanged at prediction, unseen genes included. Without it
    the network trained on HER2+ predicted one spatial pattern for every gene (first principal
    component of the standardised test predictions 1.00, measured expression 0.14;
    ``benchmarks/results/genequery_inputs.txt``).
``max_len``
    Longest sequence: slides with more spots (spot mode) are split into spatially compact chunks of at
    most ``max_len`` spots; longer gene lists (gene mode) into chunks of at most ``max_len`` genes
    (at prediction, genes not trained on follow the first chunk of trained genes, which they attend to:
    ``experiments/results/genequery_unseen_context.txt``). Nothing is truncated. Attention costs
    ``O(max_len)`` per token, so this sets the prediction speed:
    512 spots (about 23 × 23 Visium spots, 2.3 mm) keeps whole legacy-ST sections in one sequence and
    predicts 5,000 spots × 1,000 genes about 1.3–1.4× faster than 1,024 on CPU. In gene mode, chunks of
    128 genes scored below 512 on the validation sections on the 785 genes
    (``experiments/results/genequery_max_len.txt``: 0.1727 against 0.1783, three seeds), and so did one
    sequence of all 785 (``genequery_max_len_1024.txt``: 0.1770 against 0.1818, seed 0); genes not
    trained on cost ``O(len(context))`` each, whatever ``max_len``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from spared_tools._keys import Key
from spared_tools._validation import check_nonnegative_int, check_rate

__all__ = [
    "ARCHITECTURE_SETTINGS",
    "FINETUNE_DEFAULTS",
    "PLAN_SETTINGS",
    "PREDICT_SETTINGS",
    "SETTINGS",
    "SPOT_DEFAULTS",
    "TRAIN_SETTINGS",
    "check_settings",
    "default_settings",
    "moved_message",
]

#: ``train(...)`` keywords: data keys and the optimisation people change.
TRAIN_SETTINGS: dict[str, Any] = {
    "features_key": Key.IMAGE_FEATURES,
    "patches_key": Key.PATCHES,
    "library_key": Key.SLIDE,
    "spatial_key": Key.SPATIAL,
    "max_epochs": 7,
    "batch_size": 8,
    "lr": 1e-3,
    "augment": True,
    "precision": "32-true",
    "accelerator": "auto",
    "devices": "auto",
    "strategy": "auto",
}
#: ``train(plan_kwargs={...})``: knobs the HER2+ benchmarks found neutral or specialised, and the defaults
#: nobody needs to turn (``docs/differences.md``).
PLAN_SETTINGS: dict[str, Any] = {
    "context_rings": 1,
    "gene_identity": 0,
    "n_models": 3,
    "checkpoint": "average",
    "ridge_blend": 0.5,
    "weight_decay": 1e-4,
    "encoder_lr": 1e-4,
    "finetune_spots": 64,
    "finetune_genes": 256,
    "encoder_chunk": 8,
    "image_dropout": 0.0,
    "identity_dropout": 0.5,
    "standardize": True,
    "max_len": 512,
    "spot_resample": None,
}
#: The defaults that differ in spot mode, chosen there on the validation sections
#: (``experiments/results/genequery_blend_second_spot.txt``).
SPOT_DEFAULTS: dict[str, Any] = {"ridge_blend": 0.65}
#: The defaults that differ in fine-tune mode, where the trained encoder sees each patch on its own (no
#: neighbourhood context), one encoder is fine-tuned (no ensemble) and no frozen features exist (no ridge head).
FINETUNE_DEFAULTS: dict[str, Any] = {"context_rings": 0, "n_models": 1, "ridge_blend": 0.0}
#: Settings that shape the network's inputs: fixed once a model is trained (train again to change them).
ARCHITECTURE_SETTINGS = ("context_rings", "gene_identity", "n_models", "ridge_blend")
#: ``predict(...)`` keywords.
PREDICT_SETTINGS: dict[str, Any] = {
    "tta": "features",
    "use_identity": True,
    "inference_precision": "auto",
    "device": None,
}
SETTINGS: dict[str, Any] = {**TRAIN_SETTINGS, **PLAN_SETTINGS, **PREDICT_SETTINGS}


def default_settings(mode: str, finetune: bool) -> dict[str, Any]:
    """:data:`SETTINGS` with spot mode's (:data:`SPOT_DEFAULTS`) and fine-tune mode's own defaults."""
    return {
        **SETTINGS,
        **(SPOT_DEFAULTS if mode == "spot" else {}),
        **(FINETUNE_DEFAULTS if finetune else {}),
    }


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
    for name in ("augment", "use_identity", "standardize"):
        if name in out:
            out[name] = _flag(out[name], name)
    if "tta" in out:
        tta = out["tta"]
        if isinstance(tta, bool | np.bool_):
            tta = "features" if tta else False
        elif tta not in ("features", "predictions"):
            raise ValueError(f"tta must be True, False, 'features' or 'predictions', got {tta!r}.")
        out["tta"] = tta
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
    for name in ("context_rings", "gene_identity"):
        if name in out:
            out[name] = check_nonnegative_int(out[name], name)
    if out.get("context_rings") and finetune:
        raise ValueError(
            f"context_rings={out['context_rings']} with finetune=True: the fine-tuned encoder sees each training "
            "patch on its own, so the neighbourhood's features are not available; use context_rings=0 "
            "with finetune=True."
        )
    if out.get("spot_resample") is not None:
        out["spot_resample"] = _positive_int(out["spot_resample"], "spot_resample")
    if "checkpoint" in out and out["checkpoint"] not in ("best", "average"):
        raise ValueError(f"checkpoint must be 'best' or 'average', got {out['checkpoint']!r}.")
    if out.get("ridge_blend") and finetune:
        raise ValueError(
            f"ridge_blend={out['ridge_blend']} with finetune=True: the ridge head regresses on frozen image "
            "features, which fine-tune mode does not compute; use ridge_blend=0 with finetune=True."
        )
    for name in ("image_dropout", "identity_dropout", "ridge_blend"):
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
