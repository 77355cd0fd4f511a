"""SpaRED's spot and gene filtering (count thresholds and the expression-fraction prefix rule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._docs import d
from spared_tools._kernels.filter import expressed_per_slide
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import (
    check_adata,
    check_finite_nonnegative,
    check_genes,
    get_matrix,
    slide_labels,
)


def resolve_fit_mask(
    adata: AnnData,
    fit_obs: Sequence[bool] | np.ndarray | pd.Series | None = None,
    split_key: str | None = None,
    train_value: Any = Key.TRAIN,
) -> np.ndarray | None:
    """Boolean mask of the spots statistics are fitted on (``None`` when every spot is used).

    Parameters
    ----------
    adata
        Annotated data.
    fit_obs
        Boolean mask over ``adata.obs_names`` (array or Series aligned by index).
    split_key
        ``adata.obs`` column with the split labels (alternative to ``fit_obs``); missing values (NaN)
        raise a ``ValueError`` rather than being treated as "not training".
    train_value
        Value(s) of ``adata.obs[split_key]`` marking training spots; a list selects several.

    Returns
    -------
    Bool array of length ``n_obs`` or ``None``.
    """
    if fit_obs is not None and split_key is not None:
        raise ValueError("Pass either fit_obs= or split_key=, not both.")
    if fit_obs is not None:
        if isinstance(fit_obs, pd.Series):
            if not fit_obs.index.equals(adata.obs_names):
                aligned = fit_obs.reindex(adata.obs_names)
                if aligned.isna().any():
                    raise ValueError("fit_obs (a Series) does not cover every spot of adata.obs_names.")
                fit_obs = aligned
        mask = np.asarray(fit_obs)
        if mask.dtype != np.bool_:
            raise TypeError(f"fit_obs must be a boolean mask, got dtype {mask.dtype}.")
        if mask.shape != (adata.n_obs,):
            raise ValueError(f"fit_obs must have one entry per spot ({adata.n_obs}), got shape {mask.shape}.")
    elif split_key is not None:
        if split_key not in adata.obs.columns:
            raise KeyError(
                f"adata.obs has no split column {split_key!r}; available: {list(adata.obs.columns)}."
            )
        n_nan = int(adata.obs[split_key].isna().sum())
        if n_nan:
            raise ValueError(
                f"adata.obs[{split_key!r}] has {n_nan} missing values (NaN); label every spot "
                "(e.g. with sp.pp.split_by) or drop the unlabelled spots first."
            )
        values = (
            [train_value] if isinstance(train_value, str) or np.isscalar(train_value) else list(train_value)
        )
        mask = adata.obs[split_key].isin(values).to_numpy()
        if not mask.any():
            present = list(pd.unique(adata.obs[split_key].astype(str)))[:10]
            raise ValueError(f"No spot has adata.obs[{split_key!r}] in {values}; values present: {present}.")
    else:
        return None
    if not mask.any():
        raise ValueError("The fitting mask selects no spot.")
    return mask


def expression_fractions(
    X, codes: np.ndarray, rows: np.ndarray | None = None, n_slides: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SpaRED's ``exp_frac`` (minimum over slides of the fraction of spots expressing a gene) and ``glob_exp_frac``.

    Parameters
    ----------
    X
        ``(n_obs, n_genes)`` counts, dense or sparse.
    codes
        Integer slide code of every spot.
    rows
        Spots to use (``None``: all). Slides without any of these spots are left out of the minimum.
    n_slides
        Number of slide codes (``codes.max() + 1`` when None).

    Returns
    -------
    ``(exp_frac, glob_exp_frac)``, each of length ``n_genes``.
    """
    exp_frac, glob_exp_frac, _ = _fractions_and_totals(X, codes, rows, n_slides)
    return exp_frac, glob_exp_frac


def _fractions_and_totals(X, codes, rows=None, n_slides=None):
    rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
    n_slides = int(codes.max()) + 1 if n_slides is None else n_slides
    expressed, totals = expressed_per_slide(X, rows, codes, n_slides)
    n_spots = np.bincount(codes[rows], minlength=n_slides).astype(np.float64)
    present = n_spots > 0
    frac = expressed[present] / n_spots[present, None]
    return frac.min(axis=0), expressed.sum(axis=0) / n_spots.sum(), totals


