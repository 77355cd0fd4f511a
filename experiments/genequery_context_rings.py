"""The networks' image neighbourhood: one ring (the default) or two? Validation sections only.

Why: ``genequery_head_rings.py`` found ridge on the views' mean followed by its mean within two rings
above the same with one ring on the validation sections (ridge alone: 0.2127 against 0.2066 on the 128
genes, 0.1542 against 0.1447 on the 785 genes), which asks whether the networks, whose
``context_rings=1`` was chosen against 0 only (``genequery_selection.txt``), would gain from two rings
too. Written after that run's scores and before any score of networks with two rings.

Protocol: ``genequery_head_rings.py`` (training C2 + C3 + C4 with their validation blocks, scored B4
and patient A1, A2 each alone; score = mean over the two patients of the mean of HEG, HVG, ALL;
GeneQuery's defaults but ``context_rings=2``, bfloat16 features, seeds 0 / 10 / 20), the 128 and the 785
genes. The ridge head sees the networks' input, as the package's head does (the views' mean followed by
its mean within two rings); z-blend weights 0.2, 0.35, 0.5, 0.65. Today's default (one ring, weight
0.35) is read from ``genequery_head_rings.txt`` (the same seeds, data and code).

Rule, fixed before the run: two rings (with the best of its weights) become the default only if the mean
of the two gene sets' three-seed scores beats today's default by at least 0.005.

``python experiments/genequery_context_rings.py [--seeds 0 10 20]`` →
``experiments/results/genequery_context_rings.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from genequery_head_rings import WEIGHTS, WIDE, blend_rows, head_inputs, networks, start  # noqa: E402
from genequery_selection import selection_data  # noqa: E402

import spared_tools as sp  # noqa: E402


def today(path: Path) -> dict[str, float]:
    """Three-seed mean of today's default (one ring, weight 0.35) per gene set, from the head-rings run."""
    out, genes = {}, None
    for line in path.read_text().splitlines():
        if line.endswith("(each alone)"):
            genes = line.split()[0]
        if line.lstrip().startswith("ring1 w=0.35") and genes:
            out.setdefault(genes, []).append(float(line.split()[-1]))
    return {g: float(np.mean(v)) for g, v in out.items()}


def main() -> None:
    args, report = start("genequery_context_rings")
    base = today(HERE / "results" / "genequery_head_rings.txt")
    report(f"today's default (one ring, weight 0.35), three-seed means from genequery_head_rings.txt: {base}")
    means: dict[str, dict[float, float]] = {}
    for genes in ("128", "785"):
        a = selection_data(genes, "bf16")
        head_inputs(a)
        train_ad = a[(a.obs["split"] == "train").to_numpy()].copy()
        scored = a[(a.obs["split"] == "test").to_numpy()].copy()
        report(f"\n{genes} genes: {a.n_obs} spots; training C2 + C3 + C4; scored B4, A1, A2 (each alone)")
        r = sp.tl.RidgePredictor(encoder="precomputed", features_key="ring2", alphas=WIDE)
        r.train(a)
        rp, rf = r.predict(scored), r.predict(train_ad)
        table: dict[float, list[float]] = {}
        weights = (0.0, *WEIGHTS)
        for seed in args.seeds:
            nets = networks(a, scored, train_ad, seed, report, "networks (context_rings=2)", context_rings=2)
            blend_rows(
                report, "rings 2", nets, (rp, rf), scored, weights, [table.setdefault(w, []) for w in weights]
            )
            report.save()
        means[genes] = {w: float(np.mean(v)) for w, v in table.items()}
    report("\nmean of the two gene sets' three-seed scores, ranked (two rings):")
    both = {w: (means["128"][w] + means["785"][w]) / 2 for w in means["128"]}
    for w, v in sorted(both.items(), key=lambda kv: -kv[1]):
        report(f"  {v:.4f}  rings 2 w={w:<4} (128: {means['128'][w]:.4f}, 785: {means['785'][w]:.4f})")
    ref = (base["128"] + base["785"]) / 2
    best = max(both, key=both.get)
    gain = both[best] - ref
    report(f"  {ref:.4f}  today's default, rings 1 w=0.35 (128: {base['128']:.4f}, 785: {base['785']:.4f})")
    change = gain >= 0.005
    report(
        f"rule: {f'context_rings=2 with ridge_blend={best} becomes the default' if change else 'context_rings=1 stays'}"
        f" (best two-ring weight {best}, {gain:+.4f} against today's default)"
    )
    report.save()


if __name__ == "__main__":
    main()
