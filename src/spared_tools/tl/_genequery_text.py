"""GeneQuery's gene side: the target scaling of genes known only by their text, and the embedding tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._predictor import Scaling, TargetScaler


class _TextScaler(TargetScaler):
    """:class:`TargetScaler` whose offset/scale for unseen genes come from their text embedding.

    A ridge regression from the (standardised) gene embedding to ``(offset, log(scale))`` is fit on the
    training genes. For a gene outside the training set the model predicts a value in the same
    normalised space as the training targets, and this regression places it on the log1p scale of
    training genes with similar text. With fewer than 5 training genes it falls back to the median
    offset and scale of the training genes (the base class behaviour).
    """

    def __init__(self, method: Scaling = "minmax") -> None:
        super().__init__(method)
        self.extra: dict[str, tuple[float, float]] = {}
        self.coef: np.ndarray | None = None  # (2, d)
        self.intercept = np.zeros(2)
        self.emb_mean: np.ndarray | None = None
        self.emb_std: np.ndarray | None = None

    @classmethod
    def from_base(cls, base: TargetScaler) -> _TextScaler:
        obj = cls(base.method)  # type: ignore[arg-type]
        obj.genes, obj.offset, obj.scale = list(base.genes), base.offset.copy(), base.scale.copy()
        return obj

    def fit_text(self, emb: np.ndarray) -> None:
        """Fit the embedding → (offset, log scale) ridge regression on the fitted genes' embeddings."""
        from sklearn.linear_model import RidgeCV

        emb = np.asarray(emb, dtype=np.float64)
        if len(self.genes) < 5 or self.method == "none":
            self.coef = None
            return
        self.emb_mean = emb.mean(0)
        self.emb_std = np.where(emb.std(0) > 0, emb.std(0), 1.0)
        X = (emb - self.emb_mean) / self.emb_std
        T = np.column_stack([self.offset, np.log(self.scale)])
        ridge = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(X, T)
        self.coef, self.intercept = np.asarray(ridge.coef_), np.asarray(ridge.intercept_)

    def set_unseen(self, genes: Sequence[str], emb: np.ndarray) -> None:
        """Compute and remember offset/scale of ``genes`` (not fitted) from their embeddings."""
        if self.coef is None or not len(genes):
            return
        assert self.emb_mean is not None and self.emb_std is not None
        X = (np.asarray(emb, dtype=np.float64) - self.emb_mean) / self.emb_std
        T = X @ self.coef.T + self.intercept
        lo, hi = np.log(self.scale.min()), np.log(self.scale.max())
        for g, (off, logs) in zip(genes, T):
            self.extra[g] = (float(off), float(np.exp(np.clip(logs, lo, hi))))

    def _params(self, genes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        offset, scale = super()._params(genes)
        if genes is None or not self.extra:
            return offset, scale
        pos = set(self.genes)
        offset, scale = offset.copy(), scale.copy()
        for j, g in enumerate(genes):
            if g not in pos and g in self.extra:
                offset[j], scale[j] = self.extra[g]
        return offset, scale

    def text_state(self) -> dict[str, Any]:
        return {
            "coef": None if self.coef is None else self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "emb_mean": None if self.emb_mean is None else self.emb_mean.tolist(),
            "emb_std": None if self.emb_std is None else self.emb_std.tolist(),
        }

    def load_text_state(self, d: Mapping[str, Any]) -> None:
        self.coef = None if d["coef"] is None else np.asarray(d["coef"], dtype=np.float64)
        self.intercept = np.asarray(d["intercept"], dtype=np.float64)
        self.emb_mean = None if d["emb_mean"] is None else np.asarray(d["emb_mean"], dtype=np.float64)
        self.emb_std = None if d["emb_std"] is None else np.asarray(d["emb_std"], dtype=np.float64)


def _has_patches(adata: AnnData, key: str) -> bool:
    info = adata.uns.get(key)
    return key in adata.obsm or (isinstance(info, Mapping) and info.get("store") == "disk")


def _embedding_table(value: Any) -> pd.DataFrame:
    """User-given precomputed gene embeddings as a float32 DataFrame indexed by gene name."""
    if isinstance(value, pd.DataFrame):
        df = value
    elif isinstance(value, Mapping):
        df = pd.DataFrame({str(k): np.asarray(v, dtype=np.float32).ravel() for k, v in value.items()}).T
    else:
        raise TypeError(
            "gene_embeddings must be a DataFrame indexed by gene name or a dict gene -> vector, "
            f"got {type(value).__name__}."
        )
    df = df.astype(np.float32)
    if not df.index.is_unique:
        raise ValueError("gene_embeddings has duplicated gene names.")
    if not np.isfinite(df.to_numpy()).all():
        raise ValueError("gene_embeddings contains NaN or infinite values.")
    df.index = df.index.astype(str)
    return df
