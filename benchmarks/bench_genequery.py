"""GeneQuery on her2st (HER2+ breast tumour, legacy ST) against the three baselines, plus CPU speed.

Data: the four her2st sections that have a full-resolution H&E image (B4, C2, C3, C4) in
../shared/data/her2st_raw.

Gene set (the paper's HER2+ rule): the union over all 28 sections of each section's top-1,000 highly
variable genes (scanpy ``flavor="seurat_v3"`` on the raw counts of that section's expressed genes; needs
the benchmark-only package scikit-misc, ``pip install -e .[bench]``, else ``flavor="seurat"``; with ``"seurat"`` on log-normalised
data the union is ~5,000 genes, far from the paper's 785), keeping genes expressed (count > 0) in at least 1,000 spots over the 28 sections. The count is
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
* ``unseen`` – spot- and gene-aware GeneQuery (``--modes``) trained on 20/40/60 % of the genes (random,
  seeded), scored on the seen, unseen and all genes of the test section. → results/genequery_unseen.txt
* ``ensemble`` – one GeneQuery mode (the first of ``--modes``) trained with ``n_models=--n-models``
  (networks of seeds 0 .. n-1): each network's scores alone, and those of the package's mean prediction
  of the first 3 and of all n networks, ridge alongside; ``--checkpoint average`` for the averaged weights.
  → results/genequery_ensemble[_spot][_average].txt (genequery_ensemble.txt was written by this stage's
  earlier form, ``--n-seeds 3``, which trained each seed as a model of its own: the same networks, as
  tests/test_genequery.py checks for ``n_models``)
* ``identity`` – GeneQuery (each of ``--modes``) on the gene text alone against text plus a per-gene
  identity code (``gene_identity``, ``--gene-identity``, default here 384), same folds and seed, ridge
  alongside; also the identity model with every gene given the mean code (the text path alone).
  → results/genequery_identity[_<modes>][_average].txt
* ``context`` – image context (``context_rings``): spot- and gene-aware GeneQuery on each patch's features
  alone and with their mean over the spot's lattice neighbourhood (``context_rings=1``), gene-aware also
  with the identity code; ridge on the tta features with that context next to the two HEST-style
  ridges. → results/genequery_context[_average].txt. Every other stage runs GeneQuery with
  ``--context-rings`` (default 0, the package default; suffix ``_ctx<k>`` otherwise).
* ``dropout`` – image dropout (``image_dropout``): GeneQuery with ``context_rings=1`` (gene-aware also
  with the identity code) at each rate of ``--image-dropouts``, each trained with ``--n-models``
  networks (each network's scores and the ensemble's), the three ridges alongside. → results/genequery_image_dropout[_<modes>][_average].txt
* ``precision`` – each GeneQuery mode trained once and evaluated with float32 and bfloat16 prediction
  (``inference_precision``). → results/genequery_precision.txt
* ``finetune`` – spot-aware GeneQuery with frozen features vs with the image encoder fine-tuned
  (``finetune=True``), same folds and epochs: accuracy, seconds per epoch, peak memory.
  → results/genequery_finetune_<folds>.txt
* ``speed``  – training time per epoch and prediction time/memory for 5,000 spots × 1,000 genes on CPU.
  → results/genequery_speed.txt
* ``rank``   – ridge vs spot-aware GeneQuery on the same folds: in-sample and test PCC, and how much of
  the predicted test matrix one spatial pattern explains (a diagnosis of GeneQuery's low HEG/HVG on
  the patient-C folds). → results/genequery_rank.txt
* ``floor``  – GeneQuery's training loss against the in-sample MSE of per-gene means, the best low-rank
  fits and ridge, on the model's own min-max scale. → results/genequery_floor.txt

Run with ``nice -n 10``; ``--epochs``, ``--folds``, ``--width`` bound the CPU cost (see the results
files for the settings used). ``main`` and ``unseen`` write to a file of their own when run with
``--one-view``, a target ``--scaling`` other than min-max, a ``--width`` other than 128 or a ``--seed``
other than 0 (suffixes ``_one_view``, ``_standard``, ``_w256``, ``_seed1``...).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import resource
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sps
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import HER2ST, Report, machine_info, peak_rss_during

import spared_tools as sp
from spared_tools.models.image import encode_patches, image_features, load_image_encoder

WORK = Path(__file__).resolve().parent / "_work"
PREP = WORK / "her2st_genequery.h5ad"
VIEWS = WORK / "her2st_views8.npz"  # features of the 8 dihedral views of every patch (cached)
SECTIONS = ["B4", "C2", "C3", "C4"]
FOLDS = {"C2": ["C3", "C4"], "C3": ["C2", "C4"], "C4": ["C2", "C3"], "B4": ["C2", "C3", "C4"]}
try:  # seurat_v3 (variance of raw counts after a loess mean-variance fit) needs scikit-misc
    import skmisc.loess  # noqa: F401

    HVG_FLAVOR = "seurat_v3"
except ImportError:  # pragma: no cover
    HVG_FLAVOR = "seurat"
PAPER = {"spot": (0.317, 0.315, 0.174), "gene": (0.315, 0.318, 0.159), "STNet": (0.298, 0.302, 0.136)}


def log1p_layer(a: ad.AnnData) -> np.ndarray:
    b = ad.AnnData(a.X.astype(np.float32))
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b.X


def gene_set(report: Report) -> list[str]:
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


def prep(report: Report) -> None:
    WORK.mkdir(exist_ok=True)
    gfile = WORK / "her2st_genes.txt"
    if gfile.exists():
        genes = gfile.read_text().split()
        report(f"gene set (cached in {gfile.name}): {len(genes)} genes")
    else:
        genes = gene_set(report)
        gfile.write_text("\n".join(genes))
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
    # record the cached features the way models.image.image_features does, so the baselines reuse them
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
    return sp.tl.GeneQueryModel(**params)


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


def _dense_log1p(a: ad.AnnData) -> np.ndarray:
    """The fold's log1p targets as a dense array."""
    X = a.layers["log1p"]
    return X.toarray() if sps.issparse(X) else np.asarray(X)


