"""The whole SpaRED preprocessing pipeline as one call, with every intermediate kept."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import (
    check_adata,
    check_array_coords,
    check_finite_nonnegative,
    check_obs_key,
    check_unique_var_names,
    get_matrix,
)
from spared_tools.pp._combat import combat as _combat
from spared_tools.pp._deltas import deltas as _deltas
from spared_tools.pp._filter import filter_spared, resolve_fit_mask
from spared_tools.pp._log import log1p as _log1p
from spared_tools.pp._median import median_complete
from spared_tools.pp._tpm import _check_organism
from spared_tools.pp._tpm import tpm_working_copy as _tpm


def check_counts(X, *, what: str, layer: str | None, layers: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``X`` holds integer counts (log-transformed or normalised data fails).

    Parameters
    ----------
    X
        The matrix the pipeline would treat as raw counts (dense or sparse).
    what
        How to name it in the message (``"adata.X"``).
    layer
        The layer it came from (``None``: ``X``).
    layers
        The layers ``adata`` has, to suggest one holding counts.
    """
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(data.dtype, np.floating) or not data.size:
        return
    flat = data.ravel()
    frac = np.flatnonzero(flat != np.floor(flat))
    if not frac.size:
        return
    example = float(flat[frac[0]])
    hint = f" (a log-transformed or normalised matrix: max {float(flat.max()):.3g})"
    candidates = [k for k in layers if k in (Key.COUNTS, "raw", "raw_counts") and k != layer]
    fix = (
        f"pass layer={candidates[0]!r}"
        if candidates
        else "pass layer= naming a layer with the raw counts (or put them in X)"
    )
    raise ValueError(
        f"spared_pipeline needs raw integer counts, but {what} holds {frac.size} non-integer values, e.g. "
        f"{example:.4g}{hint}; {fix}."
    )


def _geometry(hex_geometry: bool | None, geometry: str | None) -> Any:
    if geometry is not None:
        return geometry
    if hex_geometry is None:
        return "auto"
    return "hex" if hex_geometry else "square"


