"""First-touch cost of fresh memory on this machine: why bench_median.py separates "cold" calls.

    .venv/bin/python benchmarks/bench_first_touch.py

Writes a 640 MB float32 array (the size of median_complete's result at 16 slides x 4,992 spots x 2,000
genes) four ways: into memory never used by this process and not recently freed (fresh), and into
memory just freed by the process (resident), each with numpy's single-threaded copy and with the
row-parallel numba copy that median_complete uses (``spared_tools._kernels.median.parallel_copy``).
On bare metal fresh and resident differ by the kernel's page zeroing only; on a virtual machine whose
memory the host backs lazily the fresh write also pays the host's page faults.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, machine_info

from spared_tools._kernels.median import parallel_copy


def main() -> None:
    rep = Report("first_touch")
    rep("# First-touch cost of a fresh 640 MB result (80,000 x 2,000 float32)")
    rep(f"# {machine_info()}")
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
    path = rep.save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