def _minmax(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``X`` on the per-gene min-max scale of ``ref`` (GeneQuery's own target scaling)."""
    lo, span = ref.min(0), np.ptp(ref, axis=0)
    return (X - lo) / np.where(span > 0, span, 1.0)


def _minmax_mse(P: np.ndarray, Y: np.ndarray) -> float:
    """MSE of predictions ``P`` against ``Y``, both on ``Y``'s min-max scale."""
    return float(((_minmax(P, Y) - _minmax(Y, Y)) ** 2).mean())


def _spectrum(M: np.ndarray) -> tuple[float, float]:
    """Share of the variance of the per-gene standardised matrix on its first and first three components."""
    Mc = M - M.mean(0)
    Mc = Mc / np.where(Mc.std(0) > 0, Mc.std(0), 1.0)
    sv = np.linalg.svd(Mc, compute_uv=False) ** 2
    return float(sv[0] / sv.sum()), float(sv[:3].sum() / sv.sum())


def _fold_truth(data: ad.AnnData, test: str) -> tuple[ad.AnnData, np.ndarray, np.ndarray, np.ndarray]:
    """The fold's AnnData, its dense log1p truth, and the training and test spot masks."""
    a = fold_data(data, test)
    split = a.obs["split"].to_numpy()
    return a, _dense_log1p(a), split == "train", split == "test"


def _pcc_parts(a: ad.AnnData, truth: np.ndarray, P: np.ndarray, masks) -> list[str]:
    """'HEG / HVG / ALL' mean PCC of the predictions ``P`` on each spot mask."""
    parts = []
    for m in masks:
        r = sp.tl.evaluate_prediction(truth[m], P[m], genes=list(a.var_names))
        parts.append(f"{r['pcc_heg']:.3f} / {r['pcc_hvg']:.3f} / {r['pcc_all']:.3f}")
    return parts


def rank(report: Report, args) -> None:
    """Why GeneQuery trails ridge on the patient-C folds: how many spatial patterns each model predicts."""
    data = load(args, report)
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery spot-aware, width {args.width}, {args.epochs} epochs. "
        "PCC on the training spots (in-sample) and the test section; 'first component' = share of the "
        "variance of the test-section matrix (each gene standardised) on its first / first three principal "
        "components: 1.00 means every gene is predicted with one spatial pattern"
    )
    for test in args.folds:
        a, truth, tr, te = _fold_truth(data, test)
        c1, c3 = _spectrum(truth[te])
        report(f"\nfold test={test} train={FOLDS[test]}: truth first component {c1:.2f} / {c3:.2f}")
        for name, model in (
            ("Ridge (HEST-style)", sp.tl.RidgePredictor()),
            ("GeneQuery spot", gq("spot", args)),
        ):
            model.train(a)
            P = np.asarray(model.predict(a))
            parts = _pcc_parts(a, truth, P, (tr, te))
            c1, c3 = _spectrum(P[te])
            report(
                f"  {name:20s} HEG/HVG/ALL train {parts[0]}; test {parts[1]}; first component {c1:.2f} / {c3:.2f}"
            )


def inputs(report: Report, args) -> None:
    """Input standardisation and batch size, crossed: spot-aware GeneQuery on the same folds and seed."""
    data = load(args, report)
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery spot-aware, width {args.width}, {args.epochs} epochs, "
        "seed 0. PCC HEG / HVG / ALL on the training spots (in-sample) and on the test section; 'first "
        "component' = share of the variance of the standardised test-section predictions on the first "
        "principal component (1.00: one spatial pattern for every gene); last training loss (min-max scale)"
    )
    for test in args.folds:
        a, truth, tr, te = _fold_truth(data, test)
        report(f"\nfold test={test} train={FOLDS[test]}: truth first component {_spectrum(truth[te])[0]:.2f}")
        for standardize in (False, True):
            for batch in (32, 8):
                model = gq("spot", args, standardize=standardize, batch_size=batch)
                t0 = time.perf_counter()
                model.train(a)
                t_train = time.perf_counter() - t0
                P = np.asarray(model.predict(a))
                parts = _pcc_parts(a, truth, P, (tr, te))
                loss = model.history_["epochs"][-1].get("train_loss", float("nan"))
                report(
                    f"  standardize={standardize!s:5s} batch {batch:2d}: train {parts[0]}; test {parts[1]}; "
                    f"first component {_spectrum(P[te])[0]:.2f}; train loss {loss:.4f}; {t_train:.0f} s"
                )


