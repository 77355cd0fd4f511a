"""Adaptive median completion (SpaRED rule) on dense arrays. Never imports AnnData.

For a missing entry ``(spot i, gene j)`` the completed value is the median of ``X[w, j]`` over the window
``w`` = spot ``i`` and every neighbour within ``k`` lattice rings, for ``k = 1 … n_rings``, zeros (and other
missing entries, with their current value) included; the first non-zero median wins. When all of them
are zero the value is the median of the gene's non-zero values in the spot's slide, and 0 when the gene
has no non-zero value in that slide. Observed entries are copied unchanged.

Two backends compute exactly the same thing:

* :func:`adaptive_median_numba` — parallel over spots. For non-negative data the non-zero counts of all
  genes are accumulated ring by ring (SIMD row additions) to find each missing entry's first window with a
  non-zero median; only those entries need a median (a median-selection network across the genes that
  stop at the same complete window, otherwise a branch-free gather and a rank selection). Data with
  negative values use an incremental insertion sort per entry.
* :func:`adaptive_median_torch` — chunks of spots × genes gathered into ``(spots, window, genes)`` tensors
  and sorted along the window axis; meant for GPUs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from spared_tools._checks import check_int

from .selection import _rank_median, median_network, slide_nonzero_median
from .threads import run_blocks

__all__ = [
    "adaptive_median_numba",
    "adaptive_median_torch",
    "median_network",
    "parallel_copy",
    "ring_bounds",
    "slide_nonzero_median",
    "sort_table_by_ring",
]


def ring_bounds(ring: np.ndarray, n_rings: int) -> np.ndarray:
    """End column (exclusive) of each ring ``0 … n_rings`` in a neighbour table sorted by ring.

    Parameters
    ----------
    ring
        Ring of every table column, non-decreasing, ``ring[0] == 0`` (the spot itself).
    n_rings
        Largest ring used.

    Returns
    -------
    ``int64`` array of length ``n_rings + 1``: columns ``[0, bounds[k])`` hold the window of ``k`` rings.
    """
    ring = np.asarray(ring)
    if ring.ndim != 1 or ring.size == 0 or ring[0] != 0:
        raise ValueError("ring must be a 1-D array whose first entry (the spot itself) is 0.")
    if np.any(np.diff(ring) < 0):
        raise ValueError("neighbour table columns must be ordered by ring.")
    return np.searchsorted(ring, np.arange(n_rings + 1), side="right").astype(np.int64)


def sort_table_by_ring(table: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(table, ring)`` with columns stably sorted by ring (no-op when already sorted).

    Parameters
    ----------
    table
        ``(n_obs, 1 + K)`` neighbour indices, ``-1`` where there is no spot.
    ring
        ``(1 + K,)`` ring of each column.

    Returns
    -------
    The reordered table (``int64``, C-contiguous) and ring.
    """
    ring = np.asarray(ring, dtype=np.int64)
    if ring.size == 0 or np.all(ring[1:] >= ring[:-1]):
        return np.ascontiguousarray(table, dtype=np.int64), ring
    order = np.argsort(ring, kind="stable")
    return np.ascontiguousarray(np.asarray(table, dtype=np.int64)[:, order]), ring[order]


@njit(cache=True, inline="always")
def _present_neighbours(table, i, bounds):  # pragma: no cover - numba
    # The window positions of spot i that hold a spot, in ring order: nbs[:ends[k]] are the spots of the
    # k-ring window (columns 0 … bounds[k] - 1, the spot itself included); ends[0] = 0.
    n_rings = bounds.shape[0] - 1
    nbs = np.empty(bounds[n_rings], dtype=np.int64)
    ends = np.zeros(n_rings + 1, dtype=np.int64)
    q = 0
    for k in range(1, n_rings + 1):
        for c in range(0 if k == 1 else bounds[k - 1], bounds[k]):
            if table[i, c] >= 0:
                nbs[q] = table[i, c]
                q += 1
        ends[k] = q
    return nbs, ends


@njit(nogil=True, cache=True)
def _adaptive_median_kernel(
    X, missing, table, bounds, fallback, slide_codes, out, lo, hi
):  # pragma: no cover - numba
    n_genes = X.shape[1]
    n_rings = bounds.shape[0] - 1
    width = bounds[n_rings]
    for i in range(lo, hi):
        buf = np.empty(width, dtype=np.float64)
        s = slide_codes[i]
        nbs, ends = _present_neighbours(table, i, bounds)
        for j in range(n_genes):
            if not missing[i, j]:
                out[i, j] = X[i, j]
                continue
            value = fallback[s, j]
            n = 0
            for k in range(1, n_rings + 1):
                for c in range(ends[k - 1], ends[k]):  # insertion sort of the window's values
                    v = np.float64(X[nbs[c], j])
                    p = n
                    while p > 0 and buf[p - 1] > v:
                        buf[p] = buf[p - 1]
                        p -= 1
                    buf[p] = v
                    n += 1
                if n == 0:
                    continue
                h = n // 2
                if n % 2 == 1:
                    med = buf[h]
                else:
                    med = (buf[h - 1] + buf[h]) / 2.0
                if med != 0.0:
                    value = med
                    break
            out[i, j] = value


