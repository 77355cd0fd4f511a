"""Shared benchmark helpers: timing, peak memory, result files and Visium-sized synthetic collections.

Import from a benchmark script with ``sys.path.insert(0, str(Path(__file__).parent))`` then
``from _common import ...``. Everything here is deliberately small and dependency-free beyond the
package's own requirements.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sps

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HER2ST = SHARED_DATA / "her2st_raw"
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------------
# timing and memory


def timeit(fn: Callable[[], Any], *, repeat: int = 3, warmup: int = 0) -> tuple[float, Any]:
    """Best wall time (seconds) of ``repeat`` calls of ``fn`` after ``warmup`` calls; returns ``(t, result)``."""
    out = None
    for _ in range(warmup):
        out = fn()
    best = np.inf
    for _ in range(max(1, repeat)):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return float(best), out


def prefault(gib: float) -> float:
    """Touch ``gib`` GiB of fresh memory once and free it; returns the seconds it took.

    On virtual machines whose memory the host backs lazily (this benchmark machine is one: a first
    touch costs about 10 µs per 4 KiB page, and freed pages are handed back to the host after a few
    seconds), the first write to never-used memory is far slower than the computation itself, and
    lands on whichever timed call allocates next. Calling this right before a timed call makes every
    call see resident memory, as on bare metal; benchmarks that use it say so in their output.
    """
    t0 = time.perf_counter()
    if gib > 0:
        block = np.ones(int(gib * 2**30) // 8)
        del block
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def traced_peak_mb(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Peak Python-heap allocation (MiB, tracemalloc; numpy buffers included) during one call of ``fn``."""
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20, out


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_rss_during(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Extra peak resident memory (MiB) while ``fn`` runs, numba/C allocations included.

    On Linux the process high-water mark is reset through ``/proc/self/clear_refs`` before the call and
    read from ``VmHWM`` after it; the result is that peak minus the resident size before the call. Where
    that is unavailable it falls back to :func:`traced_peak_mb` (Python-visible allocations only).
    """
    gc.collect()
    try:  # hand freed heap pages back to the OS so that re-used pages count as new allocations
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    before = _proc_status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return traced_peak_mb(fn)
    out = fn()
    peak = _proc_status_mb("VmHWM")
    if before is None or peak is None:
        return float("nan"), out
    return max(0.0, peak - before), out


def machine_info() -> str:
    """One line describing the machine and the main library versions."""
    import numba
    import scipy
    import torch

    try:
        import squidpy

        sq = squidpy.__version__
    except Exception:  # pragma: no cover - squidpy is a dependency, but keep the helper robust
        sq = "n/a"
    from spared_tools._settings import native_bf16

    # the CPU's vector extension and bfloat16 support decide most timings (and bf16's default)
    cpu = f"{torch.backends.cpu.get_cpu_capability()}, bf16 in hardware: {native_bf16(torch.device('cpu'))}"
    return (
        f"{platform.platform()} | python {platform.python_version()} | cpus {os.cpu_count()} ({cpu}) | "
        f"numpy {np.__version__} scipy {scipy.__version__} numba {numba.__version__} "
        f"torch {torch.__version__} squidpy {sq}"
    )


class Report:
    """Collect lines, echo them to stdout and write them to ``benchmarks/results/<name>.txt``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def save(self) -> Path:
        """Write the lines to ``benchmarks/results/<name>.txt`` atomically; return the path."""
        return write_text_atomic(RESULTS / f"{self.name}.txt", "\n".join(self.lines) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`spared_tools._atomic.atomic_path` (temp file + rename).

    An interrupted benchmark never leaves a half-written result (or cache) file where a good one was.
    """
    from spared_tools._atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------
# data


def read_her2st_section(section: str, folder: Path = HER2ST) -> ad.AnnData:
    """Minimal HER2ST reader for benchmarks: counts ``ST-cnts/<section>.tsv.gz`` and spot pixels.

    Spot ids ``"<x>x<y>"`` give ``array_col = x`` and ``array_row = y`` (a square ST 1k lattice);
    ``obsm["spatial"]`` holds ``[pixel_x, pixel_y]`` from ``ST-spotfiles/<section>_selection.tsv`` where the
    spot is listed there, else the array position times a 200-pixel pitch.
    """
    df = pd.read_csv(folder / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    xy = df.index.to_series().str.split("x", expand=True).astype(int)
    obs = pd.DataFrame(
        {"slide_id": section, "array_row": xy[1].to_numpy(), "array_col": xy[0].to_numpy()},
        index=[f"{section}_{i}" for i in df.index],
    )
    obs["slide_id"] = obs["slide_id"].astype("category")
    X = sps.csr_matrix(df.to_numpy(dtype=np.float32))
    a = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=df.columns.astype(str)))
    a.var_names_make_unique()
    xy_px = np.stack([xy[0].to_numpy(), xy[1].to_numpy()], axis=1).astype(np.float64) * 200.0
    spots = folder / "ST-spotfiles" / f"{section}_selection.tsv"
    if spots.exists():
        sf = pd.read_csv(spots, sep="\t")
        sf.index = sf["x"].astype(str) + "x" + sf["y"].astype(str)
        sf = sf[~sf.index.duplicated()]
        found = df.index.isin(sf.index)
        xy_px[found] = sf.loc[df.index[found], ["pixel_x", "pixel_y"]].to_numpy(np.float64)
    a.obsm["spatial"] = xy_px
    return a


def read_her2st_sections(sections: Sequence[str], folder: Path = HER2ST) -> ad.AnnData:
    """Several HER2ST sections on their shared genes (inner join), ``slide_id`` = section name."""
    parts = [read_her2st_section(s, folder) for s in sections]
    out = ad.concat(parts, join="inner")
    out.obs["slide_id"] = pd.Categorical(out.obs["slide_id"].astype(str))
    return out


def visium_collection(
    source: ad.AnnData,
    *,
    n_slides: int,
    n_genes: int,
    n_rows: int = 64,
    n_cols: int = 156,
    seed: int = 0,
) -> ad.AnnData:
    """Visium-sized slides (hex lattice) made by tiling and perturbing real sections.

    Each synthetic slide is a full hexagonal block of ``n_rows x n_cols / 2`` spots (``row + col`` even;
    the default gives 4,992 spots, a typical Visium tissue area). The spot at lattice position ``(r, c)``
    copies the counts of the source spot at ``(r mod H, (c // 2) mod W)`` of a randomly chosen source
    section (``H x W`` its array extent; missing positions borrow a random spot of that section), then
    the counts are Poisson-resampled so that tiles and slides differ. Genes: the ``n_genes`` with the
    largest total counts in ``source``. Returns CSR ``float32`` counts in ``X`` and ``layers["log1p"]``
    (dense ``float32`` log1p of the counts), ``obs`` with ``slide_id``, ``array_row``, ``array_col`` and
    pixel coordinates in ``obsm["spatial"]`` (100 px spot pitch).
    """
    rng = np.random.default_rng(seed)
    total = np.asarray(source.X.sum(axis=0)).ravel()
    genes = np.sort(np.argsort(-total, kind="stable")[:n_genes])
    src = source[:, genes]
    Xs = sps.csr_matrix(src.X, dtype=np.float32)
    sections = list(pd.Categorical(src.obs["slide_id"]).categories)
    by_section = {}
    for s in sections:
        idx = np.flatnonzero((src.obs["slide_id"] == s).to_numpy())
        r = src.obs["array_row"].to_numpy()[idx]
        c = src.obs["array_col"].to_numpy()[idx]
        r0, c0 = r - r.min(), c - c.min()
        H, W = int(r0.max()) + 1, int(c0.max()) + 1
        grid = np.full((H, W), -1, dtype=np.int64)
        grid[r0, c0] = idx
        by_section[s] = grid

    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    keep = (rr + cc) % 2 == 0
    rr, cc = rr[keep], cc[keep]
    blocks, obs_parts = [], []
    for k in range(n_slides):
        grid = by_section[sections[rng.integers(len(sections))]]
        H, W = grid.shape
        pick = grid[rr % H, (cc // 2) % W]
        miss = pick < 0
        pool = grid[grid >= 0]
        pick[miss] = rng.choice(pool, size=int(miss.sum()))
        block = Xs[pick]
        block.data = rng.poisson(block.data).astype(np.float32)
        block.eliminate_zeros()
        blocks.append(block)
        obs_parts.append(
            pd.DataFrame(
                {"slide_id": f"slide{k:02d}", "array_row": rr, "array_col": cc},
                index=[f"slide{k:02d}_{r}x{c}" for r, c in zip(rr, cc)],
            )
        )
    obs = pd.concat(obs_parts)
    obs["slide_id"] = pd.Categorical(obs["slide_id"])
    X = sps.vstack(blocks, format="csr").astype(np.float32)
    out = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=src.var_names.copy()))
    out.layers["log1p"] = np.log1p(X.toarray()).astype(np.float32)
    rows = obs["array_row"].to_numpy(float)
    cols = obs["array_col"].to_numpy(float)
    out.obsm["spatial"] = np.stack([cols * 50.0, rows * 50.0 * np.sqrt(3.0)], axis=1)
    return out