def floor(report: Report, args) -> None:
    """GeneQuery's training loss against what per-gene means, low-rank fits and ridge reach in-sample."""
    data = load(args, report)
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery spot-aware, width {args.width}, {args.epochs} epochs, "
        "min-max targets fit on the training spots (the model's own scaling). MSE on the training spots of: "
        "each gene's mean; the mean plus the best rank-k fit (SVD, an optimum no model of rank k beats); ridge "
        "on the frozen features; and GeneQuery's training loss per epoch (dropout active) and after training"
    )
    for test in args.folds:
        a, truth, tr, _ = _fold_truth(data, test)
        Y = truth[tr]
        Z = _minmax(Y, Y)
        Zc = Z - Z.mean(0)
        U, sv, Vt = np.linalg.svd(Zc, full_matrices=False)
        report(f"\nfold test={test} train={FOLDS[test]}: {int(tr.sum())} training spots")
        report(f"  gene means only                 {float((Zc**2).mean()):.4f}")
        for k in (1, 5, 20):
            fit = (U[:, :k] * sv[:k]) @ Vt[:k]
            report(f"  means + best rank-{k:<2d}            {float(((Zc - fit) ** 2).mean()):.4f}")
        ridge = sp.tl.RidgePredictor().train(a)
        report(f"  ridge (HEST-style), in-sample   {_minmax_mse(np.asarray(ridge.predict(a))[tr], Y):.4f}")
        model = gq("spot", args)
        model.train(a)
        losses = ", ".join(f"{e['train_loss']:.4f}" for e in model.history_["epochs"])
        report(f"  GeneQuery training loss per epoch: {losses}")
        report(
            f"  GeneQuery after training (eval mode) {_minmax_mse(np.asarray(model.predict(a))[tr], Y):.4f}"
        )


