"""Gene mode's sequence length: chunks of at most 128 genes instead of 512? Validation sections only.

Why: in gene mode a spot's genes are one attention sequence, split into chunks of at most ``max_len``
(512) genes, re-drawn every epoch in training. Attention costs ``O(max_len)`` per token, and on this
AVX2 CPU prediction misses its target (5,000 spots × 1,000 genes take 227 s against 120 s,
``benchmarks/results/genequery_cost.txt``). The 128 genes of the pipeline already form one sequence of
128, where every gene-mode default was chosen; only longer gene lists (the 785) see longer sequences,
and nobody chose 512 for them. Written before any score of gene mode with ``max_len=128``.

Protocol: ``genequery_head_stages.py``'s (training C2 + C3 + C4 with their validation blocks, scored
B4 and patient A1, A2 each alone; score = mean over the two patients of the mean of HEG, HVG, ALL;
GeneQuery's default networks on the last layer's 8 views, float32 features, seeds 0 / 10 / 20; the
default head: ridge on the stages' views mean followed by its ring-1 mean, z-blend weight 0.5), on the
785 genes. The 128 genes are left out: with 128 genes both settings form the same single chunk, so their
scores are equal by construction. Today's default (``max_len=512``) is read from
``genequery_head_stages.txt`` (``stages w=0.5``, the same seeds, data and code for networks trained on
all their genes); ``--reproduce`` reruns it for the given seeds here as a check.

Rule, fixed before the run: ``max_len=128`` becomes gene mode's default if its three-seed score on the
785 genes is at least today's minus 0.002 (it is chosen for speed; it must not cost accuracy). The
held-out benchmark then runs with it (``bench_genequery.py heldout --gene-set 785 --seeds 0``) as a check
fixed before this run too: the change is kept only if no fold-mean score (HEG, HVG, ALL) falls by more
than 0.005 against today's defaults at the same seed (``genequery_heldout_gene_785.txt``).

Second candidate, ``--candidate 1024`` (written after the 128 run, which lost 0.0056: is a longer
sequence than 512 better?): the 785 genes form one sequence of 785 in training and prediction. It costs
prediction time (attention over 785 genes instead of about 393), so its rule, fixed before its run, asks
for a gain: it becomes gene mode's default if the three-seed score gains at least 0.002 on today's and
every seed gains, and then only after the same held-out check as above.

``python experiments/genequery_max_len.py [--candidate 128] [--seeds 0 10 20] [--reproduce 0]`` →
``experiments/results/genequery_max_len.txt`` (``genequery_max_len_<candidate>.txt`` for another
candidate; features: ``python experiments/genequery_data6.py --stages --fp32`` first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from genequery_head_rings import blend_rows, networks, start  # noqa: E402
from genequery_head_stages_spot import stages_head  # noqa: E402

WEIGHT = 0.5  # gene mode's ridge_blend


def today(path: Path) -> list[float]:
    """Today's default per seed on the 785 genes (``stages w=0.5`` rows of the head-stages run)."""
    out, genes = [], None
    for line in path.read_text().splitlines():
        if " genes: " in line and "scored B4" in line:
            genes = line.split()[0]
        if genes == "785" and line.lstrip().startswith(f"stages w={WEIGHT} "):
            out.append(float(line.split()[-1]))
    return out


def _options(p) -> None:
    p.add_argument("--candidate", type=int, default=128)
    p.add_argument("--reproduce", type=int, nargs="*", default=[0])


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    _options(pre)
    cand = pre.parse_known_args()[0].candidate
    args, report = start(
        "genequery_max_len" + ("" if cand == 128 else f"_{cand}"), _options, "genequery_max_len.py"
    )
    base = today(HERE / "results" / "genequery_head_stages.txt")
    report(
        f"today's default (max_len=512), 785 genes, seeds 0 / 10 / 20 from genequery_head_stages.txt: {base}"
    )
    a, train_ad, scored, ridge = stages_head("785", report)
    rows: dict[int, list[float]] = {cand: [], 512: []}
    for seed in args.seeds:
        nets = networks(a, scored, train_ad, seed, report, f"networks max_len={cand}", max_len=cand)
        blend_rows(report, f"max_len={cand}", nets, ridge, scored, (WEIGHT,), [rows[cand]])
        report.save()
    for seed in args.reproduce:
        nets = networks(a, scored, train_ad, seed, report, "networks max_len=512 (today, check)", max_len=512)
        blend_rows(report, "max_len=512", nets, ridge, scored, (WEIGHT,), [rows[512]])
        i = [0, 10, 20].index(seed) if seed in (0, 10, 20) else None
        if i is not None and i < len(base):
            report(
                f"  reproduction of seed {seed}: {rows[512][-1]:.4f} here, {base[i]:.4f} in genequery_head_stages.txt"
            )
        report.save()
    new, ref = float(np.mean(rows[cand])), float(np.mean(base))
    gains = [x - b for x, b in zip(rows[cand], base, strict=False)]
    if cand < 512:  # chosen for speed: must not cost accuracy
        keep, why = new >= ref - 0.002, "kept if at least today's - 0.002"
    else:  # costs time: must gain
        keep = new >= ref + 0.002 and all(g > 0 for g in gains)
        why = "kept if it gains at least 0.002 and on every seed"
    report(
        f"\nthree-seed score, 785 genes: max_len={cand} {new:.4f} against today's 512 {ref:.4f} ({new - ref:+.4f}; "
        f"per seed {' / '.join(f'{g:+.4f}' for g in gains)})"
    )
    report(
        f"rule: {f'max_len={cand} becomes gene mode default (after the held-out check)' if keep else 'max_len=512 stays'}"
        f" ({why}; the 128 genes are one chunk either way)"
    )
    report.save()


if __name__ == "__main__":
    main()