def prefix_rule(exp_frac: np.ndarray, glob_exp_frac: np.ndarray, real_data_percentage: float) -> np.ndarray:
    """Boolean mask of the genes kept by SpaRED's expression-fraction rule.

    Genes are sorted by ``exp_frac`` descending (ties keep their original order) and the longest prefix
    whose mean ``glob_exp_frac`` is at least ``real_data_percentage`` is kept.

    Parameters
    ----------
    exp_frac
        Minimum-over-slides expression fraction of each candidate gene.
    glob_exp_frac
        Global expression fraction of each candidate gene.
    real_data_percentage
        Minimum mean global expression fraction of the kept genes.

    Returns
    -------
    Bool mask over the candidates (all False when even the first gene fails).
    """
    order = np.argsort(-np.asarray(exp_frac, dtype=np.float64), kind="stable")
    running = np.cumsum(np.asarray(glob_exp_frac, dtype=np.float64)[order]) / np.arange(1, order.size + 1)
    ok = np.flatnonzero(running >= real_data_percentage)
    keep = np.zeros(order.size, dtype=bool)
    if ok.size:
        keep[order[: ok[-1] + 1]] = True
    return keep


#: Below this fraction of genes or spots kept, :func:`filter_spared` warns (the thresholds may not fit the data).
HEAVY_FILTERING_FRACTION = 0.1


def _warn_heavy_filtering(stats: dict[str, int], params: dict[str, Any]) -> None:
    """Log a warning when fewer than 10 % of the genes or of the spots survive, naming the thresholds."""
    parts = []
    if stats["n_vars_out"] < HEAVY_FILTERING_FRACTION * stats["n_vars_in"]:
        rule = (
            "the wildcard gene list"
            if params["wildcard_genes"] is not None
            else (
                f"gene_min_counts={params['gene_min_counts']:g} / gene_max_counts={params['gene_max_counts']:g} "
                f"removed {stats['n_vars_gene_counts']}, real_data_percentage="
                f"{params['real_data_percentage']:g} removed {stats['n_vars_exp_frac']}"
            )
        )
        parts.append(f"only {stats['n_vars_out']} of {stats['n_vars_in']} genes are kept ({rule})")
    if stats["n_obs_out"] < HEAVY_FILTERING_FRACTION * stats["n_obs_in"]:
        parts.append(
            f"only {stats['n_obs_out']} of {stats['n_obs_in']} spots are kept (cell_min_counts="
            f"{params['cell_min_counts']:g} removed {stats['n_obs_below_cell_min_counts']}, cell_max_counts="
            f"{params['cell_max_counts']:g} removed {stats['n_obs_above_cell_max_counts']}, "
            f"{stats['n_obs_zero_after_gene_filter']} had no counts in the kept genes)"
        )
    if parts:
        logger.warning(
            "filter_spared: %s. SpaRED's defaults were set for its curated datasets; for a sparse section "
            "(e.g. a CytAssist or whole-transcriptome panel) lower real_data_percentage or the count "
            "thresholds, or pass wildcard_genes=.",
            "; ".join(parts),
        )


