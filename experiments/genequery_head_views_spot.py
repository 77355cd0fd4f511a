"""Spot mode's ridge head fitted on the 8 views as samples instead of on their mean: validation sections only.

Why: ``genequery_head_views.py`` moved gene mode's ridge head onto the 8 dihedral views as samples (each
view of a training spot a row, with its spot's expression), which won on the validation sections and was
neutral on the held-out patient-C folds. Spot mode, not asked then, kept the head fitted on the views'
mean at its own weight (``ridge_blend=0.65``, ``genequery_head_stages_spot.txt``). Issue 19 asks spot-aware
to at least match ridge on every score, and on the held-out folds (``genequery_heldout_spot.txt``, read
before this script was written and disclosed here) it is behind ridge on C3 and C4 HEG; the held-out folds
choose nothing. The head alone (no network) is the same fit in both modes, so its scores are those of
``genequery_head_views.txt`` (0.2168 → 0.2251 on the 128 genes, 0.1471 → 0.1502 on the 785).

Protocol: ``genequery_head_views.py`` with spot-aware networks (training C2 + C3 + C4 with their
validation blocks, scored B4 and patient A1, A2 each alone; score = mean over the two patients of the
mean of HEG, HVG, ALL; GeneQuery's default spot-aware networks on the last layer's 8 views, float32; head
on the stages, penalty chosen on the validation block by mean per-gene PCC; z-blend on GeneQuery's scale).
128 genes: seeds 0 / 10 / 20; 785 genes: seed 0 (one spot-aware training on them takes 10-15 minutes on
this machine). Candidates: the head on the views as samples (``views``) at weights 0.5, 0.65, 0.8;
reference: today's spot-mode head (``mean``, 0.65), same networks.

Rule, fixed before the run: score each candidate by the mean of its 128-gene seed mean and its 785-gene
score; the best ``views`` candidate becomes spot mode's default (the head fitted on the views, with its
weight) if that beats today's by at least 0.002 and neither gene set is more than 0.002 below today's.
The held-out check, fixed before the run too: with the change, ``bench_genequery.py heldout --modes spot
--seeds 0 10 20`` must not lower any fold-mean score (HEG, HVG, ALL) by more than 0.005 against the
committed spot-aware file; that check reads test sections and can only keep today's head.

``python experiments/genequery_head_views_spot.py [--seeds 0 10 20] [--seeds785 0]`` →
``experiments/results/genequery_head_views_spot.txt`` (features: ``python experiments/genequery_data6.py``
and ``--stages --fp32`` first).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from genequery_head_views import compare  # noqa: E402

WEIGHTS = (0.5, 0.65, 0.8)
TODAY = ("mean", 0.65)


def main() -> None:
    compare("genequery_head_views_spot", WEIGHTS, TODAY, mode="spot")


if __name__ == "__main__":
    main()