def _ring_networks(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median networks of the full windows ``bounds[1:]`` concatenated: (pairs, start per ring, out slot)."""
    n_rings = bounds.shape[0] - 1
    parts, starts, outs = [], np.zeros(n_rings + 2, dtype=np.int64), np.full(n_rings + 1, -1, np.int64)
    for k in range(1, n_rings + 1):
        w = int(bounds[k])
        if w % 2 == 1:
            pairs, out = median_network(w)
            parts.append(pairs)
            outs[k] = out
        else:
            parts.append(np.zeros((0, 2), dtype=np.int64))
        starts[k + 1] = starts[k] + len(parts[-1])
    return np.ascontiguousarray(np.concatenate(parts)), starts, outs


@njit(nogil=True, cache=True)
def _adaptive_median_kernel_nonneg(
    X, nz, missing, invert, table, bounds, net, net_start, net_out, fallback, slide_codes, out, lo, hi
):  # pragma: no cover
    # Same rule for X >= 0. A window median is zero exactly when more than half of the window is zero,
    # so for every spot the non-zero counts of all genes (``nz``: X != 0 as uint8) are accumulated ring by
    # ring with contiguous SIMD row additions, stopping at the first ring after which no missing gene is
    # undecided. Only entries whose first "at most half zeros" window exists then need a median. When
    # that window is complete (no lattice position empty, the usual case inside the tissue) the genes
    # that stop at the same ring are gathered into a (window x genes) block and a median-selection
    # network runs across them with branch-free min/max (SIMD over genes). Windows with empty
    # positions gather their non-zero values and select the median's rank among them.
    n_genes = X.shape[1]
    n_rings = bounds.shape[0] - 1
    width = bounds[n_rings]
    for i in range(lo, hi):
        s = slide_codes[i]
        n_todo = 0
        for j in range(n_genes):
            out[i, j] = X[i, j]
            n_todo += missing[i, j] != invert
        if n_todo == 0:
            continue
        todo = np.empty(n_todo, dtype=np.int64)
        p = 0
        for j in range(n_genes):
            if missing[i, j] != invert:
                todo[p] = j
                p += 1
        nbs, nwin = _present_neighbours(table, i, bounds)  # nwin[k]: spots in the k-ring window
        nonzero = np.zeros(n_genes, dtype=np.uint8)
        kstar = np.zeros(n_genes, dtype=np.int32)  # ring of the first non-zero median, 0: none
        per_ring = np.zeros(n_rings + 1, dtype=np.int64)
        for k in range(1, n_rings + 1):
            for c in range(nwin[k - 1], nwin[k]):
                row = nz[nbs[c]]
                for j in range(n_genes):
                    nonzero[j] += row[j]
            n = nwin[k]
            q = 0
            for t in range(n_todo):
                j = todo[t]
                if n > 0 and 2 * (n - np.int64(nonzero[j])) <= n:
                    kstar[j] = k
                    per_ring[k] += 1
                else:
                    todo[q] = j
                    q += 1
            n_todo = q
            if n_todo == 0:
                break
        for t in range(n_todo):
            out[i, todo[t]] = fallback[s, todo[t]]
        buf = np.empty(width, dtype=X.dtype)
        for k in range(1, n_rings + 1):
            nk = per_ring[k]
            if nk == 0:
                continue
            genes = np.empty(nk, dtype=np.int64)
            q = 0
            for j in range(n_genes):
                if kstar[j] == k:
                    genes[q] = j
                    q += 1
            n = nwin[k]
            if n == bounds[k] and net_out[k] >= 0:
                # complete odd window: median-selection network across the genes
                block = np.empty((n, nk), dtype=X.dtype)
                for c in range(n):
                    row = X[nbs[c]]
                    for t in range(nk):
                        block[c, t] = row[genes[t]]
                for o in range(net_start[k], net_start[k + 1]):
                    ra = block[net[o, 0]]
                    rb = block[net[o, 1]]
                    for t in range(nk):
                        va = ra[t]
                        vb = rb[t]
                        ra[t] = min(va, vb)
                        rb[t] = max(va, vb)
                res = block[net_out[k]]
                for t in range(nk):
                    out[i, genes[t]] = res[t]
                continue
            for t in range(nk):
                j = genes[t]
                m = 0
                for c in range(n):
                    v = X[nbs[c], j]
                    buf[m] = v
                    m += v != 0
                out[i, j] = _rank_median(buf, m, n // 2 - (n - m), n % 2 == 0)


def parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for 2-D C-contiguous arrays of one shape and dtype, rows split over threads.

    Writing a freshly allocated result is dominated by first-touch page faults (on virtual machines
    whose memory is backed lazily, about 10 µs per 4 KiB page); taking them on every thread instead
    of one divides that time by the thread count. Row blocks are copied by a serial ``nogil`` numba
    loop on ``sp.settings.n_jobs`` threads (``numpy.copyto`` on threads does not divide the time).
    """
    if dst.shape != src.shape or dst.dtype != src.dtype:
        raise ValueError("parallel_copy needs arrays of the same shape and dtype.")
    if dst.ndim != 2 or not (dst.flags.c_contiguous and src.flags.c_contiguous):
        np.copyto(dst, src)
        return
    run_blocks(_copy_block, dst.shape[0], dst, src, min_items=64, blocks_per_thread=1)


@njit(nogil=True, cache=True)
def _copy_block(dst, src, lo, hi):  # pragma: no cover - numba
    for i in range(lo, hi):
        dst[i] = src[i]


def _check_inputs(X, missing, table, ring, slide_codes, n_rings):
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}.")
    if missing.shape != X.shape:
        raise ValueError(f"missing mask shape {missing.shape} differs from X shape {X.shape}.")
    if table.ndim != 2 or table.shape[0] != X.shape[0]:
        raise ValueError(f"neighbour table must have shape (n_obs={X.shape[0]}, 1 + K), got {table.shape}.")
    if ring.shape != (table.shape[1],):
        raise ValueError(f"ring must have one entry per table column ({table.shape[1]}), got {ring.shape}.")
    if slide_codes.shape != (X.shape[0],):
        raise ValueError("slide_codes must have one entry per row of X.")
    check_int(n_rings, "n_rings")
    if int(ring.max(initial=0)) < n_rings:
        raise ValueError(
            f"the neighbour table reaches ring {int(ring.max())} only; n_rings={n_rings} was requested."
        )


