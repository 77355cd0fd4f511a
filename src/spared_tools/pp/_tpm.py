"""TPM normalisation with gene lengths bundled in the package (GENCODE v43 human, vM33 mouse)."""

from __future__ import annotations

import functools
import gzip
import re
from collections.abc import Sequence
from importlib.resources import files
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import (
    check_adata,
    check_finite_nonnegative,
    check_organism,
    check_unique_var_names,
    get_matrix,
)

_ORGANISMS = {"human": "GENCODE v43 basic (GRCh38)", "mouse": "GENCODE vM33 basic (GRCm39)"}
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?(_PAR_Y)?$")
_MAIN_CHROM = re.compile(r"^chr([0-9]+|X|Y|M)$")


def _check_organism(organism: str) -> str:
    """``"human"`` or ``"mouse"`` (the organisms with bundled gene lengths; aliases such as "Homo sapiens")."""
    return check_organism(organism)


@functools.lru_cache(maxsize=2)
def _load_table(organism: str) -> pd.DataFrame:
    res = files("spared_tools").joinpath("_data", f"gene_lengths_{organism}.tsv.gz")
    with res.open("rb") as raw, gzip.open(raw, "rt") as fh:
        df = pd.read_csv(
            fh, sep="\t", dtype={"gene_id": str, "gene_name": str, "gene_type": str, "chrom": str}
        )
    df["length"] = df["length"].astype(np.int64)
    return df


@functools.lru_cache(maxsize=2)
def _symbol_lengths(organism: str) -> pd.Series:
    """One length per symbol: protein-coding first, then main chromosomes, then annotation order."""
    df = _load_table(organism).reset_index(names="order")
    df = df[df["gene_name"].notna() & (df["gene_name"] != "")]
    df = df.assign(
        _pc=(df["gene_type"] != "protein_coding").astype(int),
        _main=(~df["chrom"].str.match(_MAIN_CHROM)).astype(int),
    )
    df = df.sort_values(["gene_name", "_pc", "_main", "order"], kind="stable")
    first = df.drop_duplicates("gene_name", keep="first")
    return pd.Series(first["length"].to_numpy(), index=first["gene_name"].to_numpy(), name="length")


def _is_ensembl(names: Sequence[str]) -> np.ndarray:
    return np.asarray(pd.Index(names).astype(str).str.match(_ENSEMBL), dtype=bool)


def _detect_id_type(names: Sequence[str]) -> Literal["ensembl", "symbol"]:
    ens = _is_ensembl(names)
    frac = ens.mean() if ens.size else 0.0
    return "ensembl" if frac >= 0.5 else "symbol"


def _mixed_note(n_ens: int, n_sym: int) -> str:
    return (
        f"the gene ids are mixed: {n_ens} look like Ensembl ids and {n_sym} like gene symbols. Pass "
        "id_type='auto' to look each up as its own kind, or gene_id_key= a var column that holds one kind "
        "for every gene"
    )


def gene_lengths(
    organism: str,
    genes: Sequence[str] | None = None,
    *,
    id_type: Literal["auto", "ensembl", "symbol"] = "auto",
) -> pd.DataFrame | pd.Series:
    """Union-of-exon gene lengths bundled with the package.

    The tables are built by ``scripts/build_gene_lengths.py`` from the GENCODE *basic* GTFs (v43 for human,
    vM33 for mouse, the annotations SpaRED uses): the length of a gene is the size of the union of all its
    exons (gtftools' ``merged`` length). Genes of the Y pseudo-autosomal region are represented by their
    X copy.

    Parameters
    ----------
    organism
        ``"human"`` or ``"mouse"``.
    genes
        Gene names to look up. ``None`` returns the whole table.
    id_type
        Whether ``genes`` are Ensembl gene ids (the version suffix, e.g. ``.12``, is ignored) or gene symbols;
        ``"auto"`` decides from the names (Ensembl when at least half look like Ensembl ids). A symbol that
        names several genes resolves to the protein-coding one, then the one on a main chromosome, then the
        first in annotation order.

    Returns
    -------
    Without ``genes``: a DataFrame with columns ``gene_id`` (unversioned Ensembl id), ``gene_name``,
    ``gene_type``, ``chrom`` and ``length`` (bp). With ``genes``: a float Series of lengths indexed by
    ``genes`` (in their order), ``NaN`` where the gene is unknown.
    """
    organism = _check_organism(organism)
    table = _load_table(organism)
    if genes is None:
        return table.copy()
    genes = [genes] if isinstance(genes, str) else list(genes)
    if id_type == "auto":
        id_type = _detect_id_type(genes)
    if id_type == "ensembl":
        keys = pd.Index(genes).astype(str).str.replace(r"(\.\d+)?(_PAR_Y)?$", "", regex=True)
        lookup = pd.Series(table["length"].to_numpy(), index=table["gene_id"].to_numpy())
    elif id_type == "symbol":
        keys = pd.Index(genes).astype(str)
        lookup = _symbol_lengths(organism)
    else:
        raise ValueError(f"id_type must be 'auto', 'ensembl' or 'symbol', got {id_type!r}.")
    values = lookup.reindex(keys).to_numpy(dtype=np.float64)
    return pd.Series(values, index=pd.Index(genes), name=Key.GENE_LENGTH)


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


