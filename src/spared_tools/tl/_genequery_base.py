"""GeneQuery's AnnData side: inputs (features, text embeddings, sequences), prediction and persistence.

The base of :class:`~spared_tools.tl.GeneQueryModel` (declared settings and fitted attributes, the
methods that turn an AnnData into arrays and back); training is in :mod:`._genequery_fit`, the
constructor, settings, ``train`` and ``predict`` in :mod:`._genequery`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import (
    slide_labels,
)

from ._genequery_settings import SETTINGS, check_settings
from ._genequery_text import _has_patches, _TextScaler
from ._predictor import Predictor

__all__: list[str] = []


class _GeneQueryBase(Predictor):
    """GeneQuery without its constructor: inputs, prediction and persistence (see ``GeneQueryModel``)."""

    uses_images = True
    can_predict_unseen = True
    mode: str
    image_encoder: Any
    gene_encoder: str
    organism: Literal["human", "mouse"]
    descriptions: Any
    gene_embeddings: pd.DataFrame | None
    finetune: bool
    width: int
    n_layers: int
    n_heads: int
    ff_dim: int
    dropout: float
    inference_precision_used_: str | None
    net_: Any
    nets_: list[Any]
    image_dim_: int | None
    gene_dim_: int | None
    #: width of the frozen features (before the context) and how many leading columns the networks read
    #: (``None``: all; the ridge head reads all), see :data:`~spared_tools.models.image.NETWORK_COLUMNS`
    feature_dim_: int | None = None
    network_columns_: int | None = None
    gene_embeddings_: np.ndarray | None
    encoder_: Any
    _encoder_state: dict[str, Any] | None
    #: set to a list by predict_with_std: _predict fills it with each network's scaled prediction
    _member_preds: list[np.ndarray] | None = None
    #: the ridge head (``ridge_blend``): coef, intercept (on the networks' scale), x_mean, x_scale
    ridge_head_: dict[str, np.ndarray] | None = None
    # training and inference settings (defaults in _genequery_settings.SETTINGS)
    features_key: str
    spatial_key: str
    library_key: str | None
    context_rings: int
    ridge_blend: float
    gene_identity: int
    spot_resample: int | None
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

    # ------------------------------------------------------------------ inputs
    def _image_size(self, adata: AnnData) -> tuple[int, int] | None:  # type: ignore[override]
        if not _has_patches(adata, self.patches_key):
            return None
        return super()._image_size(adata)

    def check_compatible(self, adata: AnnData, *, require_genes: bool = True) -> None:
        # the contract (and its docstring) is Predictor.check_compatible's; GeneQuery adds the feature checks
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
            if self.image_dim_ is not None and d != self._feature_dim:
                raise ValueError(
                    f"adata.obsm[{self.features_key!r}] has {d} features per spot but the model was trained "
                    f"on {self._feature_dim}; compute them with the training image encoder."
                )

    @property
    def _feature_dim(self) -> int:
        """Width of the frozen features the model was trained on (before the context)."""
        assert self.image_dim_ is not None
        return self.feature_dim_ or self.image_dim_ // (2 if self.context_rings else 1)

    def _features(self, adata: AnnData, views: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The networks' input ``(n_obs, n_views, d')`` and the ridge head's (the views' mean, ``(n_obs, e)``).

        The networks read the first :attr:`network_columns_` columns of the frozen features (all when
        ``None``), the head all of them; both followed by their mean over the ``context_rings``.
        """
        return self._split_features(adata, self._frozen_features(adata, views))

    def _split_features(self, adata: AnnData, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_features` of frozen features ``raw`` already read by :meth:`_frozen_features`."""
        nets = raw[..., : self.network_columns_] if self.network_columns_ else raw
        return self._with_context(adata, nets), self._with_context(adata, raw.mean(1, dtype=np.float64))

    def _with_context(self, adata: AnnData, x: np.ndarray) -> np.ndarray:
        """Features ``x`` ``(n_obs, [views,] d)`` followed by their mean over the ``context_rings``, if any."""
        from spared_tools.pp import context_features

        rings = self.context_rings
        return context_features(adata, x, n_rings=rings, library_key=self.library_key) if rings else x

    def _frozen_features(self, adata: AnnData, views: bool = False) -> np.ndarray:
        """Image features ``(n_obs, n_views, d)`` float32, computed from the patches when absent.

        ``views``: compute the 8 dihedral views when the features are absent, or when the cached ones
        were made by :func:`~spared_tools.pp.image_features` with one view (e.g. by a baseline that ran
        first) and the patches are there: call order never degrades augmentation or tta. Features the
        user put there (no ``uns[features_key]["params"]``) are used as they are.
        """
        key = self.features_key
        made = adata.uns.get(key, {}).get("params", {}) if isinstance(adata.uns.get(key), dict) else {}
        one_view_cache = bool(made) and int(made.get("views", 1)) == 1 and key in adata.obsm
        if key not in adata.obsm or (views and one_view_cache and _has_patches(adata, self.patches_key)):
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
        if self.image_dim_ is not None and feats.shape[-1] != self._feature_dim:
            raise ValueError(
                f"adata.obsm[{key!r}] has {feats.shape[-1]} features per spot but the model was trained on "
                f"{self._feature_dim}; compute them with the training image encoder."
            )
        return feats

    def _fresh_encoder(self) -> Any:
        """A trainable copy of ``image_encoder`` (the process-wide default encoder is never modified)."""
        from spared_tools.models.image import (
            NETWORK_ENCODER,
            ImageEncoder,
            _default_encoder,
            is_registered_name,
            load_image_encoder,
        )

        enc = self.image_encoder
        if enc is None:
            raise RuntimeError(
                "This fine-tuned GeneQueryModel was trained with a custom image encoder that is not saved "
                "with it: set model.image_encoder to a module of the same architecture first."
            )
        if is_registered_name(enc):  # the networks' part of it (the stages encoder: its last layer)
            name = _default_encoder(enc).name
            return copy.deepcopy(_default_encoder(NETWORK_ENCODER.get(name, name)))
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

    def _patches(self, adata: AnnData, why: str) -> Any:
        """The patches of ``adata``, or a ``KeyError`` saying why this model needs them."""
        from spared_tools.pp._patches import get_patches

        if not _has_patches(adata, self.patches_key):
            raise KeyError(
                f"This GeneQueryModel {why}, and adata has none under {self.patches_key!r}: run "
                "sp.pp.extract_patches(adata) first."
            )
        return get_patches(adata, self.patches_key)

    def _tuned_features(self, adata: AnnData) -> np.ndarray:
        """Fine-tune mode: ``(n_obs, n_views, d)`` features of the patches from the fine-tuned encoder."""
        from spared_tools.models.image import encode_patches

        patches = self._patches(adata, "fine-tuned its image encoder, so it predicts from patches")
        enc = self._tuned_encoder()
        views = range(8) if self.tta else [0]
        try:
            feats = np.stack(
                [
                    encode_patches(
                        patches, enc, view=k, device=self.device, precision="32", desc="fine-tuned features"
                    )
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

    # ------------------------------------------------------------------ persistence
    def _params_for_save(self) -> dict[str, Any]:
        params = Predictor.get_params(self)  # the constructor's; the settings go to _extra_config
        if not isinstance(self.image_encoder, str | type(None)):
            params["image_encoder"] = None
        params["gene_embeddings"] = None
        return params

    @classmethod
    def _from_saved(cls, header: dict[str, Any], weights: dict[str, Any]) -> _GeneQueryBase:
        # models saved before context_rings / gene_identity left the constructor hold them in "params"
        config = header["config"]
        params = dict(config["params"])
        moved = {k: params.pop(k) for k in list(params) if k in SETTINGS}
        if moved:
            extra = dict(config.get("extra") or {})
            extra["settings"] = {**moved, **(extra.get("settings") or {})}
            header = {**header, "config": {**config, "params": params, "extra": extra}}
        return cast("_GeneQueryBase", super()._from_saved(header, weights))

    def _state(self) -> dict[str, Any]:
        import torch

        if self.net_ is None or self.gene_embeddings_ is None:
            raise RuntimeError("GeneQueryModel has no trained network to save.")
        nets = self.nets_ or [self.net_]
        state: dict[str, Any] = {
            "nets": [{k: v.detach().cpu() for k, v in n.state_dict().items()} for n in nets],
            "train_emb": torch.from_numpy(np.ascontiguousarray(self.gene_embeddings_, dtype=np.float32)),
        }
        if self.ridge_head_ is not None:
            state["ridge_head"] = {
                k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
                for k, v in self.ridge_head_.items()
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
            "feature_dim": self.feature_dim_,
            "network_columns": self.network_columns_,
            "gene_dim": self.gene_dim_,
            "image_encoder": self.image_encoder if isinstance(self.image_encoder, str) else None,
            "image_encoder_class": type(self.image_encoder).__name__,
            "text_scaler": self.scaler_.text_state() if isinstance(self.scaler_, _TextScaler) else None,
            "user_genes": None
            if self.gene_embeddings is None
            else [str(g) for g in self.gene_embeddings.index],
        }

    def _settings(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in SETTINGS}
        for key in ("devices", "strategy", "accelerator"):  # e.g. a Strategy object: fall back to "auto"
            try:
                json.dumps(out[key])
            except (TypeError, ValueError):
                out[key] = "auto"
        return out

    def _set_state(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        self.__dict__.update(check_settings(extra["settings"], finetune=self.finetune))
        head = state.get("ridge_head")
        self.ridge_head_ = None if head is None else {k: v.numpy() for k, v in head.items()}
        if head is None:  # saved before the ridge head (or trained without it): the networks alone
            self.ridge_blend = 0.0
        self.image_dim_, self.gene_dim_ = int(extra["image_dim"]), int(extra["gene_dim"])
        self.feature_dim_, self.network_columns_ = extra.get("feature_dim"), extra.get("network_columns")
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
