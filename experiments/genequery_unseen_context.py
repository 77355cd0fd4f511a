"""Genes not trained on, gene-aware: after a context of trained genes, or in one sequence with every gene?

Why: in gene mode the networks attend across the genes of a spot, and ``predict`` put the genes not
trained on in the same sequence as the trained ones (chunks of at most ``max_len`` genes of the list
asked for). So a gene's prediction depended on which other genes were asked for: the trained genes'
values changed when a gene not trained on was added to the request, and the ridge head's calibration
(made on the trained genes alone) no longer matched them. The package now predicts the trained genes
in the chunks they form alone and each gene not trained on after the first trained chunk, attending to
it and to itself only (``GeneQueryNet.forward(context=...)``, ``tests/test_genequery_context.py``): no
prediction depends on the rest of the request. The change is for consistency; this run measures what
it does to the genes not trained on.

Protocol: the validation sections of ``genequery_head_stages.py`` (training C2 + C3 + C4 with their
validation blocks, scored B4 and patient A1, A2 each alone; score = mean over the two patients of the
mean of HEG, HVG, ALL), 128 genes, GeneQuery's default gene-aware networks on the last layer's 8 views
(``ridge_blend=0``: the head predicts trained genes only) trained on the random 40 % of the genes of
``bench_genequery.py heldout_unseen`` (seed 0), seeds 0 / 10 / 20; the other 60 % scored, predicted
with the context (the package) and in one sequence with the trained genes (before: the request of the
benchmark, every gene, which fits in one chunk).

Rule, fixed before the run: the context is kept if its three-seed score on the genes not trained on is
no more than 0.005 below the one-sequence score; else the one-sequence prediction comes back, with the
inconsistency documented.

``python experiments/genequery_unseen_context.py [--seeds 0 10 20]`` →
``experiments/results/genequery_unseen_context.txt``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from genequery_blend import score  # noqa: E402
from genequery_head_rings import start  # noqa: E402
from genequery_selection import per_section, selection_data  # noqa: E402

import spared_tools as sp  # noqa: E402
from spared_tools.models import genequery_data  # noqa: E402


def one_sequence(model, adata, genes) -> np.ndarray:
    """``model.predict`` as before the context: every gene asked for in the same chunks."""
    init = genequery_data.GeneDataset.__init__

    def no_context(self, *args, n_known=None, **kw):
        init(self, *args, **kw)

    with mock.patch.object(genequery_data.GeneDataset, "__init__", no_context):
        return model.predict(adata, genes)


def main() -> None:
    args, report = start("genequery_unseen_context")
    a = selection_data("128", "32")
    genes = list(a.var_names)
    rng = np.random.default_rng(0)  # bench_genequery.py heldout_unseen's draw
    trained = [genes[i] for i in sorted(rng.choice(len(genes), size=round(0.4 * len(genes)), replace=False))]
    untrained = [g for g in genes if g not in set(trained)]
    scored = a[(a.obs["split"] == "test").to_numpy()].copy()
    truth = scored[:, untrained].copy()
    report(
        f"\n{a.n_obs} spots; training C2 + C3 + C4 on {len(trained)} genes (40 %); scored B4, A1, A2 on the "
        f"other {len(untrained)}"
    )
    table: dict[str, list[float]] = {"context": [], "one sequence": []}
    for seed in args.seeds:
        model = sp.tl.GeneQueryModel(seed=seed).set_params(accelerator="cpu", features_key="X_image_views")
        t0 = time.perf_counter()
        model.train(a, genes=trained, plan_kwargs={"ridge_blend": 0.0})
        report(f" seed {seed}: trained in {time.perf_counter() - t0:.0f} s")
        preds = {
            "context": model.predict(scored, untrained),
            "one sequence": one_sequence(model, scored, untrained),
        }
        for name, pred in preds.items():
            s = per_section(truth, pred)
            table[name].append(score(s))
            report(
                f"  {name:<12} "
                + "  ".join(f"{k} {v['heg']:.3f}/{v['hvg']:.3f}/{v['all']:.3f}" for k, v in s.items())
                + f"  | score {table[name][-1]:.4f}"
            )
        report.save()
    m = {k: float(np.mean(v)) for k, v in table.items()}
    diff = m["context"] - m["one sequence"]
    report(
        f"\nthree-seed score: context {m['context']:.4f}, one sequence {m['one sequence']:.4f} ({diff:+.4f}); "
        f"rule: {'the context stays' if diff >= -0.005 else 'the one-sequence prediction comes back'}"
    )
    report.save()


if __name__ == "__main__":
    main()
