"""Keep freed memory in the process heap while a block of torch work runs (glibc only).

Every forward pass of a transformer allocates and frees tensors of tens to hundreds of MB. glibc
serves blocks that large with ``mmap`` and gives them back with ``munmap`` when they are freed, so
the next batch gets fresh pages and pays one page fault per 4 KiB on its first write. On a 2-core
virtual machine reuse saved 5–30 % of GeneQuery's spot-aware prediction time for 5,000 spots × 1,000
genes (148 s instead of 156 s, 152 s instead of 199 s and 155 s instead of 216 s in three runs of
``benchmarks/bench_genequery.py speed``: where glibc places the blocks depends on what the process did
before); the image encoder's activations (up to ~40 MB a tensor for 8 patches of 224 px) the same way,
1.3-1.6x the one-view patches/s with it, 1.0-1.1x the 8 views' (``benchmarks/bench_features.py``).
Inside :func:`reuse_heap` large blocks come from the heap and freed memory stays there for the next
batch; on exit the free memory is returned to the system (``malloc_trim``) and the thresholds are set
to the values glibc's own dynamic threshold settles at once large blocks have been freed (``mmap``
above 32 MiB, trim above 64 MiB). Disable with ``sp.settings.reuse_heap = False``; it does nothing on other C libraries (macOS,
Windows, musl).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator
from functools import lru_cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGE = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of free memory is kept
_MMAP_AFTER = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where its dynamic threshold ends
_TRIM_AFTER = 2 * _MMAP_AFTER  # glibc keeps the trim threshold at twice the dynamic mmap threshold
_lock = threading.Lock()
_depth = 0


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_heap(enabled: bool | None = None) -> Iterator[bool]:
    """Context manager: large blocks are served from, and freed to, the heap while it is open.

    Parameters
    ----------
    enabled
        ``None`` follows ``sp.settings.reuse_heap``.

    Yields
    ------
    Whether the setting is in effect (``False`` on non-glibc systems or when disabled).
    Nested uses are fine: the outermost one restores the defaults.
    """
    global _depth
    from ._settings import settings

    libc = _glibc()
    on = (settings.reuse_heap if enabled is None else bool(enabled)) and libc is not None
    if not on:
        yield False
        return
    assert libc is not None
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _LARGE)
            libc.mallopt(_M_TRIM_THRESHOLD, _LARGE)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
                libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_AFTER)
                libc.malloc_trim(0)