def adaptive_median_numba(
    X: np.ndarray,
    missing: np.ndarray | None,
    table: np.ndarray,
    ring: np.ndarray,
    slide_codes: np.ndarray,
    *,
    n_rings: int = 4,
    fallback: np.ndarray | None = None,
    out: np.ndarray | None = None,
    nonzero: np.ndarray | None = None,
) -> np.ndarray:
    """Complete the missing entries of ``X`` with the SpaRED adaptive median (numba, CPU).

    Parameters
    ----------
    X
        ``(n_obs, n_genes)`` dense float values (e.g. log2(TPM + 1)).
    missing
        ``(n_obs, n_genes)`` bool, True where the entry must be completed; ``None``: the zeros of ``X``.
    table
        ``(n_obs, 1 + K)`` neighbour indices (column 0 the spot itself, ``-1`` for no spot).
    ring
        ``(1 + K,)`` lattice ring of each column.
    slide_codes
        ``(n_obs,)`` integer slide of each row (``0 … n_slides - 1``), used for the slide-median fallback.
    n_rings
        Largest window, in rings.
    fallback
        Optional precomputed ``(n_slides, n_genes)`` slide medians of the non-zero values.
    out
        Optional C-contiguous array of the shape and dtype of ``X`` that receives the result.
    nonzero
        Optional precomputed ``X != 0`` (bool, C-contiguous); saves one pass over ``X``.

    Returns
    -------
    Completed ``(n_obs, n_genes)`` array with the dtype of ``X`` (``out`` when given).
    """
    X = np.ascontiguousarray(X)
    if nonzero is None or nonzero.shape != X.shape or nonzero.dtype != np.bool_:
        nonzero = X != 0
    nonzero = np.ascontiguousarray(nonzero)
    # missing=None: the zeros are missing; read them from the non-zero mask instead of a second array
    invert = missing is None
    missing = nonzero if missing is None else np.ascontiguousarray(missing, dtype=np.bool_)
    slide_codes = np.ascontiguousarray(slide_codes, dtype=np.int64)
    table, ring = sort_table_by_ring(table, ring)
    _check_inputs(X, missing, table, ring, slide_codes, n_rings)
    bounds = ring_bounds(ring, n_rings)
    n_slides = int(slide_codes.max()) + 1 if slide_codes.size else 0
    if fallback is None:
        fallback = slide_nonzero_median(X, slide_codes, n_slides)
    if out is None:
        out = np.empty_like(X)
    elif out.shape != X.shape or out.dtype != X.dtype or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous array with the shape and dtype of X.")
    fallback = np.ascontiguousarray(fallback)
    if X.size and X.min() < 0:
        miss = ~missing if invert else missing
        run_blocks(_adaptive_median_kernel, X.shape[0], X, miss, table, bounds, fallback, slide_codes, out)
    else:
        nz = nonzero.view(np.uint8)
        net, net_start, net_out = _ring_networks(bounds)
        run_blocks(
            _adaptive_median_kernel_nonneg,
            X.shape[0],
            *(X, nz, missing, invert, table, bounds, net, net_start, net_out, fallback, slide_codes, out),
            blocks_per_thread=8,
        )
    return out


