"""First calls: every pp step in a fresh process (cold and installed numba cache) against its warm call,
and the first-touch cost of fresh memory (why bench_median.py separates "cold" calls).

    .venv/bin/python benchmarks/bench_first_touch.py [--part steps|memory|all] [--slides 4] [--genes 1000]

Part ``steps``: a Visium-sized collection (``_common.visium_collection`` of six her2st sections; needs
../shared) is written once to .h5ad with every step's input precomputed (counts, ``tpm``, ``log1p``,
``median``, ``mask``, the spatial graph, a CSR log1p ``X`` for sparse Moran). Each step then runs in its
own fresh Python process, twice: the first call (imports and data loading excluded) and the warm
second call. Two kinds of fresh process: ``cold`` (``NUMBA_CACHE_DIR`` pointing at an empty
temporary folder: nothing compiled yet, as right after ``pip install``) and ``installed`` (a copy of a
folder filled only by ``python -m spared_tools._kernels.warmup``, which ``scripts/setup_env.sh`` runs at
install: a kernel signature the warm-up missed would show here as compile time); ``warm`` is the best
later call in either process. Target: first call <= warm + 2 s.

Part ``memory``: writes a 640 MB float32 array (the size of median_complete's result at 16 slides x 4,992 spots x 2,000
genes) four ways: into memory never used by this process and not recently freed (fresh), and into
memory just freed by the process (resident), each with numpy's single-threaded copy and with the
row-parallel numba copy that median_complete uses (``spared_tools._kernels.median.parallel_copy``).
On bare metal fresh and resident differ by the kernel's page zeroing only; on a virtual machine whose
memory the host backs lazily the fresh write also pays the host's page faults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, machine_info

from spared_tools._kernels.median import parallel_copy

HERE = Path(__file__).resolve().parent

#: step name -> code run on ``a`` (the loaded AnnData, ``sp`` imported); each call works on a copy
STEPS = {
    "filter_spared": "sp.pp.filter_spared(b, layer='counts')",
    "tpm": "sp.pp.tpm(b, organism='human', layer='counts')",
    "log1p": "sp.pp.log1p(b, layer='tpm', key_added='log1p_new')",
    "spatial_graph": "sp.pp.spatial_graph(b)",
    "neighbor_table": "sp.pp.neighbor_table(b, n_rings=4)",
    "median_complete": "sp.pp.median_complete(b, layer='log1p', key_added='median_new')",
    "moran (dense)": "sp.pp.moran(b, layer='median')",
    "moran (sparse X)": "sp.pp.moran(b, layer=None)",
    "combat": "sp.pp.combat(b, layer='median', key_added='combat_new')",
    "spared_pipeline": "sp.pp.spared_pipeline(c, organism='human')",
}

_STEP_WORKER = r"""
import json, sys, time
import anndata as ad
import spared_tools as sp
sp.settings.verbosity = 1
a = ad.read_h5ad(sys.argv[1])
code = sys.argv[2]
times, cpu = [], []
for _ in range(3):
    b = a.copy()
    c = ad.AnnData(a.layers["counts"].copy(), obs=a.obs[["slide_id", "array_row", "array_col"]].copy(),
                   var=a.var[[]].copy(), obsm={"spatial": a.obsm["spatial"].copy()})
    t0, c0 = time.perf_counter(), time.process_time()
    exec(code)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
print(json.dumps([times, cpu]))
"""


def build_data(path: Path, n_slides: int, n_genes: int) -> str:
    """Write the collection with every step's input; returns a one-line description."""
    import anndata as ad
    import scipy.sparse as sps
    from _common import read_her2st_sections, visium_collection

    import spared_tools as sp

    sp.settings.verbosity = 1
    source = read_her2st_sections(["A1", "B1", "C1", "D1", "E1", "F1"])
    a = visium_collection(source, n_slides=n_slides, n_genes=n_genes, seed=0)
    a.layers["counts"] = a.X.copy()
    sp.pp.tpm(a, organism="human", layer="counts")
    a = a[:, a.var["has_gene_length"].to_numpy()].copy()  # genes without a length: NaN TPM
    sp.pp.tpm(a, organism="human", layer="counts")
    sp.pp.log1p(a, layer="tpm")
    sp.pp.median_complete(a, layer="log1p")
    sp.pp.spatial_graph(a)
    a.X = sps.csr_matrix(np.log1p(a.layers["counts"].toarray()).astype(np.float32))
    a.layers["mask"] = np.asarray(a.layers["mask"])
    ad.settings.allow_write_nullable_strings = True
    a.write_h5ad(path)
    return f"{n_slides} slides x {a.n_obs // n_slides} spots x {a.n_vars} genes, X CSR at {a.X.nnz / np.prod(a.shape):.0%} density"


