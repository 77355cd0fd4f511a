r"""Moran's I kernels: per-slide sums on a sparse weight matrix (numba CPU kernel and torch kernel).

For slide ``s`` with spots ``i``, weights ``w_ij`` (only pairs inside the slide count), and centred values
``z_i = x_i - mean_s(x)`` of one gene:

.. math::

    I_s = \\frac{n_s}{S_{0,s}} \\frac{\\sum_{ij} w_{ij} z_i z_j}{\\sum_i z_i^2}

The kernels return the numerator ``sum_ij w_ij z_i z_j`` and denominator ``sum_i z_i^2`` per slide
and gene (sparse values through :func:`spared_tools._kernels.moran_sparse.moran_sums_csr`, which never
densifies them), accumulated in float64 whatever the input dtype; :func:`weight_moments` returns ``n_s``, ``S0``,
``S1`` and ``S2`` per slide for the statistic and its analytic variance. Pure array code; never imports
AnnData.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sps


def restrict_weights(
    W: sps.spmatrix, slide: np.ndarray, *, row_normalise: bool
) -> tuple[sps.csr_matrix, int]:
    """Keep only weights between spots of the same (fitted) slide, optionally row-normalised.

    Parameters
    ----------
    W
        ``(n, n)`` sparse weight matrix.
    slide
        Slide code per spot; ``-1`` marks spots left out of the fit.
    row_normalise
        Divide each row by its sum (rows without weight stay empty), as squidpy's ``transformation=True``.

    Returns
    -------
    weights
        ``float64`` CSR ``(n, n)`` with sorted indices and no explicit zeros.
    n_cross
        Number of non-zero weights that joined two different fitted slides (dropped).
    """
    W = sps.csr_matrix(W, dtype=np.float64, copy=True)
    W.sum_duplicates()
    W.eliminate_zeros()
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    sr, sc = slide[rows], slide[W.indices]
    same = (sr == sc) & (sr >= 0)
    n_cross = int(((sr != sc) & (sr >= 0) & (sc >= 0)).sum())
    if not same.all():
        W.data[~same] = 0.0
        W.eliminate_zeros()
    if row_normalise:
        rs = np.asarray(W.sum(axis=1)).ravel()
        scale = np.divide(1.0, rs, out=np.zeros_like(rs), where=rs != 0)
        W.data *= np.repeat(scale, np.diff(W.indptr))
    W.sort_indices()
    return W, n_cross


def weight_moments(W: sps.csr_matrix, slide: np.ndarray, n_slides: int) -> dict[str, np.ndarray]:
    """Per-slide spot count and weight moments (pysal/esda definitions) of a slide-restricted ``W``.

    Parameters
    ----------
    W
        ``(n, n)`` CSR weights already restricted to within-slide pairs (see :func:`restrict_weights`).
    slide
        Slide code per spot (``-1``: not fitted).
    n_slides
        Number of slide codes.

    Returns
    -------
    Dict of ``float64`` arrays ``(n_slides,)``: ``n`` (spots), ``S0`` (sum of weights),
    ``S1`` (``sum_ij (w_ij + w_ji)^2 / 2``) and ``S2`` (``sum_i (w_i. + w_.i)^2``).
    """
    valid = slide >= 0
    n = np.bincount(slide[valid], minlength=n_slides).astype(np.float64)
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    S0 = np.bincount(slide[rows], weights=W.data, minlength=n_slides).astype(np.float64)
    T = (W + W.T).tocsr()
    trows = np.repeat(np.arange(T.shape[0]), np.diff(T.indptr))
    S1 = np.bincount(slide[trows], weights=T.data**2, minlength=n_slides) / 2.0
    deg = np.asarray(W.sum(axis=1)).ravel() + np.asarray(W.sum(axis=0)).ravel()
    S2 = np.bincount(slide[valid], weights=deg[valid] ** 2, minlength=n_slides).astype(np.float64)
    return {"n": n, "S0": S0, "S1": S1.astype(np.float64), "S2": S2}


@numba.njit(cache=True)
def _sums_rows(X, slide, lo, hi, out):
    """Add rows ``lo:hi`` of ``X`` to ``out[slide[i]]`` (spots with slide ``-1`` skipped)."""
    g = X.shape[1]
    for i in range(lo, hi):
        s = slide[i]
        if s < 0:
            continue
        for k in range(g):
            out[s, k] += X[i, k]


@numba.njit(cache=True)
def _moran_rows(indptr, indices, data, rowsum, slide, X, means, lo, hi, num, den, acc):
    """Spots ``lo:hi``: ``(W x)_i`` over whole rows, then the centred products and squares."""
    g = X.shape[1]
    for i in range(lo, hi):
        s = slide[i]
        if s < 0:
            continue
        acc[:] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            w = data[p]
            for k in range(g):
                acc[k] += w * X[j, k]
        r = rowsum[i]
        for k in range(g):
            mu = means[s, k]
            zi = X[i, k] - mu
            num[s, k] += zi * (acc[k] - r * mu)
            den[s, k] += zi * zi


@numba.njit(cache=True, parallel=True)
def _slide_sums_parallel(X, slide, n_slides, n_chunks):
    n, g = X.shape
    out = np.zeros((n_chunks, n_slides, g), dtype=np.float64)
    step = (n + n_chunks - 1) // n_chunks
    for t in numba.prange(n_chunks):
        _sums_rows(X, slide, t * step, min(n, (t + 1) * step), out[t])
    return out.sum(axis=0)


@numba.njit(cache=True)
def _slide_sums_serial(X, slide, n_slides):
    out = np.zeros((n_slides, X.shape[1]), dtype=np.float64)
    _sums_rows(X, slide, 0, X.shape[0], out)
    return out


@numba.njit(cache=True, parallel=True)
def _moran_sums_parallel(indptr, indices, data, rowsum, slide, X, means, n_slides, n_chunks):
    n, g = X.shape
    num = np.zeros((n_chunks, n_slides, g), dtype=np.float64)
    den = np.zeros((n_chunks, n_slides, g), dtype=np.float64)
    step = (n + n_chunks - 1) // n_chunks
    for t in numba.prange(n_chunks):
        acc = np.empty(g, dtype=np.float64)
        lo, hi = t * step, min(n, (t + 1) * step)
        _moran_rows(indptr, indices, data, rowsum, slide, X, means, lo, hi, num[t], den[t], acc)
    return num.sum(axis=0), den.sum(axis=0)


@numba.njit(cache=True)
def _moran_sums_serial(indptr, indices, data, rowsum, slide, X, means, n_slides):
    n, g = X.shape
    num = np.zeros((n_slides, g), dtype=np.float64)
    den = np.zeros((n_slides, g), dtype=np.float64)
    acc = np.empty(g, dtype=np.float64)
    _moran_rows(indptr, indices, data, rowsum, slide, X, means, 0, n, num, den, acc)
    return num, den


#: Below this many matrix entries (spots x genes) the kernels run on one thread: a parallel region costs
#: more than it saves on small inputs, and much more on a loaded machine.
PARALLEL_MIN_ENTRIES = 20_000_000


def _n_chunks(n_slides: int, n_genes: int, n_entries: int) -> int:
    """Spot ranges processed in parallel (1 = serial): 4 per thread, accumulators capped at 256 MiB."""
    threads = numba.get_num_threads()
    if threads <= 1 or n_entries < PARALLEL_MIN_ENTRIES:
        return 1
    per_chunk = max(1, 2 * n_slides * n_genes * 8)
    return int(max(1, min(4 * threads, (256 * 2**20) // per_chunk)))


def _dense_chunks(X, cols: np.ndarray, chunk: int):
    """Yield ``(position, C-contiguous dense block)`` over gene columns ``cols`` of dense or sparse ``X``."""
    if not sps.issparse(X) and isinstance(X, np.ndarray) and X.flags.c_contiguous and cols.size == X.shape[1]:
        if np.array_equal(cols, np.arange(X.shape[1])) and X.dtype in (np.float32, np.float64):
            yield 0, X
            return
    Xs = sps.csc_matrix(X) if sps.issparse(X) else X
    for start in range(0, cols.size, chunk):
        sel = cols[start : start + chunk]
        block = Xs[:, sel]
        block = block.toarray() if sps.issparse(block) else np.asarray(block)
        dtype = block.dtype if block.dtype in (np.float32, np.float64) else np.float64
        yield start, np.ascontiguousarray(block, dtype=dtype)


def moran_sums_cpu(
    W: sps.csr_matrix,
    slide: np.ndarray,
    n_slides: int,
    X,
    cols: np.ndarray | None = None,
    *,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slide Moran sums with the numba kernel (spot ranges in parallel, float64 accumulation).

    Parameters
    ----------
    W
        ``(n, n)`` CSR weights restricted to within-slide pairs (see :func:`restrict_weights`).
    slide
        ``int64`` slide code per spot, ``-1`` for spots left out.
    n_slides
        Number of slide codes.
    X
        ``(n, G)`` dense array or scipy sparse matrix of values (sparse: :func:`moran_sums_csr`).
    cols
        Gene columns to use (default: all).
    chunk
        Genes copied at a time for non-contiguous dense inputs.

    Returns
    -------
    means, num, den
        ``float64`` arrays ``(n_slides, len(cols))``: the per-slide mean, ``sum_ij w_ij z_i z_j`` and
        ``sum_i z_i^2``.
    """
    if sps.issparse(X):
        from .moran_sparse import moran_sums_csr

        return moran_sums_csr(W, slide, n_slides, X, cols, n_chunks=_n_chunks)
    slide = np.ascontiguousarray(slide, dtype=np.int64)
    cols = np.arange(X.shape[1]) if cols is None else np.asarray(cols, dtype=np.int64)
    counts = np.bincount(slide[slide >= 0], minlength=n_slides).astype(np.float64)
    W = sps.csr_matrix(W, dtype=np.float64)
    indptr = W.indptr.astype(np.int64)
    indices = W.indices.astype(np.int64)
    rowsum = np.asarray(W.sum(axis=1)).ravel().astype(np.float64)
    means = np.empty((n_slides, cols.size))
    num = np.empty((n_slides, cols.size))
    den = np.empty((n_slides, cols.size))
    for start, block in _dense_chunks(X, cols, chunk):
        stop = start + block.shape[1]
        chunks = _n_chunks(n_slides, block.shape[1], block.size)
        safe = np.where(counts > 0, counts, 1.0)
        if chunks == 1:
            mu = _slide_sums_serial(block, slide, n_slides) / safe[:, None]
            nm, dn = _moran_sums_serial(indptr, indices, W.data, rowsum, slide, block, mu, n_slides)
        else:
            mu = _slide_sums_parallel(block, slide, n_slides, chunks) / safe[:, None]
            nm, dn = _moran_sums_parallel(indptr, indices, W.data, rowsum, slide, block, mu, n_slides, chunks)
        means[:, start:stop], num[:, start:stop], den[:, start:stop] = mu, nm, dn
    return means, num, den


