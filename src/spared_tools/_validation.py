"""Input checks shared by every public function. Each raises an error that names the problem.

The argument checks that need no AnnData (:func:`check_int`, :func:`check_number`, :func:`check_choice`,
:func:`check_organism`) live in :mod:`spared_tools._checks` so that ``_kernels`` and ``models`` can use them;
they are re-exported here, so every module outside those two imports its checks from this one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._checks import ORGANISMS, check_choice, check_int, check_number, check_organism
from ._keys import Key

__all__ = [
    "ORGANISMS",
    "check_adata",
    "check_array_coords",
    "check_choice",
    "check_finite_nonnegative",
    "check_genes",
    "check_int",
    "check_new_key",
    "check_nonnegative_int",
    "check_number",
    "check_obs_key",
    "check_organism",
    "check_rate",
    "check_subset",
    "check_unique_var_names",
    "get_matrix",
    "input_layer",
    "slide_labels",
]


def check_adata(adata: object, *, name: str = "adata", genes: bool = True) -> AnnData:
    """Raise ``TypeError`` unless ``adata`` is an :class:`~anndata.AnnData` with at least one spot and gene.

    ``genes=False`` accepts an AnnData of spots alone (``n_vars`` 0): positions and images, e.g. a new
    section whose expression a trained model is to predict.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"{name} must be an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"{name} has no observations (spots).")
    if genes and adata.n_vars == 0:
        raise ValueError(f"{name} has no variables (genes).")
    return adata


def get_matrix(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= to choose the input matrix.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers; available: {sorted(adata.layers.keys())}."
        )
    return adata.layers[layer]


def check_finite_nonnegative(X, *, what: str = "the matrix", allow_negative: bool = False) -> None:
    """Raise ``ValueError`` if ``X`` (dense or sparse) holds NaN/inf or, unless allowed, negative values."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_:
        raise TypeError(f"{what} must be numeric, got dtype {data.dtype}.")
    if not data.size:
        return
    # min/max propagate NaN and expose inf without allocating a mask the size of the data
    lo, hi = data.min(), data.max()
    if np.issubdtype(data.dtype, np.floating) and not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what} contains {int((~np.isfinite(data)).sum())} NaN or infinite values.")
    if not allow_negative and lo < 0:
        raise ValueError(f"{what} contains {int((data < 0).sum())} negative values; counts must be >= 0.")


def check_obs_key(adata: AnnData, key: str, *, what: str = "column") -> pd.Series:
    """Return ``adata.obs[key]`` or raise ``KeyError`` naming the missing column."""
    if key not in adata.obs.columns:
        raise KeyError(f"adata.obs has no {what} {key!r}; available columns: {list(adata.obs.columns)}.")
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(f"adata.obs[{key!r}] has {int(col.isna().sum())} missing values.")
    return col


def slide_labels(adata: AnnData, library_key: str | None = Key.SLIDE) -> np.ndarray:
    """Integer slide codes per spot (all zeros when ``library_key`` is None or absent and there is one slide)."""
    if library_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64)
    if library_key not in adata.obs.columns:
        raise KeyError(
            f"adata.obs has no slide column {library_key!r}. Pass library_key=None for a single slide, "
            f"or the name of the column that identifies slides."
        )
    return pd.Categorical(check_obs_key(adata, library_key, what="slide column")).codes.astype(np.int64)


def check_array_coords(
    adata: AnnData, row_key: str = Key.ARRAY_ROW, col_key: str = Key.ARRAY_COL
) -> np.ndarray:
    """Return integer array coordinates ``(n_obs, 2)`` = ``[row, col]`` with clear errors when absent or non-integer."""
    missing = [k for k in (row_key, col_key) if k not in adata.obs.columns]
    if missing:
        raise KeyError(
            f"Array coordinates {missing} are missing from adata.obs. Lattice graphs need integer "
            f"{row_key!r}/{col_key!r}; use coord_type='generic' for pixel coordinates in obsm['spatial']."
        )
    rc = adata.obs[[row_key, col_key]].to_numpy()
    try:
        rcf = rc.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"adata.obs[{row_key!r}] and [{col_key!r}] must be numeric.") from err
    if not np.isfinite(rcf).all():
        raise ValueError(f"adata.obs[{row_key!r}]/[{col_key!r}] contain NaN or infinite values.")
    if not np.allclose(rcf, np.round(rcf)):
        raise ValueError(f"adata.obs[{row_key!r}]/[{col_key!r}] must hold integer array coordinates.")
    return np.round(rcf).astype(np.int64)


def check_genes(adata: AnnData, genes: Sequence[str] | str, *, what: str = "genes") -> list[str]:
    """Return ``genes`` as a list, raising ``KeyError`` that lists the unknown ones."""
    genes = [genes] if isinstance(genes, str) else list(genes)
    unknown = [g for g in genes if g not in adata.var_names]
    if unknown:
        show = ", ".join(map(repr, unknown[:10])) + (" …" if len(unknown) > 10 else "")
        raise KeyError(f"{len(unknown)} {what} not in adata.var_names: {show}.")
    return genes


def check_new_key(container, key: str, *, where: str, overwrite: bool = True) -> None:
    """Raise if ``key`` exists in ``container`` and ``overwrite`` is False."""
    if not overwrite and key in container:
        raise KeyError(f"{where}[{key!r}] already exists; pass another key_added= or overwrite=True.")


def check_nonnegative_int(value: object, name: str) -> int:
    """``value`` as an ``int``, or a ``ValueError`` naming ``name`` unless it is an integer ``>= 0`` (not a bool)."""
    return check_int(value, name, min=0)


def check_rate(value: object, name: str) -> float:
    """``value`` as a ``float``, or a ``ValueError`` naming ``name`` unless it is a number in ``[0, 1)`` (a dropout rate)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.integer | np.floating)
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    return float(value)


