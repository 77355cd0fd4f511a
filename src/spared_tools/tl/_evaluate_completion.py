"""The SpaCKLE paper's completion benchmark (``sp.tl.evaluate_completion``).

Hide real entries, complete them with SpaCKLE and with the adaptive median method on the same masks, and
score both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._kernels.masking import check_mask_fractions, hide_entries
from spared_tools._kernels.metrics import masked_metrics
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_seed, settings
from spared_tools._validation import check_adata, check_obs_key, slide_labels
from spared_tools.tl._base import model_class
from spared_tools.tl._spackle_data import _expression_arrays, _gene_index, _neighbourhoods

__all__ = ["completion_metrics", "evaluate_completion"]

Method = Literal["spackle", "median"]
_METHODS = ("spackle", "median")


#: The paper's completion metrics (MSE, MAE, PCC-gene, PCC-spot) on the scored entries: the one metrics kernel.
completion_metrics = masked_metrics


def _eval_rows(
    adata: AnnData,
    split_key: str | None,
    eval_value: str,
    slides: Sequence[str] | None,
    library_key: str | None,
) -> tuple[np.ndarray, str]:
    if slides is not None:
        if library_key is None:
            raise ValueError("slides= needs library_key (the slide column).")
        col = check_obs_key(adata, library_key, what="slide column").astype(str).to_numpy()
        slides = [str(s) for s in ([slides] if isinstance(slides, str) else slides)]
        unknown = sorted(set(slides) - set(col))
        if unknown:
            raise KeyError(f"slides {unknown} are not in adata.obs[{library_key!r}].")
        return np.isin(col, slides), f"slides {slides}"
    if split_key is not None and split_key in adata.obs:
        col = adata.obs[split_key].astype(str).to_numpy()
        rows = col == eval_value
        if not rows.any():
            raise ValueError(
                f"No spot has adata.obs[{split_key!r}] == {eval_value!r}; pass eval_value=, slides=, or "
                "split_key=None to evaluate every spot."
            )
        return rows, f"adata.obs[{split_key!r}] == {eval_value!r}"
    return np.ones(adata.n_obs, dtype=bool), "all spots"


def evaluate_completion(
    adata: AnnData,
    *,
    model: Any = None,
    layer: str | None = Key.MEDIAN,
    mask_layer: str | None = Key.MASK,
    library_key: str | None = Key.SLIDE,
    split_key: str | None = Key.SPLIT,
    eval_value: str = Key.TEST,
    slides: Sequence[str] | None = None,
    mask_frac: float | Sequence[float] = 0.3,
    n_masks: int = 10,
    methods: Sequence[Method] = ("spackle", "median"),
    median_rings: int = 4,
    seed: int | None = None,
    batch_size: int = 256,
    device: str | None = None,
    key_added: str | None = Key.uns.spackle_evaluation,
    train_kwargs: dict[str, Any] | None = None,
    max_values: int = 200_000,
) -> pd.DataFrame:
    """Benchmark completion on artificially hidden real entries (the SpaCKLE paper's protocol).

    For each mask fraction ``f`` and each of ``n_masks`` random masks, every *real* (observed) entry of the
    evaluated spots is hidden independently with probability ``f``. The hidden entries are then treated as
    missing by every method:

    * **SpaCKLE** completes each evaluated spot from its remaining observed genes and its lattice
      neighbourhood (whose hidden entries are removed from the input too);
    * **median**: SpaRED's adaptive median filter (:func:`spared_tools.pp.median_complete`) is re-run on the
      masked data (values of hidden entries removed, mask updated), so the hidden entries are "missing"
      for the median as well.

    Both are scored on the same hidden entries against the original values of ``layer`` (MSE, MAE,
    PCC-gene, PCC-spot; see ``spared_tools._kernels.metrics.masked_metrics``). Leakage-free use: train the model on training
    slides and evaluate test slides (``split_key`` / ``slides``); a warning is logged when evaluated slides
    were used for training.

    Parameters
    ----------
    adata
        Spots × genes with ``layer``, ``mask_layer``, array coordinates and slide column.
    model
        A trained :class:`~spared_tools.tl.SpackleModel`. ``None`` trains one on ``adata`` with
        ``train_kwargs`` (train/val labels of ``split_key``) before evaluating the ``eval_value`` spots.
    layer
        Layer holding the values to recover (default the median pre-completed log1p layer; its observed
        entries are the ground truth). Ignored for SpaCKLE when ``model`` is given (the model's layer is
        used).
    mask_layer
        Bool layer of real entries (``None``: non-zero entries of ``layer``).
    library_key
        ``adata.obs`` slide column.
    split_key
        ``adata.obs`` column with split labels; spots labelled ``eval_value`` are evaluated. Without it
        (and without ``slides``) every spot is evaluated.
    eval_value
        Split label of the evaluated spots (default ``"test"``).
    slides
        Evaluate these slides (overrides ``split_key``).
    mask_frac
        Fraction of real entries to hide, or a sequence for a sweep (e.g. ``[0.1, 0.2, ..., 0.7]``).
    n_masks
        Random masks per fraction (paper: 10).
    methods
        Subset of ``("spackle", "median")``.
    median_rings
        Largest window of the median method, in lattice rings (SpaRED: 4).
    seed
        Seed of the masks (``None`` → ``sp.settings.seed``); mask ``m`` of fraction ``f`` is the same for
        every method.
    batch_size
        SpaCKLE neighbourhoods per forward pass.
    device
        Torch device for SpaCKLE and the median method.
    key_added
        Store parameters, per-mask results and the summary in ``adata.uns[key_added]`` (``None``: do not
        store).
    train_kwargs
        Arguments of :meth:`~spared_tools.tl.SpackleModel.train` (and of the constructor: ``n_rings``,
        ``d_model``, ...) when ``model`` is None.
    max_values
        Most rows of hidden entries kept in ``uns[key_added]["values"]`` for the scatter panels of
        :func:`spared_tools.pl.completion` (``0``: none).

    Returns
    -------
    ``pandas.DataFrame`` with one row per (method, mask fraction, mask): ``method``, ``mask_frac``, ``mask``,
    ``MSE``, ``MAE``, ``PCC-gene``, ``PCC-spot``, ``n_hidden``. When ``key_added`` is set,
    ``adata.uns[key_added]`` receives ``params``, ``results`` (that DataFrame) and ``summary`` (mean and
    standard deviation over masks per method and fraction, plus ``MSE_reduction_vs_median`` = 1 −
    MSE(SpaCKLE) / MSE(median) when both methods ran), and ``values``: a DataFrame of hidden entries (first
    mask of the fraction closest to 0.3, at most ``max_values`` rows) with columns ``obs_name``, ``gene``,
    ``true`` and one column per method, read by :func:`spared_tools.pl.completion` for its scatter panels.
    """
    check_adata(adata)
    SpackleModel = model_class("SpaCKLE")  # through the registry: _spackle imports this module
    methods = [methods] if isinstance(methods, str) else list(methods)  # type: ignore[list-item]
    bad = [m for m in methods if m not in _METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {_METHODS}, got {methods!r}.")
    if isinstance(n_masks, bool) or not isinstance(n_masks, int | np.integer) or n_masks < 1:
        raise ValueError(f"n_masks must be a positive integer, got {n_masks!r}.")
    fracs = check_mask_fractions(mask_frac)
    seed = resolve_seed(seed)
    rows, rows_how = _eval_rows(adata, split_key, eval_value, slides, library_key)
    eval_idx = np.flatnonzero(rows)
    slide_names = (
        adata.obs[library_key].astype(str).to_numpy()
        if library_key is not None and library_key in adata.obs
        else np.full(adata.n_obs, "slide", dtype=object)
    )
    slide_labels(adata, library_key)
    eval_slides = sorted(set(slide_names[eval_idx].tolist()))

    if "spackle" in methods:
        if model is None:
            kw = dict(train_kwargs or {})
            ctor = {
                k: kw.pop(k)
                for k in list(kw)
                if k
                in ("n_rings", "geometry", "d_model", "n_heads", "n_layers", "dim_feedforward", "dropout")
            }
            model = SpackleModel(seed=seed, **ctor)
            if split_key is not None and split_key in adata.obs:
                kw.setdefault("split_key", split_key)
            model.train(adata, layer=layer, mask_layer=mask_layer, library_key=library_key, **kw)
        elif not isinstance(model, SpackleModel):
            raise TypeError(f"model must be a SpackleModel, got {type(model).__name__}.")
        model._require_trained()
        overlap = sorted(set(model.train_info_.get("train_slides", [])) & set(eval_slides))
        if overlap and model.adata is adata:
            logger.warning(
                f"evaluate_completion: slides {overlap} were used to train the model; their scores are not "
                "a held-out estimate."
            )
        used_val = sorted(set(model.train_info_.get("val_slides", [])) & set(eval_slides))
        if used_val and model.adata is adata:
            logger.warning(
                f"evaluate_completion: slides {used_val} validated the model (they chose its best "
                f"checkpoint: {model.train_info_.get('split', '')}); their scores are optimistic, not a "
                "held-out estimate. Evaluate on test slides (split_key=..., eval_value='test')."
            )
        layer, mask_layer = model.layer, model.mask_layer
        gene_idx = _gene_index(adata, model.genes)
    else:
        gene_idx = np.arange(adata.n_vars)
    values, observed = _expression_arrays(adata, layer, mask_layer, gene_idx)
    if not observed[eval_idx].any():
        raise ValueError("The evaluated spots have no observed entries to hide.")

    if "spackle" in methods:
        _, _, table, _ = model._arrays(adata)
        slides = model._slides(adata)
    if "median" in methods:
        sub = _median_frame(adata, eval_idx, library_key, values.shape[1])
        nb = _neighbourhoods(sub, median_rings, getattr(model, "geometry", "auto"), library_key)[:2]

    if isinstance(max_values, bool) or not isinstance(max_values, int | np.integer) or max_values < 0:
        raise ValueError(f"max_values must be a non-negative integer, got {max_values!r}.")
    values_frac = min(fracs, key=lambda f: abs(f - 0.3))
    kept_values: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    ev_vals = values[eval_idx]
    ev_obs = observed[eval_idx]
    for fi, f in enumerate(fracs):
        for m in range(int(n_masks)):
            rng = np.random.default_rng([seed, fi, m])
            hidden_ev = hide_entries(ev_obs, f, rng)
            n_hidden = int(hidden_ev.sum())
            if n_hidden == 0:
                logger.warning(f"mask fraction {f}: mask {m} hides no entry; skipped.")
                continue
            for method in methods:
                if method == "spackle":
                    hidden = np.zeros_like(observed)
                    hidden[eval_idx] = hidden_ev
                    pred = model._predict(
                        values,
                        observed,
                        table,
                        slides,
                        eval_idx,
                        hidden=hidden,
                        batch_size=batch_size,
                        device=device,
                    )
                else:
                    pred = _median_predict(
                        sub, nb, ev_vals, ev_obs & ~hidden_ev, median_rings, library_key, device
                    )
                met = completion_metrics(ev_vals, pred, hidden_ev)
                if m == 0 and f == values_frac and max_values > 0:
                    if "entries" not in kept_values:
                        entries = np.argwhere(hidden_ev)
                        if len(entries) > max_values:
                            pick = np.random.default_rng([seed, fi, 2**31 - 1]).choice(
                                len(entries), size=int(max_values), replace=False
                            )
                            entries = entries[np.sort(pick)]
                        kept_values["entries"] = entries
                        kept_values["true"] = ev_vals[entries[:, 0], entries[:, 1]]
                    ent = kept_values["entries"]
                    kept_values[method] = np.asarray(pred)[ent[:, 0], ent[:, 1]]
                records.append(
                    {
                        "method": method,
                        "mask_frac": f,
                        "mask": m,
                        "MSE": met["MSE"],
                        "MAE": met["MAE"],
                        "PCC-gene": met["PCC-gene"],
                        "PCC-spot": met["PCC-spot"],
                        "n_hidden": n_hidden,
                    }
                )
    results = pd.DataFrame.from_records(
        records, columns=["method", "mask_frac", "mask", "MSE", "MAE", "PCC-gene", "PCC-spot", "n_hidden"]
    )
    summary = summarise(results)
    values_df = None
    if "entries" in kept_values:
        ent = kept_values.pop("entries")
        values_df = pd.DataFrame(
            {
                "obs_name": adata.obs_names[eval_idx[ent[:, 0]]].astype(str),
                "gene": adata.var_names[gene_idx[ent[:, 1]]].astype(str),
                **{k: np.asarray(v, dtype=np.float64) for k, v in kept_values.items()},
            }
        )
    if key_added is not None:
        adata.uns[key_added] = {
            "params": {
                "methods": list(methods),
                "layer": layer,
                "mask_layer": mask_layer,
                "library_key": library_key,
                "evaluated": rows_how,
                "eval_slides": eval_slides,
                "n_eval_spots": len(eval_idx),
                "mask_frac": fracs,
                "n_masks": int(n_masks),
                "median_rings": int(median_rings),
                "seed": int(seed),
                "model_train_slides": list(model.train_info_.get("train_slides", []))
                if model is not None
                else None,
            },
            "results": results,
            "summary": summary,
        }
        adata.uns[key_added]["params"]["values_mask_frac"] = float(values_frac)
        if values_df is not None:
            adata.uns[key_added]["values"] = values_df
    for _, r in summary.iterrows():
        logger.info(
            f"evaluate_completion: {r['method']} @ {r['mask_frac']:.0%}: MSE {r['MSE_mean']:.4f}, "
            f"PCC-gene {r['PCC-gene_mean']:.3f}"
        )
    return results


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over masks of each metric, per method and mask fraction.

    Parameters
    ----------
    results
        The per-mask table returned by :func:`evaluate_completion`.

    Returns
    -------
    One row per (method, mask fraction) with ``<metric>_mean`` / ``<metric>_std`` columns and, when both
    methods are present, ``MSE_reduction_vs_median`` on the SpaCKLE rows (1 − MSE ratio).
    """
    metrics = ["MSE", "MAE", "PCC-gene", "PCC-spot"]
    if results.empty:
        return pd.DataFrame(columns=["method", "mask_frac", "n_masks"])
    g = results.groupby(["method", "mask_frac"], sort=False)[metrics]
    mean = g.mean().add_suffix("_mean")
    std = g.std(ddof=0).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["n_masks"] = g.size()
    out = out.reset_index()
    out = out[["method", "mask_frac", "n_masks", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]]
    if {"spackle", "median"} <= set(out["method"]):
        med = out[out["method"] == "median"].set_index("mask_frac")["MSE_mean"]
        red = 1.0 - out["MSE_mean"] / out["mask_frac"].map(med)
        out["MSE_reduction_vs_median"] = np.where(out["method"] == "spackle", red, np.nan)
    return out


def _median_frame(adata: AnnData, rows: np.ndarray, library_key: str | None, n_genes: int) -> AnnData:
    """Small AnnData of the evaluated spots (obs columns needed by the lattice, no X), for the median method."""
    cols = [c for c in (library_key, Key.ARRAY_ROW, Key.ARRAY_COL) if c is not None and c in adata.obs]
    obs = adata.obs.iloc[rows][cols].copy()
    obs.index = obs.index.astype(str)
    return AnnData(obs=obs, var=pd.DataFrame(index=pd.Index([f"g{i}" for i in range(n_genes)])))


def _median_predict(
    frame: AnnData,
    neighbors: tuple[np.ndarray, np.ndarray],
    values: np.ndarray,
    known: np.ndarray,
    n_rings: int,
    library_key: str | None,
    device: str | None,
) -> np.ndarray:
    """Adaptive median completion of ``values`` where ``known`` is False (median of the known entries)."""
    from spared_tools.pp import median_complete

    tmp = AnnData(
        obs=frame.obs,
        var=frame.var,
        layers={"_values": np.where(known, values, 0).astype(np.float32), "_known": known},
    )
    level = logger.level
    if level < logging.WARNING and settings.verbosity < 3:
        logger.setLevel(logging.WARNING)  # one log line per mask would drown the summary
    try:
        median_complete(
            tmp,
            layer="_values",
            key_added="_median",
            mask_layer="_known",
            mask_key_added=None,
            n_rings=n_rings,
            library_key=library_key,
            neighbors=neighbors,
            device=device,
        )
    finally:
        logger.setLevel(level)
    return np.asarray(tmp.layers["_median"])
