"""GeneQuery research ablations on her2st: the runs that chose the package's defaults.

Moved here from ``benchmarks/bench_genequery.py``, which keeps the head-to-head against the baselines
(``main``) and the speed run; these stages reuse its data set-up (``prep`` there must have run first:
``python benchmarks/bench_genequery.py prep``) and write to ``experiments/results/<name>.txt``.

Stages (``python experiments/genequery_ablations.py STAGE [options]``):

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
  networks (each network's scores and the ensemble's), the three ridges alongside.
  → results/genequery_image_dropout[_<modes>][_average].txt
* ``precision`` – each GeneQuery mode trained once and evaluated with float32 and bfloat16 prediction
  (``inference_precision``). → results/genequery_precision.txt
* ``finetune`` – spot-aware GeneQuery with frozen features vs with the image encoder fine-tuned
  (``finetune=True``), same folds and epochs: accuracy, seconds per epoch, peak memory.
  → results/genequery_finetune_<folds>.txt
* ``rank``   – ridge vs spot-aware GeneQuery on the same folds: in-sample and test PCC, and how much of
  the predicted test matrix one spatial pattern explains (a diagnosis of GeneQuery's low HEG/HVG on
  the patient-C folds). → results/genequery_rank.txt
* ``floor``  – GeneQuery's training loss against the in-sample MSE of per-gene means, the best low-rank
  fits and ridge, on the model's own min-max scale. → results/genequery_floor.txt
* ``inputs`` – input standardisation and batch size, crossed (spot-aware). → results/genequery_inputs.txt

Each stage's output name is its row of :data:`STAGES` (a base name and the suffix rules of
``bench_genequery.SUFFIXES`` that apply to it). The result files' first line is the command that made
them; those made before the move name ``bench_genequery.py``, with the same stage and options.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sps
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import Report, peak_rss_during, write_text_atomic
from bench_genequery import FOLDS, Stage, fmt, fold_data, gq, load, parser, ridges, run

import spared_tools as sp

RESULTS = Path(__file__).resolve().parent / "results"


class ExperimentReport(Report):
    """A :class:`Report` saved to ``experiments/results/<name>.txt``."""

    def save(self) -> Path:
        return write_text_atomic(RESULTS / f"{self.name}.txt", "\n".join(self.lines) + "\n")


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


_PER_MODE = None  # the package's per-mode default target scaling
STAGES: dict[str, Stage] = {
    "unseen": Stage(
        unseen,
        "genequery_unseen",
        ("one_view", "scaling", "width", "seed", "identity", "context", "checkpoint"),
        _PER_MODE,
    ),
    "ensemble": Stage(
        ensemble, "genequery_ensemble", ("spot", "identity", "context", "checkpoint"), _PER_MODE
    ),
    "identity": Stage(identity, "genequery_identity", ("context", "modes", "checkpoint"), _PER_MODE),
    "context": Stage(context, "genequery_context", ("modes", "checkpoint"), _PER_MODE),
    "dropout": Stage(dropout, "genequery_image_dropout", ("modes", "checkpoint"), _PER_MODE),
    "precision": Stage(precision, "genequery_precision"),
    "finetune": Stage(finetune, "genequery_finetune", ("folds", "context", "checkpoint")),
    "rank": Stage(rank, "genequery_rank"),
    "floor": Stage(floor, "genequery_floor"),
    "inputs": Stage(inputs, "genequery_inputs"),
}


def experiment_parser():
    """``bench_genequery``'s options plus the ones only the ablations use."""
    p = parser(STAGES, description="GeneQuery research ablations on her2st")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.2, 0.4, 0.6], help="unseen stage")
    p.add_argument(
        "--n-models",
        type=int,
        default=3,
        help="ensemble and dropout stages: GeneQuery's n_models (networks of seeds 0 .. n-1)",
    )
    p.add_argument(
        "--image-dropouts",
        nargs="+",
        type=float,
        default=[0.0, 0.8],
        help="dropout stage: GeneQuery's image_dropout rates (each trained with --n-models networks)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=["frozen", "finetune", "onepass"],
        default=["frozen", "finetune", "onepass"],
        help="finetune stage: frozen features, fine-tuned encoder, fine-tuned without checkpointing",
    )
    return p


if __name__ == "__main__":
    run(
        STAGES, experiment_parser().parse_args(), script="genequery_ablations.py", report_cls=ExperimentReport
    )
