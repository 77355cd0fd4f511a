r"""Moran's I sums of a sparse (CSR) matrix from its stored entries only. Never imports AnnData.

The dense kernel of :func:`spared_tools._kernels.moran.moran_sums_cpu` computes ``(W x)_i`` for every
gene of a row. Here a CSR matrix is read as it is, without densifying: with ``r_i`` and ``c_i`` the row
and column sums of the (slide-restricted) weights,

.. math::

    \sum_{ij} w_{ij} z_i z_j = \sum_{ij} w_{ij} x_i x_j - \mu \sum_i (r_i + c_i) x_i + \mu^2 S_0,
    \qquad \sum_i z_i^2 = \sum_{x_i \ne 0} (x_i - \mu)^2 + (n - \mathrm{nnz}) \mu^2,

so only stored entries are visited: the first sum is one pass over every weight ``w_ij`` and the stored
entries of row ``j``, the cost of the sparse product ``W @ X`` without writing it.

Results equal :func:`spared_tools._kernels.moran.moran_sums_cpu` on the densified matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import scipy.sparse as sps

from .threads import run_blocks


@numba.njit(cache=True)
def _csr_slide_sums(xptr, xind, xdat, slide, lo, hi, sums, nnz):
    """Rows ``lo:hi`` of a CSR matrix: per-slide column sums and stored-entry counts."""
    for i in range(lo, hi):
        s = slide[i]
        if s < 0:
            continue
        for q in range(xptr[i], xptr[i + 1]):
            k = xind[q]
            sums[s, k] += xdat[q]
            nnz[s, k] += 1.0


@numba.njit(cache=True)
def _csr_moran_rows(indptr, indices, data, rc, xptr, xind, xdat, slide, means, lo, hi, xwx, lin, dev, xi):
    """Rows ``lo:hi``: ``sum_j w_ij x_i x_j``, ``(r_i + c_i) x_i`` and ``(x_i - mu)^2`` over stored entries.

    ``xi`` is a zeroed dense buffer of one row (left zeroed).
    """
    for i in range(lo, hi):
        s = slide[i]
        if s < 0:
            continue
        f = rc[i]
        for q in range(xptr[i], xptr[i + 1]):
            k = xind[q]
            v = np.float64(xdat[q])
            xi[k] = v
            lin[s, k] += f * v
            d = v - means[s, k]
            dev[s, k] += d * d
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            w = data[p]
            for q in range(xptr[j], xptr[j + 1]):
                k = xind[q]
                xwx[s, k] += w * xi[k] * xdat[q]
        for q in range(xptr[i], xptr[i + 1]):
            xi[xind[q]] = 0.0


@numba.njit(nogil=True, cache=True)
def _csr_sums_blocks(xptr, xind, xdat, slide, step, sums, nnz, b0, b1):
    """Row blocks ``b0:b1`` of ``step`` rows each, block ``b`` into ``sums[b]`` / ``nnz[b]``."""
    n = slide.shape[0]
    for b in range(b0, b1):
        _csr_slide_sums(xptr, xind, xdat, slide, b * step, min(n, (b + 1) * step), sums[b], nnz[b])


@numba.njit(nogil=True, cache=True)
def _csr_moran_blocks(indptr, indices, data, rc, xptr, xind, xdat, slide, means, step, xwx, lin, dev, b0, b1):
    """Row blocks ``b0:b1``: the sums of :func:`_csr_moran_rows`, block ``b`` into ``xwx[b]`` etc."""
    n = slide.shape[0]
    xi = np.zeros(means.shape[1])
    for b in range(b0, b1):
        lo, hi = b * step, min(n, (b + 1) * step)
        _csr_moran_rows(
            indptr, indices, data, rc, xptr, xind, xdat, slide, means, lo, hi, xwx[b], lin[b], dev[b], xi
        )


def moran_sums_csr(
    W: sps.csr_matrix,
    slide: np.ndarray,
    n_slides: int,
    X,
    cols: np.ndarray | None = None,
    *,
    n_chunks: Callable[[int, int, int], int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slide Moran sums of a sparse matrix from its stored entries only (no densified blocks).

    Parameters
    ----------
    W
        ``(n, n)`` CSR weights restricted to within-slide pairs (see :func:`restrict_weights`).
    slide
        Slide code per spot, ``-1`` for spots left out.
    n_slides
        Number of slide codes.
    X
        ``(n, G)`` scipy sparse matrix (any format; CSR is used as it is).
    cols
        Gene columns to use (default: all).
    n_chunks
        ``(n_slides, n_accumulators, n_entries) -> number of row blocks``: the dense kernel's rule
        (:func:`spared_tools._kernels.moran._n_chunks`), passed in by the caller so that this module
        does not import :mod:`spared_tools._kernels.moran` back.

    Returns
    -------
    means, num, den
        ``float64`` arrays ``(n_slides, len(cols))``, as :func:`moran_sums_cpu`.
    """
    slide = np.ascontiguousarray(slide, dtype=np.int64)
    X = sps.csr_matrix(X)
    if cols is not None:
        cols = np.asarray(cols, dtype=np.int64)
        if not np.array_equal(cols, np.arange(X.shape[1])):
            X = X[:, cols]
    if not X.has_canonical_format:  # duplicates would be squared apart in the deviations
        X = X.copy()
        X.sum_duplicates()
    xdat = X.data if X.dtype in (np.float32, np.float64) else X.data.astype(np.float64)
    xptr = X.indptr.astype(np.int64, copy=False)
    xind = X.indices.astype(np.int32, copy=False)
    W = sps.csr_matrix(W, dtype=np.float64)
    indptr = W.indptr.astype(np.int64, copy=False)
    indices = W.indices.astype(np.int64, copy=False)
    rc = np.asarray(W.sum(axis=1)).ravel() + np.asarray(W.sum(axis=0)).ravel()
    counts = np.bincount(slide[slide >= 0], minlength=n_slides).astype(np.float64)
    n_genes = X.shape[1]
    # work ~ stored entries x (1 + neighbours per spot); accumulators 5 per block (3x the dense kernel's 2).
    # Serial nogil kernels over row blocks on sp.settings.n_jobs threads (compile once, no parfors).
    n = slide.shape[0]
    n_blocks = n_chunks(n_slides, 3 * n_genes, int(X.nnz * (1 + W.nnz / max(W.shape[0], 1))))
    step = max(1, (n + n_blocks - 1) // n_blocks)
    sums = np.zeros((n_blocks, n_slides, n_genes))
    nnz = np.zeros((n_blocks, n_slides, n_genes))
    run_blocks(_csr_sums_blocks, n_blocks, xptr, xind, xdat, slide, step, sums, nnz, blocks_per_thread=1)
    with np.errstate(invalid="ignore", over="ignore"):
        means = sums.sum(axis=0) / np.maximum(counts, 1.0)[:, None]
    nnz = nnz.sum(axis=0)
    xwx = np.zeros((n_blocks, n_slides, n_genes))
    lin = np.zeros((n_blocks, n_slides, n_genes))
    dev = np.zeros((n_blocks, n_slides, n_genes))
    args = (indptr, indices, W.data, rc, xptr, xind, xdat, slide, means, step, xwx, lin, dev)
    run_blocks(_csr_moran_blocks, n_blocks, *args, blocks_per_thread=1)
    xwx, lin, dev = xwx.sum(axis=0), lin.sum(axis=0), dev.sum(axis=0)
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    S0 = np.bincount(slide[rows], weights=W.data, minlength=n_slides)[:, None] if W.nnz else 0.0
    # NaN / inf values come out as non-finite sums, which the caller reports by gene (no numpy warning)
    with np.errstate(invalid="ignore", over="ignore"):
        num = xwx - means * lin + means**2 * S0
        den = dev + (counts[:, None] - nnz) * means**2
    return means, num, den
