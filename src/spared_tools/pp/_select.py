"""SpaRED gene selection by Moran's I (``sp.pp.select_genes``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata, check_genes


def default_n_top(n_genes: int) -> int:
    """SpaRED's default number of genes: 128 when more than 320 genes are available, else 32."""
    return 128 if n_genes > 320 else 32


def select_genes(
    adata: AnnData,
    *,
    n_top: int | None = None,
    wildcard_genes: Sequence[str] | None = None,
    score_key: str = Key.MORAN_I,
    key_added: str = Key.SELECTED,
    subset: bool = False,
    inplace: bool = True,
    copy: bool = False,
) -> AnnData | pd.Series | None:
    """Keep the genes with the highest Moran's I (the SpaRED rule) or an explicit gene list.

    Genes are ranked by ``adata.var[score_key]`` (written by :func:`~spared_tools.pp.moran`) in
    decreasing order; ties keep the order of ``var_names`` and genes with a NaN score are never selected.

    Parameters
    ----------
    adata
        Annotated data with ``var[score_key]``.
    n_top
        Number of genes to keep. ``None`` or ``<= 0`` applies SpaRED's rule: 128 when ``adata`` has more
        than 320 genes, else 32. If fewer genes have a score, all of them are kept (logged).
    wildcard_genes
        Explicit genes to keep instead of the ranking (SpaRED's ``wildcard_genes``); ``n_top`` and the
        score are then ignored.
    score_key
        ``var`` column to rank by.
    key_added
        ``var`` column receiving the boolean selection; its parameters go to ``uns[key_added]``.
    subset
        Also drop the unselected genes from ``adata`` (gene order is kept). Observations are untouched.
    inplace
        Write into ``adata``; ``False`` returns the selection instead and leaves ``adata`` untouched.
    copy
        Return a modified copy of ``adata``.

    Returns
    -------
    ``None``, the modified copy (``copy=True``), or (``inplace=False``) a boolean :class:`~pandas.Series`
    indexed by ``var_names``. In place it writes:

    ``adata.var[key_added]``
        ``True`` for selected genes.
    ``adata.uns[key_added]``
        ``params`` (``n_top`` requested and used, ``score_key``, ``wildcard``, ``subset``) and ``genes``:
        the selected genes by decreasing score (or in the order given as wildcard genes).

    Raises
    ------
    KeyError
        If ``var[score_key]`` is missing (run :func:`~spared_tools.pp.moran` first) or a wildcard gene is
        unknown.
    ValueError
        For a bad ``n_top``, an empty wildcard list, or incompatible ``copy``/``inplace``/``subset``.
    TypeError
        If ``var[score_key]`` is not numeric.
    """
    check_adata(adata)
    if copy and not inplace:
        raise ValueError("copy=True and inplace=False are exclusive: choose one.")
    if subset and not inplace:
        raise ValueError(
            "subset=True needs inplace=True (or copy=True); inplace=False only returns the mask."
        )
    if n_top is not None and (isinstance(n_top, bool) or not isinstance(n_top, int | np.integer)):
        raise ValueError(f"n_top must be an integer or None, got {n_top!r}.")

    if wildcard_genes is not None:
        genes = list(dict.fromkeys(check_genes(adata, wildcard_genes, what="wildcard genes")))
        if not genes:
            raise ValueError("wildcard_genes is empty; pass None to select by score.")
        mask = adata.var_names.isin(genes)
        ordered = genes
        used = len(genes)
        logger.info(f"select_genes: keeping {used} wildcard gene(s); the score is not used.")
    else:
        if score_key not in adata.var.columns:
            raise KeyError(
                f"adata.var has no {score_key!r} column; run sp.pp.moran(adata) first or pass score_key=."
            )
        score_col = adata.var[score_key]
        if not pd.api.types.is_numeric_dtype(score_col) or pd.api.types.is_bool_dtype(score_col):
            raise TypeError(f"adata.var[{score_key!r}] must be numeric, got dtype {score_col.dtype}.")
        score = score_col.to_numpy(dtype=np.float64)
        used = default_n_top(adata.n_vars) if n_top is None or n_top <= 0 else int(n_top)
        finite = np.flatnonzero(np.isfinite(score))
        if finite.size < used:
            logger.warning(
                f"select_genes: {used} genes requested but only {finite.size} have a finite "
                f"{score_key!r}; keeping all {finite.size}."
            )
        order = finite[np.argsort(-score[finite], kind="stable")][:used]
        mask = np.zeros(adata.n_vars, dtype=bool)
        mask[order] = True
        ordered = [str(g) for g in adata.var_names[order]]
        used = len(order)

    selection = pd.Series(mask, index=adata.var_names.copy(), name=key_added)
    if not inplace:
        return selection
    if copy:
        adata = adata.copy()
    if key_added in adata.var.columns:
        logger.info(f"select_genes: overwriting adata.var[{key_added!r}].")
    adata.var[key_added] = mask
    adata.uns[key_added] = {
        "params": {
            "n_top": -1 if n_top is None else int(n_top),
            "n_selected": int(used),
            "score_key": score_key,
            "wildcard": wildcard_genes is not None,
            "subset": bool(subset),
        },
        "genes": list(ordered),
    }
    if subset:
        logger.info(f"select_genes: keeping {int(mask.sum())} of {adata.n_vars} genes (subset=True).")
        adata._inplace_subset_var(mask)
    return adata if copy else None
