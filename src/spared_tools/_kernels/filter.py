"""Per-slide expression counts for SpaRED's filter, in one pass over a CSR matrix. Never imports AnnData."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _csr_expressed(indptr, indices, data, rows, codes, n_slides, n_genes):  # pragma: no cover - numba
    expressed = np.zeros((n_slides, n_genes), dtype=np.int64)
    totals = np.zeros(n_genes, dtype=np.float64)
    for r in rows:
        s = codes[r]
        for k in range(indptr[r], indptr[r + 1]):
            v = data[k]
            if v > 0:
                g = indices[k]
                expressed[s, g] += 1
                totals[g] += v
    return expressed, totals


def expressed_per_slide(
    X, rows: np.ndarray, codes: np.ndarray, n_slides: int
) -> tuple[np.ndarray, np.ndarray]:
    """Spots with a positive value per slide and gene, and per-gene totals, over the spots ``rows``.

    Parameters
    ----------
    X
        ``(n_obs, n_genes)`` non-negative counts: a CSR matrix or a dense array.
    rows
        Indices of the spots to count.
    codes
        Integer slide code of every spot (``0 … n_slides - 1``).
    n_slides
        Number of slides.

    Returns
    -------
    ``expressed`` ``(n_slides, n_genes)`` int64 and ``totals`` ``(n_genes,)`` float64.
    """
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    n_genes = X.shape[1]
    if hasattr(X, "indptr"):
        return _csr_expressed(X.indptr, X.indices, X.data, rows, codes, n_slides, n_genes)
    X = np.asarray(X)
    expressed = np.zeros((n_slides, n_genes), dtype=np.int64)
    totals = np.zeros(n_genes, dtype=np.float64)
    sub_codes = codes[rows]
    for s in range(n_slides):
        block = X[rows[sub_codes == s]]
        expressed[s] = (block > 0).sum(axis=0)
        totals += block.sum(axis=0, dtype=np.float64)
    return expressed, totals
