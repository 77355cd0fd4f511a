"""The six her2st sections with H&E (B4, C2, C3, C4 and patient A's A1, A2), cached for the GeneQuery runs.

``python experiments/genequery_data6.py`` builds, in ``benchmarks/_work/`` (gitignored):

* ``her2st6_views8.npz`` – EfficientNet-Lite0 features of the 8 dihedral views of every spot's patch
  (patches of one spot diameter, resized to 224 px, so A's 3.19 µm/px and B/C's 0.69 µm/px images give
  the same field), keyed by spot name; the features are frozen, so they are computed once;
* ``her2st6_785.h5ad`` – the paper-sized gene set: the HER2+ rule of ``benchmarks/bench_genequery.py``
  (union of per-section top-1,000 HVGs over the 28 sections, expressed in >= 1,000 spots), the 785 genes
  expressed in the most spots of B4/C2/C3/C4, less those patient A does not measure; targets
  ``layers['log1p']`` = natural log1p of counts per 10^4 (computed over all genes of the spot);
* ``her2st6_128.h5ad`` – the genes ``sp.pp.spared_pipeline(organism="human")`` selects on the six
  sections (128 by Moran's I), targets its ``layers['log1p']`` (log2(TPM + 1)).

:func:`load6` returns one of the two with the cached features attached: ``obsm['X_image_views']``
(the 8 views, recorded as ``sp.pp.image_features(views=True)`` would), ``obsm['X_image_view0']`` (the
patch as it is, what ``RidgePredictor()`` computes) and ``obsm['X_image_tta']`` (the mean of the views).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import HER2ST  # noqa: E402
from bench_genequery import WORK, log1p_layer  # noqa: E402

import spared_tools as sp  # noqa: E402

HER2ST_A = ROOT.parent / "shared" / "data" / "her2st_app_hne"
SECTIONS6 = ["B4", "C2", "C3", "C4", "A1", "A2"]
VIEWS6 = WORK / "her2st6_views8.npz"
VIEWS6_BF16 = WORK / "her2st6_views8_bf16.npz"
#: the 8 views' features of the package's default encoder (EfficientNet-Lite0's last layer and stages)
VIEWS6_STAGES_BF16 = WORK / "her2st6_stages_views8_bf16.npz"
#: the same in float32 (``--stages --fp32``: for CPUs without bfloat16 in hardware, where autocast
#: emulates it about 20x slower than float32)
VIEWS6_STAGES = WORK / "her2st6_stages_views8.npz"


def raw6() -> ad.AnnData:
    """Raw counts of the six sections, genes aligned on their union (absent = 0, ``varm['measured']``)."""
    parts = [sp.io.read_her2st(HER2ST, [s]) for s in SECTIONS6[:4]]
    parts += [sp.io.read_her2st(HER2ST_A, [s]) for s in SECTIONS6[4:]]
    return sp.io.concat_slides(parts)


def _features(a: ad.AnnData, log) -> None:
    from spared_tools.models.image import load_image_encoder

    enc = load_image_encoder("efficientnet-lite0")
    if VIEWS6.exists():
        z = np.load(VIEWS6, allow_pickle=True)
        if str(z["fingerprint"]) == enc.fingerprint() and list(z["names"]) == list(a.obs_names):
            log(f"features: cached in {VIEWS6.name}")
            return
    import torch

    t0 = time.perf_counter()
    sp.pp.extract_patches(a, size=224, store="disk", path=WORK / "her2st6_patches.npy")
    t_patch = time.perf_counter() - t0
    t0 = time.perf_counter()
    views = sp.pp.image_features(a, encoder=enc, views=True, key_added="X_views")
    t_feat = time.perf_counter() - t0
    log(
        f"patches: {a.n_obs} in {t_patch:.1f} s; EfficientNet-Lite0 features of 8 views: {t_feat:.0f} s = "
        f"{8 * a.n_obs / t_feat:.1f} patches/s ({torch.get_num_threads()} threads)"
    )
    np.savez(
        VIEWS6, views=views.astype(np.float32), names=np.asarray(a.obs_names), fingerprint=enc.fingerprint()
    )


def prep(log=print) -> None:
    WORK.mkdir(exist_ok=True)
    a = raw6()
    log(f"six sections: {a.n_obs} spots ({dict(a.obs['slide_id'].value_counts())}), {a.n_vars} genes")
    _features(a, log)
    # the pipeline's genes
    t0 = time.perf_counter()
    c = sp.pp.spared_pipeline(a, organism="human")
    log(
        f"spared_pipeline defaults: {c.n_obs} spots × {c.n_vars} genes in {time.perf_counter() - t0:.0f} s "
        f"({dict(c.obs['slide_id'].value_counts())})"
    )
    for k in list(c.layers):
        if k not in ("log1p", "counts"):
            del c.layers[k]
    c.write_h5ad(WORK / "her2st6_128.h5ad")
    # the paper-sized set (bench_genequery's rule, gene list cached by its prep stage or built here)
    gfile = WORK / "her2st_genes.txt"
    if not gfile.exists():
        from _common import Report
        from bench_genequery import gene_set

        gfile.write_text("\n".join(gene_set(Report("genequery_prep_tmp"))))
    genes = [g for g in gfile.read_text().split() if g in a.var_names]
    measured = pd.DataFrame(a.varm["measured"], index=a.var_names)
    hne4 = a.obs["slide_id"].isin(SECTIONS6[:4]).to_numpy()
    X = a.X.tocsr() if sps.issparse(a.X) else sps.csr_matrix(a.X)
    n_expr = pd.Series(np.asarray((X[hne4] > 0).sum(0)).ravel(), index=a.var_names)
    top = n_expr[genes].sort_values(ascending=False, kind="stable").index[:785]
    in_a = measured.loc[top].iloc[:, 4:].all(axis=1)
    keep = [g for g in a.var_names if g in set(top[in_a.to_numpy()])]
    log(f"785-gene set: {int((~in_a).sum())} of the 785 not measured in patient A; {len(keep)} genes used")
    b = a.copy()
    b.layers["log1p"] = sps.csr_matrix(log1p_layer(b))
    b = b[:, keep].copy()
    b.write_h5ad(WORK / "her2st6_785.h5ad")


def load6(genes: str = "128", precision: str = "32", encoder: str | None = None) -> ad.AnnData:
    """The cached data set (``genes`` ``"128"`` or ``"785"``) with the 8 views' features attached.

    ``precision="bf16"``: the features as the encoder computes them in bfloat16 autocast
    (``her2st6_views8_bf16.npz``, written by ``python experiments/genequery_data6.py --bf16``).
    ``encoder``: ``"efficientnet-lite0"`` (the last layer, the features of every experiment before
    ``genequery_layers.py``) or ``"efficientnet-lite0-stages"`` (``python experiments/genequery_data6.py --stages``, and
    ``--stages --fp32`` for ``precision="32"``); ``None``: the package's default encoder.
    """
    from spared_tools.models.image import DEFAULT_IMAGE_ENCODER, load_image_encoder

    encoder = DEFAULT_IMAGE_ENCODER if encoder is None else encoder
    a = ad.read_h5ad(WORK / f"her2st6_{genes}.h5ad")
    if encoder == "efficientnet-lite0":
        path = VIEWS6 if precision == "32" else VIEWS6_BF16
    elif encoder == "efficientnet-lite0-stages":
        path = VIEWS6_STAGES if precision == "32" else VIEWS6_STAGES_BF16
    else:
        raise ValueError(f"no cached features of {encoder!r} in precision {precision!r}")
    z = np.load(path, allow_pickle=True)
    pos = pd.Index(z["names"]).get_indexer(a.obs_names)
    if (pos < 0).any():
        raise KeyError("spots without cached features: rerun experiments/genequery_data6.py")
    views = z["views"][pos]
    enc = load_image_encoder(encoder)
    if "fingerprint" in z and str(z["fingerprint"]) != enc.fingerprint():
        raise ValueError(f"{path.name} was made by another encoder than {encoder!r}")
    a.obsm["X_image_views"] = views  # GeneQuery: features_key="X_image_views"
    a.uns["X_image_views"] = {
        "params": {"encoder": enc.name, "fingerprint": enc.fingerprint(), "views": 8, "out_dim": enc.out_dim}
    }
    a.obsm["X_image_view0"] = views[:, 0]  # the patch as it is: what RidgePredictor() computes
    a.obsm["X_image_tta"] = views.mean(1)
    return a


def prep_bf16(log=print) -> None:
    """``her2st6_views8_bf16.npz``: the 8 views' features as ``sp.pp.image_features(precision="bf16")`` computes them."""
    import torch

    from spared_tools.models.image import load_image_encoder

    z = np.load(VIEWS6, allow_pickle=True)
    a = ad.AnnData(obs=pd.DataFrame(index=pd.Index(z["names"]).astype(str)))
    a.obsm["patches"] = np.load(WORK / "her2st6_patches.npy", mmap_mode="r")
    enc = load_image_encoder("efficientnet-lite0")
    t0 = time.perf_counter()
    views = sp.pp.image_features(a, encoder=enc, views=True, precision="bf16", key_added="X_views")
    dt = time.perf_counter() - t0
    err = np.linalg.norm(views - z["views"]) / np.linalg.norm(z["views"])
    log(
        f"bf16 features of 8 views: {8 * a.n_obs / dt:.1f} patches/s ({torch.get_num_threads()} threads); "
        f"relative difference to the float32 features {err:.3f}"
    )
    np.savez(VIEWS6_BF16, views=views, names=z["names"], fingerprint=enc.fingerprint())