def unseen(report: Report, args) -> None:
    data = load(args, report)
    test = args.folds[0]
    a = fold_data(data, test)
    genes = list(a.var_names)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(genes))
    te = (a.obs["split"] == "test").to_numpy()
    truth = a[te].layers["log1p"]
    truth = truth.toarray() if sps.issparse(truth) else np.asarray(truth)
    for mode in args.modes:
        # scaling None: the package's per-mode default (min-max in spot mode, standard in gene mode)
        scaling = gq(mode, args).scaling
        report(
            f"\n{mode}-aware GeneQuery, test={test}, train={FOLDS[test]}, width {args.width}, {args.epochs} "
            f"epochs, {scaling} target scaling, "
            + (
                "dihedral augmentation and tta over the 8 views"
                if args.views
                else "one view, no augmentation"
            )
            + (
                f", gene_identity={args.gene_identity} (identity_dropout={args.identity_dropout})"
                if args.gene_identity
                else ""
            )
        )
        report(
            f"{'% seen':>7s} | {'seen HEG/HVG/ALL':>20s} | {'unseen HEG/HVG/ALL':>20s} | {'all HEG/HVG/ALL':>20s}"
        )
        for frac in args.fractions:
            k = round(frac * len(genes))
            seen = [genes[i] for i in sorted(order[:k])]
            model = gq(mode, args, scaling=scaling).train(a, genes=seen)
            pred = model.predict(a[te], genes)
            out = []
            for subset in (seen, [g for g in genes if g not in set(seen)], genes):
                idx = [genes.index(g) for g in subset]
                r = sp.tl.evaluate_prediction(truth[:, idx], pred[:, idx], genes=subset)
                out.append(f"{r['pcc_heg']:.3f}/{r['pcc_hvg']:.3f}/{r['pcc_all']:.3f}")
            report(f"{int(frac * 100):6d}% | {out[0]:>20s} | {out[1]:>20s} | {out[2]:>20s}")
    report(
        "paper HER2+ 20%: seen .156/.152/.109 unseen .109/.092/.051; 60%: seen .296/.309/.163 unseen .121/.101/.049"
    )


def precision(report: Report, args) -> None:
    """Accuracy of bfloat16 prediction (the 'auto' default on CPUs with native bf16) against float32."""
    from spared_tools._settings import native_bf16

    data = load(args, report)
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery width {args.width}, {args.epochs} epochs, "
        "spot-aware with min-max targets, gene-aware with standard targets (the per-mode defaults), "
        "8 views and tta; each network trained once and evaluated with inference_precision '32' and 'bf16'; "
        f"'auto' resolves to {'bf16' if native_bf16(torch.device('cpu')) else '32'} on this CPU"
    )
    for test in args.folds:
        a = fold_data(data, test)
        report(f"\nfold test={test} train={FOLDS[test]}: {dict(a.obs['split'].value_counts())}")
        te = (a.obs["split"] == "test").to_numpy()
        for mode in ("spot", "gene"):
            model = gq(mode, args, scaling=None).train(a)  # the package's per-mode default
            out = {}
            for prec in ("32", "bf16"):
                model.inference_precision = prec
                t0 = time.perf_counter()
                res = model.evaluate(a)
                dt = time.perf_counter() - t0
                out[prec] = (res, np.asarray(model.predict(a[te])))
                report(f"  GeneQuery {mode} {prec:>4s}  {fmt(res)}  evaluate {dt:.0f} s")
            (r32, p32), (r16, p16) = out["32"], out["bf16"]
            g32 = r32["per_gene"]["pcc"].to_numpy()
            g16 = r16["per_gene"]["pcc"].to_numpy()
            rel = np.abs(p16 - p32).max(axis=0) / (p32.std(axis=0) + 1e-12)
            report(
                f"  GeneQuery {mode} bf16 - 32: HEG {r16['pcc_heg'] - r32['pcc_heg']:+.4f}  "
                f"HVG {r16['pcc_hvg'] - r32['pcc_hvg']:+.4f}  ALL {r16['pcc_all'] - r32['pcc_all']:+.4f}; "
                f"per-gene PCC change max {np.nanmax(np.abs(g16 - g32)):.4f}; largest prediction difference per "
                f"gene, in the gene's std: median {np.median(rel):.3f}, max {rel.max():.3f}"
            )


def _members(model: sp.tl.GeneQueryModel, k: slice | int) -> sp.tl.GeneQueryModel:
    """The same trained model restricted to some of its networks (``n_models`` = how many are kept)."""
    sub = copy.copy(model)
    sub.nets_ = model.nets_[k] if isinstance(k, slice) else [model.nets_[k]]
    sub.net_, sub.n_models = sub.nets_[0], len(sub.nets_)
    return sub


def _fold_with_ridges(
    data: ad.AnnData, test: str, report: Report, rows: list[dict], width: int, context: bool = False
):
    """One fold: its AnnData, the test mask and a scorer (appends to ``rows``); both ridges scored, and
    with ``context`` also ridge on the tta features with ``context_rings=1``."""
    a = fold_data(data, test)
    report(f"\nfold test={test} train={FOLDS[test]}: {dict(a.obs['split'].value_counts())}")
    te = (a.obs["split"] == "test").to_numpy()
    truth = a[te].layers["log1p"]
    truth = truth.toarray() if sps.issparse(truth) else np.asarray(truth)
    genes = list(a.var_names)

    def score(label: str, pred: np.ndarray, extra: str = "") -> None:
        res = sp.tl.evaluate_prediction(truth, pred, genes=genes)
        report(f"  {label:{width}s} {fmt(res)}{extra}")
        rows.append({"fold": test, "model": label, **{k: res[k] for k in ("pcc_heg", "pcc_hvg", "pcc_all")}})

    models = ridges()
    if context:
        models["Ridge (HEST-style), tta features, context 1"] = sp.tl.RidgePredictor(
            encoder="precomputed", features_key="X_image_tta", context_rings=1
        )
    for label, ridge in models.items():
        ridge.train(a)
        score(label, np.asarray(ridge.predict(a[te])))
    return a, te, score