MissingLengths = Literal["mask", "drop", "keep", "raise"]


def tpm(
    adata: AnnData,
    *,
    organism: str,
    layer: str | None = None,
    key_added: str = Key.TPM,
    missing: MissingLengths = "mask",
    gene_id_key: str | None = None,
    id_type: Literal["auto", "ensembl", "symbol"] = "auto",
    lengths: pd.Series | None = None,
    dtype: np.dtype | type = np.float32,
    copy: bool = False,
) -> AnnData | None:
    r"""Transcripts per million from raw counts and bundled gene lengths.

    ``tpm[i, j] = 1e6 · (c[i, j] / L_j) / Σ_k (c[i, k] / L_k)`` where ``L_j`` is the union-of-exon length of
    gene ``j`` (see :func:`gene_lengths`) and the sum runs over the genes with a known length. Every spot
    with at least one count in those genes sums to :math:`10^6`; spots without counts get a row of zeros
    (and are reported).

    Genes without a known length are always reported (count and first names) and handled by ``missing``.
    Nothing is ever removed from the AnnData you pass in:

    * ``"mask"`` (default): every gene is kept. ``var["has_gene_length"]`` is False and
      ``var["gene_length"]`` NaN for the genes without a length, and their TPM column is NaN (not
      computed, so that it cannot be mistaken for zero expression). Drop them explicitly with
      ``adata = adata[:, adata.var["has_gene_length"]].copy()``.
    * ``"drop"`` (SpaRED's behaviour, e.g. for genes renamed since the annotation release): returns a
      **new** AnnData without those genes (genes only; spots are never dropped) so that every layer stays
      aligned with the TPM layer; needs ``copy=True`` when there is such a gene (``adata`` is left as it
      was), and raises a ``ValueError`` saying so otherwise.
    * ``"keep"``: the genes are kept and given the **median length of the genes whose length is known**
      (flagged in ``var["gene_length_imputed"]``). This keeps every gene at the price of an approximate
      length-normalisation for those genes; use it when the unknown genes matter to you.
    * ``"raise"``: raise a ``KeyError`` listing them.

    Gene identifiers are looked up as Ensembl ids or symbols (``id_type``); with ``"auto"`` a list that
    mixes both kinds is looked up id by id as its own kind, with a warning giving the number of each.
    Duplicated ``var_names`` (or duplicated identifiers in ``gene_id_key``) are refused with a
    ``ValueError``: their lengths could not be matched unambiguously.

    Parameters
    ----------
    adata
        Annotated data with raw counts (non-negative, finite).
    organism
        ``"human"`` (GENCODE v43) or ``"mouse"`` (GENCODE vM33).
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    key_added
        Layer that receives the TPM values (sparse CSR when the counts are sparse, dense otherwise).
    missing
        What to do with genes that have no known length, see above.
    gene_id_key
        ``adata.var`` column holding the gene identifiers to look up; ``None`` uses ``adata.var_names``.
    id_type
        ``"ensembl"``, ``"symbol"`` or ``"auto"`` (detected per identifier).
    lengths
        Custom gene lengths (bp) indexed by the same identifiers; overrides the bundled tables
        (``organism`` is then only recorded).
    dtype
        Floating dtype of the TPM layer.
    copy
        Return a modified copy instead of writing into ``adata`` (required by ``missing="drop"`` when a
        gene has no length; the copy then lacks those genes).

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); writes

    ``adata.layers[key_added]``
        TPM values (NaN in the columns of genes without a length with ``missing="mask"``).
    ``adata.var["gene_length"]``
        Length used for each gene (bp; NaN where unknown with ``missing="mask"``).
    ``adata.var["has_gene_length"]``
        False for genes without a known length (``missing="mask"`` only).
    ``adata.var["gene_length_imputed"]``
        True for genes whose length was set to the median (``missing="keep"`` only).
    ``adata.uns["tpm"]["params"]``
        Parameters, the annotation used, and the genes without a length.

    Raises
    ------
    ValueError
        For duplicated gene names or ids, a bad ``organism`` / ``missing`` / counts, when no gene has a
        length, or ``missing="drop"`` without ``copy=True`` when genes would be removed.
    KeyError
        With ``missing="raise"`` when a gene has no length, or a missing layer / ``gene_id_key`` column.
    """
    return _tpm(
        adata,
        organism=organism,
        layer=layer,
        key_added=key_added,
        missing=missing,
        gene_id_key=gene_id_key,
        id_type=id_type,
        lengths=lengths,
        dtype=dtype,
        copy=copy,
        inplace_drop=False,
    )