def prep_stages(log=print, precision: str = "bf16") -> None:
    """``her2st6_stages_views8_bf16.npz``: the stages encoder's 8 views' features, bfloat16 autocast
    (``precision="32"``: ``her2st6_stages_views8.npz``, float32)."""
    import torch

    from spared_tools.models.image import load_image_encoder

    names = np.load(VIEWS6, allow_pickle=True)["names"]
    a = ad.AnnData(obs=pd.DataFrame(index=pd.Index(names).astype(str)))
    a.obsm["patches"] = np.load(WORK / "her2st6_patches.npy", mmap_mode="r")
    enc = load_image_encoder("efficientnet-lite0-stages")
    t0 = time.perf_counter()
    views = sp.pp.image_features(a, encoder=enc, views=True, precision=precision, key_added="X_views")
    dt = time.perf_counter() - t0
    log(
        f"stages features of 8 views ({precision}): {8 * a.n_obs / dt:.1f} patches/s ({torch.get_num_threads()} threads)"
    )
    path = VIEWS6_STAGES_BF16 if precision == "bf16" else VIEWS6_STAGES
    np.savez(path, views=views, names=names, fingerprint=enc.fingerprint())


if __name__ == "__main__":
    if "--stages" in sys.argv:
        prep_stages(precision="32" if "--fp32" in sys.argv else "bf16")
    else:
        prep_bf16() if "--bf16" in sys.argv else prep()