def _fold_means(report: Report, df: pd.DataFrame, width: int) -> pd.DataFrame:
    """Print each model's mean over the folds; return the better ridge's HEG and HVG per fold."""
    report("\nmean over folds (HEG / HVG / ALL):")
    for name, g in df.groupby("model", sort=False):
        report(
            f"  {name:{width}s} {g.pcc_heg.mean():.3f} / {g.pcc_hvg.mean():.3f} / {g.pcc_all.mean():.3f}  "
            f"({g.fold.nunique()} folds)"
        )
    base = df[df.model.str.startswith("Ridge")].groupby(["fold", "model"])[["pcc_heg", "pcc_hvg"]].first()
    return base.groupby("fold").max()


def _report_wins(report: Report, df: pd.DataFrame, width: int, ridges_label: str) -> None:
    """Each model's mean over the folds, then in how many folds each GeneQuery row (its mean over seeds
    where there are several) is ahead of the best ridge of that fold on HEG and on HVG."""
    best_ridge = _fold_means(report, df, width)
    for name in df.model[df.model.str.startswith("GeneQuery")].unique():
        res = df[df.model == name].groupby("fold")[["pcc_heg", "pcc_hvg"]].mean()
        wins = (res > best_ridge.loc[res.index]).sum()
        report(
            f"  {name:{width}s} ahead of {ridges_label} on HEG in {wins.pcc_heg} / HVG in {wins.pcc_hvg} of "
            f"{len(res)} folds"
        )


def ensemble(report: Report, args) -> None:
    """GeneQuery with ``n_models`` networks (seeds 0..n-1): each network's scores and the ensemble's."""
    data = load(args, report)
    n = args.n_models
    sizes = sorted({m for m in (3, n) if 1 < m <= n})
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; {args.modes[0]}-aware GeneQuery width {args.width}, "
        f"{args.epochs} epochs, {args.scaling or 'per-mode default'} target scaling, 8 views and tta, "
        f"checkpoint={args.checkpoint!r}; trained once with n_models={n} (networks from seeds 0..{n - 1}; network k is the one a single "
        f"model with seed k trains). 'seed k' = network k alone; 'n_models=m' = the package's mean "
        f"prediction of the first m networks (what GeneQueryModel(n_models=m) trains)"
    )
    mode = args.modes[0]
    scaling = gq(mode, args).scaling  # --scaling, else the package's per-mode default
    rows: list[dict] = []
    for test in args.folds:
        a, te, score = _fold_with_ridges(data, test, report, rows, 38)
        t0 = time.perf_counter()
        model = gq(mode, args, scaling=scaling, n_models=n).train(a)
        t_train = time.perf_counter() - t0
        members = model.history_.get("members", [{**model.history_, "seed": model.seed}])
        for k, rec in enumerate(members):
            score(
                f"GeneQuery {mode}, seed {rec['seed']}",
                np.asarray(_members(model, k).predict(a[te])),
                f"  best epoch {rec['best_epoch']} (val loss {rec['best_val_loss']:.4f})"
                + (f", average {rec['average_val_loss']:.4f}" if rec.get("average_val_loss") else ""),
            )
        for m in sizes:
            t0 = time.perf_counter()
            pred = np.asarray(_members(model, slice(0, m)).predict(a[te]))
            extra = f"  predict {time.perf_counter() - t0:.1f} s"
            score(
                f"GeneQuery {mode}, n_models={m}",
                pred,
                extra + (f", train {t_train:.0f} s" if m == n else ""),
            )
    df = pd.DataFrame(rows)
    df["model"] = df["model"].str.replace(r"seed \d+$", "one seed (mean score)", regex=True)
    best_ridge = _fold_means(report, df, 38)
    for m in sizes:
        ens = df[df.model == f"GeneQuery {mode}, n_models={m}"].set_index("fold")[["pcc_heg", "pcc_hvg"]]
        wins = (ens > best_ridge.loc[ens.index]).sum()
        report(
            f"  n_models={m} ahead of both ridges on HEG in {wins.pcc_heg} / HVG in {wins.pcc_hvg} of "
            f"{len(ens)} folds"
        )