def moran_sums_torch(
    W: sps.csr_matrix,
    slide: np.ndarray,
    n_slides: int,
    X,
    cols: np.ndarray | None = None,
    *,
    device="cpu",
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slide Moran sums with torch (sparse @ dense on ``device``, float64), same outputs as :func:`moran_sums_cpu`.

    Parameters
    ----------
    W
        ``(n, n)`` CSR weights restricted to within-slide pairs.
    slide
        Slide code per spot, ``-1`` for spots left out.
    n_slides
        Number of slide codes.
    X
        ``(n, G)`` dense array or scipy sparse matrix of values.
    cols
        Gene columns to use (default: all).
    device
        Torch device (``"cpu"``, ``"cuda"``, a :class:`torch.device`).
    chunk
        Genes moved to the device and processed at a time.

    Returns
    -------
    means, num, den
        ``float64`` NumPy arrays ``(n_slides, len(cols))``.
    """
    import torch

    device = torch.device(device)
    slide = np.asarray(slide, dtype=np.int64)
    cols = np.arange(X.shape[1]) if cols is None else np.asarray(cols, dtype=np.int64)
    keep = np.flatnonzero(slide >= 0)
    Wk = sps.csr_matrix(W, dtype=np.float64)[keep][:, keep].tocoo()
    Wt = torch.sparse_coo_tensor(
        torch.from_numpy(np.vstack([Wk.row, Wk.col]).astype(np.int64)),
        torch.from_numpy(Wk.data),
        size=(keep.size, keep.size),
        check_invariants=False,
    )
    Wt = Wt.coalesce().to(device)
    s = torch.from_numpy(slide[keep]).to(device)
    counts = torch.bincount(s, minlength=n_slides).to(torch.float64).clamp_min(1.0)
    Xk = X[keep] if keep.size != X.shape[0] else X
    Xk = sps.csc_matrix(Xk) if sps.issparse(Xk) else Xk
    means = np.empty((n_slides, cols.size))
    num = np.empty((n_slides, cols.size))
    den = np.empty((n_slides, cols.size))
    for start in range(0, cols.size, chunk):
        sel = cols[start : start + chunk]
        block = Xk[:, sel]
        block = block.toarray() if sps.issparse(block) else np.asarray(block)
        Z = torch.as_tensor(np.ascontiguousarray(block)).to(device=device, dtype=torch.float64)
        mu = torch.zeros((n_slides, Z.shape[1]), dtype=torch.float64, device=device).index_add_(0, s, Z)
        mu /= counts[:, None]
        Z -= mu[s]
        WZ = Wt @ Z
        nm = torch.zeros_like(mu).index_add_(0, s, Z * WZ)
        dn = torch.zeros_like(mu).index_add_(0, s, Z * Z)
        stop = start + sel.size
        means[:, start:stop] = mu.cpu().numpy()
        num[:, start:stop] = nm.cpu().numpy()
        den[:, start:stop] = dn.cpu().numpy()
    return means, num, den


def moran_from_sums(
    num: np.ndarray, den: np.ndarray, means: np.ndarray, moments: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Moran's I per slide and gene from the kernel sums; constant genes give NaN.

    Parameters
    ----------
    num
        ``(S, G)`` sums ``sum_ij w_ij z_i z_j``.
    den
        ``(S, G)`` sums ``sum_i z_i^2``.
    means
        ``(S, G)`` per-slide means (to tell constant genes from rounding noise).
    moments
        Output of :func:`weight_moments`.

    Returns
    -------
    I
        ``(S, G)`` Moran's I, NaN where the gene is constant on the slide.
    constant
        ``(S, G)`` bool, True where the gene is constant on the slide.
    """
    n = moments["n"][:, None]
    S0 = moments["S0"][:, None]
    constant = den <= n * (1e-12 * np.abs(means)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        I = (n / S0) * num / den  # noqa: E741
    I[constant] = np.nan
    return I, constant


def analytic_moments(moments: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Expected value and variance of Moran's I under the normality assumption, per slide.

    Parameters
    ----------
    moments
        Output of :func:`weight_moments`.

    Returns
    -------
    expected
        ``-1 / (n - 1)`` per slide.
    variance
        ``(n^2 S1 - n S2 + 3 S0^2) / ((n - 1)(n + 1) S0^2) - (1 / (n - 1))^2`` per slide
        (Cliff & Ord 1981; the formula of pysal/esda and squidpy).
    """
    n, S0, S1, S2 = (moments[k] for k in ("n", "S0", "S1", "S2"))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = -1.0 / (n - 1.0)
        s02 = S0 * S0
        var = (n * n * S1 - n * S2 + 3.0 * s02) / ((n - 1.0) * (n + 1.0) * s02) - expected**2
    return expected, var