@d.inject
def spared_pipeline(
    adata: AnnData,
    *,
    organism: Literal["human", "mouse"],
    layer: str | None = None,
    split_key: str | None = None,
    train_value: Any = Key.TRAIN,
    library_key: str | None = Key.SLIDE,
    hex_geometry: bool | None = None,
    geometry: Literal["auto", "hex", "square", "checkerboard"] | None = None,
    cell_min_counts: float = 10,
    cell_max_counts: float = 1e6,
    gene_min_counts: float = 10,
    gene_max_counts: float = 1e6,
    real_data_percentage: float = 0.7,
    top_moran_genes: int | None = None,
    combat_key: str | Literal[True] | None = True,
    wildcard_genes: Sequence[str] | None = None,
    missing_lengths: Literal["drop", "keep", "raise"] = "drop",
    gene_id_key: str | None = None,
    n_rings: int = 4,
    device: str | None = None,
) -> AnnData:
    """Run SpaRED's preprocessing with its published defaults and return a new, processed AnnData.

    Steps (each one is also available as its own function):

    1. :func:`~spared_tools.pp.filter_spared` — spot/gene count thresholds and the expression-fraction
       rule. **Spots and genes are removed here** (that is the purpose of this step); spots left with no
       counts are removed too. Slides must keep at least two spots.
    2. :func:`~spared_tools.pp.tpm` with the bundled gene lengths (genes without a length per
       ``missing_lengths``).
    3. :func:`~spared_tools.pp.log1p` (log2(TPM + 1)).
    4. :func:`~spared_tools.pp.median_complete` — adaptive median completion of the zero entries, on
       every gene kept by step 1 (as SpaRED, before Moran's I).
    5. :func:`~spared_tools.pp.spatial_graph` + :func:`~spared_tools.pp.moran` on the completed layer,
       averaged over slides, and selection of the ``top_moran_genes`` genes with the highest Moran's I
       (``wildcard_genes`` replaces the selection). The result is subset to the selected genes.
    6. :func:`~spared_tools.pp.combat` on the completed layer with batches ``combat_key`` (skipped when
       ``combat_key`` is None or there is a single batch).
    7. :func:`~spared_tools.pp.deltas` — the batch-corrected (or completed) layer minus its training mean.
    8. ``layers["mask"]`` = raw counts > 0, the "real" entries every metric should use.

    Statistics are fitted on the training spots only when ``split_key`` is given: the expression fractions
    and gene-count thresholds (step 1), Moran's I and the gene selection (step 5; on the training slides,
    or on the training spots of a slide when a slide mixes splits) and the deltas' means (step 7). ComBat
    (step 6) is fitted transductively as in SpaRED: each batch is adjusted using its own spots, so a test
    slide is corrected with its own data, but its spots enter the pooled gene mean and variance that all
    batches are mapped to (scanpy's ComBat offers no reference-batch mode). TPM, log and median completion
    are per-spot or per-slide transforms with no fitted parameters.

    Parameters
    ----------
    adata
        Raw counts of one or more slides with integer ``obs['array_row']``/``obs['array_col']`` (as
        written by :func:`scanpy.read_visium`, :func:`squidpy.read.visium`, :func:`spared_tools.io.read_visium`
        or :func:`spared_tools.io.from_spatialdata`) and, for several slides, a slide column
        ``obs[library_key]``. Never modified. The counts must be integers: log-transformed or normalised
        values raise a ``ValueError`` (pass the raw counts with ``layer=``).
    organism
        ``"human"`` or ``"mouse"`` (TPM gene lengths).
    layer
        Layer with raw counts; ``None`` uses ``X``.
    split_key
        ``obs`` column with ``train``/``val``/``test`` labels (see :func:`~spared_tools.pp.split_by`);
        ``None`` fits every statistic on all spots. Missing values (NaN) in it raise a ``ValueError``.
    train_value
        Training label in ``obs[split_key]``.
    library_key
        ``obs`` column identifying slides; ``None``: every spot belongs to one slide (e.g. an AnnData from
        :func:`scanpy.read_visium`).
    hex_geometry
        ``True`` for Visium hexagonal arrays, ``False`` for square legacy-ST grids, ``None`` to detect it.
    geometry
        Explicit lattice geometry (overrides ``hex_geometry``), e.g. ``"checkerboard"`` for ST 2k arrays.
    %(spared_count_thresholds)s
    real_data_percentage
        Expression-fraction rule threshold (see :func:`~spared_tools.pp.filter_spared`).
    top_moran_genes
        Number of genes kept by Moran's I; ``None`` or ``<= 0``: 128 when more than 320 genes survive
        filtering, else 32 (SpaRED's rule).
    combat_key
        ``obs`` column with ComBat batches (e.g. ``"patient"``); ``True`` (default): the slide column
        ``library_key`` (skipped when ``library_key`` is None); ``None`` skips ComBat.
    wildcard_genes
        Explicit list of genes to keep instead of the expression-fraction rule and the Moran selection.
    missing_lengths
        Genes without a known length: ``"drop"``, ``"keep"`` (median length) or ``"raise"``.
    gene_id_key
        ``var`` column with the identifiers used to look up gene lengths (default ``var_names``).
    n_rings
        Largest median-completion window, in lattice rings (SpaRED: 4).
    device
        Device for median completion and Moran's I (``None`` → ``sp.settings.device``; CPU always works).

    Returns
    -------
    A new AnnData with the filtered spots and selected genes:

    ``X``
        Raw counts as given (never transformed).
    ``layers``
        ``counts`` (raw copy), ``tpm``, ``log1p`` (log2(TPM + 1)), ``median`` (completed ``log1p``),
        ``combat`` (when run), ``deltas`` and ``mask`` (bool, counts > 0).
    ``var``
        ``exp_frac``, ``glob_exp_frac``, ``gene_length``, ``moran_I`` and its p-values,
        ``spared_selected`` (True for every returned gene), ``train_mean``.
    ``varm["moran_I_per_slide"]``, ``obsp["spatial_connectivities"]``, ``obsp["spatial_distances"]``
        Moran's I per slide and the lattice graph.
    ``uns["spared"]``
        ``params`` (every argument), ``stats`` (filtering counts), ``timings`` (seconds per step) and
        ``gene_stats`` (DataFrame of every gene that survived filtering: fractions, length, Moran's I,
        whether selected).
    ``uns["spatial"]``, ``uns["spatialdata"]``
        Copied from the input when present (images and scale factors; where a table read with
        :func:`~spared_tools.io.from_spatialdata` came from, so :func:`~spared_tools.io.to_spatialdata` can
        link the results back to the same shapes).
    ``uns["log1p"]``
        ``{"base": 2}``: the base of ``layers["log1p"]``, where scanpy looks for it (so
        :func:`scanpy.tl.rank_genes_groups` with ``layer="log1p"`` reports true log2 fold changes).
    """
    from spared_tools.pp._graph import spatial_graph
    from spared_tools.pp._moran import moran
    from spared_tools.pp._select import select_genes

    if type(adata).__name__ == "SpatialData":
        raise TypeError(
            "spared_pipeline takes an AnnData; for a SpatialData object pass its table as one: "
            "sp.pp.spared_pipeline(sp.io.from_spatialdata(sdata, table='table'), ...), and write the results "
            "back with sp.io.to_spatialdata(processed, sdata)."
        )
    check_adata(adata)
    check_unique_var_names(adata)
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise ValueError(
            f"adata.obs_names has {len(dup)} duplicated spot name(s), e.g. {list(dup[:5])}; results are "
            "matched to spots by name: call adata.obs_names_make_unique() (or sp.io.concat_slides, which "
            "prefixes names that repeat across slides) first."
        )
    organism_name = _check_organism(organism)
    if library_key is not None:
        if library_key not in adata.obs.columns:
            raise KeyError(
                f"adata.obs has no slide column {library_key!r}; pass library_key=None if every spot "
                f"belongs to one slide, or the name of the column that identifies slides; available "
                f"columns: {list(adata.obs.columns)}."
            )
        check_obs_key(adata, library_key, what="slide column")
    check_array_coords(adata)
    X_in = get_matrix(adata, layer)
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite_nonnegative(X_in, what=what)
    check_counts(X_in, what=what, layer=layer, layers=list(adata.layers))
    if combat_key is True:
        combat_key = library_key
    elif combat_key is not None and combat_key not in adata.obs.columns:
        raise KeyError(
            f"combat_key {combat_key!r} is not a column of adata.obs; pass combat_key=None to skip ComBat."
        )
    if split_key is not None:
        resolve_fit_mask(adata, split_key=split_key, train_value=train_value)
    if top_moran_genes is not None and (
        isinstance(top_moran_genes, bool) or not isinstance(top_moran_genes, int)
    ):
        raise TypeError(f"top_moran_genes must be an integer or None, got {top_moran_genes!r}.")
    geom = _geometry(hex_geometry, geometry)
    params = {
        "organism": organism_name,
        "layer": layer,
        "split_key": split_key,
        "train_value": train_value,
        "library_key": library_key,
        "hex_geometry": hex_geometry,
        "geometry": geom,
        "cell_min_counts": float(cell_min_counts),
        "cell_max_counts": float(cell_max_counts),
        "gene_min_counts": float(gene_min_counts),
        "gene_max_counts": float(gene_max_counts),
        "real_data_percentage": float(real_data_percentage),
        "top_moran_genes": top_moran_genes,
        "combat_key": combat_key,
        "wildcard_genes": None if wildcard_genes is None else list(wildcard_genes),
        "missing_lengths": missing_lengths,
        "gene_id_key": gene_id_key,
        "n_rings": int(n_rings),
        "device": device,
    }
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # A working object that shares nothing mutable with the input: raw counts, obs, var, coordinates.
    t0 = time.perf_counter()
    dense_in = None if sp.issparse(X_in) else np.asarray(X_in)
    if dense_in is not None and dense_in.dtype == np.float16:  # scipy.sparse has no float16
        dense_in = dense_in.astype(np.float32)
    counts = X_in.copy() if dense_in is None else sp.csr_matrix(dense_in)
    counts = sp.csr_matrix(counts)
    out = AnnData(
        X=counts,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        obsm={k: np.array(v, copy=True) for k, v in adata.obsm.items() if isinstance(v, np.ndarray)},
        # images/scale factors, and where a SpatialData table came from (io.to_spatialdata links back)
        uns={k: v for k, v in adata.uns.items() if k in (Key.SPATIAL, "spatialdata")},
    )
    if out.uns:
        import copy as _copy

        out.uns = _copy.deepcopy(out.uns)
    if library_key is not None:
        out.obs[library_key] = pd.Categorical(out.obs[library_key].astype(str))

    # 1. filter
    filter_spared(
        out,
        cell_min_counts=cell_min_counts,
        cell_max_counts=cell_max_counts,
        gene_min_counts=gene_min_counts,
        gene_max_counts=gene_max_counts,
        real_data_percentage=real_data_percentage,
        wildcard_genes=wildcard_genes,
        library_key=library_key,
        split_key=split_key,
        train_value=train_value,
    )
    if library_key is None:
        if out.n_obs < 2:
            raise ValueError(
                "Fewer than two spots are left after filtering; spatial statistics need at least two spots."
            )
    else:
        sizes = out.obs[library_key].value_counts()
        tiny = sizes[sizes < 2]
        if tiny.size:
            raise ValueError(
                f"Slide(s) {list(tiny.index.astype(str))} keep fewer than two spots after filtering; spatial "
                f"statistics need at least two spots per slide. Remove them from the input (adata.obs[{library_key!r}])."
            )
        out.obs[library_key] = out.obs[library_key].cat.remove_unused_categories()
    timings["filter"] = time.perf_counter() - t0

    # 2-3. TPM and log2(TPM + 1)
    t0 = time.perf_counter()
    _tpm(out, organism=organism_name, missing=missing_lengths, gene_id_key=gene_id_key)
    _log1p(out, base=2, layer=Key.TPM, key_added=Key.LOG)
    timings["tpm_log1p"] = time.perf_counter() - t0

    # 4. median completion (all filtered genes)
    t0 = time.perf_counter()
    out.layers[Key.MASK] = sp.csr_matrix(out.X > 0)
    median_complete(
        out,
        layer=Key.LOG,
        key_added=Key.MEDIAN,
        mask_key_added=None,
        n_rings=n_rings,
        geometry=geom,
        library_key=library_key,
        device=device,
    )
    timings["median"] = time.perf_counter() - t0

    # 5. graph, Moran's I (training data only), selection
    t0 = time.perf_counter()
    spatial_graph(out, geometry=geom, library_key=library_key)
    fit = resolve_fit_mask(out, split_key=split_key, train_value=train_value)
    if fit is None or fit.all():
        moran(out, layer=Key.MEDIAN, library_key=library_key, device=device)
        moran_on = "all spots"
    else:
        slide = (
            np.zeros(out.n_obs, dtype=str)
            if library_key is None
            else out.obs[library_key].astype(str).to_numpy()
        )
        mixed = sorted(set(slide[fit]) & set(slide[~fit]))
        train_slides = sorted(set(slide[fit]))
        if not mixed and library_key is not None:
            moran(out, layer=Key.MEDIAN, library_key=library_key, slides=train_slides, device=device)
            moran_on = f"training slides {train_slides}"
        else:
            logger.info(
                "spared_pipeline: %s mix splits; Moran's I uses their training spots only.",
                "the slide's spots" if library_key is None else f"slides {mixed}",
            )
            keys = [Key.ARRAY_ROW, Key.ARRAY_COL] + ([] if library_key is None else [library_key])
            sub = AnnData(
                X=np.asarray(out.layers[Key.MEDIAN][fit]),
                obs=out.obs.loc[fit, keys].copy(),
                var=pd.DataFrame(index=out.var_names),
            )
            if library_key is not None:
                sub.obs[library_key] = sub.obs[library_key].cat.remove_unused_categories()
            spatial_graph(sub, geometry=geom, library_key=library_key)
            moran(sub, layer=None, library_key=library_key, device=device)
            for col in sub.var.columns:
                out.var[col] = sub.var[col].to_numpy()
            out.varm["moran_I_per_slide"] = sub.varm["moran_I_per_slide"]
            out.uns["moran"] = sub.uns["moran"]
            moran_on = "training spots"
    if wildcard_genes is not None:
        selected = np.ones(out.n_vars, dtype=bool)
    else:
        selected = np.asarray(select_genes(out, n_top=top_moran_genes, inplace=False), dtype=bool)
    n_keep = int(selected.sum())
    out.var[Key.SELECTED] = selected
    gene_stats = out.var.copy()
    out._inplace_subset_var(np.flatnonzero(selected))
    out.var[Key.SELECTED] = True
    timings["moran_select"] = time.perf_counter() - t0

    # 6. ComBat
    t0 = time.perf_counter()
    combat_done = False
    if combat_key is not None:
        n_batches = out.obs[combat_key].nunique()
        if n_batches >= 2:
            _combat(out, key=combat_key, layer=Key.MEDIAN, key_added=Key.COMBAT)
            out.layers[Key.COMBAT] = out.layers[Key.COMBAT].astype(np.float32)
            combat_done = True
        else:
            logger.info("spared_pipeline: a single %r batch; ComBat skipped.", combat_key)
    timings["combat"] = time.perf_counter() - t0

    # 7. deltas, 8. mask (already stored as counts > 0), counts copy
    t0 = time.perf_counter()
    _deltas(
        out,
        layer=Key.COMBAT if combat_done else Key.MEDIAN,
        key_added=Key.DELTAS,
        split_key=split_key,
        train_value=train_value,
    )
    out.layers[Key.MASK] = np.asarray(out.layers[Key.MASK].toarray(), dtype=bool)
    out.layers[Key.COUNTS] = out.X.copy()
    timings["deltas"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all

    stats = dict(out.uns["filter_spared"]["stats"])
    stats.update(
        {
            "n_genes_without_length": len(out.uns["tpm"]["genes_without_length"]),
            "n_genes_selected": int(n_keep),
            "moran_fitted_on": moran_on,
            "combat": "done" if combat_done else "skipped",
        }
    )
    gene_stats = gene_stats.drop(
        columns=[
            c
            for c in gene_stats.columns
            if c not in adata.var.columns
            and c
            not in (
                Key.EXP_FRAC,
                Key.GLOB_EXP_FRAC,
                Key.GENE_LENGTH,
                Key.MORAN_I,
                Key.MORAN_PVAL,
                Key.MORAN_FDR,
                Key.SELECTED,
            )
        ]
    )
    # scanpy reads the log base of log-transformed data from uns["log1p"]["base"] (rank_genes_groups'
    # fold changes, highly_variable_genes); layers["log1p"] is log2(TPM + 1).
    out.uns["log1p"] = {"base": 2}
    out.uns[Key.PIPELINE] = {
        "params": params,
        "stats": stats,
        "timings": timings,
        "gene_stats": gene_stats,
        "genes_without_length": list(out.uns["tpm"]["genes_without_length"]),
    }
    logger.info(
        "spared_pipeline: %d spots x %d genes (from %d x %d) in %.1f s.",
        out.n_obs,
        out.n_vars,
        adata.n_obs,
        adata.n_vars,
        timings["total"],
    )
    return out
