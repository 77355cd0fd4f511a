"""Run a serial ``nogil`` numba kernel over blocks of a range on ``sp.settings.n_jobs`` Python threads.

Why not ``@njit(parallel=True)``: a parallel kernel compiles 2-3x slower than the same loop compiled
serially (its parfor passes), which is most of a fresh environment's first call, and its OpenMP
workers follow numba's own thread pool. A serial kernel that releases the GIL, called on row blocks from a
thread pool of ``settings.n_jobs`` threads, compiles once per signature, runs as fast, and follows the
package's one thread setting. Never imports AnnData.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE != n:
        if _POOL is not None:
            _POOL.shutdown(wait=True)
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="spared_tools")
        _POOL_SIZE = n
    return _POOL


def n_threads() -> int:
    """Threads the kernels use: ``sp.settings.n_jobs``."""
    from spared_tools._settings import settings

    return int(settings.n_jobs)


def run_blocks(
    kernel: Callable[..., Any], n_items: int, *args: Any, min_items: int = 1, blocks_per_thread: int = 4
) -> None:
    """Call ``kernel(*args, lo, hi)`` over ``[0, n_items)`` split into blocks, on several threads.

    Parameters
    ----------
    kernel
        A serial numba kernel compiled with ``nogil=True`` whose last two arguments are the block bounds;
        blocks must write disjoint outputs.
    n_items
        Length of the range.
    *args
        Leading arguments of ``kernel``.
    min_items
        Fewer items than this per thread: run in the calling thread as one block.
    blocks_per_thread
        Blocks per thread (load balance when items cost differently).
    """
    threads = n_threads()
    if threads <= 1 or n_items < max(2, min_items * threads):
        kernel(*args, 0, n_items)
        return
    n_blocks = min(n_items, threads * blocks_per_thread)
    step = (n_items + n_blocks - 1) // n_blocks
    bounds = [(lo, min(n_items, lo + step)) for lo in range(0, n_items, step)]
    futures = [_pool(threads).submit(kernel, *args, lo, hi) for lo, hi in bounds]
    for f in futures:
        f.result()