def run_step(h5ad: Path, code: str, cache_dir: Path) -> tuple[list[float], list[float]]:
    """Three calls of ``code`` in a fresh process whose numba cache is ``cache_dir``: wall and CPU seconds."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", _STEP_WORKER, str(h5ad), code],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    wall, cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, cpu


def steps_part(rep: Report, n_slides: int, n_genes: int, only: list[str] | None) -> None:
    rep("## first call of each pp step in a fresh process vs its warm call (seconds)")
    with tempfile.TemporaryDirectory(prefix="first_touch_") as tmp:
        h5ad = Path(tmp) / "data.h5ad"
        rep(f"# data: {build_data(h5ad, n_slides, n_genes)}")
        rep(f"# load average at start {os.getloadavg()[0]:.2f}")
        warmed = Path(tmp) / "cache_warmup"
        env = {**os.environ, "NUMBA_CACHE_DIR": str(warmed)}
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "spared_tools._kernels.warmup"], env=env, check=True, capture_output=True
        )
        rep(f"# python -m spared_tools._kernels.warmup into an empty cache: {time.perf_counter() - t0:.1f} s")
        rep(
            f"{'step':<18s} {'cold first':>10s} {'installed first':>15s} {'warm':>7s} "
            f"{'cold - warm':>11s} {'installed - warm':>16s} {'cpu: cold - warm':>16s} {'installed - warm':>16s}"
            "  target first <= warm + 2 s (wall)"
        )
        for name, code in STEPS.items():
            if only and name not in only:
                continue
            tag = "".join(ch for ch in name if ch.isalnum())
            cache = Path(tmp) / ("cache_" + tag)
            cache.mkdir()
            cold, cold_cpu = run_step(h5ad, code, cache)
            shutil.copytree(warmed, Path(tmp) / ("installed_" + tag))
            installed, inst_cpu = run_step(h5ad, code, Path(tmp) / ("installed_" + tag))
            warm = min(cold[1:] + installed[1:])
            warm_cpu = min(cold_cpu[1:] + inst_cpu[1:])
            ok = "ok" if cold[0] <= warm + 2.0 else "MISSED (cold)"
            if installed[0] > warm + 2.0:
                ok = "MISSED"
            rep(
                f"{name:<18s} {cold[0]:10.2f} {installed[0]:15.2f} {warm:7.2f} {cold[0] - warm:11.2f} "
                f"{installed[0] - warm:16.2f} {cold_cpu[0] - warm_cpu:16.2f} {inst_cpu[0] - warm_cpu:16.2f}  {ok}"
            )
        rep(f"# load average at end {os.getloadavg()[0]:.2f} (2 cores shared with other jobs when > 1)")
        rep("# cpu columns: process CPU seconds (all threads) of the first call minus the warm call's: the")
        rep(
            "# first-call work itself (compiling, loading the cache, imports), which other jobs' load does not inflate"
        )


def memory_part(rep: Report) -> None:
    rep("## First-touch cost of a fresh 640 MB result (80,000 x 2,000 float32)")
    src = np.ones((80_000, 2_000), dtype=np.float32)
    warm = np.empty((8, 2_000), dtype=np.float32)
    parallel_copy(warm, src[:8])  # compile / load the numba kernel
    mb = src.nbytes / 2**20
    rep(f"{'write':<34s} {'seconds':>8s} {'us per 4 KiB page':>18s}")

    def write(label: str, fn, hold: list | None) -> None:
        """Two timed writes of a new array; ``hold`` keeps them (fresh pages next time), else freed."""
        for _ in range(2):
            dst = np.empty_like(src)
            t0 = time.perf_counter()
            fn(dst, src)
            dt = time.perf_counter() - t0
            if hold is not None:
                hold.append(dst)
            del dst
            rep(f"{label:<34s} {dt:8.3f} {dt / (src.nbytes / 4096) * 1e6:18.2f}")

    keep: list = []
    write("numpy copy, fresh memory", np.copyto, keep)
    write("parallel copy, fresh memory", parallel_copy, keep)
    keep.clear()
    write("numpy copy, resident memory", np.copyto, None)
    write("parallel copy, resident memory", parallel_copy, None)
    rep(f"({mb:.0f} MiB per write)")


def main() -> None:
    ap = argparse.ArgumentParser(description="first calls of the pp steps; first touch of fresh memory")
    ap.add_argument("--part", choices=["steps", "memory", "all"], default="all")
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--steps", default=None, help="comma list of step names (default: all)")
    ap.add_argument("--name", default="first_touch")
    args = ap.parse_args()
    rep = Report(args.name)
    rep(f"# {machine_info()}")
    if args.part in ("memory", "all"):  # first: "fresh memory" means never used by this process
        memory_part(rep)
    if args.part in ("steps", "all"):
        steps_part(rep, args.slides, args.genes, args.steps.split(",") if args.steps else None)
    path = rep.save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
