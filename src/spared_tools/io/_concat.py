"""Combine several slides into one AnnData: :func:`concat_slides`."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger


def _slide_id_of(adata: AnnData, library_key: str, position: int) -> str:
    """Infer the slide id of one input from ``obs[library_key]`` or a single ``uns['spatial']`` library."""
    if library_key in adata.obs.columns:
        vals = pd.unique(adata.obs[library_key].astype(object))
        if len(vals) != 1 or pd.isna(vals[0]):
            raise ValueError(
                f"Input {position} has {len(vals)} values in obs[{library_key!r}] ({list(vals[:5])}); "
                "concat_slides expects one slide per AnnData (pass slide_ids= to name them)."
            )
        return str(vals[0])
    libs = list(adata.uns.get(Key.SPATIAL, {}) or {})
    if len(libs) == 1:
        return str(libs[0])
    raise ValueError(
        f"Cannot tell the slide id of input {position}: it has no obs[{library_key!r}] column and "
        f"{len(libs)} libraries in uns['spatial']. Pass a dict {{slide_id: adata}} or slide_ids=."
    )


def _align(mat, cols: np.ndarray, n_genes: int, out_sparse: bool):
    """Place the columns of ``mat`` at positions ``cols`` of an ``n_genes``-wide matrix (zeros elsewhere)."""
    if sp.issparse(mat):
        coo = sp.coo_matrix(mat)
        out = sp.csr_matrix((coo.data, (coo.row, cols[coo.col])), shape=(mat.shape[0], n_genes))
        out.sort_indices()
        return out if out_sparse else out.toarray()
    arr = np.asarray(mat)
    out = np.zeros((arr.shape[0], n_genes), dtype=arr.dtype)
    out[:, cols] = arr
    return sp.csr_matrix(out) if out_sparse else out


def _stack(mats: list, cols: list[np.ndarray], n_genes: int):
    """Align every matrix on the gene union and stack them by rows (sparse if any input is sparse)."""
    out_sparse = any(sp.issparse(m) for m in mats)
    dtype = np.result_type(*[m.dtype for m in mats])
    parts = [_align(m, c, n_genes, out_sparse) for m, c in zip(mats, cols)]
    if out_sparse:
        return sp.vstack(parts, format="csr", dtype=dtype)
    return np.vstack(parts).astype(dtype, copy=False)


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
    """Combine slides into one AnnData with genes aligned on their union.

    Spots keep their input order (slide by slide), genes appear in first-seen order (all genes of the
    first slide, then the new genes of the second, ...), and a gene absent from a slide gets zero counts
    there. ``uns['spatial']`` is merged per library. ``obs_names`` are kept when they are unique across
    slides; otherwise every name is prefixed with ``"<slide_id>_"`` (and this is logged).

    Parameters
    ----------
    adatas
        The slides: a sequence of AnnData (slide ids from ``slide_ids``, else from each one's single
        ``obs[library_key]`` value, else its single ``uns['spatial']`` library) or a mapping
        ``{slide_id: adata}``. Each input holds exactly one slide.
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
    ``obsm``
        Keys present in every input with the same number of columns.
    ``uns['spatial']``
        The union of the inputs' libraries (each must belong to a single input). Other ``uns`` keys,
        ``obsp`` (per-slide graphs) and ``varm`` are not carried over; their names are logged.
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
        if not isinstance(a, AnnData):
            raise TypeError(f"Input {i} must be an AnnData object, got {type(a).__name__}.")
        if a.n_obs == 0:
            raise ValueError(f"Input {i} has no observations (spots).")
        if a.n_vars == 0:
            raise ValueError(f"Input {i} has no variables (genes).")
        if a.var_names.has_duplicates:
            dup = a.var_names[a.var_names.duplicated()].unique()
            raise ValueError(f"Input {i} has duplicated var_names {list(dup[:5])}; make them unique first.")
        if a.obs_names.has_duplicates:
            raise ValueError(f"Input {i} has duplicated obs_names; make them unique first.")
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

    # genes: union in first-seen order
    genes = pd.Index(pd.unique(np.concatenate([a.var_names.to_numpy(dtype=object) for a in adatas])))
    genes = genes.astype(str)
    cols = [genes.get_indexer(a.var_names) for a in adatas]
    n_genes = len(genes)
    X = _stack([a.X for a in adatas], cols, n_genes)
    common_layers = [k for k in adatas[0].layers if all(k in a.layers for a in adatas[1:])]
    layers = {k: _stack([a.layers[k] for a in adatas], cols, n_genes) for k in common_layers}
    dropped_layers = sorted({k for a in adatas for k in a.layers} - set(common_layers))
    if dropped_layers:
        logger.warning(
            f"concat_slides: layers {dropped_layers} are missing from some inputs and were not kept."
        )

    # obs
    frames = []
    for a, sid in zip(adatas, slide_ids):
        df = a.obs.copy()
        for c in df.columns:
            if isinstance(df[c].dtype, pd.CategoricalDtype):
                df[c] = df[c].astype(object)
        df[library_key] = sid
        frames.append(df)
    obs = pd.concat(frames, axis=0, join="outer", sort=False)
    names = np.concatenate([a.obs_names.to_numpy(dtype=object) for a in adatas]).astype(str)
    if pd.Index(names).has_duplicates:
        names = np.concatenate([[f"{sid}_{n}" for n in a.obs_names] for a, sid in zip(adatas, slide_ids)])
        if pd.Index(names).has_duplicates:
            raise ValueError("obs_names are not unique even after prefixing the slide ids.")
        logger.info("concat_slides: obs_names repeat across slides; prefixed every name with '<slide_id>_'.")
    obs.index = pd.Index(names)
    for c in obs.columns:
        was_cat = any(c in a.obs and isinstance(a.obs[c].dtype, pd.CategoricalDtype) for a in adatas)
        if was_cat:
            cats = pd.unique(obs[c].dropna())
            obs[c] = pd.Categorical(obs[c], categories=cats)
        elif obs[c].dtype == object:
            obs[c] = obs[c].infer_objects()
    obs[library_key] = pd.Categorical(np.repeat(slide_ids, [a.n_obs for a in adatas]), categories=slide_ids)
    if patients is not None:
        pats = np.repeat(patients, [a.n_obs for a in adatas])
        obs[patient_key] = pd.Categorical(pats, categories=list(dict.fromkeys(patients)))

    # obsm: keys every input has, with equal widths
    obsm = {}
    for k in adatas[0].obsm:
        vals = [a.obsm.get(k) for a in adatas]
        if any(v is None for v in vals) or any(isinstance(v, pd.DataFrame) for v in vals):
            continue
        vals = [np.asarray(v) for v in vals]
        if len({v.shape[1:] for v in vals}) == 1:
            obsm[k] = np.concatenate(vals, axis=0)
    dropped_obsm = sorted({k for a in adatas for k in a.obsm} - set(obsm))
    if dropped_obsm:
        logger.warning(
            f"concat_slides: obsm keys {dropped_obsm} are missing from some inputs, are DataFrames or differ "
            "in width, and were not kept."
        )
    # uns['spatial'] per library
    spatial: dict = {}
    for a in adatas:
        for lib, content in (a.uns.get(Key.SPATIAL) or {}).items():
            if lib in spatial:
                raise ValueError(f"Library {lib!r} appears in uns['spatial'] of more than one input.")
            spatial[lib] = copy.deepcopy(content)
    lost = sorted(
        {f"uns[{k!r}]" for a in adatas for k in a.uns if k != Key.SPATIAL}
        | {f"obsp[{k!r}]" for a in adatas for k in a.obsp}
        | {f"varm[{k!r}]" for a in adatas for k in a.varm}
    )
    if lost:
        logger.info(f"concat_slides: {', '.join(lost)} are per-slide results and were not carried over.")

    out = AnnData(X=X, obs=obs, var=_merge_var(adatas, genes), obsm=obsm, layers=layers)
    if spatial:
        out.uns[Key.SPATIAL] = spatial
    return out
