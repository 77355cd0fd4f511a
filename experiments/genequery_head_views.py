"""The ridge head fitted on the 8 views as samples instead of on their mean: validation sections only.

Why: the ridge head (``ridge_blend``) is fitted on the mean of the 8 dihedral views' features (followed
by its ring-1 mean) and predicts from it, while the networks train on one random view per spot and epoch
(augmentation, +0.027 on the selection score). For a linear map, fitting every view as a sample of its
spot's expression (8 rows per training spot: that view's features followed by that view's ring-1 mean)
adds to the ridge penalty one on the directions in which the views of a spot differ, i.e. the map is
asked to be invariant to the tissue's orientation, as the networks are by augmentation. The prediction is
unchanged in form (the views' mean, ``tta="features"``; for a linear map the mean of the views'
predictions). A look at ridge alone on the validation sections (protocol below, one fit each, run before
this script was written and disclosed here): 0.2168 → 0.2251 on the 128 genes, 0.1471 → 0.1502 on the 785.

Protocol: ``genequery_head_stages.py`` (training C2 + C3 + C4 with their validation blocks, scored B4
and patient A1, A2 each alone; score = mean over the two patients of the mean of HEG, HVG, ALL;
GeneQuery's default gene-aware networks on the last layer's 8 views, float32; head on the stages; penalty
chosen on the validation block (the views' mean of its spots) by mean per-gene PCC; z-blend on
GeneQuery's scale). 128 genes: seeds 0 / 10 / 20; 785 genes: seed 0 (one training of the three
networks on them takes 10-15 minutes on this machine). Candidates: the head on the views as samples
(``views``) at weights 0.35, 0.5, 0.65; reference: today's head (``mean``, 0.5), same networks.

Rule, fixed before the run: score each candidate by the mean of its 128-gene seed mean and its 785-gene
score; the best ``views`` candidate becomes the default (the head fitted on the views, with its weight)
if that beats today's by at least 0.002 and neither gene set is more than 0.002 below today's. The
held-out check, fixed before the run too: with the change, ``bench_genequery.py heldout`` (128 genes,
seeds 0 / 10 / 20; 785 genes, seed 0) must not lower any fold-mean score (HEG, HVG, ALL) by more than
0.005 against the committed files; that check reads test sections and can only keep today's head.

``python experiments/genequery_head_views.py [--seeds 0 10 20] [--seeds785 0]`` →
``experiments/results/genequery_head_views.txt`` (features: ``python experiments/genequery_data6.py``
and ``--stages --fp32`` first).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from genequery_blend import score  # noqa: E402
from genequery_data6 import load6  # noqa: E402
from genequery_head_rings import WIDE, blend_rows, networks, start  # noqa: E402
from genequery_selection import dense, per_section, selection_data  # noqa: E402

import spared_tools as sp  # noqa: E402
from spared_tools.tl._baselines import fit_ridge  # noqa: E402

WEIGHTS = (0.35, 0.5, 0.65)
TODAY = ("mean", 0.5)


def head_inputs(genes: str) -> tuple:
    """The selection data ``a``, the head's inputs of each view (stages + ring-1 mean) and of their mean, the
    training / validation / scored rows and the targets."""
    a = selection_data(genes, "32")
    stages = load6(genes, "32", "efficientnet-lite0-stages")  # genequery_data6.py --stages --fp32
    views = stages.obsm["X_image_views"][stages.obs_names.get_indexer(a.obs_names)]
    ctx = [sp.pp.context_features(a, views[:, k], n_rings=1, library_key="slide_id") for k in range(8)]
    mean_in = np.mean(ctx, axis=0)  # the ring mean is linear: this is context_features of the views' mean
    split = a.obs["split"].astype(str).to_numpy()
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    return a, ctx, mean_in, tr, va, te, dense(a).astype(np.float64)


def heads(genes: str, report) -> tuple:
    """The selection data, its training / scored parts, and both heads' (scored, training) predictions."""
    a, ctx, mean_in, tr, va, te, Y = head_inputs(genes)
    split = a.obs["split"].astype(str).to_numpy()
    report(f"\n{genes} genes: {a.n_obs} spots; training C2 + C3 + C4; scored B4, A1, A2 (each alone)")
    out = {}
    t0 = time.perf_counter()
    fit = fit_ridge(mean_in, Y, tr, va, WIDE, edge_warning=False)
    out["mean"] = (fit.predict(mean_in[te]), fit.predict(mean_in[tr]))
    report(f"  ridge head on the views' mean: penalty {fit.alpha!r}, {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    F = np.concatenate([c[tr] for c in ctx] + [mean_in[va]], axis=0)
    Z = np.concatenate([Y[tr]] * 8 + [Y[va]], axis=0)
    n = 8 * tr.size
    fit = fit_ridge(F, Z, np.arange(n), np.arange(n, F.shape[0]), WIDE, edge_warning=False)
    out["views"] = (fit.predict(mean_in[te]), fit.predict(mean_in[tr]))
    report(f"  ridge head on the 8 views as samples: penalty {fit.alpha!r}, {time.perf_counter() - t0:.0f} s")
    scored = a[te].copy()
    for name, (p, _) in out.items():
        report(f"  {name} head alone: score {score(per_section(scored, p)):.4f}")
    train_ad = a[(split == "train")].copy()
    return a, train_ad, scored, out


def compare(name: str, weights: tuple[float, ...], today: tuple[str, float], mode: str = "gene") -> None:
    """Run the comparison (``results/<name>.txt``): ``mode``'s networks, today's head against the views head at
    ``weights``, the rule on the mean of the two gene sets' scores (gain >= 0.002, neither set below by > 0.002)."""
    args, report = start(name, lambda p: p.add_argument("--seeds785", type=int, nargs="+", default=[0]))
    whose, label = ("the", "networks") if mode == "gene" else ("spot mode's", "spot-aware networks")
    means: dict[str, dict[tuple[str, float], float]] = {}
    for genes, seeds in (("128", args.seeds), ("785", args.seeds785)):
        a, train_ad, scored, ridge = heads(genes, report)
        table: dict[tuple[str, float], list[float]] = {}
        for seed in seeds:
            nets = networks(a, scored, train_ad, seed, report, label=label, mode=mode)
            for kind, ws in (("mean", (today[1],)), ("views", weights)):
                rows = [table.setdefault((kind, w), []) for w in ws]
                blend_rows(report, kind, nets, ridge[kind], scored, ws, rows)
            report.save()
        means[genes] = {k: float(np.mean(v)) for k, v in table.items()}
    report("\nmean of the two gene sets' seed-mean scores, ranked:")
    both = {k: (means["128"][k] + means["785"][k]) / 2 for k in means["128"]}
    for (kind, w), v in sorted(both.items(), key=lambda kv: -kv[1]):
        report(
            f"  {v:.4f}  {kind} w={w:<4} (128: {means['128'][(kind, w)]:.4f}, 785: {means['785'][(kind, w)]:.4f})"
        )
    best = max((k for k in both if k[0] == "views"), key=both.get)
    gain = both[best] - both[today]
    worst = min(means[g][best] - means[g][today] for g in means)
    change = gain >= 0.002 and worst >= -0.002
    verdict = (
        f"{whose} head is fitted on the views, ridge_blend={best[1]}"
        if change
        else f"{whose} head stays (views mean, {today[1]})"
    )
    report(
        f"rule: {verdict} (best views w={best[1]}: {gain:+.4f} against today's head, worst gene set {worst:+.4f})"
    )
    report.save()


def main() -> None:
    compare("genequery_head_views", WEIGHTS, TODAY)


if __name__ == "__main__":
    main()
