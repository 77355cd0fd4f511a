"""Shared base class for every model that predicts gene expression from spot images.

:class:`Predictor` fixes the user-facing contract shared by the baselines
(:class:`~spared_tools.tl.MeanPredictor`, :class:`~spared_tools.tl.RidgePredictor`,
:class:`~spared_tools.tl.LinearHeadPredictor`) and :class:`~spared_tools.tl.GeneQueryModel`:

* ``train(adata, ...)`` reads the targets from a log1p layer, fits a per-gene target scaling on the
  training split only, and hands the scaled targets to the subclass's :meth:`Predictor._fit`;
* ``predict(adata, genes)`` returns ``(n_obs, n_genes)`` predictions in log1p units;
* ``evaluate(adata, ...)`` scores the test split with :func:`~spared_tools.tl.evaluate_prediction`;
* ``save(dir)`` / ``load(dir, adata)`` (:class:`~spared_tools.tl._base.BaseModel`, the package's one model
  format) round-trip hyper-parameters, gene list, target scaling, patch size and the subclass's weights,
  and refuse data whose genes or patch size differ.

Subclasses implement :meth:`Predictor._fit` and :meth:`Predictor._predict` (both in scaled target
units) and, when they hold weights, :meth:`Predictor._state` / :meth:`Predictor._set_state`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData

from spared_tools._docs import d
from spared_tools._heap import reuse_heap
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_seed, seed_everything
from spared_tools._validation import (
    check_adata,
    check_genes,
)
from spared_tools.tl._base import BaseModel, SavedModel, _jsonable, check_image_size, check_saved_genes

from ._targets import Scaling, TargetScaler, split_indices, target_matrix

__all__ = ["Predictor", "TargetScaler", "split_indices", "target_matrix"]


class Predictor(BaseModel):
    """Base class: predict log1p expression of genes from the spots' images.

    Subclasses store every constructor argument as an attribute of the same name (scikit-learn
    style), so :meth:`get_params` and :meth:`save` / :meth:`load` work without extra code.

    Parameters
    ----------
    patches_key
        Key of the patches written by :func:`spared_tools.pp.extract_patches` (``obsm`` for the memory
        store, ``uns`` for the disk store). Ignored by models that do not look at images.
    scaling
        Per-gene target scaling fit on the training split: ``"minmax"`` (default, as in GeneQuery),
        ``"standard"`` or ``"none"``. Predictions are always returned in log1p units.
    seed
        Seed for numpy, torch and Lightning (``None``: ``sp.settings.seed``). Recorded.

    Attributes
    ----------
    genes_
        Genes the model was trained on (``None`` before :meth:`train`).
    scaler_
        The fitted :class:`TargetScaler`.
    image_size_
        ``(height, width)`` of the training patches, or ``None`` for image-free models.
    train_info_
        Parameters of the last :meth:`train` call (layer, split, number of spots, seed...); also
        readable as ``train_params_``.
    history_
        Training history written by the subclass (losses, selected hyper-parameters...).
    """

    #: Whether the model reads image patches (and so checks the patch size on predict/load); may be set
    #: per instance (e.g. a ridge on precomputed features).
    uses_images: bool = True
    #: Whether :meth:`predict` accepts genes absent from :attr:`genes_` (GeneQuery: from text alone).
    can_predict_unseen: ClassVar[bool] = False

    def __init__(self, *, patches_key: str = "patches", scaling: Scaling = "minmax", seed: int | None = None):
        TargetScaler(scaling)  # validates
        self.patches_key = patches_key
        self.scaling = scaling
        self.seed = resolve_seed(seed)
        self.genes_: list[str] | None = None
        self.scaler_: TargetScaler | None = None
        self.image_size_: tuple[int, int] | None = None
        self.train_info_: dict[str, Any] = {}
        self.history_: dict[str, Any] = {}

    @property
    def train_params_(self) -> dict[str, Any]:
        """The name :attr:`train_info_` had before the models shared one base class."""
        return self.train_info_

    @train_params_.setter
    def train_params_(self, value: dict[str, Any]) -> None:
        self.train_info_ = value

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _fit(
        self, adata: AnnData, Z: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, **kwargs: Any
    ) -> None:
        """Fit the model.

        Parameters
        ----------
        adata
            The training data (all spots; use ``train_idx``/``val_idx`` to select).
        Z
            Scaled targets ``(n_obs, len(self.genes_))`` float32 for every spot of ``adata``.
        train_idx
            Positions of training spots.
        val_idx
            Positions of validation spots (may be empty).
        **kwargs
            Extra keyword arguments passed to :meth:`train`.
        """

    @abc.abstractmethod
    def _predict(self, adata: AnnData, genes: list[str]) -> np.ndarray:
        """Predict scaled targets ``(adata.n_obs, len(genes))`` for every spot of ``adata``."""

    def _state(self) -> dict[str, Any]:
        """Tensors to save in ``weights.pt`` (default: none)."""
        return {}

    def _extra_config(self) -> dict[str, Any]:
        """JSON settings beyond the constructor parameters to save in ``model.json`` (default: none)."""
        return {}

    def _set_state(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        """Restore what :meth:`_state` and :meth:`_extra_config` returned (default: nothing)."""

    def _params_for_save(self) -> dict[str, Any]:
        """Constructor parameters written to disk; subclasses replace non-JSON values (e.g. modules)."""
        return self.get_params()

    # ------------------------------------------------------------------ public API
    @property
    def is_trained(self) -> bool:
        """``True`` once :meth:`train` (or :meth:`load`) has run."""
        return self.genes_ is not None and self.scaler_ is not None

    def _check_trained(self) -> list[str]:
        self._require_trained()
        assert self.genes_ is not None
        return self.genes_

    def _image_size(self, adata: AnnData) -> tuple[int, int]:
        from spared_tools.pp._patches import patches_shape

        shape = patches_shape(adata, self.patches_key)
        return int(shape[1]), int(shape[2])

    def check_compatible(self, adata: AnnData, *, require_genes: bool = True) -> None:
        """Raise a clear error when ``adata`` does not match the trained model.

        Parameters
        ----------
        adata
            Data to predict or evaluate on.
        require_genes
            Also require every trained gene in ``adata.var_names`` (needed to evaluate, or when
            loading a model "for" a dataset).

        Returns
        -------
        Nothing; raises ``KeyError`` for missing genes or patches, ``ValueError`` for another patch size.
        """
        genes = self._check_trained()
        if require_genes:
            check_saved_genes(genes, adata.var_names, type(self).__name__)
        if self.uses_images and self.image_size_ is not None:
            check_image_size(self.image_size_, self._image_size(adata), type(self).__name__, self.patches_key)

    @d.inject
    def train(
        self,
        adata: AnnData,
        *,
        layer: str | None = Key.LOG,
        genes: Sequence[str] | None = None,
        split_key: str | None = Key.SPLIT,
        train_value: str | Sequence[str] = Key.TRAIN,
        val_value: str | Sequence[str] | None = Key.VAL,
        **kwargs: Any,
    ) -> Predictor:
        """Fit the model on the training spots of ``adata``.

        Parameters
        ----------
        adata
            Annotated data with log1p targets and (for image models) patches.
        %(train_data)s
        **kwargs
            Model-specific training options (see the subclass).

        Returns
        -------
        ``self``, trained; sets :attr:`genes_`, :attr:`scaler_`, :attr:`image_size_`,
        :attr:`train_params_` and :attr:`history_`.
        """
        check_adata(adata)
        genes = list(adata.var_names) if genes is None else check_genes(adata, genes)
        if len(set(genes)) != len(genes):
            raise ValueError("genes contains duplicates.")
        if not adata.obs_names.is_unique:
            raise ValueError("adata.obs_names must be unique; call adata.obs_names_make_unique().")
        train_idx = split_indices(adata, split_key, train_value)
        val_idx = split_indices(adata, split_key, val_value) if split_key is not None else train_idx[:0]
        if train_idx.size == 0:
            raise ValueError(f"No training spots: adata.obs[{split_key!r}] has no value {train_value!r}.")
        if np.intersect1d(train_idx, val_idx).size:
            raise ValueError("The training and validation splits overlap.")
        Y = target_matrix(adata, genes, layer)
        seed = seed_everything(self.seed)
        self.image_size_ = self._image_size(adata) if self.uses_images else None
        scaler = TargetScaler(self.scaling).fit(Y[train_idx], genes)
        Z = scaler.transform(Y, genes)
        self.genes_, self.scaler_ = genes, scaler
        self.history_ = {}
        self.train_params_ = {
            "layer": layer,
            "split_key": split_key,
            "train_value": train_value if isinstance(train_value, str) else list(train_value),
            "val_value": val_value if (val_value is None or isinstance(val_value, str)) else list(val_value),
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
            "n_genes": len(genes),
            "seed": seed,
        }
        logger.info(
            f"{type(self).__name__}: training on {train_idx.size} spots ({val_idx.size} validation) × {len(genes)} genes."
        )
        try:
            with reuse_heap():
                self._fit(adata, Z, train_idx, val_idx, **kwargs)
        except BaseException:
            self.genes_, self.scaler_ = None, None
            raise
        return self

    def predict(self, adata: AnnData, genes: Sequence[str] | str | None = None) -> np.ndarray:
        """Predict log1p expression for every spot of ``adata``.

        Parameters
        ----------
        adata
            Spots to predict (with patches for image models); its genes are not needed.
        genes
            Genes to predict (default: the training genes). Genes outside the training set are only
            accepted by models with :attr:`can_predict_unseen`.

        Returns
        -------
        ``float32`` array ``(adata.n_obs, len(genes))`` in log1p units, in the order of ``genes``.
        """
        trained = self._check_trained()
        check_adata(adata, genes=False)  # spots with images are enough: no expression needed
        genes = list(trained) if genes is None else ([genes] if isinstance(genes, str) else list(genes))
        if not genes:
            raise ValueError("genes is empty.")
        if not self.can_predict_unseen:
            known = set(trained)
            unseen = [g for g in genes if g not in known]
            if unseen:
                show = ", ".join(map(repr, unseen[:10])) + (" …" if len(unseen) > 10 else "")
                raise KeyError(
                    f"{type(self).__name__} cannot predict genes it was not trained on: {show}. "
                    "Use GeneQueryModel to predict unseen genes from their text."
                )
        self.check_compatible(adata, require_genes=False)
        with reuse_heap():
            Z = np.asarray(self._predict(adata, genes))
        if Z.shape != (adata.n_obs, len(genes)):
            raise RuntimeError(f"{type(self).__name__}._predict returned shape {Z.shape}.")
        assert self.scaler_ is not None
        return self.scaler_.inverse_transform(Z, genes)

    def evaluate(
        self,
        adata: AnnData,
        *,
        layer: str | None = Key.LOG,
        genes: Sequence[str] | None = None,
        split_key: str | None = Key.SPLIT,
        test_value: str | Sequence[str] = Key.TEST,
        n_top: int = 50,
    ) -> dict[str, Any]:
        """Score predictions on the test spots with :func:`~spared_tools.tl.evaluate_prediction`.

        Parameters
        ----------
        adata
            Data with the ground truth in ``layer`` and (for image models) patches.
        layer
            Layer with the log1p ground truth (``None``: ``X``).
        genes
            Genes to score (default: the training genes); all must be in ``adata.var_names``.
        split_key
            ``obs`` column with the split; ``None`` scores every spot.
        test_value
            Value(s) of ``obs[split_key]`` marking test spots.
        n_top
            Number of genes in the HEG and HVG sets.

        Returns
        -------
        The dictionary returned by :func:`~spared_tools.tl.evaluate_prediction`.
        """
        from ._evaluate_prediction import evaluate_prediction

        trained = self._check_trained()
        genes = list(trained) if genes is None else check_genes(adata, genes)
        check_genes(adata, genes)
        idx = split_indices(adata, split_key, test_value)
        if idx.size == 0:
            raise ValueError(f"No test spots: adata.obs[{split_key!r}] has no value {test_value!r}.")
        sub = adata[idx]
        truth = target_matrix(sub, genes, layer)
        pred = self.predict(sub, genes)
        return evaluate_prediction(truth, pred, genes=genes, n_top=n_top)

    # ------------------------------------------------------------------ persistence (BaseModel hooks)
    def _to_saved(self) -> SavedModel:
        genes = self._check_trained()
        params = self._params_for_save()
        bad = [k for k, v in params.items() if not _jsonable(v)]
        if bad:
            raise TypeError(
                f"{type(self).__name__} parameters {bad} cannot be saved as JSON; override _params_for_save."
            )
        assert self.scaler_ is not None
        config = {
            "params": params,
            "scaler": self.scaler_.to_dict(),
            "train_params": self.train_info_,
            "history": self.history_ if _jsonable(self.history_) else {},
            "extra": self._extra_config(),
        }
        return SavedModel(list(genes), config, self._state(), self.image_size_)

    @classmethod
    def _from_saved(cls, header: dict[str, Any], weights: dict[str, Any]) -> Predictor:
        config = header["config"]
        obj = cls(**config["params"])
        obj.genes_ = list(header["genes"])
        obj.scaler_ = TargetScaler.from_dict(config["scaler"])
        obj.image_size_ = tuple(header["image_size"]) if header["image_size"] is not None else None
        obj.train_info_ = dict(config.get("train_params") or {})
        obj.history_ = dict(config.get("history") or {})
        obj._set_state(weights, config.get("extra") or {})
        return obj

    def _attach(self, adata: AnnData) -> None:
        self.check_compatible(adata, require_genes=True)

    def _repr_state(self) -> str:
        return f"trained on {len(self.genes_)} genes" if self.genes_ is not None else "untrained"
