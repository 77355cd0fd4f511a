"""Targets of the image models: the log1p matrix of the chosen genes, the split's spots, per-gene scaling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._validation import (
    check_finite_nonnegative,
    check_genes,
    check_obs_key,
    get_matrix,
)

__all__ = ["Scaling", "TargetScaler", "split_indices", "target_matrix"]

Scaling = Literal["minmax", "standard", "none"]


class TargetScaler:
    """Per-gene affine scaling of log1p targets, fit on the training split.

    ``z = (y - offset) / scale`` per gene. ``"minmax"`` (the GeneQuery paper's choice) maps the training
    range of each gene to ``[0, 1]``; ``"standard"`` to zero mean and unit variance; ``"none"`` keeps
    log1p units. Constant genes get ``scale = 1``, so they never divide by zero.

    Genes that were not seen during fitting (the unseen genes GeneQuery predicts from text alone) are
    mapped back with the median offset and the median scale over the fitted genes: the model predicts
    a normalised level for them and this converts it to the log1p range of a typical training gene.

    Parameters
    ----------
    method
        ``"minmax"``, ``"standard"`` or ``"none"``.
    """

    def __init__(self, method: Scaling = "minmax") -> None:
        if method not in ("minmax", "standard", "none"):
            raise ValueError(f"scaling must be 'minmax', 'standard' or 'none', got {method!r}.")
        self.method = method
        self.genes: list[str] = []
        self.offset = np.zeros(0, dtype=np.float64)
        self.scale = np.ones(0, dtype=np.float64)

    def fit(self, Y: np.ndarray, genes: Sequence[str]) -> TargetScaler:
        """Fit the per-gene offset and scale on training targets.

        Parameters
        ----------
        Y
            Training targets ``(n_train, n_genes)`` in log1p units.
        genes
            Gene names of the columns of ``Y``.

        Returns
        -------
        The fitted scaler (``self``).
        """
        Y = np.asarray(Y, dtype=np.float64)
        genes = list(genes)
        if Y.ndim != 2 or Y.shape[1] != len(genes):
            raise ValueError(f"Targets have shape {Y.shape} but {len(genes)} gene names were given.")
        if Y.shape[0] == 0:
            raise ValueError("Cannot fit the target scaling on an empty training split.")
        if self.method == "minmax":
            offset = Y.min(axis=0)
            scale = Y.max(axis=0) - offset
        elif self.method == "standard":
            offset = Y.mean(axis=0)
            scale = Y.std(axis=0)
        else:
            offset = np.zeros(Y.shape[1])
            scale = np.ones(Y.shape[1])
        scale = np.where(scale > 0, scale, 1.0)
        self.genes, self.offset, self.scale = genes, offset, scale
        return self

    def _params(self, genes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        if genes is None:
            return self.offset, self.scale
        pos = {g: i for i, g in enumerate(self.genes)}
        fallback_offset = float(np.median(self.offset)) if self.offset.size else 0.0
        fallback_scale = float(np.median(self.scale)) if self.scale.size else 1.0
        offset = np.array([self.offset[pos[g]] if g in pos else fallback_offset for g in genes])
        scale = np.array([self.scale[pos[g]] if g in pos else fallback_scale for g in genes])
        return offset, scale

    def transform(self, Y: np.ndarray, genes: Sequence[str] | None = None) -> np.ndarray:
        """Scale log1p targets; ``genes`` names the columns (default: the fitted genes, in order)."""
        offset, scale = self._params(genes)
        return ((np.asarray(Y, dtype=np.float64) - offset) / scale).astype(np.float32)

    def inverse_transform(self, Z: np.ndarray, genes: Sequence[str] | None = None) -> np.ndarray:
        """Map scaled predictions back to log1p units; ``genes`` names the columns of ``Z``."""
        offset, scale = self._params(genes)
        return (np.asarray(Z, dtype=np.float64) * scale + offset).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "method": self.method,
            "genes": list(self.genes),
            "offset": self.offset.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetScaler:
        """Rebuild a scaler written by :meth:`to_dict`."""
        obj = cls(d["method"])
        obj.genes = list(d["genes"])
        obj.offset = np.asarray(d["offset"], dtype=np.float64)
        obj.scale = np.asarray(d["scale"], dtype=np.float64)
        return obj


def target_matrix(adata: AnnData, genes: Sequence[str], layer: str | None = Key.LOG) -> np.ndarray:
    """Dense float32 ``(n_obs, len(genes))`` targets from ``adata.layers[layer]`` (``None``: ``X``).

    Parameters
    ----------
    adata
        Annotated data.
    genes
        Genes to extract, all in ``adata.var_names``.
    layer
        Layer holding log1p expression.

    Returns
    -------
    The target matrix; raises ``ValueError`` for NaN, infinite or negative values.
    """
    genes = check_genes(adata, genes)
    M = get_matrix(adata, layer)
    idx = adata.var_names.get_indexer(genes)
    sub = M[:, idx]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    what = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    check_finite_nonnegative(sub, what=what)
    return sub.astype(np.float32, copy=False)


def split_indices(adata: AnnData, split_key: str | None, values: str | Sequence[str] | None) -> np.ndarray:
    """Integer positions of the spots whose ``obs[split_key]`` is in ``values``.

    Parameters
    ----------
    adata
        Annotated data.
    split_key
        ``obs`` column holding the split; ``None`` selects every spot.
    values
        One split value or several; ``None`` selects nothing.

    Returns
    -------
    Sorted ``int64`` positions.
    """
    if split_key is None:
        return np.arange(adata.n_obs, dtype=np.int64)
    if values is None:
        return np.zeros(0, dtype=np.int64)
    col = check_obs_key(adata, split_key, what="split column")
    values = [values] if isinstance(values, str) else list(values)
    return np.flatnonzero(col.astype(str).isin([str(v) for v in values]).to_numpy()).astype(np.int64)
