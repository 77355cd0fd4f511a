"""Compile every numba kernel of the pp steps into numba's on-disk cache, once, at install time.

    python -m spared_tools._kernels.warmup

Numba compiles a kernel the first time it is called with a new combination of argument types, and with
``cache=True`` stores the machine code next to the module (``__pycache__``, or ``NUMBA_CACHE_DIR``, or
numba's per-user cache when the package folder is read-only). A fresh environment therefore pays the
compilation inside the user's first call: about 5 s for ``median_complete`` on 2 cores, 1-2 s for the
lattice, filter and Moran kernels. Running this module once after installing does that work up front
on tiny inputs, for the argument types the pp steps pass (float32 and float64 values, CSR counts,
missing masks given or derived, serial and parallel Moran kernels); every later process loads the
cached code in milliseconds. ``scripts/setup_env.sh`` runs it; after ``pip install spared-tools`` run
the command above (again after upgrading: the cache is keyed by the source files). Never imports
AnnData.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sps


def _lattice(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.divmod(np.arange(side * side), side)
    return np.zeros(side * side, dtype=np.int64), rows.astype(np.int64), cols.astype(np.int64)


def compile_all() -> dict[str, float]:
    """Call every kernel once per argument-type combination the pp steps use; returns seconds per group."""
    from . import filter as kfilter
    from . import lattice, median, moran, selection

    times: dict[str, float] = {}
    rng = np.random.default_rng(0)
    slide, rows, cols = _lattice(12)
    n, g = slide.size, 40

    t0 = time.perf_counter()
    offsets, ring = lattice.lattice_offsets("square", 4)
    table = np.empty((n, 1 + offsets.shape[0]), dtype=np.int64)  # as sp.pp.neighbor_table builds it
    table[:, 0] = np.arange(n)
    table[:, 1:] = lattice.neighbor_lookup(slide, rows, cols, offsets)
    ring = np.concatenate([[0], ring])
    times["lattice"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    counts = rng.poisson(1.0, size=(n, g))
    for dtype in (np.float32, np.float64):
        kfilter.expressed_per_slide(sps.csr_matrix(counts.astype(dtype)), np.arange(n), slide, 1)
    times["filter"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for dtype in (np.float32, np.float64):
        X = np.log1p(counts).astype(dtype)
        selection.slide_nonzero_median(X, slide, 1)
        nonzero = X != 0
        out = np.empty_like(X)
        median.parallel_copy(out, X)
        median.adaptive_median_numba(X, None, table, ring, slide, n_rings=4, out=out, nonzero=nonzero)
        median.adaptive_median_numba(X, ~nonzero, table, ring, slide, n_rings=4, nonzero=nonzero)
        median.adaptive_median_numba(X - 1, ~nonzero, table, ring, slide, n_rings=4)  # negative values
    times["median"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    W, _ = moran.restrict_weights(lattice.table_to_graph(table, ring, 1)[0], slide, row_normalise=True)
    threshold = moran.PARALLEL_MIN_ENTRIES
    try:
        for parallel in (False, True):
            moran.PARALLEL_MIN_ENTRIES = 0 if parallel else threshold
            for dtype in (np.float32, np.float64):
                X = np.log1p(counts).astype(dtype)
                moran.moran_sums_cpu(W, slide, 1, X)
                moran.moran_sums_cpu(W, slide, 1, sps.csr_matrix(X))
    finally:
        moran.PARALLEL_MIN_ENTRIES = threshold
    times["moran"] = time.perf_counter() - t0
    return times


def main() -> None:
    """Compile and print the seconds spent per kernel group."""
    t0 = time.perf_counter()
    times = compile_all()
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    print(f"spared_tools: numba kernels compiled and cached in {time.perf_counter() - t0:.1f} s ({parts})")


if __name__ == "__main__":
    main()
