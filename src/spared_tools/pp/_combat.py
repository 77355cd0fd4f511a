"""ComBat batch correction of one layer into another (scanpy's implementation)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata, check_obs_key, input_layer


def combat(
    adata: AnnData,
    *,
    key: str = Key.SLIDE,
    layer: str | None = Key.MEDIAN,
    key_added: str = Key.COMBAT,
    covariates: Sequence[str] | None = None,
    copy: bool = False,
) -> AnnData | None:
    """ComBat (empirical Bayes, parametric priors) batch correction of a layer.

    Runs :func:`scanpy.pp.combat` on ``adata.layers[layer]`` (or ``X``) with batches ``adata.obs[key]``
    and writes the corrected matrix to a **new** layer; ``X`` and the input layer are never modified and
    the AnnData is not copied (a lightweight AnnData holding only the input matrix and the batch columns
    is passed to scanpy). The result equals ``scanpy.pp.combat`` on the same matrix.

    ComBat estimates, per gene, a pooled mean and variance over **all spots given** and a location/scale
    adjustment per batch from that batch's own spots. In a train/test setting where batches are slides or
    patients, a test batch is therefore adjusted with its own data only, but it contributes to the pooled
    mean/variance every batch is mapped to (SpaRED does the same); ComBat as implemented in scanpy has no
    reference-batch mode that would avoid this.

    Parameters
    ----------
    adata
        Annotated data.
    key
        ``adata.obs`` column with the batch of every spot (SpaRED: ``"slide_id"`` or ``"patient"``).
    layer
        Input layer, ideally log-scale (ComBat assumes roughly normal data); ``None`` uses ``adata.X``.
    key_added
        Output layer (dense float64, as scanpy returns it).
    covariates
        ``adata.obs`` columns with biological covariates to preserve (passed to scanpy).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); writes ``adata.layers[key_added]`` and
    ``adata.uns["combat"]["params"]`` (``key``, ``layer``, ``key_added``, ``covariates``, ``n_batches``).
    """
    check_adata(adata)
    X = input_layer(adata, layer, key_added=key_added, allow_negative=True)
    batches = check_obs_key(adata, key, what="batch column")
    covariates = list(covariates) if covariates is not None else []
    for c in covariates:
        check_obs_key(adata, c, what="covariate column")
    sizes = batches.astype(str).value_counts()
    if sizes.size < 2:
        raise ValueError(
            f"adata.obs[{key!r}] has a single batch ({sizes.index[0]!r}); ComBat needs two or more."
        )
    small = sizes[sizes < 2]
    if small.size:
        raise ValueError(
            f"ComBat needs at least 2 spots per batch; adata.obs[{key!r}] has batches with one spot: "
            f"{list(small.index[:10])}."
        )
    if copy:
        adata = adata.copy()
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    obs = pd.DataFrame({k: adata.obs[k].to_numpy() for k in [key, *covariates]}, index=adata.obs_names)
    tmp = AnnData(X=dense, obs=obs, var=pd.DataFrame(index=adata.var_names))
    t0 = time.perf_counter()
    import scanpy as sc

    with warnings.catch_warnings():
        # scanpy divides by a zero within-batch variance for genes constant in a batch; reported below
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        corrected = sc.pp.combat(tmp, key=key, covariates=covariates or None, inplace=False)
    corrected = np.asarray(corrected)
    bad = ~np.isfinite(corrected)
    if bad.any():
        genes = list(adata.var_names[bad.any(axis=0)][:10])
        raise ValueError(
            f"ComBat produced {int(bad.sum())} non-finite values (genes constant in some batch, e.g. {genes}); "
            "remove genes without variance in every batch before ComBat."
        )
    adata.layers[key_added] = corrected
    adata.uns["combat"] = {
        "params": {
            "key": key,
            "layer": layer,
            "key_added": key_added,
            "covariates": covariates,
            "n_batches": int(sizes.size),
        }
    }
    logger.info(
        "combat: corrected layers[%r] over %d batches of %r in %.2f s -> layers[%r]",
        layer,
        sizes.size,
        key,
        time.perf_counter() - t0,
        key_added,
    )
    return adata if copy else None
