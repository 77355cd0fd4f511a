"""Which of the cost rule's changes moves GeneQuery on a held-out patient-C section (issue 19).

A diagnosis on a test fold, not a selection: the defaults stay what the validation sections chose
(``genequery_selection.py``). Trains the package defaults (seed 0, bfloat16 features as on this CPU)
with 7 epochs (the default) and 12 epochs (the previous default) on fold ``FOLD`` of
``bench_genequery.py heldout`` and scores each with both test-time averages, ``tta="features"`` (the
default) and ``tta="predictions"`` (the previous one).

``python experiments/genequery_heldout_decompose.py C3 > experiments/results/decompose_genequery_heldout_C3.txt``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sps
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from bench_genequery import defaults_model, features_precision, fold6  # noqa: E402
from genequery_data6 import load6  # noqa: E402

import spared_tools as sp  # noqa: E402


def main() -> None:
    fold = sys.argv[1]
    torch.set_num_threads(2)
    sp.settings.verbosity = 1
    print(
        f"# genequery_heldout_decompose.py {fold}  (features in {features_precision()}, seed 0)", flush=True
    )
    a = fold6(load6("128", features_precision(), "efficientnet-lite0"), fold)
    test = a[(a.obs["split"] == "test").to_numpy()].copy()
    truth = test.layers["log1p"]
    truth = truth.toarray() if sps.issparse(truth) else np.asarray(truth)
    for epochs in (7, 12):
        model = defaults_model("gene", 0, max_epochs=epochs)
        t0 = time.perf_counter()
        model.train(a)
        t = time.perf_counter() - t0
        for tta in ("features", "predictions"):
            r = sp.tl.evaluate_prediction(truth, model.predict(test, tta=tta), genes=list(a.var_names))
            print(
                f"{fold} {epochs} epochs tta={tta}: HEG {r['pcc_heg']:.3f} HVG {r['pcc_hvg']:.3f} "
                f"ALL {r['pcc_all']:.3f} (train {t:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