@d.inject
def filter_spared(
    adata: AnnData,
    *,
    layer: str | None = None,
    cell_min_counts: float = 10,
    cell_max_counts: float = 1e6,
    gene_min_counts: float = 10,
    gene_max_counts: float = 1e6,
    real_data_percentage: float = 0.7,
    wildcard_genes: Sequence[str] | None = None,
    library_key: str | None = Key.SLIDE,
    fit_obs: Sequence[bool] | np.ndarray | pd.Series | None = None,
    split_key: str | None = None,
    train_value: Any = Key.TRAIN,
    inplace: bool = True,
) -> dict[str, Any] | None:
    """Filter spots and genes with SpaRED's rules. **This removes spots and genes** (that is its purpose).

    Steps, on raw counts:

    1. Spots: keep those whose total count is strictly inside ``(cell_min_counts, cell_max_counts)``.
    2. Per gene, on the kept spots (training spots only when a split is given): ``exp_frac`` = the minimum
       over slides of the fraction of the slide's spots with a non-zero count, and ``glob_exp_frac`` = the
       same fraction over all those spots together.
    3. Genes: keep those whose total count (same spots as step 2) is strictly inside
       ``(gene_min_counts, gene_max_counts)``; sort them by ``exp_frac`` descending and keep the longest
       prefix whose running mean of ``glob_exp_frac`` is at least ``real_data_percentage``.
       With ``wildcard_genes`` steps 3's rules are replaced by exactly that gene list.
    4. Spots left without any count in the kept genes are removed.

    With a split (``fit_obs=`` or ``split_key=``) the gene statistics are fitted on the training spots only,
    so validation/test spots do not influence which genes are kept; spot rules apply to every spot.

    When fewer than 10 % of the genes or of the spots are kept, a warning names the thresholds and how
    many genes/spots each removed (SpaRED's defaults can cut a sparse whole-transcriptome section to a
    few dozen genes).

    Parameters
    ----------
    adata
        Annotated data with raw counts.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    %(spared_count_thresholds)s
    real_data_percentage
        Minimum mean ``glob_exp_frac`` of the kept genes (SpaRED: 0.7), in ``[0, 1]``.
    wildcard_genes
        Explicit list of genes to keep instead of the gene rules (all must be in ``adata.var_names``).
    library_key
        ``adata.obs`` column with the slide of each spot; ``None`` for a single slide.
    fit_obs
        Boolean mask of the spots the gene statistics are fitted on.
    split_key
        Alternative to ``fit_obs``: ``adata.obs`` column whose value ``train_value`` marks training spots.
    train_value
        Training label(s) in ``adata.obs[split_key]``.
    inplace
        Subset ``adata`` in place (and log what was removed and why); otherwise return the masks and
        statistics and leave ``adata`` unchanged.

    Returns
    -------
    With ``inplace=True``: ``None``; ``adata`` is subset and gets

    ``adata.var["exp_frac"]``, ``adata.var["glob_exp_frac"]``
        The fractions of step 2 for the kept genes.
    ``adata.uns["filter_spared"]``
        ``params`` (every argument) and ``stats`` (counts removed at each step).

    With ``inplace=False``: a dict with ``obs_mask`` / ``var_mask`` (bool arrays over the input spots and
    genes, True = kept), ``exp_frac`` / ``glob_exp_frac`` (Series over all input genes, NaN where not
    computed), ``spot_counts`` / ``gene_counts`` (totals used by the thresholds) and ``stats``.
    """
    check_adata(adata)
    X = get_matrix(adata, layer)
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite_nonnegative(X, what=what)
    for name, val in (
        ("cell_min_counts", cell_min_counts),
        ("cell_max_counts", cell_max_counts),
        ("gene_min_counts", gene_min_counts),
        ("gene_max_counts", gene_max_counts),
    ):
        if (
            isinstance(val, bool)
            or not isinstance(val, int | float | np.integer | np.floating)
            or np.isnan(val)
        ):
            raise TypeError(f"{name} must be a number, got {val!r}.")
    if cell_min_counts >= cell_max_counts:
        raise ValueError(
            f"cell_min_counts ({cell_min_counts}) must be below cell_max_counts ({cell_max_counts})."
        )
    if gene_min_counts >= gene_max_counts:
        raise ValueError(
            f"gene_min_counts ({gene_min_counts}) must be below gene_max_counts ({gene_max_counts})."
        )
    if not 0 <= real_data_percentage <= 1:
        raise ValueError(f"real_data_percentage must be in [0, 1], got {real_data_percentage!r}.")
    if wildcard_genes is not None:
        wildcard_genes = check_genes(adata, wildcard_genes, what="wildcard genes")
    codes = slide_labels(adata, library_key)
    n_slides = int(codes.max()) + 1
    fit = resolve_fit_mask(adata, fit_obs, split_key, train_value)
    if sp.issparse(X):
        X = X.tocsr()
        if not X.has_canonical_format:  # duplicate entries would be counted twice
            X = X.copy()
            X.sum_duplicates()

    n_obs0, n_vars0 = adata.shape
    spot_counts = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    too_low = spot_counts <= cell_min_counts
    too_high = spot_counts >= cell_max_counts
    obs_mask = ~(too_low | too_high)
    if not obs_mask.any():
        raise ValueError(
            f"No spot has a total count strictly inside ({cell_min_counts}, {cell_max_counts}); "
            f"totals range from {spot_counts.min():g} to {spot_counts.max():g}."
        )
    fit_rows = np.flatnonzero(obs_mask if fit is None else obs_mask & fit)
    if fit_rows.size == 0:
        raise ValueError("No training spot passes the spot count thresholds; cannot fit the gene statistics.")
    exp_frac, glob_exp_frac, gene_counts = _fractions_and_totals(X, codes, fit_rows, n_slides)

    stats: dict[str, int] = {
        "n_obs_in": n_obs0,
        "n_vars_in": n_vars0,
        "n_obs_below_cell_min_counts": int(too_low.sum()),
        "n_obs_above_cell_max_counts": int(too_high.sum()),
        "n_fit_obs": int(fit_rows.size),
    }
    if wildcard_genes is not None:
        var_mask = adata.var_names.isin(wildcard_genes)
        stats["n_vars_gene_counts"] = 0
        stats["n_vars_exp_frac"] = 0
    else:
        count_ok = (gene_counts > gene_min_counts) & (gene_counts < gene_max_counts)
        if not count_ok.any():
            raise ValueError(
                f"No gene has a total count strictly inside ({gene_min_counts}, {gene_max_counts}) on the "
                f"{'training ' if fit is not None else ''}spots that pass the spot thresholds."
            )
        cand = np.flatnonzero(count_ok)
        keep = prefix_rule(exp_frac[cand], glob_exp_frac[cand], real_data_percentage)
        if not keep.any():
            raise ValueError(
                f"All genes were filtered out: even the gene with the highest exp_frac has glob_exp_frac "
                f"{glob_exp_frac[cand].max():.3f} < real_data_percentage={real_data_percentage}. "
                "Lower real_data_percentage or pass wildcard_genes."
            )
        var_mask = np.zeros(n_vars0, dtype=bool)
        var_mask[cand[keep]] = True
        stats["n_vars_gene_counts"] = int((~count_ok).sum())
        stats["n_vars_exp_frac"] = int(count_ok.sum() - keep.sum())

    # a weight vector of X's dtype keeps scipy from up-casting (copying) the whole matrix; only > 0 matters
    w = var_mask.astype(X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64)
    kept_totals = np.asarray(X @ w).ravel()
    empty = obs_mask & (kept_totals == 0)
    obs_mask &= ~empty
    if not obs_mask.any():
        raise ValueError("Every spot has zero counts in the kept genes; nothing passes the filter.")
    stats["n_obs_zero_after_gene_filter"] = int(empty.sum())
    stats["n_obs_out"] = int(obs_mask.sum())
    stats["n_vars_out"] = int(var_mask.sum())

    params = {
        "layer": layer,
        "cell_min_counts": float(cell_min_counts),
        "cell_max_counts": float(cell_max_counts),
        "gene_min_counts": float(gene_min_counts),
        "gene_max_counts": float(gene_max_counts),
        "real_data_percentage": float(real_data_percentage),
        "wildcard_genes": None if wildcard_genes is None else list(wildcard_genes),
        "library_key": library_key,
        "fit_on": "all spots"
        if fit is None
        else ("fit_obs" if fit_obs is not None else f"{split_key}=={train_value!r}"),
    }
    ef = pd.Series(exp_frac, index=adata.var_names, name=Key.EXP_FRAC)
    gef = pd.Series(glob_exp_frac, index=adata.var_names, name=Key.GLOB_EXP_FRAC)
    if not inplace:
        return {
            "obs_mask": obs_mask,
            "var_mask": var_mask,
            "exp_frac": ef,
            "glob_exp_frac": gef,
            "spot_counts": pd.Series(spot_counts, index=adata.obs_names),
            "gene_counts": pd.Series(gene_counts, index=adata.var_names),
            "stats": stats,
        }

    logger.info(
        "filter_spared: removed %d of %d spots (%d with total counts <= %g, %d >= %g, %d without counts in the "
        "kept genes) and %d of %d genes (%d by total counts, %d by the expression-fraction rule%s); %d spots x "
        "%d genes remain.",
        n_obs0 - stats["n_obs_out"],
        n_obs0,
        stats["n_obs_below_cell_min_counts"],
        cell_min_counts,
        stats["n_obs_above_cell_max_counts"],
        cell_max_counts,
        stats["n_obs_zero_after_gene_filter"],
        n_vars0 - stats["n_vars_out"],
        n_vars0,
        stats["n_vars_gene_counts"],
        stats["n_vars_exp_frac"],
        ", wildcard list" if wildcard_genes is not None else "",
        stats["n_obs_out"],
        stats["n_vars_out"],
    )
    _warn_heavy_filtering(stats, params)
    adata._inplace_subset_var(np.flatnonzero(var_mask))  # genes first: the row copy is then smaller
    adata._inplace_subset_obs(np.flatnonzero(obs_mask))
    adata.var[Key.EXP_FRAC] = ef.to_numpy()[var_mask]
    adata.var[Key.GLOB_EXP_FRAC] = gef.to_numpy()[var_mask]
    adata.uns["filter_spared"] = {"params": params, "stats": stats}
    return None
