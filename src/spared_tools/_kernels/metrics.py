"""The one metrics kernel: errors and correlations of predicted expression, and the HEG / HVG gene sets.

Used by :func:`spared_tools.tl.evaluate_prediction` (GeneQuery and the baselines), by
:func:`spared_tools.tl.evaluate_completion` (SpaCKLE, on the hidden entries only) and by the benchmarks.
SpaCKLE's validation accumulates the same masked moments batch by batch on the device
(:class:`spared_tools.models.spackle.MetricSums`); the tests check both against brute force.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from spared_tools._docs import d

__all__ = ["masked_metrics", "pearson_from_moments", "pearson_per_gene", "top_genes"]


@d.inject
def pearson_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``truth`` with the same column of ``pred``.

    Parameters
    ----------
    %(truth_pred)s

    Returns
    -------
    ``float64`` ``(n_genes,)``; NaN where either column is constant (correlation undefined), as
    :func:`scipy.stats.pearsonr`.
    """
    T0 = np.asarray(truth, dtype=np.float64)
    P0 = np.asarray(pred, dtype=np.float64)
    t = T0 - T0.mean(axis=0)
    p = P0 - P0.mean(axis=0)
    num = (t * p).sum(axis=0)
    tt = np.sqrt((t * t).sum(axis=0))
    pp = np.sqrt((p * p).sum(axis=0))
    # exactly constant columns: correlation undefined (scipy.stats.pearsonr returns NaN there too)
    const = (T0 == T0[:1]).all(axis=0) | (P0 == P0[:1]).all(axis=0)
    return _correlation(num, tt * pp, const)


def _correlation(cov: np.ndarray, scale: np.ndarray, undefined: np.ndarray) -> np.ndarray:
    """``cov / scale`` clipped to [-1, 1], NaN where ``undefined``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / scale
    r = np.clip(r, -1.0, 1.0)
    r[undefined] = np.nan
    return r


def pearson_from_moments(
    n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray
) -> np.ndarray:
    """Pearson correlations from sums (count, Σx, Σy, Σx², Σy², Σxy); NaN below 2 values or at zero variance."""
    n = np.asarray(n, dtype=np.float64)
    m = np.maximum(n, 1.0)
    cov = sxy - sx * sy / m
    vx = sxx - sx * sx / m
    vy = syy - sy * sy / m
    eps = 1e-12 * (np.abs(sxx) + np.abs(syy) + 1.0)
    bad = (n < 2) | ~(vx > eps) | ~(vy > eps)
    return _correlation(cov, np.sqrt(np.maximum(vx, 1e-300) * np.maximum(vy, 1e-300)), bad)


@d.inject
def masked_metrics(truth: np.ndarray, pred: np.ndarray, scored: np.ndarray) -> dict[str, float]:
    """MSE, MAE, PCC-gene and PCC-spot over the ``scored`` entries (SpaCKLE's completion metrics).

    Parameters
    ----------
    %(truth_pred)s
    scored
        ``(n_spots, n_genes)`` bool: the entries to score.

    Returns
    -------
    ``MSE`` and ``MAE`` over the scored entries; ``PCC-gene``: mean over genes of the correlation across
    the spots where the gene is scored; ``PCC-spot``: mean over spots of the correlation across the genes
    scored there (genes / spots with < 2 scored entries or a constant side left out); ``n_scored``.
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    w = np.asarray(scored, dtype=bool)
    if truth.shape != pred.shape or truth.shape != w.shape or truth.ndim != 2:
        raise ValueError(
            f"truth, pred and scored must be 2-D arrays of one shape, got {truth.shape}, {pred.shape}, {w.shape}."
        )
    wf = w.astype(np.float64)
    x, y = truth * wf, pred * wf
    n_scored = int(w.sum())
    err = (truth - pred) * wf
    out = {
        "MSE": float((err**2).sum() / n_scored) if n_scored else float("nan"),
        "MAE": float(np.abs(err).sum() / n_scored) if n_scored else float("nan"),
    }
    for name, axis in (("PCC-gene", 0), ("PCC-spot", 1)):
        r = pearson_from_moments(
            wf.sum(axis), x.sum(axis), y.sum(axis), (x * x).sum(axis), (y * y).sum(axis), (x * y).sum(axis)
        )
        r = r[np.isfinite(r)]
        out[name] = float(r.mean()) if r.size else float("nan")
    out["n_scored"] = float(n_scored)
    return out


def top_genes(truth: np.ndarray, n: int, by: Literal["total", "variance"]) -> np.ndarray:
    """Positions of the ``n`` highest-expressed (``"total"``: HEG) or most variable (``"variance"``: HVG) genes.

    Ties keep the column order (stable sort); the sums are taken in ``truth``'s own dtype.
    """
    T = np.asarray(truth)
    score = T.sum(axis=0) if by == "total" else T.var(axis=0)
    return np.argsort(-score, kind="stable")[: min(int(n), T.shape[1])]
