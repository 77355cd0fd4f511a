"""Do EfficientNet-Lite0's intermediate layers carry expression signal its last layer lacks? Ridge alone, validation only.

Why: the 785-gene HEG of the held-out patient-C folds (0.301 over three seeds) stays below the paper's
HER2+ figure (0.317), and none of four changes to the networks or the ridge head closed it
(``docs/differences.md``). All of them read the same input: the global average of the encoder's last
feature map (1,280 channels after the head convolution), features tuned to ImageNet's object classes.
Texture statistics of earlier stages are the classic complement for histology. Before any change to the
package's features, this asks the cheapest question: does ridge regression score higher on the
validation sections when the intermediate stages are added?

Protocol: the patch as it is (view 0, no dihedral views: one encoder pass per spot), bfloat16 autocast as
the package's default features; training C2 + C3 + C4 (all their spots), scored B4 and A1, A2 each alone;
score = mean over the two patients of the mean of HEG, HVG, ALL (as ``genequery_blend.py``); ridge =
``sp.tl.RidgePredictor(context_rings=1)`` with penalties 1e-3..1e7 chosen on the validation block of the
C sections (the 10 % of spots with the largest array column), features standardised on the training
spots; the 128 and the 785 genes. Inputs:

* ``head``: global mean of the last feature map (what ``sp.pp.image_features`` computes today);
* ``head+stages``: ``head`` followed by the global mean of the outputs of the last block of each stage
  at 40, 80, 112, 192 and 320 channels (2,024 features);
* ``head+stages+std``: as ``head+stages`` plus each of those stage outputs' spatial standard deviation
  (texture contrast; 2,768 features);
* ``stages``: the stage means without ``head`` (744 features).

Rule, fixed before the run: if the best of the three inputs with stages beats ``head`` by at least 0.01
on the mean of the two gene sets' scores, a validation run of GeneQuery's default networks on that
input follows (8 views, three seeds); otherwise the features stay as they are and nothing follows.

``python experiments/genequery_layers_probe.py`` → ``experiments/results/genequery_layers_probe.txt``
(the features are cached in ``benchmarks/_work/her2st6_layers_view0.npz``).
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
from genequery_data6 import VIEWS6, WORK  # noqa: E402
from genequery_head_rings import start  # noqa: E402
from genequery_selection import per_section, selection_data  # noqa: E402

import spared_tools as sp  # noqa: E402

CACHE = WORK / "her2st6_layers_view0.npz"
WIDE = tuple(10.0**k for k in range(-3, 8))


def layer_features(patches: np.ndarray) -> dict[str, np.ndarray]:
    """Per patch: ``head`` (1,280), the stage means (744) and the stage standard deviations (744).

    The package's ``"efficientnet-lite0-stages"`` encoder, split into its three parts. The committed run
    used this script's own copy, with the sample standard deviation where the package takes the
    population one: a constant factor per stage, which ridge's standardisation removes.
    """
    from spared_tools.models._efficientnet import HEAD_CHANNELS, STAGE_CHANNELS
    from spared_tools.models.image import encode_patches, load_image_encoder

    f = encode_patches(patches, load_image_encoder("efficientnet-lite0-stages"), precision="bf16")
    cut = (HEAD_CHANNELS, HEAD_CHANNELS + sum(STAGE_CHANNELS))
    return dict(zip(("head", "mean", "std"), np.split(f, cut, axis=1), strict=True))


def main() -> None:
    args, report = start("genequery_layers_probe")
    names = np.load(VIEWS6, allow_pickle=True)["names"]
    if CACHE.exists():
        feats = dict(np.load(CACHE))
        report("features: cached")
    else:
        patches = np.load(WORK / "her2st6_patches.npy", mmap_mode="r")
        t0 = time.perf_counter()
        feats = layer_features(patches)
        dt = time.perf_counter() - t0
        report(
            f"features of {len(patches)} patches (view 0, bf16): {dt:.0f} s = {len(patches) / dt:.1f} patches/s"
        )
        np.savez(CACHE, **feats)
    import pandas as pd

    inputs = {
        "head": ("head",),
        "head+stages": ("head", "mean"),
        "head+stages+std": ("head", "mean", "std"),
        "stages": ("mean",),
    }
    means: dict[str, list[float]] = {k: [] for k in inputs}
    for genes in ("128", "785"):
        a = selection_data(genes, "bf16")
        pos = pd.Index(names).get_indexer(a.obs_names)
        scored = a[(a.obs["split"] == "test").to_numpy()].copy()
        rel = np.linalg.norm(feats["head"][pos] - a.obsm["X_image_view0"]) / np.linalg.norm(
            a.obsm["X_image_view0"]
        )
        report(
            f"\n{genes} genes: {a.n_obs} spots; head vs the cached view-0 features: relative difference {rel:.4f}"
        )
        for name, parts in inputs.items():
            a.obsm["probe"] = np.concatenate([feats[p][pos] for p in parts], 1)
            scored.obsm["probe"] = a.obsm["probe"][(a.obs["split"] == "test").to_numpy()]
            r = sp.tl.RidgePredictor(
                encoder="precomputed", features_key="probe", alphas=WIDE, context_rings=1
            )
            r.train(a)
            s = per_section(scored, r.predict(scored))
            means[name].append(score(s))
            report(
                f"  {name:<16} ({a.obsm['probe'].shape[1]} features) penalty {r.alpha_:g}  "
                + "  ".join(f"{k} {v['heg']:.3f}/{v['hvg']:.3f}/{v['all']:.3f}" for k, v in s.items())
                + f"  | score {means[name][-1]:.4f}"
            )
        report.save()
    report("\nmean of the two gene sets' scores, ranked:")
    both = {k: float(np.mean(v)) for k, v in means.items()}
    for k, v in sorted(both.items(), key=lambda kv: -kv[1]):
        report(f"  {v:.4f}  {k} (128: {means[k][0]:.4f}, 785: {means[k][1]:.4f})")
    best = max((k for k in both if k != "head"), key=both.get)
    gain = both[best] - both["head"]
    report(
        f"rule: {'validation run of the networks on ' + best if gain >= 0.01 else 'features stay as they are'}"
        f" (best with stages: {best}, {gain:+.4f} against head)"
    )
    report.save()


if __name__ == "__main__":
    main()