def _mean_code(model: sp.tl.GeneQueryModel) -> sp.tl.GeneQueryModel:
    """The same trained model with every gene's identity code replaced by the mean code (text alone)."""
    k = model.gene_identity
    sub = copy.copy(model)
    sub.gene_embeddings_ = model.gene_embeddings_.copy()
    sub.gene_embeddings_[:, -k:] = model.net_.gene_shift[-k:].numpy()
    return sub


def identity(report: Report, args) -> None:
    """GeneQuery on the gene text alone against text plus a per-gene identity code (``gene_identity``)."""
    data = load(args, report)
    k = args.gene_identity or 384
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery width {args.width}, {args.epochs} epochs, "
        f"per-mode default target scaling, 8 views and tta, checkpoint={args.checkpoint!r}, seed {args.seed}; "
        f"'text' = the gene text embedding alone (gene_identity=0, the default), 'text + identity' = "
        f"gene_identity={k}, identity_dropout={args.identity_dropout} (the same folds, seed and settings); "
        f"'mean code' = that network with every gene given the mean code, i.e. predicting from the text "
        f"alone as it does for genes it was not trained on"
    )
    rows: list[dict] = []
    for test in args.folds:
        a, te, score = _fold_with_ridges(data, test, report, rows, 44)
        for mode in args.modes:
            for label, kw in (
                ("text", {"gene_identity": 0}),
                ("text + identity", {"gene_identity": k, "identity_dropout": args.identity_dropout}),
            ):
                t0 = time.perf_counter()
                model = gq(mode, args, **kw).train(a)
                t_train = time.perf_counter() - t0
                score(
                    f"GeneQuery {mode}, {label}",
                    np.asarray(model.predict(a[te])),
                    f"  best epoch {model.history_['best_epoch']}, train {t_train:.0f} s",
                )
                if kw["gene_identity"]:
                    score(
                        f"GeneQuery {mode}, {label}, mean code", np.asarray(_mean_code(model).predict(a[te]))
                    )
    df = pd.DataFrame(rows)
    _report_wins(report, df, 44, "both ridges")


def context(report: Report, args) -> None:
    """Image context (``context_rings``): GeneQuery and ridge on each patch's features alone vs with
    their mean over the spot's lattice neighbourhood, same folds, seed and settings."""
    data = load(args, report)
    k = args.gene_identity or 384
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; GeneQuery width {args.width}, {args.epochs} epochs, "
        f"per-mode default target scaling, 8 views and tta, checkpoint={args.checkpoint!r}, seed {args.seed}; "
        "'context 1' = context_rings=1: each spot's features followed by their mean over the spot and its "
        "4 lattice neighbours on the same section (view k with the neighbours' view k; for ridge, of the "
        "tta features); 'context 0' = the patch's own features only (the default); 'identity' = "
        f"gene_identity={k}, identity_dropout={args.identity_dropout}, and 'identity, mean code' the same "
        "network predicting every gene from its text alone (use_identity=False)"
    )
    rows: list[dict] = []
    for test in args.folds:
        a, te, score = _fold_with_ridges(data, test, report, rows, 44, context=True)
        runs = [(mode, ctx, 0) for mode in args.modes for ctx in (0, 1)]
        runs += [("gene", 1, k)] if "gene" in args.modes else []
        for mode, ctx, ident in runs:
            kw = {"context_rings": ctx, "gene_identity": ident, "identity_dropout": args.identity_dropout}
            t0 = time.perf_counter()
            model = gq(mode, args, **kw).train(a)
            t_train = time.perf_counter() - t0
            label = f"GeneQuery {mode}, context {ctx}" + (", identity" if ident else "")
            score(
                label,
                np.asarray(model.predict(a[te])),
                f"  best epoch {model.history_['best_epoch']}, train {t_train:.0f} s",
            )
            if ident:
                model.use_identity = False
                score(f"{label}, mean code", np.asarray(model.predict(a[te])))
    df = pd.DataFrame(rows)
    _report_wins(report, df, 44, "all three ridges")