def adaptive_median_torch(
    X: np.ndarray,
    missing: np.ndarray,
    table: np.ndarray,
    ring: np.ndarray,
    slide_codes: np.ndarray,
    *,
    n_rings: int = 4,
    fallback: np.ndarray | None = None,
    device=None,
    max_elements: int = 2**25,
) -> np.ndarray:
    """Same result as :func:`adaptive_median_numba`, computed with torch (any device).

    Parameters
    ----------
    X
        ``(n_obs, n_genes)`` dense float values.
    missing
        ``(n_obs, n_genes)`` bool, True where the entry must be completed.
    table
        ``(n_obs, 1 + K)`` neighbour indices (``-1`` for no spot).
    ring
        ``(1 + K,)`` lattice ring of each column.
    slide_codes
        ``(n_obs,)`` integer slide of each row.
    n_rings
        Largest window, in rings.
    fallback
        Optional precomputed ``(n_slides, n_genes)`` slide medians of the non-zero values.
    device
        :class:`torch.device` (or string) to compute on; CPU when None.
    max_elements
        Upper bound on the size of one gathered ``(spots, window, genes)`` block (bounds memory).

    Returns
    -------
    Completed ``(n_obs, n_genes)`` numpy array with the dtype of ``X``.
    """
    import torch

    X = np.ascontiguousarray(X)
    missing = np.ascontiguousarray(missing, dtype=np.bool_)
    slide_codes = np.ascontiguousarray(slide_codes, dtype=np.int64)
    table, ring = sort_table_by_ring(table, ring)
    _check_inputs(X, missing, table, ring, slide_codes, n_rings)
    bounds = ring_bounds(ring, n_rings)
    width = int(bounds[n_rings])
    table = table[:, :width]
    n_obs, n_genes = X.shape
    n_slides = int(slide_codes.max()) + 1 if n_obs else 0
    if fallback is None:
        fallback = slide_nonzero_median(X, slide_codes, n_slides)
    dev = torch.device("cpu") if device is None else torch.device(device)
    # float64 on CPU/CUDA keeps the arithmetic identical to the numba kernel; MPS has no float64.
    cdtype = torch.float32 if dev.type == "mps" else torch.float64
    Xt = torch.as_tensor(X, device=dev).to(cdtype)
    fb = torch.as_tensor(np.asarray(fallback), device=dev).to(cdtype)
    sc = torch.as_tensor(slide_codes, device=dev)
    out = np.empty_like(X)
    rows_needed = np.flatnonzero(missing.any(axis=1))
    out[:] = X
    if rows_needed.size == 0:
        return out
    gene_chunk = max(1, min(n_genes, max_elements // max(width, 1)))
    spot_chunk = max(1, max_elements // (width * gene_chunk))
    for g0 in range(0, n_genes, gene_chunk):
        g1 = min(n_genes, g0 + gene_chunk)
        Xg = Xt[:, g0:g1]
        for s0 in range(0, rows_needed.size, spot_chunk):
            rows = rows_needed[s0 : s0 + spot_chunk]
            tab = torch.as_tensor(table[rows], device=dev)
            valid = tab >= 0
            vals = Xg[tab.clamp_min(0)]  # (spots, width, genes)
            vals = torch.where(valid[:, :, None], vals, torch.full_like(vals, float("inf")))
            result = fb[sc[torch.as_tensor(rows, device=dev)], g0:g1].clone()
            done = torch.zeros_like(result, dtype=torch.bool)
            for k in range(1, n_rings + 1):
                end = int(bounds[k])
                srt = torch.sort(vals[:, :end, :], dim=1).values
                n = valid[:, :end].sum(dim=1)  # (spots,)
                lo = ((n - 1).clamp_min(0) // 2)[:, None, None].expand(-1, 1, g1 - g0)
                hi = (n // 2).clamp_max(end - 1)[:, None, None].expand(-1, 1, g1 - g0)
                med = (srt.gather(1, lo)[:, 0, :] + srt.gather(1, hi)[:, 0, :]) / 2
                med = torch.where((n > 0)[:, None], med, torch.zeros_like(med))
                take = (~done) & (med != 0)
                result = torch.where(take, med, result)
                done |= take
            block = result.cpu().numpy().astype(X.dtype, copy=False)
            miss = missing[rows, g0:g1]
            sub = out[rows, g0:g1]
            sub[miss] = block[miss]
            out[rows, g0:g1] = sub
    return out
