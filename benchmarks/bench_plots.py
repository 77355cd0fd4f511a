"""Render time of expression maps: sp.pl.spatial vs scanpy's sc.pl.spatial and squidpy's spatial_scatter.

Same data for all three (Visium-sized hexagonal slides of 4,992 spots tiled from HER2ST, with a
2,000 px synthetic ``hires`` image per slide), same genes, rendered to an in-memory PNG at 100 dpi; the
time covers building the figure and saving it. Writes ``benchmarks/results/plots.txt``.

    nice -n 10 .venv/bin/python benchmarks/bench_plots.py
"""

from __future__ import annotations

import io
import sys
import warnings
from functools import partial
from importlib.metadata import version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
import squidpy as sq

sys.path.insert(0, str(Path(__file__).parent))
from _common import HER2ST, Report, machine_info, read_her2st_sections, timeit, visium_collection

import spared_tools as sp


def with_images(adata, seed: int = 0):
    """Add a 2,000 px hires image and Visium-like scale factors per slide (100 px spot pitch, 55 px spots)."""
    rng = np.random.default_rng(seed)
    adata.uns["spatial"] = {}
    xy = adata.obsm["spatial"]
    for s in adata.obs["slide_id"].cat.categories:
        m = (adata.obs["slide_id"] == s).to_numpy()
        extent = float(xy[m].max()) + 200.0
        scalef = 2000.0 / extent
        img = rng.integers(150, 255, size=(2000, 2000, 3), dtype=np.uint8)
        adata.uns["spatial"][s] = {
            "images": {"hires": img},
            "scalefactors": {"tissue_hires_scalef": scalef, "spot_diameter_fullres": 55.0},
        }
    return adata


def render(fn) -> float:
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
        fig = plt.gcf() if out is None or isinstance(out, list | np.ndarray) else getattr(out, "figure", out)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close("all")
        return buf.tell()

    t, _ = timeit(run, repeat=3, warmup=1)
    return t


def ours(data, genes):
    return sp.pl.spatial(data, genes, layers="log1p", show=False)


def scanpy_maps(data, genes, slides):
    """scanpy draws one library per call: one call per slide (into a row of axes when several)."""
    if len(slides) == 1:
        return sc.pl.spatial(data, color=genes, layer="log1p", library_id=slides[0], show=False)
    fig, axes = plt.subplots(1, len(slides), figsize=(4 * len(slides), 4))
    for ax, s in zip(axes, slides):
        sub = data[data.obs["slide_id"] == s]
        sc.pl.spatial(sub, color=genes, layer="log1p", library_id=s, ax=ax, show=False)
    return fig


def squidpy_maps(data, genes, slides):
    if slides is None:
        return sq.pl.spatial_scatter(data, color=genes, layer="log1p", shape="hex", library_id="slide00")
    return sq.pl.spatial_scatter(
        data, color=genes, layer="log1p", shape="hex", library_key="slide_id", library_id=slides
    )


def main() -> None:
    rep = Report("plots")
    rep("# bench_plots: expression maps over the image, rendered to PNG (build + savefig, 100 dpi)")
    rep(f"# {machine_info()} | matplotlib {matplotlib.__version__} scanpy {version('scanpy')}")
    rep("# best of 3 after one warm-up; ratio = peer time / ours (higher: ours faster)")
    if not (HER2ST / "ST-cnts").is_dir():
        rep(f"her2st data not found at {HER2ST}; nothing measured")
        rep.save()
        return
    src = read_her2st_sections(["A1", "B1", "C1", "D1"])
    adata = with_images(visium_collection(src, n_slides=4, n_genes=50, seed=0))
    genes = list(adata.var_names[:4])
    one = adata[adata.obs["slide_id"] == "slide00"].copy()
    one.uns["spatial"] = {"slide00": adata.uns["spatial"]["slide00"]}
    rep(f"# data: {adata.n_obs} spots in 4 slides x {adata.n_vars} genes; per slide 4,992 hexagonal spots")
    rep("")
    rep(
        f"{'case':<34} {'ours':>8} {'sc.pl.spatial':>14} {'ratio':>6} {'sq spatial_scatter':>19} {'ratio':>6}"
    )
    cases = [
        ("1 gene, 1 slide", one, genes[:1], None),
        ("4 genes, 1 slide", one, genes, None),
        ("1 gene, 4 slides", adata, genes[:1], list(adata.obs["slide_id"].cat.categories)),
    ]
    for label, data, g, slides in cases:
        t_ours = render(partial(ours, data, g))
        t_sc = render(partial(scanpy_maps, data, g, slides or ["slide00"]))
        t_sq = render(partial(squidpy_maps, data, g, slides))
        rep(f"{label:<34} {t_ours:8.2f} {t_sc:14.2f} {t_sc / t_ours:6.2f} {t_sq:19.2f} {t_sq / t_ours:6.2f}")
    rep("")
    rep("# ours draws hexagons at true size (PolyCollection in data units); scanpy draws circles")
    rep("# (scatter markers scaled to the spot size); squidpy with shape='hex' draws hexagon patches.")
    path = rep.save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
