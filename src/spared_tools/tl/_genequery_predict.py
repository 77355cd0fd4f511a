"""``sp.tl.genequery_predict``: train (or use) a GeneQuery model and write its predictions into the AnnData."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import (
    check_adata,
    check_new_key,
)

from ._base import to_uns
from ._genequery import GeneQueryModel
from ._genequery_settings import SETTINGS
from ._predictor import split_indices, target_matrix

__all__ = ["genequery_predict"]


def _scalar_metrics(metrics: Any) -> dict[str, Any]:
    """The JSON-friendly scalar part of :func:`evaluate_prediction`'s result (for ``.uns``)."""
    if not isinstance(metrics, Mapping):
        return {}
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool | int | float | str | np.integer | np.floating):
            out[str(k)] = v.item() if isinstance(v, np.generic) else v
        elif isinstance(v, Mapping):
            sub = _scalar_metrics(v)
            if sub:
                out[str(k)] = sub
    return out


def _check_unseen_text(model: GeneQueryModel, untrained: list[str], adata: AnnData) -> None:
    """``KeyError`` when a gene the model did not train on has no text: it would be predicted from a bare symbol."""
    if not untrained or model.gene_embeddings is not None:  # a precomputed table checks its own rows
        return
    from spared_tools.models.text import gene_descriptions

    try:
        gene_descriptions(
            untrained,
            organism=model.organism,
            descriptions=model.descriptions,
            adata=adata,
            on_missing="raise",
        )
    except KeyError as err:
        # "<n> genes have no description in the bundled <organism> table: <genes>"
        what = str(err.args[0]).split(". Pass")[0]
        raise KeyError(
            f"genequery_predict: genes the model did not train on are predicted from their text alone, but {what}. "
            "Pass descriptions={gene: text} to GeneQueryModel, or leave these genes out."
        ) from None


