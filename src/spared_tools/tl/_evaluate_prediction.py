"""``sp.tl.evaluate_prediction``: the GeneQuery / HEST metrics for expression predicted from images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._kernels.metrics import pearson_per_gene, top_genes
from spared_tools._keys import Key
from spared_tools._validation import get_matrix

__all__ = ["evaluate_prediction", "pearson_per_gene"]


def _dense(X: Any, what: str) -> np.ndarray:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (spots × genes) matrix, got shape {X.shape}.")
    if not (np.issubdtype(X.dtype, np.number) and X.dtype != np.bool_):
        raise TypeError(f"{what} must be numeric, got dtype {X.dtype}.")
    X = X.astype(np.float64, copy=False)
    bad = ~np.isfinite(X)
    if bad.any():
        raise ValueError(f"{what} contains {int(bad.sum())} NaN or infinite values.")
    return X


def _resolve(
    obj: AnnData | np.ndarray | Any, layer: str | None, genes: list[str] | None, what: str
) -> tuple[np.ndarray, list[str] | None, pd.Index | None]:
    if isinstance(obj, AnnData):
        M = get_matrix(obj, layer)
        names = list(obj.var_names)
        if genes is not None:
            missing = [g for g in genes if g not in obj.var_names]
            if missing:
                show = ", ".join(map(repr, missing[:10])) + (" …" if len(missing) > 10 else "")
                raise KeyError(f"{len(missing)} genes missing from {what}.var_names: {show}.")
            M = M[:, obj.var_names.get_indexer(genes)]
            names = list(genes)
        return _dense(M, what), names, obj.obs_names
    return _dense(obj, what), None, None


def evaluate_prediction(
    truth: AnnData | np.ndarray,
    pred: AnnData | np.ndarray | str,
    *,
    genes: Sequence[str] | None = None,
    n_top: int = 50,
    layer: str | None = Key.LOG,
    pred_layer: str | None = None,
) -> dict[str, Any]:
    """Score predicted expression against the ground truth as in GeneQuery (PCC ALL / HEG / HVG) plus MSE.

    The Pearson correlation of each gene is computed over all spots pooled (all test slides together).
    ``ALL`` is the mean over genes whose PCC is defined; ``HEG`` the mean over the ``n_top`` genes with the
    highest total expression in the ground truth; ``HVG`` the mean over the ``n_top`` genes with the
    highest variance in the ground truth (ties broken by gene order). Genes with an undefined PCC
    (constant truth or prediction, e.g. never expressed in the test spots) are ignored in the means and
    counted in ``n_nan_genes``.

    Parameters
    ----------
    truth
        Ground truth: an AnnData (read from ``layer``) or a ``(n_spots, n_genes)`` array, in the same units as
        ``pred`` (log1p).
    pred
        Predictions: an AnnData (read from ``pred_layer``), an array of the same shape as the truth, or the
        name of a layer of ``truth`` (e.g. ``"genequery"``).
    genes
        Gene names: with AnnData inputs the genes to score (default: all of ``truth``); with arrays the names
        of the columns (default ``"0", "1", ...``).
    n_top
        Size of the HEG and HVG gene sets (all genes when there are fewer).
    layer
        Layer of ``truth`` holding the ground truth (``None``: ``X``).
    pred_layer
        Layer of ``pred`` when it is an AnnData (``None``: ``X``).

    Returns
    -------
    A dictionary with

    * ``"pcc_all"``, ``"pcc_heg"``, ``"pcc_hvg"`` – mean PCC over all / HEG / HVG genes (NaN genes ignored);
    * ``"mse"``, ``"mae"`` – mean squared / absolute error over every spot and gene;
    * ``"n_spots"``, ``"n_genes"``, ``"n_top"``;
    * ``"n_nan_genes"`` and ``"nan_genes"`` – genes with undefined PCC;
    * ``"heg_genes"``, ``"hvg_genes"`` – the genes of each set;
    * ``"per_gene"`` – DataFrame indexed by gene with ``pcc``, ``mse``, ``total`` (summed truth),
      ``variance`` (truth), ``heg`` and ``hvg`` (membership).
    """
    if isinstance(n_top, bool) or not isinstance(n_top, int | np.integer) or n_top < 1:
        raise ValueError(f"n_top must be a positive integer, got {n_top!r}.")
    gene_list = None if genes is None else ([genes] if isinstance(genes, str) else list(genes))
    if gene_list is not None and len(set(gene_list)) != len(gene_list):
        raise ValueError("genes contains duplicates.")
    if isinstance(pred, str):
        if not isinstance(truth, AnnData):
            raise TypeError("pred can be a layer name only when truth is an AnnData.")
        if pred not in truth.layers:
            raise KeyError(
                f"Prediction layer {pred!r} not in truth.layers; available: {sorted(truth.layers.keys())}."
            )
        pred_layer, pred = pred, truth
    T, t_names, t_obs = _resolve(truth, layer, gene_list if isinstance(truth, AnnData) else None, "truth")
    P, p_names, p_obs = _resolve(
        pred, pred_layer, (gene_list or t_names) if isinstance(pred, AnnData) else None, "pred"
    )
    if t_obs is not None and p_obs is not None and not t_obs.equals(p_obs):
        raise ValueError("truth and pred AnnData objects have different obs_names (spots); align them first.")
    if T.shape != P.shape:
        raise ValueError(f"truth has shape {T.shape} but pred has shape {P.shape}.")
    n_spots, n_genes = T.shape
    if n_spots < 2:
        raise ValueError(f"Need at least 2 spots to compute correlations, got {n_spots}.")
    if n_genes == 0:
        raise ValueError("No genes to evaluate.")
    names = t_names or p_names or gene_list or [str(i) for i in range(n_genes)]
    if len(names) != n_genes:
        raise ValueError(f"{len(names)} gene names given for {n_genes} columns.")

    pcc = pearson_per_gene(T, P)
    err = T - P
    mse_gene = (err**2).mean(axis=0)
    total = T.sum(axis=0)
    variance = T.var(axis=0)
    k = min(int(n_top), n_genes)
    heg_idx = top_genes(T, k, "total")
    hvg_idx = top_genes(T, k, "variance")
    nan = np.isnan(pcc)

    def _mean(idx: np.ndarray) -> float:
        vals = pcc[idx]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else float("nan")

    per_gene = pd.DataFrame(
        {"pcc": pcc, "mse": mse_gene, "total": total, "variance": variance},
        index=pd.Index(names, name="gene"),
    )
    per_gene["heg"] = False
    per_gene["hvg"] = False
    per_gene.iloc[heg_idx, per_gene.columns.get_loc("heg")] = True
    per_gene.iloc[hvg_idx, per_gene.columns.get_loc("hvg")] = True
    return {
        "pcc_all": _mean(np.arange(n_genes)),
        "pcc_heg": _mean(heg_idx),
        "pcc_hvg": _mean(hvg_idx),
        "mse": float((err**2).mean()),
        "mae": float(np.abs(err).mean()),
        "n_spots": int(n_spots),
        "n_genes": int(n_genes),
        "n_top": int(k),
        "n_nan_genes": int(nan.sum()),
        "nan_genes": [names[i] for i in np.flatnonzero(nan)],
        "heg_genes": [names[i] for i in heg_idx],
        "hvg_genes": [names[i] for i in hvg_idx],
        "per_gene": per_gene,
    }
