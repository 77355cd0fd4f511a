"""Ridge with GeneQuery's image input on the held-out folds: the strongest linear baseline we have.

GeneQuery's default ridge head (``ridge_blend``) regresses on the networks' input: the mean of the 8
dihedral views' features followed by their ring-1 neighbourhood mean. ``RidgePredictor()`` (the
benchmark's baseline, HEST-style) regresses on each patch's own features. This script scores, on the
folds of ``benchmarks/bench_genequery.py heldout`` (same data, splits and validation sections), ridge as
``RidgePredictor`` computes it with that richer input (``context_rings=1`` on the mean of the views'
features; its default penalty grid and the grid to 1e7), next to the HEST-style ridge, so GeneQuery's
margin can be read against both. Deterministic (no seed).

``python experiments/ridge_context_heldout.py [--gene-set 128|785]`` →
``experiments/results/ridge_context_heldout[_785].txt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from _common import machine_info  # noqa: E402
from bench_genequery import FOLDS6, features_precision, fold6  # noqa: E402
from genequery_data6 import load6  # noqa: E402
from genequery_selection import ExperimentReport  # noqa: E402

import spared_tools as sp  # noqa: E402

WIDE = tuple(10.0**k for k in range(-3, 8))


def ridges() -> dict[str, sp.tl.RidgePredictor]:
    pre = {"encoder": "precomputed"}
    return {
        "Ridge (HEST-style), own view": sp.tl.RidgePredictor(**pre, features_key="X_image_view0"),
        "Ridge, views' mean + context": sp.tl.RidgePredictor(
            **pre, features_key="X_image_tta", context_rings=1
        ),
        "Ridge, views' mean + context, to 1e7": sp.tl.RidgePredictor(
            **pre, features_key="X_image_tta", context_rings=1, alphas=WIDE
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gene-set", default="128", choices=["128", "785"])
    args = p.parse_args()
    sp.settings.verbosity = 1
    report = ExperimentReport("ridge_context_heldout" + ("" if args.gene_set == "128" else "_785"))
    report(f"# ridge_context_heldout.py {' '.join(sys.argv[1:])}")
    report(f"# {machine_info()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    data = load6(args.gene_set, features_precision(), "efficientnet-lite0")
    report(f"{data.n_obs} spots × {data.n_vars} genes; folds as bench_genequery.py heldout (HEG / HVG / ALL)")
    rows = []
    for test in FOLDS6:
        a = fold6(data, test)
        report(f"fold test={test}")
        for name, model in ridges().items():
            model.train(a)
            r = model.evaluate(a)
            rows.append({"fold": test, "model": name, **{k: r[k] for k in ("pcc_heg", "pcc_hvg", "pcc_all")}})
            report(
                f"  {name:40s} {r['pcc_heg']:.3f} / {r['pcc_hvg']:.3f} / {r['pcc_all']:.3f}  (penalty {model.alpha_:g})"
            )
        report.save()
    df = pd.DataFrame(rows).groupby("model", sort=False)[["pcc_heg", "pcc_hvg", "pcc_all"]].mean()
    report("\nmean over the 4 folds:")
    for name, m in df.iterrows():
        report(f"  {name:40s} {m.pcc_heg:.3f} / {m.pcc_hvg:.3f} / {m.pcc_all:.3f}")
    best = df.max()
    report(f"best per score: {' / '.join(f'{v:.3f}' for v in np.asarray(best))}")
    report.save()


if __name__ == "__main__":
    main()
