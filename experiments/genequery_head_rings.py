"""The ridge head's input: the networks' neighbourhood (ring 1) or a wider one (ring 2)? Validation only.

Why: the held-out patient-C folds of ``bench_genequery.py heldout --gene-set 785`` put GeneQuery's HEG
(0.301 over three seeds) below the paper's HER2+ figure (0.317), and ``genequery_blend.py --second
--genes 785`` confirmed the head's weight (0.35) on the 785 genes. A quick look at ridge alone on the
validation sections (the protocol below, penalties 1e-3..1e7, one fit, written before this script and
disclosed here) scored the mean of the 8 views' features followed by their mean over the spots within
**two** rings (``ring2``) above the networks' own input (features followed by their ring-1 mean,
``ring1``, today's head): 0.2127 against 0.2066 on the 128 genes, 0.1542 against 0.1447 on the 785 genes
(features, ring-1 and ring-2 means together: 0.2074 / 0.1493). This script asks whether the head
should see ``ring2`` instead.

Protocol: ``genequery_blend.py --second`` (training C2 + C3 + C4 with their validation blocks, scored B4
and patient A1, A2 each alone; score = mean over the two patients of the mean of HEG, HVG, ALL;
GeneQuery's default networks, bfloat16 features, seeds 0 / 10 / 20; z-blend on GeneQuery's scale), for
the 128 and the 785 genes. Candidates: head input ``ring1`` or ``ring2``, weights 0.2, 0.35, 0.5, 0.65.

Rule, fixed before the run: the candidate with the highest mean of the two gene sets' three-seed
scores wins; ``ring2`` (with its weight) becomes the default only if that mean beats today's default
(``ring1``, 0.35) by at least 0.005; else the head stays as it is.

``python experiments/genequery_head_rings.py [--seeds 0 10 20]`` →
``experiments/results/genequery_head_rings.txt``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from _common import machine_info  # noqa: E402
from genequery_blend import score, zscore  # noqa: E402
from genequery_selection import ExperimentReport, per_section, selection_data  # noqa: E402

import spared_tools as sp  # noqa: E402

WEIGHTS = (0.2, 0.35, 0.5, 0.65)
WIDE = tuple(10.0**k for k in range(-3, 8))


def head_inputs(a) -> None:
    """``obsm['ring1']`` / ``obsm['ring2']``: the views' mean followed by its mean within 1 / 2 rings."""
    X = a.obsm["X_image_tta"]
    for r in (1, 2):
        a.obsm[f"ring{r}"] = sp.pp.context_features(a, X, n_rings=r, library_key="slide_id")


def start(name: str, extra=None, script: str | None = None) -> tuple[argparse.Namespace, ExperimentReport]:
    """Parse ``--seeds`` / ``--threads`` (and what ``extra(parser)`` adds); ``results/<name>.txt`` opens with the
    command (``script``, default ``<name>.py``) and the machine."""
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 10, 20])
    p.add_argument("--threads", type=int, default=2)
    if extra is not None:
        extra(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sp.settings.verbosity = 1
    report = ExperimentReport(name)
    report(f"# {script or name + '.py'} {' '.join(sys.argv[1:])}")
    report(
        f"# {machine_info()} | torch threads {torch.get_num_threads()} | load average {os.getloadavg()[0]:.1f} "
        f"(2 cores) | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    return args, report


def networks(
    a, scored, train_ad, seed: int, report, label: str = "networks", mode: str = "gene", **plan
) -> tuple:
    """GeneQuery's default networks alone (no head; the mix is computed here): predictions of both parts."""
    model = sp.tl.GeneQueryModel(mode=mode, seed=seed)
    model.set_params(accelerator="cpu", features_key="X_image_views")
    t0 = time.perf_counter()
    model.train(a, plan_kwargs={"ridge_blend": 0.0, **plan})
    gq, gq_fit = model.predict(scored), model.predict(train_ad)
    report(f" seed {seed}: {label} trained in {time.perf_counter() - t0:.0f} s")
    return gq, gq_fit


def blend_rows(
    report, label: str, nets: tuple, ridge: tuple, scored, weights, scores: list[list[float]]
) -> None:
    """Score the z-blend of the networks' and ridge's predictions at each weight; one line per weight.

    ``nets`` / ``ridge`` are (scored, training) predictions; ``scores[i]`` collects weight i's score.
    """
    (gq, gq_fit), (rp, rf) = nets, ridge
    for w, out in zip(weights, scores, strict=True):
        z = (1 - w) * zscore(gq, gq_fit) + w * zscore(rp, rf)
        s = per_section(scored, gq_fit.mean(0) + gq_fit.std(0) * z)
        out.append(score(s))
        report(
            f"  {label} w={w:<4} "
            + "  ".join(f"{k} {v['heg']:.3f}/{v['hvg']:.3f}/{v['all']:.3f}" for k, v in s.items())
            + f"  | score {out[-1]:.4f}"
        )


def ranked(report, means: dict[str, dict[tuple[str, float], float]]) -> dict[tuple[str, float], float]:
    """Report the (input, weight) candidates ranked by the mean of the two gene sets' scores; return it."""
    report("\nmean of the two gene sets' three-seed scores, ranked:")
    both = {k: (means["128"][k] + means["785"][k]) / 2 for k in means["128"]}
    for (name, w), v in sorted(both.items(), key=lambda kv: -kv[1]):
        report(
            f"  {v:.4f}  {name} w={w:<4} (128: {means['128'][(name, w)]:.4f}, 785: {means['785'][(name, w)]:.4f})"
        )
    return both


def main() -> None:
    args, report = start("genequery_head_rings")
    means: dict[str, dict[tuple[str, float], float]] = {}
    for genes in ("128", "785"):
        a = selection_data(genes, "bf16")
        head_inputs(a)
        train_ad = a[(a.obs["split"] == "train").to_numpy()].copy()
        scored = a[(a.obs["split"] == "test").to_numpy()].copy()
        report(f"\n{genes} genes: {a.n_obs} spots; training C2 + C3 + C4; scored B4, A1, A2 (each alone)")
        ridge_pred, ridge_fit = {}, {}
        for name in ("ring1", "ring2"):
            r = sp.tl.RidgePredictor(encoder="precomputed", features_key=name, alphas=WIDE)
            r.train(a)
            ridge_pred[name], ridge_fit[name] = r.predict(scored), r.predict(train_ad)
            report(
                f"  ridge on {name} alone: penalty {r.alpha_!r}  score {score(per_section(scored, ridge_pred[name])):.4f}"
            )
        table: dict[tuple[str, float], list[float]] = {}
        for seed in args.seeds:
            nets = networks(a, scored, train_ad, seed, report)
            for name in ridge_pred:
                rows = [table.setdefault((name, w), []) for w in WEIGHTS]
                blend_rows(report, name, nets, (ridge_pred[name], ridge_fit[name]), scored, WEIGHTS, rows)
            report.save()
        means[genes] = {k: float(np.mean(v)) for k, v in table.items()}
    both = ranked(report, means)
    best = max(both, key=both.get)
    gain = both[best] - both[("ring1", 0.35)]
    change = best[0] == "ring2" and gain >= 0.005
    report(
        f"rule: {f'the head sees ring2 with ridge_blend={best[1]}' if change else 'the head stays (ring1, 0.35)'}"
        f" (best {best[0]} w={best[1]}, {gain:+.4f} against ring1 w=0.35)"
    )
    report.save()


if __name__ == "__main__":
    main()