def check_unique_var_names(adata: AnnData, *, what: str = "adata.var_names") -> None:
    """Raise ``ValueError`` naming the duplicated gene names (per-gene tables cannot be joined on them)."""
    names = pd.Index(adata.var_names)
    if names.is_unique:
        return
    dup = names[names.duplicated(keep=False)]
    counts = pd.Series(dup).value_counts()
    show = ", ".join(f"{g!r} ×{n}" for g, n in counts.iloc[:10].items()) + (" …" if counts.size > 10 else "")
    raise ValueError(
        f"{what} has {counts.size} duplicated gene name(s) ({int(counts.sum())} genes): {show}. "
        "Per-gene values (lengths, statistics) cannot be matched to them unambiguously; sum or drop the "
        "duplicates, or call adata.var_names_make_unique() if they are different genes."
    )


def check_subset(
    values: str | Sequence[object] | None, available: Sequence[str], *, name: str, what: str, where: str
) -> list[str]:
    """``values`` as a list of distinct names of ``available`` (``None``: all of them; a ``str``: one).

    Parameters
    ----------
    values
        The names asked for.
    available
        The names that exist.
    name
        The argument's name, used in the message about repeated names.
    what
        What the names are ("her2st sections"), used in the message about unknown names.
    where
        Where the available names come from ("available in <folder>"), used in that message.
    """
    if values is None:
        return list(available)
    names = [values] if isinstance(values, str) else [str(v) for v in values]
    known = set(available)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"Unknown {what} {unknown}; {where}: {list(available)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"{name} lists a name more than once: {names}.")
    return names


def input_layer(
    adata: AnnData, layer: str | None, *, key_added: str | None = None, allow_negative: bool = False
):
    """``adata.X`` or ``adata.layers[layer]``, checked finite (and ``>= 0`` unless ``allow_negative``).

    Parameters
    ----------
    adata
        The data.
    layer
        The input layer (``None``: ``adata.X``).
    key_added
        The output layer; a ``ValueError`` when it would overwrite the input.
    allow_negative
        Accept negative values (log-scale or batch-corrected input).
    """
    if key_added is not None and key_added == layer:
        raise ValueError(f"key_added={key_added!r} would overwrite the input layer; choose another name.")
    X = get_matrix(adata, layer)
    check_finite_nonnegative(
        X, what="adata.X" if layer is None else f"adata.layers[{layer!r}]", allow_negative=allow_negative
    )
    return X
