"""Reading speed of sp.io readers against scanpy / squidpy (and plain pandas for legacy ST) on the same files.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_io.py`` (needs ../shared/data). Writes
``benchmarks/results/io.txt``. Each reader runs ``REPEATS`` times; the median wall time is reported.
"""

from __future__ import annotations

import gzip
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import spared_tools as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "io.txt"
REPEATS = 5


def timed(fn, repeats=REPEATS):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def mtx_folder_as_h5(src: Path, dst: Path) -> None:
    """Copy a Space Ranger mtx folder as an h5 folder (10x v3 HDF5 layout) so every reader sees the same data."""
    import h5py
    from scipy.io import mmread

    m = sp.csc_matrix(mmread(str(src / "filtered_feature_bc_matrix" / "matrix.mtx.gz")))  # genes x barcodes
    feats = pd.read_csv(src / "filtered_feature_bc_matrix" / "features.tsv.gz", sep="\t", header=None)
    bcs = pd.read_csv(src / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", sep="\t", header=None)[0]
    dst.mkdir(parents=True)
    shutil.copytree(src / "spatial", dst / "spatial")
    # scanpy.read_visium requires a hires image; the CytAssist folder has only the lowres one
    shutil.copy(dst / "spatial" / "tissue_lowres_image.png", dst / "spatial" / "tissue_hires_image.png")
    with h5py.File(dst / "filtered_feature_bc_matrix.h5", "w") as f:
        f.attrs["library_ids"] = np.array([b"cytassist"])
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices, m.indptr
        g["shape"] = np.array(m.shape, dtype=np.int32)
        g["barcodes"] = bcs.to_numpy().astype("S")
        ff = g.create_group("features")
        ff["id"], ff["name"] = feats[0].to_numpy().astype("S"), feats[1].to_numpy().astype("S")
        ff["feature_type"] = feats[2].to_numpy().astype("S")
        ff["genome"] = np.array([b"mm10"] * len(feats))


def pandas_st(counts: Path, spots: Path):
    df = pd.read_csv(counts, sep="\t", index_col=0)
    pos = pd.read_csv(spots, sep="\t")
    pos.index = pos["x"].astype(str) + "x" + pos["y"].astype(str)
    df = df.loc[df.index.intersection(pos.index, sort=False)]
    return sp.csr_matrix(df.to_numpy(np.float32))


def main() -> None:
    import scanpy as sc
    import squidpy as sq

    lines = [
        f"# bench_io — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}, median of {REPEATS} runs (seconds); ratio = peer / ours",
        "",
    ]

    def row(label, t_ours, t_peer, peer):
        lines.append(
            f"{label:<52} ours {t_ours:8.3f}   {peer:<22} {t_peer:8.3f}   ratio {t_peer / t_ours:6.2f}"
        )
        print(lines[-1])

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx = DATA / "fixtures" / "scanpy_visium_1.0.0_raw"
        t_o, a = timed(lambda: st.io.read_visium(fx))
        t_s, b = timed(lambda: sc.read_visium(fx))
        assert (a.X != b.X).nnz == 0
        row("Visium SR 1.0 fixture (100 spots, h5 + 2 images)", t_o, t_s, "scanpy.read_visium")
        t_q, c = timed(lambda: sq.read.visium(fx))
        assert (a.X != c.X).nnz == 0
        row("Visium SR 1.0 fixture (100 spots, h5 + 2 images)", t_o, t_q, "squidpy.read.visium")

        cyt = DATA / "visium_cytassist_mouse_raw"
        h5dir = Path(tmp) / "cyt_h5"
        mtx_folder_as_h5(cyt, h5dir)
        t_o, a = timed(lambda: st.io.read_visium(h5dir, var_names="gene_ids"))
        t_s, b = timed(lambda: sc.read_visium(h5dir))
        assert np.array_equal(a.X.toarray(), b.X.toarray())
        row("CytAssist 2,898 spots x 19,465 genes (h5)", t_o, t_s, "scanpy.read_visium")
        t_q, c = timed(lambda: sq.read.visium(h5dir))
        row("CytAssist 2,898 spots x 19,465 genes (h5)", t_o, t_q, "squidpy.read.visium")
        t_o, a = timed(lambda: st.io.read_visium(cyt, var_names="gene_ids"))
        t_s, b = timed(lambda: sc.read_10x_mtx(cyt / "filtered_feature_bc_matrix", var_names="gene_ids"))
        assert np.array_equal(a.X.toarray(), b.X.toarray())
        row("CytAssist (matrix.mtx.gz folder)", t_o, t_s, "scanpy.read_10x_mtx*")

        her = DATA / "her2st_raw"
        for s in ("C1", "F3"):
            cnt, spots = her / "ST-cnts" / f"{s}.tsv.gz", her / "ST-spotfiles" / f"{s}_selection.tsv"
            t_o, a = timed(lambda cnt=cnt, spots=spots: st.io.read_st(cnt, spots))
            t_p, m = timed(lambda cnt=cnt, spots=spots: pandas_st(cnt, spots))
            assert np.array_equal(a.X.toarray(), m.toarray())
            row(f"her2st {s} ({a.n_obs} spots x {a.n_vars} genes), no image", t_o, t_p, "pandas read_csv**")
        t_o, a = timed(lambda: st.io.read_her2st(her, "C2"), repeats=3)
        t_p, _ = timed(
            lambda: pandas_st(her / "ST-cnts" / "C2.tsv.gz", her / "ST-spotfiles" / "C2_selection.tsv"), 3
        )
        row("her2st C2 + 9274x9911 JPEG -> 2000 px hires", t_o, t_p, "pandas (no image)**")
        with gzip.open(her / "ST-cnts" / "C2.tsv.gz", "rb") as fh:
            raw_mb = len(fh.read()) / 1e6
    lines += [
        "",
        "* scanpy.read_10x_mtx reads counts only (no positions, images or scale factors).",
        "** plain pandas read_csv of the count table + spot-file intersection: the minimum any reader must do;",
        f"   ours adds validation (NaN/negative/non-integer/duplicate checks) and the AnnData layout. C2 table: {raw_mb:.1f} MB.",
        "Note: the machine is shared by several engineers (2 cores); timings are indicative.",
    ]
    write_text_atomic(OUT, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
