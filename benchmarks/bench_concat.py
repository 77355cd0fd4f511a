"""concat_slides (built on anndata.concat) against anndata.concat itself on the 28 raw her2st sections.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_concat.py`` (needs ../shared/data). Writes
``benchmarks/results/concat.txt``. Both produce the same count matrix (checked); the ratio is the cost
of what concat_slides adds: slide naming, first-seen gene order, the per-slide measured-gene mask,
per-gene ``var`` merge and ``uns['spatial']`` merge.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sps

import spared_tools as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HER2ST, Report, machine_info, timeit


def _section(name: str) -> ad.AnnData:
    df = pd.read_csv(HER2ST / "ST-cnts" / f"{name}.tsv.gz", sep="\t", index_col=0)
    if df.columns.has_duplicates:
        df = df.T.groupby(level=0).sum().T
    xy = df.index.to_series().str.split("x", expand=True).astype(int)
    a = ad.AnnData(sps.csr_matrix(df.to_numpy(dtype=np.float32)))
    a.var_names = df.columns.astype(str)
    a.obs_names = df.index.astype(str)  # "<x>x<y>": repeats across sections, so concat_slides prefixes
    a.obs["slide_id"] = name
    a.obs["array_row"] = xy[1].to_numpy()
    a.obs["array_col"] = xy[0].to_numpy()
    a.obsm["spatial"] = xy.to_numpy(dtype=np.float64)
    a.uns["spatial"] = {name: {"images": {}, "scalefactors": {"spot_diameter_fullres": 1.0}, "metadata": {}}}
    return a


def main() -> None:
    report = Report("concat")
    names = sorted(p.name.split(".")[0] for p in (HER2ST / "ST-cnts").glob("*.tsv.gz"))
    parts = [_section(n) for n in names]
    report("bench_concat: sp.io.concat_slides vs anndata.concat (outer join, fill 0), raw her2st sections")
    report(machine_info())
    n_obs = sum(p.n_obs for p in parts)
    report(
        f"input: {len(parts)} sections, {n_obs} spots, {len(set().union(*[set(p.var_names) for p in parts]))} genes"
    )

    def ours():
        return sp.io.concat_slides(parts)

    def peer():
        return ad.concat(parts, join="outer", fill_value=0, index_unique="_", keys=names)

    sp.settings.verbosity = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_ours, out = timeit(ours, repeat=3, warmup=1)
        t_peer, ref = timeit(peer, repeat=3, warmup=1)
    same = (out.X != ref[:, out.var_names].X).nnz == 0  # same spot order; anndata suffixes the keys
    report(f"anndata.concat : {t_peer:.2f} s")
    report(f"concat_slides  : {t_ours:.2f} s  (ratio ours/peer {t_ours / t_peer:.2f}x)")
    report(
        f"same counts as anndata.concat: {same}; genes measured in every section: "
        f"{int(out.varm['measured'].all(axis=1).sum())} of {out.n_vars}"
    )
    report(
        "the difference is what concat_slides adds on top: the first-seen gene order (a column permutation "
        "and an index sort of the joined CSR matrix), the measured-gene mask, the per-gene var merge and the "
        "uns['spatial'] merge"
    )
    report.save()


if __name__ == "__main__":
    main()
