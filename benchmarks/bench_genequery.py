"""GeneQuery on her2st (HER2+ breast tumour, legacy ST) head to head with the three baselines, plus CPU speed.

Data: the four her2st sections that have a full-resolution H&E image (B4, C2, C3, C4) in
../shared/data/her2st_raw.

Gene set (the paper's HER2+ rule): the union over all 28 sections of each section's top-1,000 highly
variable genes (scanpy ``flavor="seurat_v3"`` on the raw counts of that section's expressed genes; needs
the benchmark-only package scikit-misc, ``pip install -e .[bench]``, without which the stage stops with
an error naming it: ``"seurat"`` on log-normalised data gives a union of ~5,000 genes, far from the paper's 785), keeping genes expressed (count > 0) in at least 1,000 spots over the 28 sections. The count is
printed (the paper reports 785 on its 36-section release).

Targets: normalize_total(1e4) per spot over all genes, natural log1p (``layers['log1p']``).
Images: 224 px patches of one spot diameter (~145 px) around each spot (``sp.pp.extract_patches``),
frozen ImageNet EfficientNet-Lite0 features (``models.image.encode_patches``), cached in
benchmarks/_work/ (gitignored).

Stages (``python benchmarks/bench_genequery.py STAGE [options]``):

* ``prep``   – gene set, targets, patches, features → benchmarks/_work/her2st_genequery.h5ad
* ``main``   – folds: leave-one-section-out within patient C (test C2 / C3 / C4, train on the other two)
  and B4 as a cross-patient test (train C2+C3+C4). Validation = the 10 % of each training section's
  spots with the largest array column (a spatial block, not random spots). Models: MeanPredictor,
  RidgePredictor (HEST-style, frozen features), LinearHeadPredictor (STNet-style linear head, frozen
  features), spot-aware and gene-aware GeneQuery. → results/genequery_main.txt
* ``speed``  – training time per epoch and prediction time/memory for 5,000 spots × 1,000 genes on CPU.
  → results/genequery_speed.txt

The research ablations that chose GeneQuery's defaults (unseen genes, ensembles, identity code, image
context, image dropout, fine-tuning, precision, rank, loss floor, input standardisation) are
``experiments/genequery_ablations.py``, with their outputs in ``experiments/results/``; they reuse this
script's data set-up (:func:`load`, :func:`fold_data`, :func:`gq`, :func:`ridges`).

Run with ``nice -n 10``; ``--epochs``, ``--folds``, ``--width`` bound the CPU cost (see the results
files for the settings used). Each stage's output name is its row of :data:`STAGES`: a base name and
the suffix rules of :data:`SUFFIXES` that apply to it (``main`` writes to a file of its own when run with
``--one-view``, a target ``--scaling`` other than min-max, a ``--width`` other than 128 or a ``--seed``
other than 0: suffixes ``_one_view``, ``_standard``, ``_w256``, ``_seed1``...).
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sps
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import HER2ST, Report, machine_info, write_text_atomic

import spared_tools as sp
from spared_tools.models.image import encode_patches, load_image_encoder
from spared_tools.pp import image_features
from spared_tools.tl._genequery_settings import SPOT_DEFAULTS

WORK = Path(__file__).resolve().parent / "_work"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PREP = WORK / "her2st_genequery.h5ad"
VIEWS = WORK / "her2st_views8.npz"  # features of the 8 dihedral views of every patch (cached)
SECTIONS = ["B4", "C2", "C3", "C4"]
FOLDS = {"C2": ["C3", "C4"], "C3": ["C2", "C4"], "C4": ["C2", "C3"], "B4": ["C2", "C3", "C4"]}
#: seurat_v3 (variance of raw counts after a loess mean-variance fit) needs scikit-misc (``.[bench]``)
HVG_FLAVOR = "seurat_v3"
PAPER = {"spot": (0.317, 0.315, 0.174), "gene": (0.315, 0.318, 0.159), "STNet": (0.298, 0.302, 0.136)}


def log1p_layer(a: ad.AnnData) -> np.ndarray:
    b = ad.AnnData(a.X.astype(np.float32))
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b.X


def gene_set(report: Report) -> list[str]:
    try:
        import skmisc.loess  # noqa: F401
    except ImportError as e:  # "seurat" on raw counts overflows; on log data it gives ~5,000 genes
        raise ImportError(
            "the paper's gene set needs scanpy's flavor='seurat_v3', which needs scikit-misc: "
            "pip install -e '.[bench]'"
        ) from e
    full = sp.io.read_her2st(HER2ST, images=False)
    X = full.X.tocsr() if sps.issparse(full.X) else sps.csr_matrix(full.X)
    n_expr = np.asarray((X > 0).sum(0)).ravel()
    hv: set[str] = set()
    slides = full.obs["slide_id"].astype(str).to_numpy()
    for s in pd.unique(slides):
        m = slides == s
        sub = ad.AnnData(X[m].astype(np.float32), var=pd.DataFrame(index=full.var_names))
        sub = sub[:, np.asarray((sub.X > 0).sum(0)).ravel() > 0].copy()
        sc.pp.highly_variable_genes(sub, flavor=HVG_FLAVOR, n_top_genes=1000)
        hv |= set(sub.var_names[sub.var["highly_variable"].to_numpy()])
    genes = [g for g, n in zip(full.var_names, n_expr) if g in hv and n >= 1000]
    report(
        f"gene set ({HVG_FLAVOR} HVGs on raw counts): {len(pd.unique(slides))} sections, {full.n_obs} spots, {full.n_vars} genes; union of per-section "
        f"top-1000 HVGs = {len(hv)}; expressed in >= 1000 spots: {len(genes)} genes (paper: 785)"
    )
    return genes


def prep(report: Report, args) -> None:
    WORK.mkdir(exist_ok=True)
    gfile = WORK / "her2st_genes.txt"
    if gfile.exists():
        genes = gfile.read_text().split()
        report(f"gene set (cached in {gfile.name}): {len(genes)} genes")
    else:
        genes = gene_set(report)
        write_text_atomic(gfile, "\n".join(genes))
    a = sp.io.read_her2st(HER2ST, SECTIONS)
    a.layers["log1p"] = log1p_layer(a)
    absent = [g for g in genes if g not in a.var_names]
    genes = [g for g in genes if g in a.var_names]
    report(
        f"{len(absent)} of them are absent from the H&E sections {SECTIONS} ({absent}); {len(genes)} genes used"
    )
    a = a[:, genes].copy()
    t0 = time.perf_counter()
    sp.pp.extract_patches(a, size=224)
    t_patch = time.perf_counter() - t0
    enc = load_image_encoder("efficientnet-lite0")
    t0 = time.perf_counter()
    a.obsm["X_image_features"] = encode_patches(a.obsm["patches"], enc, batch_size=64, device="cpu")
    t_feat = time.perf_counter() - t0
    report(
        f"prep: {a.n_obs} spots ({dict(a.obs['slide_id'].value_counts())}), {a.n_vars} genes; patches "
        f"{t_patch:.1f} s ({a.n_obs / t_patch:.0f}/s); EfficientNet-Lite0 features {t_feat:.1f} s "
        f"({a.n_obs / t_feat:.1f} patches/s, {torch.get_num_threads()} threads)"
    )
    del a.obsm["patches"]
    a.uns.pop("patches", None)
    for lib in a.uns["spatial"].values():
        lib["images"] = {}
    a.X = sps.csr_matrix(a.X)
    a.write_h5ad(PREP)


def load(args, report: Report) -> ad.AnnData:
    data = ad.read_h5ad(PREP)
    # the baselines check the patch size: keep the patches in a disk store (memory-mapped, gitignored)
    sp.pp.extract_patches(data, size=224, store="disk", path=WORK / "her2st_patches.npy")
    # record the cached features the way sp.pp.image_features does, so the baselines reuse them
    enc = load_image_encoder("efficientnet-lite0")
    data.uns["X_image_features"] = {
        "params": {
            "encoder": enc.name,
            "fingerprint": enc.fingerprint(),
            "patches_key": "patches",
            "patch_params": dict(data.uns["patches"].get("params", {})),
            "tta": False,
            "out_dim": enc.out_dim,
        }
    }
    # GeneQuery's dihedral augmentation draws among the features of the 8 views of each patch
    # (image_features(views=True)); ridge can use their mean (test-time averaging of the features)
    cached = np.load(VIEWS) if VIEWS.exists() else None
    if (
        cached is not None
        and str(cached["fingerprint"]) == enc.fingerprint()
        and cached["views"].shape[0] == data.n_obs
    ):
        views = cached["views"]
    else:
        t0 = time.perf_counter()
        views = image_features(data, encoder=enc, views=True, key_added="X_image_views")
        report(f"features of the 8 dihedral views: {time.perf_counter() - t0:.0f} s for {data.n_obs} patches")
        np.savez(VIEWS, views=views, fingerprint=enc.fingerprint())
    data.obsm["X_image_views"] = views
    data.uns["X_image_views"] = {"params": {**data.uns["X_image_features"]["params"], "views": 8}}
    data.obsm["X_image_tta"] = views.mean(1)
    n_expr = np.asarray((data.X > 0).sum(0)).ravel()
    if args.n_genes and args.n_genes < data.n_vars:
        keep = np.sort(np.argsort(-n_expr, kind="stable")[: args.n_genes])
        report(
            f"HER2+ rule gives {data.n_vars} genes here; keeping the {args.n_genes} expressed in the most spots of "
            f"the 4 H&E sections (>= {n_expr[keep].min()} of {data.n_obs} spots) to match the paper's gene count"
        )
        data = data[:, keep].copy()
    return data


def fold_data(data: ad.AnnData, test: str) -> ad.AnnData:
    a = data[data.obs["slide_id"].isin([test, *FOLDS[test]]).to_numpy()].copy()
    split = np.full(a.n_obs, "train", dtype=object)
    slides = a.obs["slide_id"].astype(str).to_numpy()
    col = a.obs["array_col"].to_numpy()
    for s in FOLDS[test]:
        m = slides == s
        cut = np.quantile(col[m], 0.9)
        split[m & (col > cut)] = "val"
    split[slides == test] = "test"
    a.obs["split"] = pd.Categorical(split)
    return a


def gq(mode: str, args, **kw) -> sp.tl.GeneQueryModel:
    views = dict(features_key="X_image_views", tta=True) if args.views else {}
    params = dict(
        mode=mode,
        scaling=args.scaling,
        **views,
        width=args.width,
        ff_dim=2 * args.width,
        n_heads=8,
        n_layers=2,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        accelerator="cpu",
        seed=getattr(args, "seed", 0),
        checkpoint=getattr(args, "checkpoint", "best"),
        context_rings=getattr(args, "context_rings", 0),  # the package default
    )
    if getattr(args, "gene_identity", None):
        params.update(gene_identity=args.gene_identity, identity_dropout=args.identity_dropout)
    params.update(kw)
    return genequery_model(**params)


def genequery_model(**params) -> sp.tl.GeneQueryModel:
    """A GeneQueryModel from flat keywords: network ones to the constructor, settings via set_params."""
    ctor = set(inspect.signature(sp.tl.GeneQueryModel.__init__).parameters) - {"self"}
    model = sp.tl.GeneQueryModel(**{k: v for k, v in params.items() if k in ctor})
    return model.set_params(**{k: v for k, v in params.items() if k not in ctor})


def ridges() -> dict[str, sp.tl.RidgePredictor]:
    """Ridge on each patch's own features, and on the mean of its 8 views' features."""
    return {
        "Ridge (HEST-style)": sp.tl.RidgePredictor(),
        "Ridge (HEST-style), tta features": sp.tl.RidgePredictor(
            encoder="precomputed", features_key="X_image_tta"
        ),
    }


def fmt(res: dict) -> str:
    return f"HEG {res['pcc_heg']:.3f}  HVG {res['pcc_hvg']:.3f}  ALL {res['pcc_all']:.3f}  (NaN genes {res['n_nan_genes']})"


def main(report: Report, args) -> None:
    data = load(args, report)
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery width {args.width}, {args.epochs} epochs, "
        f"batch size {args.batch_size}, inputs standardised, {args.scaling} target scaling, "
        + (
            "trained on random dihedral views (augment) and predicting the mean over the 8 views (tta); "
            "'tta features' = ridge on the mean of the 8 views' features"
            if args.views
            else "features of the patches only (one view)"
        )
    )
    rows = []

    def record(test: str, label: str, res: dict, extra: str = "") -> None:
        report(f"  {label:34s} {fmt(res)}{extra}")
        rows.append({"fold": test, "model": label, **{k: res[k] for k in ("pcc_heg", "pcc_hvg", "pcc_all")}})

    for test in args.folds:
        a = fold_data(data, test)
        report(f"\nfold test={test} train={FOLDS[test]}: {dict(a.obs['split'].value_counts())}")
        models = {
            "Mean": sp.tl.MeanPredictor(),
            **ridges(),
            "LinearHead frozen (STNet-style)": sp.tl.LinearHeadPredictor(
                finetune=False, max_epochs=50, accelerator="cpu"
            ),
            "GeneQuery spot": gq("spot", args),
            "GeneQuery gene": gq("gene", args),
        }
        if args.views:  # the other target scaling, for comparison
            other = "standard" if args.scaling == "minmax" else "minmax"
            models[f"GeneQuery spot, {other} targets"] = gq("spot", args, scaling=other)
        for name, model in models.items():
            if args.only and not any(o in name for o in args.only):
                continue
            t0 = time.perf_counter()
            model.train(a)
            t_train = time.perf_counter() - t0
            per_epoch = f" = {t_train / args.epochs:.0f} s/epoch" if name.startswith("GeneQuery") else ""
            record(test, name, model.evaluate(a), f"  train {t_train:.0f} s{per_epoch}")
            if getattr(model, "tta", False) and name in ("GeneQuery spot", "GeneQuery gene"):
                model.tta = False  # the same network, predicting from the patches' own view only
                record(test, f"{name}, no tta", model.evaluate(a))
    df = pd.DataFrame(rows)
    report("\nmean over folds (HEG / HVG / ALL):")
    for name, g in df.groupby("model", sort=False):
        report(
            f"  {name:34s} {g.pcc_heg.mean():.3f} / {g.pcc_hvg.mean():.3f} / {g.pcc_all.mean():.3f}  ({len(g)} folds)"
        )
    report(
        "paper HER2+ (5-fold): spot-aware 0.317 / 0.315 / 0.174; gene-aware 0.315 / 0.318 / 0.159; STNet 0.298 / 0.302 / 0.136"
    )


def _kernel_floor(report: Report, n_tokens: int, width: int = 256, ff: int = 512, n_heads: int = 8) -> None:
    """Time the matrix products and the attention kernel the encoder must run, alone, per precision.

    One batch of 64 sequences of 500 tokens (spot mode's chunks of a 5,000-spot slide at ``max_len``
    512) goes through each kernel of one layer on its own; the sum, scaled to ``n_tokens`` and two
    layers, is a floor on the prediction time that no scheduling of the same arithmetic can beat.
    """
    B, L, D = 64, 500, width
    gen = torch.Generator().manual_seed(0)
    shapes = {"qkv": (D, 3 * D), "out": (D, D), "ff1": (D, ff), "ff2": (ff, D)}
    flops = {k: 2 * B * L * m * n for k, (m, n) in shapes.items()}
    flops["attention"] = 4 * B * L * L * D
    for dtype in (torch.float32, torch.bfloat16):
        times = {}
        for name, (m, n) in shapes.items():
            a = torch.randn(B * L, m, generator=gen).to(dtype)
            w = torch.randn(n, m, generator=gen).to(dtype)
            times[name] = _best_time(lambda a=a, w=w: torch.nn.functional.linear(a, w))
        qkv = [torch.randn(B, n_heads, L, D // n_heads, generator=gen).to(dtype) for _ in range(3)]
        times["attention"] = _best_time(
            lambda qkv=qkv: torch.nn.functional.scaled_dot_product_attention(*qkv)
        )
        total = sum(times.values()) * 2 * n_tokens / (B * L)
        rates = ", ".join(f"{name} {flops[name] / t / 1e9:.0f}" for name, t in times.items())
        report(
            f"kernel floor {str(dtype).split('.')[-1]:8s}: GFLOP/s {rates}; these kernels alone, 2 layers, "
            f"{n_tokens:,} tokens: {total:.0f} s"
        )


def _best_time(fn, repeats: int = 5) -> float:
    """Fastest of ``repeats`` timed calls after two warm-up calls (seconds)."""
    with torch.inference_mode():
        for _ in range(2):
            fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def speed(report: Report, args) -> None:
    report("training time per epoch: see genequery_main.txt (train seconds / epochs, per model and fold)")
    # prediction: 5,000 spots × 1,000 genes (features and gene embeddings synthetic, same shapes as real)
    rng = np.random.default_rng(0)
    n, G = 5000, 1000
    genes = [f"g{i}" for i in range(G)]
    table = pd.DataFrame(rng.normal(size=(G, 384)).astype(np.float32), index=genes)
    big = ad.AnnData(np.zeros((n, G), dtype=np.float32), var=pd.DataFrame(index=genes))
    big.obs["slide_id"] = "big"
    side = int(np.ceil(np.sqrt(n)))
    big.obsm["spatial"] = np.column_stack(np.divmod(np.arange(n), side)).astype(float)
    big.obs["array_row"], big.obs["array_col"] = np.divmod(np.arange(n), side)  # a square grid: context
    big.obsm["X_image_features"] = rng.normal(size=(n, load_image_encoder().out_dim)).astype(np.float32)
    big.layers["log1p"] = np.abs(rng.normal(size=(n, G))).astype(np.float32)
    f = args.predict_fraction
    report(
        "prediction, 5,000 spots × 1,000 genes (width 256, 2 layers, 8 heads, ff 512); spot mode predicts a "
        f"fraction {f} of the genes over all spots, gene mode all genes over a fraction {f} of the spots "
        "(cost is linear in both); bf16 = inference_precision='bf16' (autocast), compared with float32"
    )
    report(
        "heap reuse = sp.settings.reuse_heap (default on): freed tensors stay in the heap between batches "
        "instead of going back to the system, so the next batch does not fault in fresh pages; 'off' is the "
        "previous behaviour"
    )
    report(
        "context = context_rings (default 0: the patch's own features; 1: each spot's 1,280 features "
        "followed by their mean over its lattice neighbourhood, computed at prediction)"
    )
    for mode in ("spot", "gene"):
        for max_len in (512, 1024):
            ref = None
            variants = (
                [("32", True, 0), ("32", False, 0), ("bf16", True, 0), ("bf16", True, 1)]
                if max_len == 512
                else [("32", True, 0)]
            )
            for precision, heap, ctx in variants:
                model = genequery_model(
                    mode=mode,
                    gene_embeddings=table,
                    max_epochs=1,
                    accelerator="cpu",
                    seed=0,
                    max_len=max_len,
                    inference_precision=precision,
                    context_rings=ctx,
                )
                small = big[:64].copy()
                small.obs["split"] = "train"
                model.train(small, genes=genes[:8], split_key=None, progress=False)
                target, what = (
                    (big, genes[: round(f * G)]) if mode == "spot" else (big[: round(f * n)].copy(), genes)
                )
                gc.collect()
                sp.settings.reuse_heap = heap
                rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                t0 = time.perf_counter()
                out = model.predict(target, what)
                dt = time.perf_counter() - t0
                rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                sp.settings.reuse_heap = True
                vs = ""
                if precision == "32" and heap:
                    ref = out
                elif ref is not None and not ctx:  # (context 1 is another network: nothing to compare)
                    spread = ref.std(axis=0)
                    rel = float(np.median(np.abs(out - ref).max(axis=0) / spread))
                    zr = (ref - ref.mean(0)) / ref.std(0)
                    zo = (out - out.mean(0)) / out.std(0)
                    pcc = float(np.median((zr * zo).mean(0)))
                    vs = f"; vs float32 heap reuse: median PCC {pcc:.4f}, median max|diff| {rel:.3f} of the gene's std"
                report(
                    f"{mode}-aware max_len {max_len:4d} {precision:>4s} heap reuse {'on ' if heap else 'off'} "
                    f"context {ctx}: "
                    f"{out.shape[0]} × {out.shape[1]} in {dt:.1f} s → {out.size / dt:.0f} spot-genes/s; "
                    f"5,000 × 1,000: {dt * n * G / out.size:.0f} s{' (extrapolated)' if out.size < n * G else ''}; "
                    f"peak RSS {rss1:.0f} MiB (process peak before {rss0:.0f}){vs}"
                )
    flops = 2 * (2 * 256 * 768 + 2 * 256 * 256 + 4 * 256 * 512 + 4 * 500 * 256)
    report(
        f"arithmetic: {flops / 1e6:.2f} MFLOP per spot-gene (2 layers: projections, feed-forward, attention "
        f"over chunks of 500), {flops * n * G / 1e12:.1f} TFLOP for 5,000 × 1,000; the 120 s target needs "
        f"{flops * n * G / 120 / 1e9:.0f} GFLOP/s sustained"
    )
    _kernel_floor(report, n * G)
    report("targets: < 120 s and < 6 GiB for 5,000 × 1,000")


# --------------------------------------------------------------------------------------------------
# the package defaults on six sections (issue 19): held-out sections, seeds, the ensemble's spread

#: test section -> (training sections, validation sections); validation = other patients only, and
#: never a scored section (the defaults were chosen on B4, A1, A2 by experiments/genequery_selection.py)
FOLDS6 = {
    "C2": (["C3", "C4"], ["B4", "A1", "A2"]),
    "C3": (["C2", "C4"], ["B4", "A1", "A2"]),
    "C4": (["C2", "C3"], ["B4", "A1", "A2"]),
    "B4": (["C2", "C3", "C4"], ["A1", "A2"]),
}


def fold6(data: ad.AnnData, test: str) -> ad.AnnData:
    """One fold of the six-section data: its training, validation and test sections, split by section."""
    train, val = FOLDS6[test]
    a = data[data.obs["slide_id"].isin([test, *train, *val]).to_numpy()].copy()
    slides = a.obs["slide_id"].astype(str).to_numpy()
    a.obs["split"] = pd.Categorical(
        np.where(slides == test, "test", np.where(np.isin(slides, val), "val", "train"))
    )
    return a


def features_precision() -> str:
    """The precision ``sp.pp.image_features()`` encodes in on this machine (the cached views to load)."""
    from spared_tools._settings import resolve_precision

    return resolve_precision("auto", torch.device("cpu"))


def defaults_model(mode: str, seed: int, **settings) -> sp.tl.GeneQueryModel:
    """``sp.tl.GeneQueryModel(mode=mode, seed=seed)`` with the package defaults, on the cached 8 views."""
    model = sp.tl.GeneQueryModel(mode=mode, seed=seed)
    return model.set_params(features_key="X_image_views", accelerator="cpu", **settings)


def baselines6() -> dict[str, sp.tl.Predictor]:
    """Mean, ridge as ``RidgePredictor()`` computes it (the patch's own view), ridge on a wider penalty grid."""
    return {
        "Mean": sp.tl.MeanPredictor(),
        "Ridge (HEST-style)": sp.tl.RidgePredictor(encoder="precomputed", features_key="X_image_view0"),
        "Ridge (HEST-style), penalties 1e-3..1e7": sp.tl.RidgePredictor(
            encoder="precomputed", features_key="X_image_view0", alphas=tuple(10.0**k for k in range(-3, 8))
        ),
    }


def _spearman_spread(std: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """Spearman of spread and absolute error: over every test spot × gene, and the median over genes."""
    from scipy.stats import spearmanr

    pooled = float(spearmanr(std.ravel(), err.ravel()).statistic)
    per_gene = [spearmanr(std[:, j], err[:, j]).statistic for j in range(std.shape[1]) if std[:, j].std() > 0]
    return pooled, float(np.nanmedian(per_gene))


def heldout(report: Report, args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from genequery_data6 import load6

    data = load6(args.gene_set, features_precision())
    d = sp.tl.GeneQueryModel()
    spot_own = {k: getattr(sp.tl.GeneQueryModel(mode="spot"), k) for k in SPOT_DEFAULTS}
    report(
        f"{data.n_obs} spots × {data.n_vars} genes ({args.gene_set}-gene set, experiments/genequery_data6.py); "
        f"package defaults: mode={d.mode!r}, width {d.width}, ff {d.ff_dim}, max_epochs={d.max_epochs!r}, "
        f"context_rings={d.context_rings}, gene_identity={d.gene_identity}, n_models={d.n_models}, "
        f"checkpoint={d.checkpoint!r}, ridge_blend={d.ridge_blend}, augment={d.augment}, tta={d.tta}; seeds {args.seeds} (a seed s trains "
        f"the networks of seeds s .. s + n_models - 1); spot-aware = the same defaults with mode='spot', "
        f"except its own {spot_own}"
    )
    report(
        "folds (test: train | validation): "
        + "; ".join(
            f"{t}: {'+'.join(tr)} | {'+'.join(v)}" for t, (tr, v) in FOLDS6.items() if t in args.folds
        )
    )
    rows, spread = [], []

    def record(test: str, label: str, res: dict, extra: str = "") -> None:
        report(f"  {label:44s} {fmt(res)}{extra}")
        rows.append({"fold": test, "model": label, **{k: res[k] for k in ("pcc_heg", "pcc_hvg", "pcc_all")}})

    for test in args.folds:
        a = fold6(data, test)
        te = (a.obs["split"] == "test").to_numpy()
        t_ad = a[te].copy()
        truth = np.asarray(
            t_ad.layers["log1p"].todense() if sps.issparse(t_ad.layers["log1p"]) else t_ad.layers["log1p"]
        )
        report(f"\nfold test={test}: {dict(a.obs['split'].value_counts())}")
        for mode in args.modes:
            for seed in args.seeds if mode == args.modes[0] else args.seeds[:1]:
                model = defaults_model(mode, seed)
                t0 = time.perf_counter()
                model.train(a)
                t_train = time.perf_counter() - t0
                t0 = time.perf_counter()
                pred, std = model.predict_with_std(t_ad)
                t_pred = time.perf_counter() - t0
                res = sp.tl.evaluate_prediction(truth, pred, genes=list(a.var_names))
                label = f"GeneQuery {mode}-aware (defaults)" + (
                    f", seed {seed}" if len(args.seeds) > 1 else ""
                )
                epochs = model.train_params_["max_epochs"]
                record(test, label, res, f"  train {t_train:.0f} s ({epochs} epochs), predict {t_pred:.0f} s")
                rho, rho_gene = _spearman_spread(std, np.abs(pred - truth))
                spread.append(
                    {
                        "fold": test,
                        "mode": mode,
                        "seed": seed,
                        "rho": rho,
                        "rho_gene": rho_gene,
                        "std": std,
                        "err": np.abs(pred - truth),
                    }
                )
                report(
                    f"  {'':44s} spread vs |error|: Spearman {rho:.3f} over spots × genes, median over genes {rho_gene:.3f}"
                )
        for name, model in baselines6().items():
            model.train(a)
            record(test, name, model.evaluate(a))
        report.save()
    df = pd.DataFrame(rows)
    df["base"] = df["model"].str.replace(r", seed \d+$", "", regex=True)
    report(
        "\nmean over folds (HEG / HVG / ALL); GeneQuery rows: mean over seeds, [min, max] of the seeds' fold means"
    )
    summary = {}
    for name, g in df.groupby("base", sort=False):
        per_seed = g.assign(seed=g["model"]).groupby("seed")[["pcc_heg", "pcc_hvg", "pcc_all"]].mean()
        m = per_seed.mean()
        summary[name] = m
        rng = ""
        if len(per_seed) > 1:
            rng = (
                "  [" + ", ".join(f"{per_seed[c].min():.3f}-{per_seed[c].max():.3f}" for c in per_seed) + "]"
            )
        report(
            f"  {name:44s} {m.pcc_heg:.3f} / {m.pcc_hvg:.3f} / {m.pcc_all:.3f}  ({g['fold'].nunique()} folds){rng}"
        )
    base = pd.DataFrame({k: v for k, v in summary.items() if not k.startswith("GeneQuery")}).T
    best = base.max()
    report(
        f"best baseline per score: HEG {best.pcc_heg:.3f} ({base.pcc_heg.idxmax()}), HVG {best.pcc_hvg:.3f} ({base.pcc_hvg.idxmax()}), ALL {best.pcc_all:.3f} ({base.pcc_all.idxmax()})"
    )
    paper = dict(zip(("pcc_heg", "pcc_hvg", "pcc_all"), PAPER["spot"]))
    for name, m in summary.items():
        if name.startswith("GeneQuery"):
            margin = " / ".join(f"{m[c] - best[c]:+.3f}" for c in paper)
            ok = all(m[c] >= best[c] + 0.03 for c in paper) and all(m[c] >= paper[c] for c in paper)
            report(
                f"  {name}: minus best baseline {margin}; targets (>= best baseline + 0.03 and >= paper HER2+ 0.317 / 0.315 / 0.174 on each): {'met' if ok else 'NOT met'}"
            )
    if spread:
        report(
            "\nensemble spread (std of the n_models networks, layers['genequery_std']) vs absolute error on the test section:"
        )
        for r in spread:
            report(
                f"  test {r['fold']}, {r['mode']}-aware, seed {r['seed']}: Spearman {r['rho']:.3f} (median over genes {r['rho_gene']:.3f})"
            )
        _spread_plot(
            spread,
            "genequery_uncertainty"
            + ("" if args.gene_set == "128" else "_" + args.gene_set)
            + ("_spot" if spread[0]["mode"] == "spot" else "")  # the plot shows the first mode
            + ".png",
            report,
        )


def unseen6(report: Report, args) -> None:
    """Defaults trained on a random 40 % of the genes; the other 60 % predicted from their text alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from genequery_data6 import load6

    data = load6(args.gene_set, features_precision())
    genes = list(data.var_names)
    rng = np.random.default_rng(0)
    trained = sorted(rng.choice(len(genes), size=round(0.4 * len(genes)), replace=False))
    train_genes = [genes[i] for i in trained]
    untrained = [g for g in genes if g not in set(train_genes)]
    report(
        f"{data.n_obs} spots × {len(genes)} genes; package defaults trained on {len(train_genes)} random genes "
        f"(40 %, seed 0), scored on the other {len(untrained)} (predicted from their text; paper HER2+ unseen "
        "HEG 0.131)"
    )
    for test in args.folds:
        a = fold6(data, test)
        t_ad = a[(a.obs["split"] == "test").to_numpy()].copy()
        truth = t_ad[:, untrained].layers["log1p"]
        truth = truth.toarray() if sps.issparse(truth) else np.asarray(truth)
        report(f"\nfold test={test}")
        for mode in args.modes:
            model = defaults_model(mode, args.seeds[0])
            t0 = time.perf_counter()
            model.train(a, genes=train_genes)
            res = sp.tl.evaluate_prediction(truth, model.predict(t_ad, untrained), genes=untrained)
            report(
                f"  GeneQuery {mode}-aware (defaults), untrained genes  {fmt(res)}  train {time.perf_counter() - t0:.0f} s"
            )
        report.save()


def cost(report: Report, args) -> None:
    """The defaults' cost on this CPU: feature extraction, training 1,000 spots × 128 genes, predicting 5,000 × 1,000."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from genequery_data6 import load6, raw6

    from spared_tools.models.image import load_image_encoder

    # feature extraction rate, measured now (the machine is shared: the load is in the header)
    raw = raw6()
    few = raw[raw.obs["slide_id"].isin(["C2"]).to_numpy()][:64].copy()
    sp.pp.extract_patches(few, size=224)
    enc = load_image_encoder()  # the default encoder
    rates = {}
    for precision in ("32", "bf16", "32", "bf16"):  # twice, alternating: the second pair is reported
        t0 = time.perf_counter()
        sp.pp.image_features(few, encoder=enc, precision=precision, key_added=f"f{precision}", recompute=True)
        rates[precision] = few.n_obs / (time.perf_counter() - t0)
    default = features_precision()
    # the 8 dihedral views of each spot, as GeneQuery's defaults compute them (views=True): timed, not
    # extrapolated from one view (the previous encoder path ran one view 1.3x slower, features.txt)
    t0 = time.perf_counter()
    sp.pp.image_features(few[:32], encoder=enc, precision=default, views=True, key_added="fv", recompute=True)
    rate = 32 * 8 / (time.perf_counter() - t0)
    report(
        f"feature extraction ({enc.name}, 224 px, {torch.get_num_threads()} threads): float32 "
        f"{rates['32']:.1f} patches/s, bfloat16 {rates['bf16']:.1f} patches/s ({rates['bf16'] / rates['32']:.2f}x); "
        f"the default here: {default}; the 8 dihedral views of 32 spots (views=True, as GeneQuery's defaults "
        f"compute them) in {default}: {rate:.1f} patches/s"
    )
    # training 1,000 spots × 128 genes from cached features, plus the extraction they would need
    data = load6("128", default)
    a = data[:1000].copy()
    col = a.obs["array_col"].to_numpy()
    a.obs["split"] = np.where(col > np.quantile(col, 0.9), "val", "train")
    d = sp.tl.GeneQueryModel()
    mode = d.mode
    configs = [("defaults (8 views: augment, tta)", {}, 8)]
    configs += [("defaults without the ridge head (ridge_blend=0)", {"ridge_blend": 0.0}, 8)]
    configs += [(f"n_models={k}", {"n_models": k}, 8) for k in args.cost_models if k != d.n_models]
    configs += [(f"max_epochs={e}", {"max_epochs": e}, 8) for e in args.cost_epochs if e != d.max_epochs]
    for label, settings, views in configs:
        model = defaults_model(mode, 0, **settings)
        t0 = time.perf_counter()
        model.train(a)
        t = time.perf_counter() - t0
        feat = 1000 * views / rate
        report(
            f"train {a.n_obs} spots × {a.n_vars} genes, {mode}-aware {label} ({model.n_models} network(s) × "
            f"{model.train_params_['max_epochs']} epochs): {t:.0f} s; with feature extraction ({views} view(s) × 1,000 spots "
            f"in {default}, {feat:.0f} s): {t + feat:.0f} s (target 180 s)"
        )
        report.save()
    # prediction 5,000 spots × 1,000 genes (synthetic features and embeddings of the real widths)
    rng = np.random.default_rng(0)
    n, G = 5000, 1000
    genes = [f"g{i}" for i in range(G)]
    table = pd.DataFrame(rng.normal(size=(G, 384)).astype(np.float32), index=genes)
    big = ad.AnnData(np.zeros((n, G), dtype=np.float32), var=pd.DataFrame(index=genes))
    big.obs["slide_id"] = "big"
    side = int(np.ceil(np.sqrt(n)))
    big.obs["array_row"], big.obs["array_col"] = np.divmod(np.arange(n), side)
    big.obsm["spatial"] = np.column_stack(np.divmod(np.arange(n), side)).astype(float)
    big.obsm["X_image_features"] = rng.normal(size=(n, 8, load_image_encoder().out_dim)).astype(np.float32)
    big.layers["log1p"] = np.abs(rng.normal(size=(n, G))).astype(np.float32)
    f = args.predict_fraction
    small = big[:64].copy()
    small.obs["split"] = "train"
    model = sp.tl.GeneQueryModel(gene_embeddings=table, seed=0).set_params(max_epochs=1, accelerator="cpu")
    # every predicted gene trained on, so each goes through the ridge head (ridge_blend) as well
    model.train(small, genes=genes, split_key=None, progress=False)
    target = big[: round(f * n)].copy()
    # the defaults, then without the ridge head, then the other test-time averaging and network counts
    K = model.n_models
    runs = [("features", K, True), ("features", K, False), ("features", 1, True)]
    runs += [(tta, k, True) for tta in ("predictions", False) for k in (K, 1)]
    for tta, k, head in runs:
        m = copy.copy(model)
        m.nets_ = model.nets_[:k]
        if not head:
            m.ridge_blend = 0.0
        gc.collect()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        out = m.predict(target, genes, tta=tta)
        dt = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report(
            f"predict {model.mode}-aware, {k} network(s), tta={tta!r}{'' if head else ', no ridge head'} ({m.inference_precision_used_}): {out.shape[0]} × {out.shape[1]} in {dt:.1f} s; "
            f"5,000 × 1,000: {dt * n * G / out.size:.0f} s{' (extrapolated)' if out.size < n * G else ''}; peak RSS {rss1:.0f} MiB (before {rss0:.0f}) (target 120 s, 6 GiB)"
        )
    # the same request from a model trained on 128 of the genes: the other 872 from their text, each chunk
    # of them after the first chunk of trained genes (their context), so each spot runs more gene tokens
    part = sp.tl.GeneQueryModel(gene_embeddings=table, seed=0).set_params(max_epochs=1, accelerator="cpu")
    part.train(small, genes=genes[:128], split_key=None, progress=False)
    t0 = time.perf_counter()
    out = part.predict(target, genes)
    dt = time.perf_counter() - t0
    # the same with the context attention written as attention over the whole chunk under an L x L mask
    # (the kernel before 2026-12-07): same values, O(chunk) instead of O(context) per gene not trained on
    import spared_tools.models.genequery as gq_net

    fast = gq_net._context_attention
    gq_net._context_attention = _masked_context_attention
    try:
        t0 = time.perf_counter()
        ref = part.predict(target, genes)
        dt_ref = time.perf_counter() - t0
    finally:
        gq_net._context_attention = fast
    report(
        f"predict {part.mode}-aware, {part.n_models} network(s), tta={part.tta!r}, trained on 128 of the 1,000 genes "
        f"({part.inference_precision_used_}): {out.shape[0]} × {out.shape[1]} in {dt:.1f} s; 5,000 × 1,000: "
        f"{dt * n * G / out.size:.0f} s{' (extrapolated)' if out.size < n * G else ''}; with the masked "
        f"full-chunk attention: {dt_ref * n * G / out.size:.0f} s ({dt_ref / dt:.2f}x the time; largest "
        f"difference {np.abs(out - ref).max():.1e})"
    )
    report(
        f"features of 5,000 new spots (not cached), 8 views in {default}: {8 * n / rate:.0f} s; one view: {n / rates[default]:.0f} s"
    )


def _masked_context_attention(q, k, v, c, keep):
    """``GeneQueryNet``'s context attention as one fused attention call over the whole chunk under the
    ``L x L`` mask (key in the context, or the query itself): the reference for the O(context) kernel."""
    L = q.shape[2]
    pos = torch.arange(L, device=q.device)
    allowed = ((pos[None, :] < c) | (pos[:, None] == pos[None, :]))[None, None]
    if keep is not None:
        allowed = allowed & torch.cat([keep, keep.new_ones(keep.shape[:-1] + (L - c,))], -1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _spread_plot(spread: list[dict], name: str, report: Report) -> None:
    """Mean absolute error per decile of the spread, one line per fold (first seed of the first mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    seen = set()
    for r in spread:
        if (r["fold"], r["mode"]) in seen or r["seed"] != spread[0]["seed"]:
            continue
        seen.add((r["fold"], r["mode"]))
        std, err = r["std"].ravel(), r["err"].ravel()
        edges = np.quantile(std, np.linspace(0, 1, 11))
        b = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, 9)
        x = [std[b == k].mean() for k in range(10)]
        y = [err[b == k].mean() for k in range(10)]
        ax.plot(x, y, "o-", label=f"test {r['fold']} ({r['mode']}), ρ={r['rho']:.2f}")
    ax.set_xlabel("ensemble spread (std of 3 networks, log1p)")
    ax.set_ylabel("mean |prediction − truth| (log1p)")
    ax.set_title("GeneQuery spread vs error, per decile of spread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS_DIR / name
    fig.savefig(path, dpi=120)
    plt.close(fig)
    report(f"plot: benchmarks/results/{name}")


# --------------------------------------------------------------------------------------------------
# stages and output names


@dataclass(frozen=True)
class Stage:
    """One stage of a script: what it runs and how its output file is named.

    ``output`` is the base name; ``suffixes`` names the rules of :data:`SUFFIXES` that apply (each adds
    its part when the run's options differ from the setting the base file was made with); ``scaling`` is
    the GeneQuery target scaling used when ``--scaling`` is not given (``None``: the per-mode default).
    """

    run: Callable[[Report, argparse.Namespace], None]
    output: str
    suffixes: tuple[str, ...] = ("context", "checkpoint")
    scaling: str | None = "minmax"


#: Suffix rules, in the order their parts are appended to a stage's base name.
SUFFIXES: dict[str, Callable[[argparse.Namespace], str]] = {
    "folds": lambda a: "_" + "_".join(a.folds),  # one file per fold set (each run is long)
    "one_view": lambda a: "" if a.views else "_one_view",
    "scaling": lambda a: f"_{a.scaling}" if a.scaling not in (None, "minmax") else "",
    "width": lambda a: f"_w{a.width}" if a.width != 128 else "",  # the CPU tables are at width 128
    "seed": lambda a: f"_seed{a.seed}" if a.seed != 0 else "",
    "spot": lambda a: "_spot" if a.modes[0] == "spot" else "",  # gene-aware keeps the plain name
    "identity": lambda a: f"_id{a.gene_identity}" if a.gene_identity else "",
    "context": lambda a: f"_ctx{a.context_rings}" if a.context_rings else "",
    "modes": lambda a: "_" + "_".join(a.modes) if a.modes != ["spot", "gene"] else "",
    "checkpoint": lambda a: f"_{a.checkpoint}" if a.checkpoint != "best" else "",
    "gene_set": lambda a: f"_{a.gene_set}" if a.gene_set != "128" else "",
    "folds6": lambda a: "" if sorted(a.folds) == sorted(FOLDS6) else "_" + "_".join(a.folds),
    # a held-out run without seed 0 adds seeds to an earlier run's file instead of replacing it
    "seeds": lambda a: "" if 0 in a.seeds else "_seeds" + "_".join(map(str, a.seeds)),
}
_HEAD_TO_HEAD = ("one_view", "scaling", "width", "seed", "identity", "context", "checkpoint")

STAGES: dict[str, Stage] = {
    "prep": Stage(prep, "genequery_prep", ("checkpoint",)),
    "main": Stage(main, "genequery_main", _HEAD_TO_HEAD),
    "speed": Stage(speed, "genequery_speed"),
    "heldout": Stage(heldout, "genequery_heldout", ("modes", "gene_set", "folds6", "seeds")),
    "heldout_unseen": Stage(unseen6, "genequery_heldout_unseen", ("gene_set", "folds6")),
    "cost": Stage(cost, "genequery_cost"),
}


def output_name(stage: Stage, args: argparse.Namespace) -> str:
    """The stage's base name followed by the parts of its suffix rules, in :data:`SUFFIXES` order."""
    unknown = set(stage.suffixes) - set(SUFFIXES)
    if unknown:
        raise ValueError(f"stage {stage.output!r} names unknown suffix rules {sorted(unknown)}")
    return stage.output + "".join(rule(args) for name, rule in SUFFIXES.items() if name in stage.suffixes)


def parser(stages: Sequence[str], description: str | None = None) -> argparse.ArgumentParser:
    """The options every GeneQuery stage shares (the experiments add their own to this parser)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("stage", choices=list(stages))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=int, default=256)
    p.add_argument(
        "--batch-size", type=int, default=8, help="GeneQuery: genes (spot mode) or spots (gene mode) per step"
    )
    p.add_argument("--folds", nargs="+", default=list(FOLDS))
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--predict-fraction", type=float, default=1.0)
    p.add_argument(
        "--cost-models", nargs="*", type=int, default=[], help="cost: also train with these n_models"
    )
    p.add_argument(
        "--cost-epochs", nargs="*", type=int, default=[], help="cost: also train with these max_epochs"
    )
    p.add_argument("--n-genes", type=int, default=785)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="GeneQuery's seed")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "average"],
        help="GeneQuery's checkpoint: best validation epoch, or the mean of the second half's weights",
    )
    p.add_argument(
        "--gene-identity",
        type=int,
        default=None,
        help="GeneQuery's gene_identity (default 0, text only; the identity experiment: 384)",
    )
    p.add_argument(
        "--identity-dropout",
        type=float,
        default=0.5,
        help="GeneQuery's identity_dropout (with --gene-identity)",
    )
    p.add_argument(
        "--context-rings",
        type=int,
        default=0,
        help="GeneQuery's context_rings in every stage but context (default 0, the package default)",
    )
    p.add_argument(
        "--one-view",
        dest="views",
        action="store_false",
        help="GeneQuery on the features of the patches only (no dihedral augmentation or test-time averaging); "
        "the rank, floor, inputs and finetune results were made this way, before the views existed",
    )
    p.add_argument(
        "--scaling",
        default=None,
        choices=["minmax", "standard"],
        help="GeneQuery target scaling; default: the stage's (min-max for main)",
    )
    p.add_argument("--modes", nargs="+", default=["spot", "gene"], choices=["spot", "gene"])
    p.add_argument(
        "--gene-set", default="128", choices=["128", "785"], help="heldout: the six sections' gene set"
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="heldout: seeds of the first mode's models"
    )
    return p


def run(
    stages: Mapping[str, Stage],
    args: argparse.Namespace,
    *,
    script: str,
    report_cls: type[Report] = Report,
) -> Path:
    """Run ``args.stage`` of ``stages`` and save its report under the stage's output name."""
    if args.threads:
        torch.set_num_threads(args.threads)
    sp.settings.verbosity = 1
    stage = stages[args.stage]
    if args.scaling is None:
        args.scaling = stage.scaling
    report = report_cls(output_name(stage, args))
    report(f"# {script} {' '.join(sys.argv[1:])}")
    report(
        f"# {machine_info()} | torch threads {torch.get_num_threads()} | load average {os.getloadavg()[0]:.1f} "
        f"| {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    stage.run(report, args)
    return report.save()


if __name__ == "__main__":
    run(STAGES, parser(STAGES).parse_args(), script="bench_genequery.py")