def dropout(report: Report, args) -> None:
    """Image dropout (``image_dropout``): GeneQuery with context 1 (gene-aware also with the identity
    code) at each rate of ``--image-dropouts``, trained with ``--n-models`` networks; each network's
    scores and the ensemble's, against the three ridges."""
    data = load(args, report)
    k = args.gene_identity or 384
    n = args.n_models
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; {'/'.join(args.modes)}-aware GeneQuery width {args.width}, "
        f"{args.epochs} epochs, per-mode default target scaling, 8 views and tta, checkpoint={args.checkpoint!r}, "
        f"context_rings=1, gene-aware with gene_identity={k} (identity_dropout={args.identity_dropout}); "
        "'image dropout p' = image_dropout=p: each standardised image feature zeroed with probability p in "
        "every training step (a ridge-like penalty on the image projection); each rate trained once with "
        f"n_models={n} (networks of seeds {args.seed}..{args.seed + n - 1}; network k is the one a single model "
        f"with seed k trains): 'seed k' = network k alone, 'n_models={n}' = the package's mean prediction"
    )
    rows: list[dict] = []
    for test in args.folds:
        a, te, score = _fold_with_ridges(data, test, report, rows, 48, context=True)
        for mode in args.modes:
            for p in args.image_dropouts:
                kw = {"context_rings": 1, "image_dropout": p, "n_models": n}
                if mode == "gene":
                    kw.update(gene_identity=k, identity_dropout=args.identity_dropout)
                t0 = time.perf_counter()
                model = gq(mode, args, **kw).train(a)
                t_train = time.perf_counter() - t0
                label = f"GeneQuery {mode}, image dropout {p}"
                members = model.history_.get("members", [{**model.history_, "seed": model.seed}])
                for j, rec in enumerate(members):
                    score(
                        f"{label}, seed {rec['seed']}",
                        np.asarray(_members(model, j).predict(a[te])),
                        f"  best epoch {rec['best_epoch']}",
                    )
                if n > 1:
                    score(
                        f"{label}, n_models={n}", np.asarray(model.predict(a[te])), f"  train {t_train:.0f} s"
                    )
    df = pd.DataFrame(rows)
    df["model"] = df["model"].str.replace(r"seed \d+$", "one seed (mean score)", regex=True)
    _report_wins(report, df, 48, "all three ridges")
    report(
        "paper HER2+ (5-fold over 36 sections): spot-aware 0.317 / 0.315 / 0.174; gene-aware 0.315 / 0.318 / 0.159"
    )


