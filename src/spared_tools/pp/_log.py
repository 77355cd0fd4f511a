"""Logarithm ``log_base(x + 1)`` of one layer into another, without copying the AnnData."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata, check_finite_nonnegative, get_matrix


def log1p(
    adata: AnnData,
    *,
    base: float | None = 2,
    layer: str | None = Key.TPM,
    key_added: str = Key.LOG,
    dtype: np.dtype | type | None = np.float32,
    copy: bool = False,
) -> AnnData | None:
    r"""Write :math:`\log_{base}(x + 1)` of a layer to a new layer (SpaRED: :math:`\log_2(\mathrm{TPM} + 1)`).

    Only the input matrix is read and one new matrix is written: the AnnData itself is not copied
    (unlike SpaRED, which copies the whole object through ``scanpy.pp.log1p(copy=True)``). Sparse input
    stays sparse (``log(0 + 1) = 0``). The values equal ``scanpy.pp.log1p(..., base=base)``.

    Parameters
    ----------
    adata
        Annotated data.
    base
        Base of the logarithm; ``None`` for the natural logarithm.
    layer
        Input layer (default ``"tpm"``); ``None`` uses ``adata.X``. Must be finite and non-negative.
    key_added
        Output layer (must differ from ``layer``; use :func:`scanpy.pp.log1p` for in-place transforms).
    dtype
        Floating dtype of the output; ``None`` keeps the input's floating dtype (float64 for integers).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); writes ``adata.layers[key_added]``,
    ``adata.uns["log1p_layer"]["params"]`` (``base``, ``layer``, ``key_added``) and, when absent,
    ``adata.uns["log1p"] = {"base": base}``, where scanpy looks for the base of log-transformed data (so
    :func:`scanpy.tl.rank_genes_groups` with ``layer=key_added`` reports log2 fold changes correctly); an
    existing ``uns["log1p"]`` with another base is left alone and a warning says so.
    """
    check_adata(adata)
    if base is not None:
        if isinstance(base, bool) or not isinstance(base, int | float | np.integer | np.floating):
            raise TypeError(f"base must be a number or None, got {type(base).__name__}.")
        if not np.isfinite(base) or base <= 0 or base == 1:
            raise ValueError(f"base must be positive and different from 1, got {base!r}.")
    if key_added == layer:
        raise ValueError(f"key_added={key_added!r} equals the input layer; choose a new layer name.")
    X = get_matrix(adata, layer)
    check_finite_nonnegative(X, what="adata.X" if layer is None else f"adata.layers[{layer!r}]")
    if copy:
        adata = adata.copy()
        X = get_matrix(adata, layer)
    if dtype is None:
        src = X.dtype
        dtype = src if np.issubdtype(src, np.floating) else np.float64
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}.")
    div = 1.0 if base is None else float(np.log(base))
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=dtype, copy=True)
        np.log1p(out.data, out=out.data)
        if base is not None:
            out.data /= np.asarray(div, dtype=out.dtype)
    else:
        out = np.log1p(np.asarray(X, dtype=dtype))
        if base is not None:
            out /= np.asarray(div, dtype=out.dtype)
    adata.layers[key_added] = out
    adata.uns["log1p_layer"] = {"params": {"base": base, "layer": layer, "key_added": key_added}}
    declared = adata.uns.get("log1p")
    if declared is None:
        # scanpy reads the base of log data from uns["log1p"]["base"] (rank_genes_groups' fold changes)
        adata.uns["log1p"] = {"base": base}
    elif not isinstance(declared, dict) or declared.get("base") != base:
        logger.warning(
            "log1p: adata.uns['log1p'] already declares base %r (scanpy uses it for every log layer); "
            "layers[%r] has base %r: pass layer=/set uns['log1p'] accordingly before scanpy fold changes.",
            declared.get("base") if isinstance(declared, dict) else declared,
            key_added,
            base,
        )
    logger.info(
        "log1p: layers[%r] = log%s(x + 1) of %s.", key_added, "" if base is None else base, layer or "X"
    )
    return adata if copy else None
