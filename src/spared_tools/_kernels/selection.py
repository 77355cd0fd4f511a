"""Median selection on the CPU: small-window ranks, quickselect, radix select, median networks.

Building blocks of the adaptive median (:mod:`spared_tools._kernels.median`), kept apart from the
window logic: rank selection for short buffers, quickselect and a 3-pass radix select for long ones,
the per-slide median of the non-zero values (the completion's fallback), and Batcher median-selection
networks. Never imports AnnData.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from .threads import run_blocks


@njit(cache=True, inline="always")
def _select(buf, m, r):  # pragma: no cover - numba
    # Move the r-th smallest of buf[0:m] to buf[r] (Hoare quickselect, median-of-three pivot); afterwards
    # buf[0:r] <= buf[r] <= buf[r + 1:m].
    lo = 0
    hi = m - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        a = buf[lo]
        b = buf[mid]
        c = buf[hi]
        if a > b:
            a, b = b, a
        if b > c:
            b = c
            if a > b:
                b = a
        pivot = b
        i = lo
        j = hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        if r <= j:
            hi = j
        elif r >= i:
            lo = i
        else:
            break
    return buf[r]


@njit(cache=True, inline="always")
def _kth_small(buf, m, r):  # pragma: no cover - numba
    # r-th smallest of a short buf[0:m] by branch-free rank counting (faster than selection for m <= 32).
    res = buf[0]
    for a in range(m):
        va = buf[a]
        lt = 0
        le = 0
        for b in range(m):
            vb = buf[b]
            lt += vb < va
            le += vb <= va
        if lt <= r and r < le:
            res = va
    return res


@njit(cache=True, inline="always")
def _rank_median(buf, m, r, even):  # pragma: no cover - numba
    # Median of a window whose sorted non-zero values are buf[0:m] (any order) preceded by zeros: the
    # upper middle element is the r-th smallest non-zero; for an even window the lower middle one is the
    # (r - 1)-th, or a zero when r == 0. buf may be reordered.
    if m <= 32:
        hi = np.float64(_kth_small(buf, m, r))
        if not even:
            return hi
        lo = np.float64(_kth_small(buf, m, r - 1)) if r >= 1 else 0.0
        return (lo + hi) / 2.0
    hi = np.float64(_select(buf, m, r))
    if not even:
        return hi
    lo = 0.0
    if r >= 1:
        lo = np.float64(buf[0])
        for c in range(1, r):
            if buf[c] > lo:
                lo = np.float64(buf[c])
    return (lo + hi) / 2.0


_TILE = 16  # genes per work item of the slide-median kernels (one cache line of float32)


@njit(cache=True, inline="always")
def _gather_nonzero_tile(X, order, starts, t, n_tiles):  # pragma: no cover - numba
    # Work item t (tile t % n_tiles of slide s = t // n_tiles): stream the slide's rows order[starts[s]:
    # starts[s + 1]] once and append (branch-free) the non-zero values of the tile's w columns j0 … j0+w-1
    # to buf[q, :]. Returns (s, j0, w, buf, count per column).
    s = t // n_tiles
    j0 = (t % n_tiles) * _TILE
    w = min(X.shape[1], j0 + _TILE) - j0
    buf = np.empty((_TILE, starts[s + 1] - starts[s]), dtype=X.dtype)
    cnt = np.zeros(_TILE, dtype=np.int64)
    for r in range(starts[s], starts[s + 1]):
        row = order[r]
        for q in range(w):
            v = X[row, j0 + q]
            buf[q, cnt[q]] = v
            cnt[q] += v != 0
    return s, j0, w, buf, cnt


@njit(nogil=True, cache=True)
def _slide_nonzero_median_kernel(X, order, starts, out, lo, hi):  # pragma: no cover - numba
    # Tiles of 16 genes (one cache line of float32) x one slide: the rows are streamed once and each
    # gene's non-zero values appended (branch-free) to its buffer, then one selection per gene.
    n_tiles = (X.shape[1] + _TILE - 1) // _TILE
    for t in range(lo, hi):  # tiles t of the n_tiles * n_slides, this block's
        s, j0, w, buf, cnt = _gather_nonzero_tile(X, order, starts, t, n_tiles)
        for q in range(w):
            m = cnt[q]
            if m == 0:
                out[s, j0 + q] = 0.0
            else:
                h = m // 2
                b = buf[q]
                out[s, j0 + q] = _rank_median(b, m, h, m % 2 == 0)


@njit(cache=True, inline="always")
def _radix_select_u32(keys, m, r, hist):  # pragma: no cover - numba
    # r-th smallest of keys[0:m] (reordered in place) by three rounds of counting on 11/11/10-bit digits:
    # branch-free passes instead of quickselect's unpredictable comparisons.
    n = m
    for level in range(3):
        sh = 21 if level == 0 else (10 if level == 1 else 0)
        mask = np.uint32(2047 if level < 2 else 1023)
        for b in range(mask + 1):
            hist[b] = 0
        for t in range(n):
            hist[(keys[t] >> sh) & mask] += 1
        acc = 0
        b = 0
        while acc + hist[b] <= r:
            acc += hist[b]
            b += 1
        r -= acc
        c = 0
        for t in range(n):
            v = keys[t]
            keys[c] = v
            c += ((v >> sh) & mask) == b
        n = c
    return keys[0]


@njit(nogil=True, cache=True)
def _slide_nonzero_median_kernel_u32(K, order, starts, lo_out, hi_out, lo, hi):  # pragma: no cover - numba
    # Positive float32 values compare like their bit patterns (uint32 keys): gather each gene's non-zero
    # keys per slide (tiles of 16 genes) and radix-select the middle one(s).
    n_tiles = (K.shape[1] + _TILE - 1) // _TILE
    for t in range(lo, hi):  # tiles t of the n_tiles * n_slides, this block's
        s, j0, w, buf, cnt = _gather_nonzero_tile(K, order, starts, t, n_tiles)  # K is uint32: so is buf
        hist = np.empty(2048, dtype=np.int64)
        scratch = np.empty(starts[s + 1] - starts[s], dtype=np.uint32)
        for q in range(w):
            m = cnt[q]
            if m == 0:
                lo_out[s, j0 + q] = 0
                hi_out[s, j0 + q] = 0
                continue
            b = buf[q]
            h = m // 2
            if m % 2 == 0:  # the selection compacts its input in place: select the lower middle on a copy
                for c in range(m):
                    scratch[c] = b[c]
                lo_out[s, j0 + q] = _radix_select_u32(scratch, m, h - 1, hist)
            hi_out[s, j0 + q] = _radix_select_u32(b, m, h, hist)
            if m % 2 == 1:
                lo_out[s, j0 + q] = hi_out[s, j0 + q]


def _n_tiles(X: np.ndarray, n_slides: int) -> int:
    """Work items of the slide-median kernels: tiles of ``_TILE`` genes x slides."""
    return ((X.shape[1] + _TILE - 1) // _TILE) * n_slides


def slide_nonzero_median(X: np.ndarray, slide_codes: np.ndarray, n_slides: int) -> np.ndarray:
    """Median of the non-zero values of every column within every slide (0 where a column has none).

    Parameters
    ----------
    X
        ``(n_obs, n_genes)`` dense values.
    slide_codes
        ``(n_obs,)`` integer slide of each row, ``0 … n_slides - 1``.
    n_slides
        Number of slides.

    Returns
    -------
    ``(n_slides, n_genes)`` array of the same dtype as ``X``.
    """
    codes = np.asarray(slide_codes, dtype=np.int64)
    order = np.argsort(codes, kind="stable").astype(np.int64)
    starts = np.searchsorted(codes[order], np.arange(n_slides + 1)).astype(np.int64)
    X = np.ascontiguousarray(X)
    if X.dtype == np.float32 and (X.size == 0 or X.min() >= 0):
        lo = np.zeros((n_slides, X.shape[1]), dtype=np.uint32)
        hi = np.zeros((n_slides, X.shape[1]), dtype=np.uint32)
        run_blocks(
            _slide_nonzero_median_kernel_u32, _n_tiles(X, n_slides), X.view(np.uint32), order, starts, lo, hi
        )
        mid = (lo.view(np.float32).astype(np.float64) + hi.view(np.float32).astype(np.float64)) / 2.0
        return mid.astype(np.float32)
    out = np.zeros((n_slides, X.shape[1]), dtype=np.float64)
    run_blocks(_slide_nonzero_median_kernel, _n_tiles(X, n_slides), X, order, starts, out)
    return out.astype(X.dtype, copy=False)


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for ``n`` (a power of two) inputs."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.cache
def median_network(n: int) -> tuple[np.ndarray, int]:
    """A comparator network that selects the median of ``n`` (odd) values.

    Batcher's sorting network on the next power of two, with the extra inputs fixed at +inf and
    propagated away (a comparator against +inf is a no-op or a relabelling), then pruned backwards to the
    comparators the middle output depends on (7 → 14, 19 → 79, 37 → 223, 61 → 421 comparators).

    Parameters
    ----------
    n
        Number of inputs (odd).

    Returns
    -------
    ``(pairs, out)``: ``int64 (n_comparators, 2)`` rows ``(a, b)`` meaning "put min in a, max in b",
    over inputs ``0 … n - 1``, and the input slot that holds the median at the end.
    """
    if n < 1 or n % 2 == 0:
        raise ValueError(f"median_network needs an odd number of inputs, got {n}.")
    size = 1
    while size < n:
        size *= 2
    slot = list(range(size))
    inf = [w >= n for w in range(size)]
    ops = []
    for i, j in _batcher_pairs(size):
        if inf[j]:
            continue
        if inf[i]:
            slot[i], slot[j] = slot[j], slot[i]
            inf[i], inf[j] = False, True
            continue
        ops.append((slot[i], slot[j]))
    out = slot[n // 2]
    needed = {out}
    keep = []
    for a, b in reversed(ops):
        if a in needed or b in needed:
            keep.append((a, b))
            needed |= {a, b}
    return np.asarray(keep[::-1], dtype=np.int64).reshape(-1, 2), int(out)