def finetune(report: Report, args) -> None:
    """Spot-aware GeneQuery with frozen features vs with the image encoder fine-tuned, same epochs."""
    data = load(args, report)
    report(
        f"{data.n_obs} spots × {data.n_vars} genes; spot-aware GeneQuery width {args.width}, {args.epochs} "
        "epochs; fine-tune: EfficientNet-Lite0 trained from the 224 px patches (finetune_spots=64, "
        "finetune_genes=256, encoder_lr=1e-4, batch-norm statistics frozen; encoder_chunk=8 by default)"
    )
    for test in args.folds:
        a = fold_data(data, test)
        report(f"\nfold test={test} train={FOLDS[test]}: {dict(a.obs['split'].value_counts())}")
        variants = {
            "frozen": ("frozen", {}),
            "finetune": ("fine-tune", {"finetune": True}),  # encoder_chunk=8: gradient checkpointing
            "onepass": ("fine-tune, no checkpointing", {"finetune": True, "encoder_chunk": None}),
        }
        for name, kw in (variants[v] for v in args.variants):
            model = gq("spot", args, **kw)
            t0 = time.perf_counter()
            peak, _ = peak_rss_during(lambda model=model, a=a: model.train(a))
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = model.evaluate(a)
            t_eval = time.perf_counter() - t0
            report(
                f"  GeneQuery spot {name:28s} {fmt(res)}  train {t_train:.0f} s = {t_train / args.epochs:.0f} "
                f"s/epoch, peak RSS during training +{peak:.0f} MiB; evaluate {t_eval:.0f} s"
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
    big.obsm["X_image_features"] = rng.normal(size=(n, 1280)).astype(np.float32)
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
                model = sp.tl.GeneQueryModel(
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


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument(
        "stage",
        choices=[
            "prep",
            "main",
            "unseen",
            "speed",
            "finetune",
            "rank",
            "floor",
            "inputs",
            "precision",
            "ensemble",
            "identity",
            "context",
            "dropout",
        ],
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=int, default=256)
    p.add_argument(
        "--batch-size", type=int, default=8, help="GeneQuery: genes (spot mode) or spots (gene mode) per step"
    )
    p.add_argument("--folds", nargs="+", default=list(FOLDS))
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.4, 0.6])
    p.add_argument("--predict-fraction", type=float, default=1.0)
    p.add_argument("--n-genes", type=int, default=785)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="GeneQuery's seed (main and unseen)")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "average"],
        help="GeneQuery's checkpoint: best validation epoch, or the mean of the second half's weights",
    )
    p.add_argument(
        "--n-models",
        type=int,
        default=3,
        help="ensemble stage: GeneQuery's n_models (networks of seeds 0 .. n-1)",
    )
    p.add_argument(
        "--gene-identity",
        type=int,
        default=None,
        help="GeneQuery's gene_identity (main, unseen, ensemble: default 0, text only; identity stage: 384)",
    )
    p.add_argument(
        "--context-rings",
        type=int,
        default=0,
        help="GeneQuery's context_rings in every stage but context (default 0, the package default)",
    )
    p.add_argument(
        "--image-dropouts",
        nargs="+",
        type=float,
        default=[0.0, 0.8],
        help="dropout stage: GeneQuery's image_dropout rates (each trained with --n-models networks)",
    )
    p.add_argument(
        "--identity-dropout",
        type=float,
        default=0.5,
        help="GeneQuery's identity_dropout (with --gene-identity)",
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
        help="GeneQuery target scaling; default: min-max for main, the package's per-mode default for unseen",
    )
    p.add_argument(
        "--modes", nargs="+", default=["spot", "gene"], choices=["spot", "gene"], help="unseen stage"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=["frozen", "finetune", "onepass"],
        default=["frozen", "finetune", "onepass"],
        help="finetune stage: frozen features, fine-tuned encoder, fine-tuned without checkpointing",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sp.settings.verbosity = 1
    name = {
        "prep": "genequery_prep",
        "main": "genequery_main",
        "unseen": "genequery_unseen",
        "speed": "genequery_speed",
        "finetune": "genequery_finetune",
        "rank": "genequery_rank",
        "floor": "genequery_floor",
        "inputs": "genequery_inputs",
        "precision": "genequery_precision",
        "ensemble": "genequery_ensemble",
        "identity": "genequery_identity",
        "context": "genequery_context",
        "dropout": "genequery_image_dropout",
    }
    # one results file per fold set for the fine-tune comparison (each run is long)
    suffix = "_" + "_".join(args.folds) if args.stage == "finetune" else ""
    if args.stage in ("main", "unseen") and not args.views:  # the one-view ablation keeps its own file
        suffix += "_one_view"
    if args.stage not in ("unseen", "ensemble", "identity", "context", "dropout") and args.scaling is None:
        args.scaling = "minmax"
    if args.stage in ("main", "unseen") and args.scaling not in (None, "minmax"):
        suffix += "_" + args.scaling
    if args.stage in ("main", "unseen") and args.width != 128:  # the CPU tables are at width 128
        suffix += f"_w{args.width}"
    if args.stage in ("main", "unseen") and args.seed != 0:
        suffix += f"_seed{args.seed}"
    if args.stage == "ensemble" and args.modes[0] == "spot":  # gene-aware keeps the plain name
        suffix += "_spot"
    if args.stage in ("main", "unseen", "ensemble") and args.gene_identity:
        suffix += f"_id{args.gene_identity}"
    if args.stage not in ("context", "dropout", "prep") and args.context_rings:
        suffix += f"_ctx{args.context_rings}"
    if args.stage in ("identity", "context", "dropout") and args.modes != ["spot", "gene"]:
        suffix += "_" + "_".join(args.modes)
    if args.checkpoint != "best":
        suffix += f"_{args.checkpoint}"
    report = Report(name[args.stage] + suffix)
    report(f"# bench_genequery.py {' '.join(sys.argv[1:])}")
    report(
        f"# {machine_info()} | torch threads {torch.get_num_threads()} | load average {os.getloadavg()[0]:.1f} "
        f"| {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    {
        "prep": lambda: prep(report),
        "main": lambda: main(report, args),
        "finetune": lambda: finetune(report, args),
        "unseen": lambda: unseen(report, args),
        "speed": lambda: speed(report, args),
        "rank": lambda: rank(report, args),
        "floor": lambda: floor(report, args),
        "inputs": lambda: inputs(report, args),
        "precision": lambda: precision(report, args),
        "ensemble": lambda: ensemble(report, args),
        "identity": lambda: identity(report, args),
        "context": lambda: context(report, args),
        "dropout": lambda: dropout(report, args),
    }[args.stage]()
    report.save()