def genequery_predict(
    adata: AnnData,
    *,
    genes: Sequence[str] | str | None = None,
    mode: Literal["spot", "gene"] = "gene",
    model: GeneQueryModel | None = None,
    train: bool = True,
    layer: str | None = Key.LOG,
    train_genes: Sequence[str] | None = None,
    split_key: str | None = Key.SPLIT,
    train_value: str | Sequence[str] = Key.TRAIN,
    val_value: str | Sequence[str] | None = Key.VAL,
    test_value: str | Sequence[str] = Key.TEST,
    key_added: str = Key.GENEQUERY,
    overwrite: bool = True,
    **model_kwargs: Any,
) -> AnnData | None:
    """Predict gene expression maps from the H&E image, training GeneQuery first if needed.

    Parameters
    ----------
    adata
        Spots with image patches (:func:`spared_tools.pp.extract_patches`) or precomputed image features,
        and, to train, log1p expression in ``layer`` and a split column.
    genes
        Genes to predict (default: the training genes). Genes in ``adata.var_names`` go to
        ``adata.layers[key_added]``; any other gene is "unseen" and predicted from its text alone. A gene the
        model did not train on and that has no description (bundled table or the model's ``descriptions``)
        is a ``KeyError``: a bare symbol is no text to predict from.
    mode
        ``"gene"`` (gene-aware, the default: level with spot-aware on the validation sections of
        ``experiments/genequery_selection.py`` over three seeds, ahead of it within a patient;
        ``docs/differences.md``) or ``"spot"`` (spot-aware) GeneQuery; used when a new model is created.
    model
        A trained (or untrained) :class:`GeneQueryModel`; ``None`` creates one from ``model_kwargs``. To keep
        the model, create it yourself: ``model = sp.tl.GeneQueryModel(...)``, then
        ``genequery_predict(adata, model=model)`` trains it in place.
    train
        Train the model on ``adata`` first (required when ``model`` is ``None``).
    layer
        Layer with log1p expression used as training targets and for the test metrics.
    train_genes
        Genes to train on (default: every gene of ``adata``).
    split_key
        ``obs`` column with ``train``/``val``/``test`` values; ``None`` trains on every spot.
    train_value
        Value(s) of ``obs[split_key]`` marking training spots.
    val_value
        Value(s) marking validation spots (best-validation weights are kept).
    test_value
        Value(s) marking test spots; when present, metrics on them are written to ``.uns``.
    key_added
        Name of the output layer and ``.uns`` entry.
    overwrite
        Allow replacing existing ``layers[key_added]`` / ``uns[key_added]``.
    **model_kwargs
        Passed to :class:`GeneQueryModel` (``max_epochs``, ``features_key``, ``gene_embeddings``...).

    Returns
    -------
    The unseen-gene predictions as an AnnData aligned with ``adata``'s spots (``obs``, ``obsm['spatial']``
    and ``uns['spatial']`` copied; ``X`` = log1p predictions of the unseen genes), or ``None`` when every
    requested gene is in ``var_names``.

    Writes to ``adata``:

    ``layers[key_added]``
        float32 log1p predictions aligned with ``var_names``; genes that were not predicted are NaN.
    ``layers[f"{key_added}_std"]``
        When the model is an ensemble (``n_models > 1``, the default 3): the per-spot, per-gene standard
        deviation of the networks' predictions (:meth:`GeneQueryModel.predict_with_std`; of the networks'
        part, ``1 - ridge_blend`` of the prediction, for the trained genes), log1p units,
        NaN where nothing was predicted. ``benchmarks/bench_genequery.py heldout`` measures its Spearman
        correlation with the absolute error on held-out sections.
    ``obsm[f"{key_added}_unseen"]``
        DataFrame (index ``obs_names``, one column per unseen gene), only when unseen genes were requested;
        with an ensemble also ``obsm[f"{key_added}_unseen_std"]`` (and ``layers[f"{key_added}_std"]`` of
        the returned AnnData).
    ``uns[key_added]``
        ``params`` (mode, genes, seed, model hyper-parameters), ``history`` (per-epoch losses, selected
        epoch), ``metrics`` (test-split PCC ALL/HEG/HVG and MSE over every predicted gene in ``var_names``,
        when test spots exist) and the same scores apart for the genes the model trained on
        (``metrics_trained_genes``) and for those it never trained on, predicted from their text alone
        (``metrics_untrained_genes``; each only when such genes were scored); ``seen_genes`` /
        ``unseen_genes`` (predicted genes in / not in ``var_names``) and ``trained_genes`` /
        ``untrained_genes`` (predicted genes the model was / was not trained on, wherever they are).
    """
    if "return_model" in model_kwargs:
        raise TypeError(
            "genequery_predict no longer takes return_model= (it returns only the unseen-gene AnnData): create "
            "the model with `model = sp.tl.GeneQueryModel(...)` and pass it, "
            "`sp.tl.genequery_predict(adata, model=model)`, which trains it in place (or train it first with "
            "`model.train(adata)` and pass `train=False`)."
        )
    check_adata(adata, genes=train)  # predicting needs spots and images only: no genes
    check_new_key(adata.layers, key_added, where="adata.layers", overwrite=overwrite)
    check_new_key(adata.uns, key_added, where="adata.uns", overwrite=overwrite)
    train_kwargs: dict[str, Any] = {}
    if model is None:
        if not train:
            raise ValueError("train=False needs a trained model=; pass model= or train=True.")
        ctor = set(inspect.signature(GeneQueryModel.__init__).parameters) - {"self"}
        model = GeneQueryModel(mode=mode, **{k: v for k, v in model_kwargs.items() if k in ctor})
        fit = set(inspect.signature(GeneQueryModel.train).parameters) & set(SETTINGS)
        train_kwargs = {k: v for k, v in model_kwargs.items() if k in fit}
        model.set_params(**{k: v for k, v in model_kwargs.items() if k not in ctor and k not in fit})
    elif model_kwargs:
        raise TypeError(f"Model options {sorted(model_kwargs)} cannot be combined with model=.")
    elif not isinstance(model, GeneQueryModel):
        raise TypeError(f"model must be a GeneQueryModel, got {type(model).__name__}.")
    if train:
        model.train(
            adata,
            layer=layer,
            genes=train_genes,
            split_key=split_key,
            train_value=train_value,
            val_value=val_value,
            **train_kwargs,
        )
    trained = model._check_trained()
    genes = list(trained) if genes is None else ([genes] if isinstance(genes, str) else list(genes))
    if not genes:
        raise ValueError("genes is empty.")
    if len(set(genes)) != len(genes):
        raise ValueError("genes contains duplicates.")
    _check_unseen_text(model, [g for g in genes if g not in set(trained)], adata)
    std = None
    if len(model.nets_) > 1:  # an ensemble: its spread goes next to the prediction
        pred, std = model.predict_with_std(adata, genes)
    else:
        pred = model.predict(adata, genes)
    trained_set = set(trained)
    var_pos = adata.var_names.get_indexer(genes)
    seen = [g for g, p in zip(genes, var_pos) if p >= 0]
    unseen = [g for g, p in zip(genes, var_pos) if p < 0]
    layer_out = np.full(adata.shape, np.nan, dtype=np.float32)
    sel = var_pos >= 0
    layer_out[:, var_pos[sel]] = pred[:, sel]
    adata.layers[key_added] = layer_out
    skey, ukey = f"{key_added}_std", f"{key_added}_unseen"
    for store, name in ((adata.layers, skey), (adata.obsm, f"{ukey}_std")):
        if name in store:  # a spread left by an earlier run never sits next to this prediction
            del store[name]
    if std is not None:
        std_out = np.full(adata.shape, np.nan, dtype=np.float32)
        std_out[:, var_pos[sel]] = std[:, sel]
        adata.layers[skey] = std_out

    metrics: dict[str, Any] = {}
    split_metrics: dict[str, dict[str, Any]] = {}
    if seen and layer is not None and split_key is not None and split_key in adata.obs.columns:
        test_idx = split_indices(adata, split_key, test_value)
        if test_idx.size:
            from ._evaluate_prediction import evaluate_prediction

            truth = target_matrix(adata[test_idx], seen, layer)
            result = evaluate_prediction(truth, pred[test_idx][:, sel], genes=seen)
            metrics = _scalar_metrics(result)
            if isinstance(result.get("per_gene"), pd.DataFrame):
                metrics["per_gene"] = result["per_gene"]
            # the same scores for the genes the model trained on and, apart, for those it only read as text
            is_trained = np.isin(np.asarray(seen, dtype=object), np.asarray(list(trained), dtype=object))
            for name, keep in (
                ("metrics_trained_genes", is_trained),
                ("metrics_untrained_genes", ~is_trained),
            ):
                if keep.all():
                    split_metrics[name] = {k: v for k, v in metrics.items() if k != "per_gene"}
                elif keep.any():
                    cols = np.flatnonzero(keep)
                    part = evaluate_prediction(
                        truth[:, cols], pred[test_idx][:, sel][:, cols], genes=[seen[i] for i in cols]
                    )
                    split_metrics[name] = _scalar_metrics(part)
    unseen_adata = None
    if unseen:
        df = pd.DataFrame(pred[:, ~sel], index=adata.obs_names.copy(), columns=pd.Index(unseen))
        adata.obsm[ukey] = df
        unseen_adata = AnnData(
            X=pred[:, ~sel].copy(), obs=adata.obs.copy(), var=pd.DataFrame(index=pd.Index(unseen))
        )
        if std is not None:
            adata.obsm[f"{ukey}_std"] = pd.DataFrame(std[:, ~sel], index=df.index, columns=df.columns)
            unseen_adata.layers[skey] = std[:, ~sel].copy()
        if Key.SPATIAL in adata.obsm:
            unseen_adata.obsm[Key.SPATIAL] = np.asarray(adata.obsm[Key.SPATIAL]).copy()
        if Key.SPATIAL in adata.uns:
            unseen_adata.uns[Key.SPATIAL] = adata.uns[Key.SPATIAL]
    elif ukey in adata.obsm and overwrite:
        del adata.obsm[ukey]
    params = {k: v for k, v in {**model._params_for_save(), **model._settings()}.items() if v is not None}
    params.update(
        {
            "model": "GeneQueryModel",
            "trained_here": bool(train),
            "layer": layer,
            "split_key": split_key,
            "n_train_genes": len(trained),
            "inference_precision_used": model.inference_precision_used_,
            "train_params": model.train_params_,
        }
    )
    adata.uns[key_added] = to_uns(
        {
            "params": json.loads(json.dumps(params, default=str)),
            "history": json.loads(json.dumps(model.history_, default=str)),
            "metrics": metrics,
            **split_metrics,
            "seen_genes": list(seen),
            "unseen_genes": list(unseen),
            "trained_genes": [g for g in genes if g in trained_set],
            "untrained_genes": [g for g in genes if g not in trained_set],
        }
    )
    logger.info(
        f"GeneQuery: wrote adata.layers[{key_added!r}] ({len(seen)} genes)"
        + (f" and adata.obsm[{ukey!r}] ({len(unseen)} unseen genes)." if unseen else ".")
    )
    return unseen_adata