def tpm_working_copy(
    adata: AnnData,
    *,
    organism: str,
    missing: MissingLengths = "drop",
    gene_id_key: str | None = None,
) -> None:
    """:func:`tpm` for an AnnData the caller built itself (the pipeline's working copy): drops in place.

    ``missing="drop"`` removes the genes without a length from ``adata`` itself, which :func:`tpm` never
    does to a user's object. Only for objects that no user holds.

    Parameters
    ----------
    adata
        The caller's own working object (raw counts in ``X``).
    organism
        ``"human"`` or ``"mouse"``.
    missing
        As in :func:`tpm`.
    gene_id_key
        As in :func:`tpm` except ``"mask"``: the later steps need a value in every column.

    Raises
    ------
    ValueError
        For ``missing="mask"``, and as :func:`tpm`.
    """
    if missing == "mask":
        raise ValueError(
            "missing_lengths must be 'drop', 'keep' or 'raise' here: the later steps need a TPM value in "
            "every column."
        )
    _tpm(
        adata,
        organism=organism,
        layer=None,
        key_added=Key.TPM,
        missing=missing,
        gene_id_key=gene_id_key,
        id_type="auto",
        lengths=None,
        dtype=np.float32,
        copy=False,
        inplace_drop=True,
    )


def _lookup_ids(adata: AnnData, gene_id_key: str | None) -> pd.Index:
    if gene_id_key is None:
        check_unique_var_names(adata)
        return pd.Index(adata.var_names).astype(str)
    if gene_id_key not in adata.var.columns:
        raise KeyError(f"adata.var has no column {gene_id_key!r}; available: {list(adata.var.columns)}.")
    col = adata.var[gene_id_key]
    if col.isna().any():
        raise ValueError(f"adata.var[{gene_id_key!r}] has {int(col.isna().sum())} missing gene ids.")
    ids = pd.Index(col.astype(str))
    if not ids.is_unique:
        dup = ids[ids.duplicated(keep=False)]
        show = ", ".join(map(repr, pd.unique(dup)[:10]))
        raise ValueError(
            f"adata.var[{gene_id_key!r}] has {int(ids.duplicated().sum())} duplicated gene ids ({show}); "
            "two genes cannot share one length. Sum or drop the duplicates first."
        )
    return ids


