"""Expression deltas: each gene minus its mean over the training spots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata, get_matrix, input_layer
from spared_tools.pp._filter import resolve_fit_mask


def deltas(
    adata: AnnData,
    *,
    layer: str | None = Key.COMBAT,
    key_added: str = Key.DELTAS,
    mean_key_added: str = Key.TRAIN_MEAN,
    fit_obs: Sequence[bool] | np.ndarray | pd.Series | None = None,
    split_key: str | None = None,
    train_value: Any = Key.TRAIN,
    copy: bool = False,
) -> AnnData | None:
    """Subtract from every gene its mean over the training spots (SpaRED's "deltas").

    ``deltas[i, j] = x[i, j] - mean_{train} x[:, j]`` for **every** spot ``i``; the mean uses only the
    training spots (``fit_obs=`` or ``split_key=``/``train_value=``), or all spots when no split is given.
    Predictions made on the delta scale are brought back with ``+ adata.var[mean_key_added]``.

    Parameters
    ----------
    adata
        Annotated data.
    layer
        Input layer (default ``"combat"``); ``None`` uses ``adata.X``. Must be finite.
    key_added
        Output layer (dense, floating dtype of the input, at least float32).
    mean_key_added
        ``adata.var`` column that receives the training means.
    fit_obs
        Boolean mask of the training spots.
    split_key
        ``adata.obs`` column with the split; spots whose value is ``train_value`` are the training spots.
    train_value
        Training label(s) in ``adata.obs[split_key]``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); writes ``adata.layers[key_added]``,
    ``adata.var[mean_key_added]`` and ``adata.uns["deltas"]["params"]`` (layer, keys, number of fit spots).
    """
    check_adata(adata)
    X = input_layer(adata, layer, key_added=key_added, allow_negative=True)
    fit = resolve_fit_mask(adata, fit_obs, split_key, train_value)
    if copy:
        adata = adata.copy()
        X = get_matrix(adata, layer)
    dtype = np.result_type(X.dtype, np.float32)
    rows = slice(None) if fit is None else np.flatnonzero(fit)
    mean = np.asarray(X[rows].mean(axis=0, dtype=np.float64), dtype=np.float64).ravel()
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    adata.layers[key_added] = (dense - mean[None, :]).astype(dtype, copy=False)
    adata.var[mean_key_added] = mean
    n_fit = adata.n_obs if fit is None else int(fit.sum())
    adata.uns["deltas"] = {
        "params": {
            "layer": layer,
            "key_added": key_added,
            "mean_key_added": mean_key_added,
            "fit_on": "all spots"
            if fit is None
            else ("fit_obs" if fit_obs is not None else f"{split_key}=={train_value!r}"),
            "n_fit_obs": n_fit,
        }
    }
    logger.info("deltas: layers[%r] = layers[%r] - mean over %d training spots.", key_added, layer, n_fit)
    return adata if copy else None
