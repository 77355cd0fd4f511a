"""Moran's I per slide on the lattice graph (``sp.pp.moran``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sps
from anndata import AnnData
from scipy import stats

from spared_tools._kernels.moran import (
    analytic_moments,
    moran_from_sums,
    moran_sums_cpu,
    moran_sums_torch,
    restrict_weights,
    weight_moments,
)
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_device
from spared_tools._validation import check_adata, check_genes, check_int, get_matrix, slide_labels

#: ``varm`` key of the per-slide Moran's I table.
MORAN_PER_SLIDE = "moran_I_per_slide"
#: ``uns`` key with the parameters of the last :func:`moran` call.
MORAN_UNS = "moran"


def _slide_codes(
    adata: AnnData, library_key: str | None, slides: Sequence[str] | str | None
) -> tuple[np.ndarray, list[str]]:
    """Slide code per spot (``-1`` for slides left out) and the names of the fitted slides."""
    codes = slide_labels(adata, library_key)
    names = (
        ["all"]
        if library_key is None
        else [str(c) for c in pd.Categorical(adata.obs[library_key]).categories]
    )
    present = np.bincount(codes, minlength=len(names)) > 0
    if not present.all():  # unused categories of the slide column: not slides of this object
        remap = np.cumsum(present) - 1
        codes = remap[codes]
        names = [n for n, p in zip(names, present) if p]
    if slides is None:
        return codes, names
    if library_key is None:
        raise ValueError("slides= needs library_key= to name the slide column.")
    wanted = [slides] if isinstance(slides, str) else [str(s) for s in slides]
    if len(wanted) == 0:
        raise ValueError("slides= is empty; pass at least one slide name (or None for all slides).")
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise KeyError(f"slides {unknown} not found in adata.obs[{library_key!r}]; available: {names}.")
    keep = [names.index(s) for s in dict.fromkeys(wanted)]
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return remap[codes], [names[k] for k in keep]


def _apply_mask(
    adata: AnnData, codes: np.ndarray, names: list[str], mask: np.ndarray | str | None
) -> tuple[np.ndarray, list[str]]:
    """Leave out spots outside ``mask`` (code ``-1``) and drop slides left without spots."""
    if mask is None:
        return codes, names
    if isinstance(mask, str):
        if mask not in adata.obs.columns:
            raise KeyError(f"mask={mask!r} is not a column of adata.obs.")
        values = adata.obs[mask]
        if not pd.api.types.is_bool_dtype(values):
            raise TypeError(f"adata.obs[{mask!r}] must be boolean to be used as mask=, got {values.dtype}.")
        m = values.to_numpy(dtype=bool)
    else:
        arr = np.asarray(mask)
        if arr.dtype != np.bool_ or arr.shape != (adata.n_obs,):
            raise ValueError(
                f"mask must be a boolean array of length n_obs={adata.n_obs} or an obs column name."
            )
        m = arr
    if not m.any():
        raise ValueError("mask selects no spot.")
    codes = np.where(m, codes, -1)
    present = np.bincount(codes[codes >= 0], minlength=len(names)) > 0
    remap = np.where(present, np.cumsum(present) - 1, -1)
    codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
    return codes, [n for n, p in zip(names, present) if p]


def _check_matrix(X) -> None:
    dtype = X.dtype
    if not np.issubdtype(dtype, np.number) or dtype == np.bool_:
        raise TypeError(f"Moran's I needs a numeric matrix, got dtype {dtype}.")


def moran(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes: Sequence[str] | str | None = None,
    library_key: str | None = Key.SLIDE,
    connectivity_key: str = Key.connectivities(Key.GRAPH),
    transformation: bool = True,
    slides: Sequence[str] | str | None = None,
    mask: np.ndarray | str | None = None,
    two_tailed: bool = False,
    corr_method: str | None = "fdr_bh",
    backend: Literal["auto", "numba", "torch"] = "auto",
    device: str | None = None,
    chunk_size: int | None = None,
    inplace: bool = True,
    copy: bool = False,
) -> AnnData | pd.DataFrame | None:
    r"""Moran's I of every gene, per slide on the spatial graph, averaged over slides.

    For each slide ``s`` (only weights between spots of that slide count) and gene, with ``z`` the
    values centred on the slide mean,

    .. math::

        I_s = \\frac{n_s}{S_{0,s}} \\frac{\\sum_{ij} w_{ij} z_i z_j}{\\sum_i z_i^2},

    exactly as :func:`squidpy.gr.spatial_autocorr` (``mode="moran"``) computes it on that slide alone.
    The reported ``moran_I`` is the unweighted mean over the fitted slides (the SpaRED rule); a gene
    constant on a slide has no Moran's I there (NaN) and is averaged over the remaining slides.

    P-values follow squidpy's analytic test (``n_perms=None``, normality assumption): on one slide they
    are squidpy's ``pval_norm``; over several slides the per-slide statistics are independent under the
    null, so the mean has expectation ``mean_s E_s`` and variance ``sum_s Var_s / m^2`` (``m`` slides
    where the gene varies), giving ``z = (mean I - mean E) / sqrt(Var)``. Multiple testing correction
    (default Benjamini–Hochberg) runs over the genes with a finite p-value, like squidpy's
    ``pval_norm_fdr_bh``.

    Parameters
    ----------
    adata
        Annotated data with a spatial graph in ``obsp[connectivity_key]`` (see
        :func:`~spared_tools.pp.spatial_graph`).
    layer
        Layer to use; ``None`` uses ``adata.X``. Dense or sparse, any numeric dtype (accumulated in
        float64). Negative values are allowed (e.g. centred layers); NaN/inf are an error.
    genes
        Genes to score; ``None`` scores all. Other genes get NaN in the outputs.
    library_key
        ``obs`` column identifying slides; ``None`` treats all spots as one slide.
    connectivity_key
        ``obsp`` key of the weight matrix. Weights joining two different slides are ignored (logged).
    transformation
        Row-normalise the weights (each spot's weights sum to 1), as squidpy's default.
    slides
        Names of the slides to fit on (for example the training slides only, for leakage-free gene
        selection); ``None`` uses every slide.
    mask
        Boolean array over spots, or the name of a boolean ``obs`` column: fit only on these spots (for
        example the training spots when a slide mixes splits). Spots outside the mask and their weights are
        left out before row normalisation, as if the data were subset first; slides left without spots are
        dropped. Combines with ``slides``.
    two_tailed
        Two-tailed p-values (squidpy's ``two_tailed``); default one-tailed as squidpy.
    corr_method
        Multiple-testing correction passed to :func:`statsmodels.stats.multitest.multipletests`;
        ``None`` skips it.
    backend
        ``"numba"`` (CPU kernel, gene blocks in parallel), ``"torch"`` (sparse product on ``device``) or
        ``"auto"``: torch when ``device`` resolves to a GPU, else numba.
    device
        Torch device for ``backend="torch"``/``"auto"``; ``None`` uses ``sp.settings.device``.
    chunk_size
        Genes moved to the device (torch) or copied from a non-contiguous dense matrix (numba) at a
        time; ``None`` picks 1024 (torch) or 512 (numba). The numba backend reads a sparse matrix in
        place, from its stored entries only (no densified copy).
    inplace
        Write the results into ``adata``; ``False`` returns them as a DataFrame instead.
    copy
        Return a modified copy of ``adata``.

    Returns
    -------
    ``None``, the modified copy (``copy=True``), or (``inplace=False``) a DataFrame indexed by gene with
    ``I``, ``pval_norm``, ``var_norm``, ``pval_norm_<corr_method>``, ``n_slides`` and one ``I_<slide>``
    column per fitted slide. In place it writes:

    ``adata.var["moran_I"]``
        Mean Moran's I over the fitted slides (NaN for genes not scored or constant everywhere).
    ``adata.var["moran_pval_norm"]``
        Analytic p-value of the mean.
    ``adata.var["moran_pval_norm_fdr_bh"]``
        Corrected p-value (column named after ``corr_method``).
    ``adata.varm["moran_I_per_slide"]``
        DataFrame, one column per fitted slide, NaN where the gene is constant on the slide.
    ``adata.uns["moran"]``
        ``params`` (every argument, the backend and device used), ``n_constant_per_slide``
        and ``n_cross_slide_weights``.

    Raises
    ------
    KeyError
        Unknown layer, genes, slides, slide column or missing graph.
    ValueError
        NaN/inf values, a graph of the wrong shape, or a fitted slide with fewer than two spots or no
        weights inside it (exclude it with ``slides=``).
    TypeError
        Non-numeric matrix.
    """
    check_adata(adata)
    if copy and not inplace:
        raise ValueError("copy=True and inplace=False are exclusive: choose one.")
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}.")
    check_int(chunk_size, "chunk_size", allow_none=True)
    if connectivity_key not in adata.obsp:
        raise KeyError(
            f"adata.obsp has no spatial graph {connectivity_key!r}; build one with "
            f"sp.pp.spatial_graph(adata) or pass connectivity_key=. Available: {list(adata.obsp.keys())}."
        )
    W = adata.obsp[connectivity_key]
    if W.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"adata.obsp[{connectivity_key!r}] has shape {W.shape}, expected n_obs x n_obs.")
    Wdata = W.data if sps.issparse(W) else np.asarray(W)
    if not np.isfinite(Wdata).all():
        raise ValueError(f"adata.obsp[{connectivity_key!r}] contains NaN or infinite weights.")
    X = get_matrix(adata, layer)
    _check_matrix(X)
    if genes is None:
        cols = np.arange(adata.n_vars)
    else:
        gl = check_genes(adata, genes)
        if not adata.var_names.is_unique:
            raise ValueError(
                "adata.var_names must be unique to select genes by name; see var_names_make_unique()."
            )
        cols = np.unique(adata.var_names.get_indexer(gl))
    codes, names = _slide_codes(adata, library_key, slides)
    codes, names = _apply_mask(adata, codes, names, mask)
    n_slides = len(names)

    Wr, n_cross = restrict_weights(W, codes, row_normalise=transformation)
    if n_cross:
        logger.warning(
            f"moran: {n_cross} weight(s) of obsp[{connectivity_key!r}] join two different slides and are "
            "ignored (Moran's I is computed per slide)."
        )
    moments = weight_moments(Wr, codes, n_slides)
    bad = np.flatnonzero((moments["n"] < 2) | (moments["S0"] <= 0))
    if bad.size:
        detail = ", ".join(f"{names[b]!r} ({int(moments['n'][b])} spot(s))" for b in bad[:10])
        raise ValueError(
            f"Moran's I is undefined on slide(s) {detail}: a slide needs at least two spots joined by the "
            "graph. Exclude such slides with slides=."
        )

    dev = resolve_device(device) if backend != "numba" else None
    use_torch = backend == "torch" or (backend == "auto" and dev is not None and dev.type != "cpu")
    if use_torch:
        means, num, den = moran_sums_torch(
            Wr, codes, n_slides, X, cols, device=dev, chunk=int(chunk_size or 1024)
        )
    else:
        means, num, den = moran_sums_cpu(Wr, codes, n_slides, X, cols, chunk=int(chunk_size or 512))
    nonfinite = ~(np.isfinite(num) & np.isfinite(den)).all(axis=0)
    if nonfinite.any():
        show = list(adata.var_names[cols[nonfinite]][:5])
        raise ValueError(
            f"{'adata.X' if layer is None else f'layer {layer!r}'} contains NaN or infinite values in "
            f"{int(nonfinite.sum())} gene(s) (e.g. {show}) on the fitted slides."
        )
    I_s, constant = moran_from_sums(num, den, means, moments)  # (S, G)
    expected, variance = analytic_moments(moments)

    valid = ~constant
    m = valid.sum(axis=0)
    has = m > 0
    I_mean = np.full(cols.size, np.nan)
    I_mean[has] = np.where(valid, I_s, 0.0).sum(axis=0)[has] / m[has]
    e_mean = np.full(cols.size, np.nan)
    v_mean = np.full(cols.size, np.nan)
    e_mean[has] = (valid * expected[:, None]).sum(axis=0)[has] / m[has]
    v_mean[has] = (valid * variance[:, None]).sum(axis=0)[has] / m[has] ** 2
    pval = np.full(cols.size, np.nan)
    z = (I_mean[has] - e_mean[has]) / np.sqrt(v_mean[has])
    pval[has] = stats.norm.sf(np.abs(z)) * (2.0 if two_tailed else 1.0)
    padj = None
    if corr_method is not None:
        from statsmodels.stats.multitest import multipletests

        padj = np.full(cols.size, np.nan)
        ok = np.isfinite(pval)
        if ok.any():
            padj[ok] = multipletests(pval[ok], alpha=0.05, method=corr_method)[1]

    n_const = constant.sum(axis=1)
    if constant.any():
        logger.info(
            f"moran: {int((constant.any(axis=0) & has).sum())} gene(s) are constant on some fitted slide(s) "
            f"(NaN there, averaged over the others); {int((~has).sum())} gene(s) are constant on every "
            f"slide (NaN). Constant genes per slide: {dict(zip(names, n_const.tolist()))}."
        )

    gene_names = adata.var_names[cols]
    if not inplace:
        out = pd.DataFrame(
            {"I": I_mean, "pval_norm": pval, "var_norm": v_mean, "n_slides": m.astype(np.int64)},
            index=gene_names,
        )
        if padj is not None:
            out.insert(3, f"pval_norm_{corr_method}", padj)
        for k, name in enumerate(names):
            out[f"I_{name}"] = I_s[k]
        return out

    if copy:
        adata = adata.copy()

    def full(values: np.ndarray) -> np.ndarray:
        arr = np.full(adata.n_vars, np.nan)
        arr[cols] = values
        return arr

    fdr_key = Key.MORAN_FDR if corr_method == "fdr_bh" else f"{Key.MORAN_PVAL}_{corr_method}"
    written = [Key.MORAN_I, Key.MORAN_PVAL] + ([fdr_key] if padj is not None else [])
    existing = [k for k in written if k in adata.var.columns] + (
        [f"varm[{MORAN_PER_SLIDE!r}]"] if MORAN_PER_SLIDE in adata.varm else []
    )
    if existing:
        logger.info(f"moran: overwriting {existing}.")
    adata.var[Key.MORAN_I] = full(I_mean)
    adata.var[Key.MORAN_PVAL] = full(pval)
    if padj is not None:
        adata.var[fdr_key] = full(padj)
    per_slide = np.full((adata.n_vars, n_slides), np.nan)
    per_slide[cols] = I_s.T
    adata.varm[MORAN_PER_SLIDE] = pd.DataFrame(per_slide, index=adata.var_names, columns=names)
    adata.uns[MORAN_UNS] = {
        "params": {
            "layer": "X" if layer is None else layer,
            "n_genes": int(cols.size),
            "library_key": "" if library_key is None else library_key,
            "connectivity_key": connectivity_key,
            "transformation": bool(transformation),
            "slides": list(names),
            "mask": "" if mask is None else (mask if isinstance(mask, str) else "array"),
            "n_spots_fitted": int((codes >= 0).sum()),
            "two_tailed": bool(two_tailed),
            "corr_method": "" if corr_method is None else corr_method,
            "backend": "torch" if use_torch else "numba",
            "device": str(dev) if use_torch else "cpu",
        },
        "n_constant_per_slide": dict(zip(names, [int(v) for v in n_const])),
        "n_cross_slide_weights": int(n_cross),
    }
    return adata if copy else None
