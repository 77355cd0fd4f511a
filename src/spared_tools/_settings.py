"""Global settings: device, verbosity, seed and number of threads.

Importing this module (the package imports it first) sets ``OMP_WAIT_POLICY=PASSIVE`` in the process
environment when it is unset and no OpenMP runtime has been loaded yet: torch's libgomp otherwise keeps
its idle worker threads spinning for about a millisecond after every parallel region, which on a
machine shared with other busy processes takes the cores those processes (and torch's own descheduled
workers) need. Beside a competing 2-thread process on 2 cores,
SpaCKLE training steps slowed down 22x with the spinning default and 1.7x with the passive policy
(1,200 spots: ``bench_threads.py --side 20 --steps 20 --rounds 1``), and 2.9x against 1.9x at 10,092
spots on a machine other jobs kept busy too (``benchmarks/results/threads.txt``). A value
set by the user is kept; libgomp reads it once, when torch is first imported, so importing torch (or
pytorch_lightning, scanpy, ...) before ``spared_tools`` leaves torch's runtime as it was.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from ._checks import check_int
from ._logging import logger

#: Loaded OpenMP runtimes read their wait policy once; set it before any of them loads.
_OPENMP_USERS = ("torch", "sklearn", "faiss", "lightgbm", "xgboost")
OMP_POLICY_SET = False
if "OMP_WAIT_POLICY" not in os.environ and not any(m in sys.modules for m in _OPENMP_USERS):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    OMP_POLICY_SET = True


def available_cores() -> int:
    """Number of CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def apply_threads(n: int) -> None:
    """Use ``n`` threads in torch (intra-op, and inter-op while still settable), numba and BLAS/OpenMP.

    Parameters
    ----------
    n
        Thread count (positive).

    Libraries not imported yet are imported (torch, numba); BLAS and OpenMP pools loaded by then are
    limited through :mod:`threadpoolctl`, and numba to at most its ``NUMBA_NUM_THREADS`` pool size.
    """
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    # numba first: launching its OpenMP layer loads a second libgomp, which the later calls then see
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    threadpool_limits(limits=n)
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only settable before the first inter-op parallel work of the process
            logger.debug("torch inter-op threads already in use; left at %d", torch.get_num_interop_threads())


_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}
T = TypeVar("T")


