"""SpaCKLE's view of an AnnData: expression and observed-mask arrays, the model's gene order, neighbourhoods.

Shared by :class:`~spared_tools.tl.SpackleModel` and :func:`~spared_tools.tl.evaluate_completion` (which
must not import each other).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._validation import check_finite_nonnegative, get_matrix

_PAPER_NEIGHBOURS = 18  # the paper's hexagonal 2-ring neighbourhood
_MAX_AUTO_RINGS = 6


def _dense(X, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
    if rows is not None:
        X = X[rows]
    if cols is not None:
        X = X[:, cols]
    if sp.issparse(X):
        X = X.toarray()
    return np.asarray(X)


def _expression_arrays(
    adata: AnnData, layer: str | None, mask_layer: str | None, gene_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(values float32, observed bool)`` of shape ``(n_obs, n_model_genes)`` with clear errors."""
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if layer is not None and layer not in adata.layers:
        hint = ""
        if layer == Key.MEDIAN:
            hint = (
                " SpaCKLE starts from the median pre-completed layer: run sp.pp.median_complete(adata) "
                "(or sp.pp.spared_pipeline), or pass layer= and mask_layer= explicitly."
            )
        raise KeyError(f"Layer {layer!r} not found in adata.layers; available: {sorted(adata.layers)}.{hint}")
    X = get_matrix(adata, layer)
    check_finite_nonnegative(X, what=what, allow_negative=True)
    values = _dense(X, cols=gene_idx).astype(np.float32, copy=False)
    if mask_layer is None:
        observed = values != 0
    else:
        if mask_layer not in adata.layers:
            raise KeyError(
                f"mask_layer {mask_layer!r} not found in adata.layers; available: {sorted(adata.layers)}. "
                "It must be a bool layer, True where an entry was really measured (sp.pp.median_complete "
                "writes it); pass mask_layer=None to treat the zeros of the input layer as missing."
            )
        M = adata.layers[mask_layer]
        dtype = M.dtype
        if dtype != np.bool_:
            raise TypeError(f"adata.layers[{mask_layer!r}] must be boolean (True = observed), got {dtype}.")
        observed = _dense(M, cols=gene_idx).astype(bool, copy=False)
    if not observed.any():
        raise ValueError(f"{what} has no observed entries (the mask is all False); nothing to learn from.")
    return np.ascontiguousarray(values), np.ascontiguousarray(observed)


def _gene_index(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Positions of ``genes`` in ``adata.var_names``; error when the gene sets differ."""
    var = pd.Index(adata.var_names)
    model = pd.Index(genes)
    missing = model.difference(var)
    extra = var.difference(model)
    if len(missing) or len(extra):

        def show(idx):
            return ", ".join(map(repr, list(idx[:8]))) + (" …" if len(idx) > 8 else "")

        parts = []
        if len(missing):
            parts.append(f"{len(missing)} model genes absent from adata ({show(missing)})")
        if len(extra):
            parts.append(f"{len(extra)} adata genes unknown to the model ({show(extra)})")
        raise ValueError(
            "The genes of adata differ from the genes the SpaCKLE model was built on: "
            + "; ".join(parts)
            + ". Subset adata to the model's genes (model.genes) first."
        )
    if not var.is_unique:
        raise ValueError("adata.var_names are not unique; call adata.var_names_make_unique() first.")
    return var.get_indexer(model).astype(np.int64)


def _neighbourhoods(
    adata: AnnData, n_rings: int | None, geometry: Any, library_key: str | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice neighbour table; ``n_rings=None`` → smallest ring count with ≥ 18 neighbour positions."""
    from spared_tools.pp import neighbor_table

    if n_rings is not None:
        if isinstance(n_rings, bool) or not isinstance(n_rings, int | np.integer) or n_rings < 0:
            raise ValueError(f"n_rings must be a non-negative integer or None, got {n_rings!r}.")
        table, ring = neighbor_table(adata, n_rings=int(n_rings), geometry=geometry, library_key=library_key)
        return np.asarray(table, dtype=np.int64), np.asarray(ring, dtype=np.int64), int(n_rings)
    table, ring = neighbor_table(adata, n_rings=_MAX_AUTO_RINGS, geometry=geometry, library_key=library_key)
    table = np.asarray(table, dtype=np.int64)
    ring = np.asarray(ring, dtype=np.int64)
    for r in range(1, _MAX_AUTO_RINGS + 1):
        if int((ring[1:] <= r).sum()) >= _PAPER_NEIGHBOURS:
            break
    keep = ring <= r
    return np.ascontiguousarray(table[:, keep]), ring[keep], r


#: Pseudo-count of the per-group gene means of the centring: a group with few read entries of a gene leans
#: on the training mean.
_CENTRE_PRIOR = 10.0


def _observed_mean(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Per-gene mean of the observed entries (0 for a gene never observed)."""
    k = observed.astype(np.float64)
    cnt = k.sum(0)
    return np.where(cnt > 0, (values * k).sum(0) / np.maximum(cnt, 1), 0.0).astype(np.float32)


def _group_offsets(
    values: np.ndarray, known: np.ndarray, groups: np.ndarray, prior: np.ndarray
) -> np.ndarray:
    """``(n_obs, g)`` per-spot offsets: each gene's mean over the known entries of the spot's slide.

    ``groups`` holds each spot's slide code (:func:`~spared_tools._validation.slide_labels`); the offsets are the same in training
    and in completion whatever split cuts a slide, and every tissue piece of a slide shares them. A gene's
    mean is shrunk to ``prior`` with :data:`_CENTRE_PRIOR` pseudo-entries. Entries that are not ``known``
    (missing, or hidden for scoring) are never read.
    """
    from scipy.sparse import csr_matrix

    n = len(groups)
    _, label = np.unique(groups, return_inverse=True)
    member = csr_matrix((np.ones(n), (label, np.arange(n))), shape=(int(label.max()) + 1 if n else 0, n))
    k = known.astype(np.float64)
    sums = member @ (np.where(known, values, 0.0).astype(np.float64))
    cnts = member @ k
    mean = (sums + _CENTRE_PRIOR * prior.astype(np.float64)) / (cnts + _CENTRE_PRIOR)
    return mean[label].astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------
