"""Combine several slides into one AnnData: :func:`concat_slides`."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata


def _slides_in(adata: AnnData, library_key: str) -> list:
    """The distinct values of ``obs[library_key]`` (empty when the column is absent)."""
    if library_key not in adata.obs.columns:
        return []
    return list(pd.unique(adata.obs[library_key].astype(object)))


def _check_one_slide(adata: AnnData, library_key: str, position: int) -> None:
    """Refuse an input that already holds several slides: naming it would relabel them as one."""
    vals = _slides_in(adata, library_key)
    if len(vals) > 1 or (vals and pd.isna(vals[0])):
        raise ValueError(
            f"Input {position} holds {len(vals)} slides in obs[{library_key!r}] ({[str(v) for v in vals[:5]]}); "
            "concat_slides expects one slide per AnnData and never relabels several slides as one. Split "
            f"it first (e.g. [a[a.obs[{library_key!r}] == s].copy() for s in ...]) or, if it is already "
            "combined, use it as is."
        )


def _slide_id_of(adata: AnnData, library_key: str, position: int) -> str:
    """Infer the slide id of one input from ``obs[library_key]`` or a single ``uns['spatial']`` library."""
    vals = _slides_in(adata, library_key)
    if vals:
        return str(vals[0])
    libs = list(adata.uns.get(Key.SPATIAL, {}) or {})
    if len(libs) == 1:
        return str(libs[0])
    raise ValueError(
        f"Cannot tell the slide id of input {position}: it has no obs[{library_key!r}] column and "
        f"{len(libs)} libraries in uns['spatial']. Pass a dict {{slide_id: adata}} or slide_ids=."
    )


def _same(x, y) -> bool:
    """Deep equality of two ``uns['spatial']`` entries (dicts, arrays, scalars)."""
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        xa, ya = np.asarray(x), np.asarray(y)
        return xa.shape == ya.shape and xa.dtype == ya.dtype and bool(np.array_equal(xa, ya))
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return False


def _merge_spatial(adatas: list[AnnData], slide_ids: list[str], library_key: str) -> dict:
    """Union of the inputs' ``uns['spatial']`` libraries.

    An input whose libraries include its own slide id (or its original ``obs[library_key]`` value) keeps
    only those: a part subset from a multi-slide object still lists every library of the original. The
    same library in several inputs is merged when the entries are identical and refused otherwise.
    """
    spatial: dict = {}
    owner: dict[str, int] = {}
    for i, (a, sid) in enumerate(zip(adatas, slide_ids)):
        libs = dict(a.uns.get(Key.SPATIAL) or {})
        own = {sid, *map(str, _slides_in(a, library_key))}
        if own & set(libs):
            libs = {k: v for k, v in libs.items() if k in own}
        for lib, content in libs.items():
            if lib in spatial:
                if _same(spatial[lib], content):
                    continue
                raise ValueError(
                    f"Library {lib!r} appears in uns['spatial'] of more than one input (inputs {owner[lib]} "
                    f"and {i}) with different content; rename one of them."
                )
            spatial[lib] = copy.deepcopy(content)
            owner[lib] = i
    return spatial


def _first_seen(mat, order: np.ndarray | None, sparse: bool):
    """Columns of ``mat`` in first-seen gene order; canonical CSR (sorted indices) when ``sparse``."""
    if sp.issparse(mat):
        out = sp.csr_matrix(mat[:, order] if order is not None else mat)
        if not out.has_sorted_indices:
            out.sort_indices()
        return out if sparse else out.toarray()
    arr = np.asarray(mat)
    if order is not None:
        arr = arr[:, order]
    return sp.csr_matrix(arr) if sparse else arr


def _merge_var(adatas: list[AnnData], genes: pd.Index) -> pd.DataFrame:
    """Per-gene ``var`` columns: for each gene the value from the first slide that has the gene."""
    var = pd.DataFrame(index=genes)
    columns: list[str] = []
    for a in adatas:
        columns.extend(c for c in a.var.columns if c not in columns)
    for col in columns:
        merged = pd.Series(np.full(len(genes), np.nan, dtype=object), index=genes)
        filled = np.zeros(len(genes), dtype=bool)
        for a in adatas:
            if col not in a.var.columns:
                continue
            pos = genes.get_indexer(a.var_names)
            take = ~filled[pos]
            merged.iloc[pos[take]] = a.var[col].to_numpy(dtype=object)[take]
            filled[pos[take]] = True
        var[col] = merged.infer_objects()
    return var


def concat_slides(
    adatas: Sequence[AnnData] | Mapping[str, AnnData],
    *,
    slide_ids: Sequence[str] | None = None,
    patients: Sequence[str] | Mapping[str, str] | None = None,
    library_key: str = Key.SLIDE,
    patient_key: str = Key.PATIENT,
) -> AnnData:
    """Combine slides into one AnnData with genes aligned on their union (built on :func:`anndata.concat`).

    ``anndata.concat(join="outer", fill_value=0)`` stacks the matrices; around it this function names the
    slides, keeps the input order of spots (slide by slide) and the first-seen order of genes (all genes
    of the first slide, then the new genes of the second, ...), prefixes ``obs_names`` with
    ``"<slide_id>_"`` only when they repeat across slides (logged), keeps only layers and ``obsm`` keys
    that every input has (``anndata.concat`` would fill the missing ones with zeros), merges ``var`` per
    gene and ``uns['spatial']`` per library.

    A gene absent from a slide gets zero counts there, which looks like a dropout: ``varm['measured']``
    (genes x slides, bool) records which slide measured which gene, and a warning gives the counts when
    the gene sets differ.

    Parts subset from one object (``[adata[adata.obs["slide_id"] == s].copy() for s in ...]``) each still
    list every library in ``uns['spatial']``: an input keeps only the libraries named by its slide, and
    a library found in several inputs is merged when identical (refused when different).

    Parameters
    ----------
    adatas
        The slides: a sequence of AnnData (slide ids from ``slide_ids``, else from each one's single
        ``obs[library_key]`` value, else its single ``uns['spatial']`` library) or a mapping
        ``{slide_id: adata}``. Each input holds exactly one slide: an input whose ``obs[library_key]``
        already holds several slides is refused (naming it would relabel them as one slide).
    slide_ids
        Slide ids, one per input (only with a sequence).
    patients
        Optional patient ids, one per input (sequence) or ``{slide_id: patient}``; written to
        ``obs[patient_key]``. When ``None``, an existing ``obs[patient_key]`` column is kept as is.
    library_key
        ``obs`` column that receives the slide id.
    patient_key
        ``obs`` column that receives the patient id.

    Returns
    -------
    AnnData with

    ``X`` and ``layers``
        Row-stacked and aligned on the gene union (zeros filled); sparse CSR when any input is sparse.
        Layers are kept when every input has them.
    ``obs``
        All input columns (outer join, missing values ``NaN``); ``obs[library_key]`` categorical with the
        slides in input order; ``obs[patient_key]`` categorical when patients are known.
    ``var``
        Union of the input columns; per gene the value from the first slide holding the gene.
    ``varm['measured']``
        DataFrame (index ``var_names``, one bool column per slide): True where the slide measured the gene.
    ``obsm``
        Keys present in every input with the same number of columns.
    ``uns['spatial']``
        The union of the inputs' libraries (identical duplicates merged). Other ``uns`` keys, ``obsp``
        (per-slide graphs) and the inputs' ``varm`` are not carried over; their names are logged.
    """
    if isinstance(adatas, Mapping):
        if slide_ids is not None:
            raise ValueError("Pass slide_ids= only with a sequence of AnnData, not with a mapping.")
        slide_ids = [str(k) for k in adatas]
        adatas = list(adatas.values())
    else:
        adatas = list(adatas)
    if not adatas:
        raise ValueError("concat_slides needs at least one AnnData.")
    for i, a in enumerate(adatas):
        check_adata(a, name=f"Input {i}")
        if a.var_names.has_duplicates:
            dup = a.var_names[a.var_names.duplicated()].unique()
            raise ValueError(f"Input {i} has duplicated var_names {list(dup[:5])}; make them unique first.")
        if a.obs_names.has_duplicates:
            raise ValueError(f"Input {i} has duplicated obs_names; make them unique first.")
        _check_one_slide(a, library_key, i)
    if slide_ids is None:
        slide_ids = [_slide_id_of(a, library_key, i) for i, a in enumerate(adatas)]
    slide_ids = [str(s) for s in slide_ids]
    if len(slide_ids) != len(adatas):
        raise ValueError(f"Got {len(slide_ids)} slide_ids for {len(adatas)} AnnData objects.")
    if len(set(slide_ids)) != len(slide_ids):
        dup = sorted({s for s in slide_ids if slide_ids.count(s) > 1})
        raise ValueError(f"Slide ids must be unique across inputs; repeated: {dup}.")
    if patients is not None:
        if isinstance(patients, Mapping):
            missing = [s for s in slide_ids if s not in patients]
            if missing:
                raise KeyError(f"patients has no entry for slides {missing}.")
            patients = [str(patients[s]) for s in slide_ids]
        else:
            patients = [str(p) for p in patients]
            if len(patients) != len(adatas):
                raise ValueError(f"Got {len(patients)} patients for {len(adatas)} AnnData objects.")

    # genes: union in first-seen order; which slide measured which gene
    genes = pd.Index(pd.unique(np.concatenate([a.var_names.to_numpy(dtype=object) for a in adatas])))
    genes = genes.astype(str)
    measured = pd.DataFrame(
        {sid: genes.isin(a.var_names.astype(str)) for a, sid in zip(adatas, slide_ids)}, index=genes
    )
    lacking = {sid: int((~measured[sid]).sum()) for sid in slide_ids if not measured[sid].all()}
    if lacking:
        logger.warning(
            "concat_slides: the slides measured different genes: %d of %d genes are missing from some "
            "slides (%s); their counts there are 0 like a dropout, varm['measured'] says which slide "
            "measured which gene.",
            int((~measured.all(axis=1)).sum()),
            len(genes),
            ", ".join(f"{sid} lacks {n}" for sid, n in lacking.items()),
        )

    # what anndata.concat would invent: layers / obsm keys missing from some inputs (filled with zeros)
    common_layers = [k for k in adatas[0].layers if all(k in a.layers for a in adatas[1:])]
    dropped_layers = sorted({k for a in adatas for k in a.layers} - set(common_layers))
    if dropped_layers:
        logger.warning(
            f"concat_slides: layers {dropped_layers} are missing from some inputs and were not kept."
        )
    common_obsm = []
    for k in adatas[0].obsm:
        vals = [a.obsm.get(k) for a in adatas]
        if any(v is None or isinstance(v, pd.DataFrame) for v in vals):
            continue
        if len({np.asarray(v).shape[1:] for v in vals}) == 1:
            common_obsm.append(k)
    dropped_obsm = sorted({k for a in adatas for k in a.obsm} - set(common_obsm))
    if dropped_obsm:
        logger.warning(
            f"concat_slides: obsm keys {dropped_obsm} are missing from some inputs, are DataFrames or differ "
            "in width, and were not kept."
        )

    names = np.concatenate([a.obs_names.to_numpy(dtype=object) for a in adatas]).astype(str)
    prefix = pd.Index(names).has_duplicates
    if prefix:
        names = np.concatenate([[f"{sid}_{n}" for n in a.obs_names] for a, sid in zip(adatas, slide_ids)])
        if pd.Index(names).has_duplicates:
            raise ValueError("obs_names are not unique even after prefixing the slide ids.")
        logger.info("concat_slides: obs_names repeat across slides; prefixed every name with '<slide_id>_'.")
    parts = []
    offset = 0
    for a, sid in zip(adatas, slide_ids):
        obs = a.obs.copy()
        obs.index = pd.Index(names[offset : offset + a.n_obs])
        offset += a.n_obs
        obs[library_key] = sid
        parts.append(
            AnnData(
                X=a.X,
                obs=obs,
                var=pd.DataFrame(index=a.var_names.astype(str)),
                layers={k: a.layers[k] for k in common_layers},
                obsm={k: np.asarray(a.obsm[k]) for k in common_obsm},
            )
        )
    joined = ad.concat(parts, join="outer", fill_value=0, merge=None, uns_merge=None)
    order = None if joined.var_names.equals(genes) else joined.var_names.get_indexer(genes)
    sparse_in = [any(sp.issparse(a.X) for a in adatas)] + [
        any(sp.issparse(a.layers[k]) for a in adatas) for k in common_layers
    ]
    mats = [
        _first_seen(m, order, sparse)
        for m, sparse in zip([joined.X, *(joined.layers[k] for k in common_layers)], sparse_in)
    ]
    out = AnnData(
        X=mats[0],
        obs=joined.obs,
        var=_merge_var(adatas, genes),
        layers=dict(zip(common_layers, mats[1:])),
        obsm=dict(joined.obsm),
    )
    out.varm["measured"] = measured
    obs = out.obs
    for c in obs.columns:
        was_cat = any(c in a.obs and isinstance(a.obs[c].dtype, pd.CategoricalDtype) for a in adatas)
        if was_cat:
            cats = pd.unique(obs[c].dropna().astype(object))
            obs[c] = pd.Categorical(obs[c].astype(object), categories=cats)
    obs[library_key] = pd.Categorical(np.repeat(slide_ids, [a.n_obs for a in adatas]), categories=slide_ids)
    if patients is not None:
        pats = np.repeat(patients, [a.n_obs for a in adatas])
        obs[patient_key] = pd.Categorical(pats, categories=list(dict.fromkeys(patients)))

    spatial = _merge_spatial(adatas, slide_ids, library_key)
    lost = sorted(
        {f"uns[{k!r}]" for a in adatas for k in a.uns if k != Key.SPATIAL}
        | {f"obsp[{k!r}]" for a in adatas for k in a.obsp}
        | {f"varm[{k!r}]" for a in adatas for k in a.varm}
    )
    if lost:
        logger.info(f"concat_slides: {', '.join(lost)} are per-slide results and were not carried over.")
    if spatial:
        out.uns[Key.SPATIAL] = spatial
    return out
