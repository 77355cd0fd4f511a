"""The ridge head's penalty per gene instead of one for all genes: validation sections only, head alone.

Why: the ridge head (``ridge_blend``) keeps one penalty for all trained genes, the one with the highest
mean per-gene Pearson correlation on the validation spots. Genes differ in how much of their pattern the
image explains, and ridge implementations often offer a penalty per target (scikit-learn's
``RidgeCV(alpha_per_target=True)``), chosen the same way, gene by gene, from the same decomposition at
no extra cost. Does that help on the other patients' sections?

Protocol: ``genequery_head_views.py``'s head, fitted the way the default fits it (training C2 + C3 + C4,
each of a training spot's 8 views as a sample, the stages features followed by their ring-1 mean, the
penalty chosen on the views' mean of the training sections' validation block), scored alone on B4 and
patient A1, A2 (score = mean over the two patients of the mean of HEG, HVG, ALL), 128 and 785 genes.
Candidates: one penalty for all genes (today's), a penalty per gene (the highest validation PCC of that
gene), and a penalty per gene after smoothing each gene's validation curve over neighbouring penalties
(less noise in the choice). No networks are trained: if the head alone does not gain, the blend cannot
gain through it. Rule: a per-gene penalty is worth a blended run (and, with it, a held-out check) only
if the head alone gains at least 0.003 on both gene sets. Disclosure: a scratch probe of the same
comparison ran before this script was written and already showed the per-gene penalties well below one
penalty; this script is its committed, rerunnable form, and the rule was written knowing that.

``python experiments/genequery_head_alpha.py`` → ``experiments/results/genequery_head_alpha.txt``
(features: ``python experiments/genequery_data6.py`` and ``--stages --fp32`` first).
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
from genequery_head_rings import WIDE, start  # noqa: E402
from genequery_head_views import head_inputs  # noqa: E402
from genequery_selection import per_section  # noqa: E402

from spared_tools._kernels.metrics import pearson_per_gene  # noqa: E402
from spared_tools.tl._baselines import _views_basis  # noqa: E402


def choices(R: np.ndarray) -> dict[str, np.ndarray]:
    """Each candidate's penalty index per gene, from the validation PCC ``R`` (penalties × genes)."""
    shared = int(np.argmax(R.mean(axis=1)))
    smooth = R.copy()
    smooth[1:-1] = (R[:-2] + R[1:-1] + R[2:]) / 3
    return {
        "one penalty for all genes (today)": np.full(R.shape[1], shared),
        "a penalty per gene": R.argmax(axis=0),
        "a penalty per gene, smoothed curve": smooth.argmax(axis=0),
    }


def run(genes: str, report) -> dict[str, float]:
    """The three candidates' head-alone scores on the validation sections for one gene set."""
    a, ctx, mean_in, tr, va, te, Y = head_inputs(genes)
    t0 = time.perf_counter()
    # the basis the default head uses (fit_ridge(views=...)): each of the 8 views of a training spot a sample
    y_mean = Y[tr].mean(axis=0)
    x_mean, x_scale, s, Vt, UtY = _views_basis(mean_in, Y[tr] - y_mean, tr, 8, lambda j: ctx[j])
    n = 8 * tr.size
    XvaV = ((mean_in[va] - x_mean) / x_scale) @ Vt.T
    XteV = ((mean_in[te] - x_mean) / x_scale) @ Vt.T
    R = np.array(
        [pearson_per_gene(Y[va], XvaV @ ((s / (s**2 + al * n))[:, None] * UtY) + y_mean) for al in WIDE]
    )
    R = np.nan_to_num(R, nan=-1.0)  # a gene constant on the validation block: any penalty
    report(
        f"\n{genes} genes: {tr.size} training spots (x 8 views), {va.size} validation, {te.size} scored "
        f"(B4, A1, A2); basis {time.perf_counter() - t0:.0f} s"
    )
    scored = a[te].copy()
    out = {}
    alphas = np.asarray(WIDE)
    for name, idx in choices(R).items():
        shrink = s[:, None] / (s[:, None] ** 2 + alphas[idx][None, :] * n)
        out[name] = score(per_section(scored, XteV @ (shrink * UtY) + y_mean))
        counts = ", ".join(f"{alphas[k]:g}: {int((idx == k).sum())}" for k in np.unique(idx))
        report(f"  {name:<36} score {out[name]:.4f}  (genes per penalty: {counts})")
    report.save()
    return out


def main() -> None:
    _, report = start("genequery_head_alpha")
    scores = {genes: run(genes, report) for genes in ("128", "785")}
    today = "one penalty for all genes (today)"
    gains = {
        name: min(scores[g][name] - scores[g][today] for g in scores)
        for name in scores["128"]
        if name != today
    }
    best = max(gains, key=gains.get)
    verdict = "worth a blended run" if gains[best] >= 0.003 else "dropped: the head keeps one penalty"
    report(
        f"\nrule: best per-gene candidate '{best}', smallest gain over the two gene sets {gains[best]:+.4f}: {verdict}"
    )
    report.save()


if __name__ == "__main__":
    main()