def _tpm(
    adata: AnnData,
    *,
    organism: str,
    layer: str | None,
    key_added: str,
    missing: MissingLengths,
    gene_id_key: str | None,
    id_type: Literal["auto", "ensembl", "symbol"],
    lengths: pd.Series | None,
    dtype: np.dtype | type,
    copy: bool,
    inplace_drop: bool,
) -> AnnData | None:
    check_adata(adata)
    organism = _check_organism(organism)
    if missing not in ("mask", "drop", "keep", "raise"):
        raise ValueError(f"missing must be 'mask', 'drop', 'keep' or 'raise', got {missing!r}.")
    if id_type not in ("auto", "ensembl", "symbol"):
        raise ValueError(f"id_type must be 'auto', 'ensembl' or 'symbol', got {id_type!r}.")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}.")
    X = get_matrix(adata, layer)
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite_nonnegative(X, what=what)
    ids = _lookup_ids(adata, gene_id_key)

    mixed = ""
    if lengths is not None:
        lengths = pd.Series(lengths)
        if lengths.index.has_duplicates:
            raise ValueError("lengths has duplicated gene identifiers.")
        glen = lengths.reindex(ids).to_numpy(dtype=np.float64)
        source = "user-provided lengths"
        resolved_id_type = "custom"
    else:
        ens = _is_ensembl(ids)
        n_ens, n_sym = int(ens.sum()), int((~ens).sum())
        if id_type == "auto" and n_ens and n_sym:
            glen = np.empty(ids.size, dtype=np.float64)
            glen[ens] = gene_lengths(organism, list(ids[ens]), id_type="ensembl").to_numpy()
            glen[~ens] = gene_lengths(organism, list(ids[~ens]), id_type="symbol").to_numpy()
            resolved_id_type = "mixed"
            logger.warning(
                "tpm: the gene ids are mixed: %d look like Ensembl ids and %d like gene symbols; each is "
                "looked up as its own kind. Pass id_type= to force one kind, or gene_id_key= a var column "
                "that holds one kind for every gene.",
                n_ens,
                n_sym,
            )
        else:
            resolved_id_type = _detect_id_type(ids) if id_type == "auto" else id_type
            glen = gene_lengths(organism, list(ids), id_type=resolved_id_type).to_numpy()
            if n_ens and n_sym:
                mixed = _mixed_note(n_ens, n_sym)
        source = _ORGANISMS[organism]
    if np.any(glen[~np.isnan(glen)] <= 0):
        raise ValueError("gene lengths must be positive.")
    unknown = np.isnan(glen)
    unknown_names = list(adata.var_names[unknown])
    n_unknown = int(unknown.sum())
    if n_unknown:
        show = ", ".join(unknown_names[:10]) + (" …" if n_unknown > 10 else "")
        msg = (
            f"{n_unknown} of {adata.n_vars} genes ({100 * n_unknown / adata.n_vars:.1f}%) have no length in "
            f"{source} (looked up as {resolved_id_type}): {show}"
        )
        if mixed:
            msg += f"; {mixed}"
        if missing == "raise":
            raise KeyError(msg + ". Pass missing='mask', 'drop' or 'keep', or lengths=.")
        if n_unknown == adata.n_vars:
            raise ValueError(
                msg + ". No gene could be matched: check organism= and whether var_names are symbols or "
                "Ensembl ids (gene_id_key=, id_type=)."
            )
        if missing == "drop" and not (copy or inplace_drop):
            raise ValueError(
                msg + ". missing='drop' would remove these genes from your AnnData in place; pass "
                "copy=True to get a new AnnData without them (yours is left as it is), or use "
                "missing='mask' (keep them, flagged in var['has_gene_length']) or missing='keep'."
            )
        action = {
            "mask": "kept with a NaN TPM column and var['has_gene_length'] = False (subset with "
            "adata[:, adata.var['has_gene_length']] to drop them)",
            "drop": "left out of the result",
            "keep": "using the median length",
        }[missing]
        logger.warning("tpm: %s; %s.", msg, action)

    if copy:
        # with missing="drop", copy only the genes that are kept
        adata = adata[:, ~unknown].copy() if (n_unknown and missing == "drop") else adata.copy()
        X = get_matrix(adata, layer)
    imputed = np.zeros(adata.n_vars, dtype=bool)
    has_length = ~unknown
    if n_unknown and missing == "drop":
        if not copy:  # inplace_drop: the caller's own working object
            adata._inplace_subset_var(np.flatnonzero(~unknown))
            X = get_matrix(adata, layer)
        glen = glen[~unknown]
        imputed = np.zeros(adata.n_vars, dtype=bool)
        has_length = np.ones(adata.n_vars, dtype=bool)
    elif n_unknown and missing == "keep":
        glen = glen.copy()
        glen[unknown] = float(np.median(glen[~unknown]))
        imputed = unknown
        has_length = np.ones(adata.n_vars, dtype=bool)

    inv_len = np.where(has_length, 1.0 / np.where(has_length, glen, 1.0), 0.0)
    if sp.issparse(X):
        rpk = sp.csr_matrix(X, dtype=np.float64) @ sp.diags(inv_len)
        rpk = sp.csr_matrix(rpk)
    else:
        rpk = np.asarray(X, dtype=np.float64) * inv_len[None, :]
    tot = _row_sums(rpk)
    empty = tot == 0
    scale = np.divide(1e6, tot, out=np.zeros_like(tot), where=~empty)
    if sp.issparse(rpk):
        out = sp.csr_matrix(sp.diags(scale) @ rpk, dtype=dtype)
        out.eliminate_zeros()
        if not has_length.all():
            cols = np.flatnonzero(~has_length)
            nan_block = sp.csr_matrix(
                (
                    np.full(adata.n_obs * cols.size, np.nan, dtype=dtype),
                    (np.repeat(np.arange(adata.n_obs), cols.size), np.tile(cols, adata.n_obs)),
                ),
                shape=out.shape,
            )
            out = sp.csr_matrix(out + nan_block, dtype=dtype)
            out.sort_indices()
    else:
        out = (rpk * scale[:, None]).astype(dtype, copy=False)
        out[:, ~has_length] = np.nan
    if empty.any():
        logger.warning(
            "tpm: %d spots have no counts in the genes with a length; their TPM row is all zeros.",
            int(empty.sum()),
        )

    adata.layers[key_added] = out
    adata.var[Key.GENE_LENGTH] = np.where(has_length, glen, np.nan)
    if missing == "mask":
        adata.var["has_gene_length"] = has_length
    if missing == "keep":
        adata.var["gene_length_imputed"] = imputed
    adata.uns["tpm"] = {
        "params": {
            "organism": organism,
            "layer": layer,
            "key_added": key_added,
            "missing": missing,
            "gene_id_key": gene_id_key,
            "id_type": resolved_id_type,
            "annotation": source,
            "dtype": np.dtype(dtype).name,
        },
        "genes_without_length": unknown_names,
    }
    logger.info("tpm: %d genes normalised to layers[%r] (%s).", int(has_length.sum()), key_added, source)
    return adata if copy else None