class _Checked(Generic[T]):
    """A validated setting of :class:`_Settings`.

    ``check`` turns an assigned value into the one stored (or raises a ``ValueError`` naming it), then
    ``apply`` acts on it (e.g. sets the thread pools).
    """

    def __init__(self, check: Callable[[Any], T], apply: Callable[[T], None] | None = None) -> None:
        self.check, self.apply = check, apply

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> T:
        return getattr(obj, self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        checked = self.check(value)
        if self.apply is not None:
            self.apply(checked)
        setattr(obj, self.attr, checked)


def _device(value: Any) -> str:
    if not isinstance(value, str) or not (
        value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:")
    ):
        raise ValueError(f"settings.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}.")
    return value


def _verbosity(value: Any) -> int:
    if value not in _LEVELS:
        raise ValueError(f"settings.verbosity must be one of 0, 1, 2, 3; got {value!r}.")
    return int(value)


def _reuse_heap(value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"settings.reuse_heap must be True or False, got {value!r}.")
    return bool(value)


def _n_jobs(value: Any) -> int:
    check_int(value, "settings.n_jobs", allow_none=True)
    return available_cores() if value is None else int(value)


class _Settings:
    """Package-wide settings (``sp.settings``).

    Attributes
    ----------
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    verbosity
        0 errors, 1 warnings, 2 info (default), 3 debug.
    seed
        Default seed used by every stochastic function when its ``seed`` argument is ``None``.
    n_jobs
        Threads for torch, numba and BLAS/OpenMP (through :mod:`threadpoolctl`), all at once; default
        the cores this process may use (:func:`os.sched_getaffinity`), which is also what the three
        libraries start with. Setting it applies at once and can be changed at any time; ``None``
        restores the default. Pair it with the passive OpenMP wait policy set on import (see the
        module docstring): with it, a thread count equal to the cores shares a busy machine fairly.
    progress
        Show progress bars on loops a person waits for.
    reuse_heap
        While models train and predict and image features are encoded, keep freed memory in the
        process heap instead of returning it to the system after every batch (glibc only; see
        ``spared_tools._heap``). Saves the page faults of fresh memory: 5–30 % of GeneQuery's
        spot-aware prediction time and up to 1.6x the patches/s of the image encoder on a 2-core VM,
        depending on the process's earlier allocations.
    """

    device = _Checked(_device)
    verbosity = _Checked(_verbosity, apply=lambda level: logger.setLevel(_LEVELS[level]))
    reuse_heap = _Checked(_reuse_heap)
    n_jobs = _Checked(_n_jobs, apply=apply_threads)

    def __init__(self) -> None:
        self._device: str = "auto"
        self._verbosity: int = 2
        self.seed: int = 0
        self._n_jobs: int = available_cores()
        self.progress: bool = True
        self._reuse_heap: bool = True
        logger.setLevel(_LEVELS[self._verbosity])

    def __repr__(self) -> str:
        return (
            f"spared_tools settings: device={self.device!r}, verbosity={self.verbosity}, "
            f"seed={self.seed}, n_jobs={self.n_jobs}, progress={self.progress}, reuse_heap={self.reuse_heap}"
        )


settings = _Settings()


def resolve_device(device: str | None = None):
    """Return a :class:`torch.device` for ``device`` (``None`` → ``settings.device``; ``"auto"`` → CUDA if present)."""
    import torch

    device = settings.device if device is None else device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available on this machine.")
    return dev


def native_bf16(device) -> bool:
    """Whether ``device`` (a :class:`torch.device`) computes bfloat16 in hardware.

    On CPUs: AVX-512 BF16 or AMX-BF16 on x86, the BF16 extension on Arm (read from
    :func:`torch.cpu.get_capabilities`); elsewhere bfloat16 would be emulated and slower than float32.
    Always ``False`` on other devices, where float32 is fast enough.
    """
    import torch

    if device.type != "cpu":
        return False
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # older torch or an unknown platform: do not guess
        return False
    return any(bool(caps.get(k)) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def resolve_precision(precision: str, device) -> str:
    """Resolve ``precision`` (``"auto"``, ``"32"`` or ``"bf16"``) on ``device`` (a :class:`torch.device`).

    ``"auto"`` is ``"bf16"`` where :func:`native_bf16` holds (there EfficientNet-Lite0 encoded 1.7 to 2.5
    times more patches per second than in float32, ``benchmarks/results/avx512/genequery_cost.txt``, and
    GeneQuery scores the same on the validation sections, ``experiments/results/genequery_selection_bf16*.txt``)
    and ``"32"`` everywhere else (on a CPU with AVX2 only, emulated bfloat16 encoded 10 to 15 times fewer patches
    per second than float32, ``benchmarks/results/genequery_cost.txt``).
    """
    if precision not in ("auto", "32", "bf16"):
        raise ValueError(f"precision must be 'auto', '32' or 'bf16', got {precision!r}.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "32"
    return precision


def resolve_seed(seed: int | None) -> int:
    """Return ``seed`` or, when ``None``, ``settings.seed``; checks it is a non-negative integer."""
    seed = settings.seed if seed is None else seed
    return check_int(seed, "seed", min=0)


def seed_everything(seed: int | None) -> int:
    """Seed Python, NumPy and torch (all devices) from one integer and return it."""
    import torch

    seed = resolve_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global state users rely on
    torch.manual_seed(seed)
    os.environ.setdefault("PL_GLOBAL_SEED", str(seed))
    return seed


Device = Literal["auto", "cpu", "cuda"]
