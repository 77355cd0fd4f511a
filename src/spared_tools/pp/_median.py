"""SpaRED's adaptive median completion of missing (zero) entries, on the lattice neighbourhood."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from spared_tools._kernels.median import (
    adaptive_median_numba,
    adaptive_median_torch,
    parallel_copy,
    slide_nonzero_median,
    sort_table_by_ring,
)
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_device
from spared_tools._validation import (
    check_adata,
    check_finite_nonnegative,
    check_int,
    get_matrix,
    slide_labels,
)

_CHUNK_BYTES = 1024 * 2**20


def _dense_columns(X, g0: int, g1: int, dtype) -> np.ndarray:
    block = X[:, g0:g1]
    if sp.issparse(block):
        block = block.toarray()
    return np.ascontiguousarray(np.asarray(block), dtype=dtype)


def median_complete(
    adata: AnnData,
    *,
    layer: str | None = Key.LOG,
    key_added: str = Key.MEDIAN,
    mask_layer: str | None = None,
    mask_key_added: str | None = Key.MASK,
    n_rings: int = 4,
    geometry: Literal["auto", "hex", "square", "checkerboard"] = "auto",
    library_key: str | None = Key.SLIDE,
    neighbors: tuple[np.ndarray, np.ndarray] | None = None,
    backend: Literal["auto", "numba", "torch"] = "auto",
    device: str | None = None,
    gene_chunk_size: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Complete missing entries with SpaRED's adaptive median filter.

    For every missing entry (spot *i*, gene *j*) and for ``k = 1 … n_rings``, take the median of gene *j*
    over spot *i* and all spots of the same slide within ``k`` lattice rings of it (zeros included, as in
    SpaRED); the first non-zero median is the completed value. When every window median is zero, the value
    is the median of the gene's non-zero values in the slide, and 0 when the gene has none there. Observed
    entries are copied unchanged. Windows are lattice neighbourhoods from
    :func:`spared_tools.pp.neighbor_table` (hexagonal rings on Visium, 4-neighbour Manhattan rings on square
    grids), so a hole in the tissue does not pull in far-away spots.

    The work is vectorised over genes in chunks (memory stays bounded: one chunk of ``n_obs ×
    gene_chunk_size`` values at a time) and runs with numba on the CPU or with torch on ``device``.

    Parameters
    ----------
    adata
        Annotated data with integer ``array_row`` / ``array_col`` and a slide column.
    layer
        Layer to complete (default the ``log1p`` layer); ``None`` uses ``adata.X``. Must be finite.
    key_added
        Layer that receives the completed matrix (dense, dtype of the input, at least float32).
    mask_layer
        Bool layer, True where an entry is observed ("real"). ``None`` derives it from the input layer:
        an entry is missing where its value is 0.
    mask_key_added
        Layer that receives the derived mask when ``mask_layer`` is None (``None``: do not store it).
    n_rings
        Largest window, in lattice rings (SpaRED uses 4).
    geometry
        Lattice geometry passed to :func:`~spared_tools.pp.neighbor_table` (``"auto"`` detects it).
    library_key
        ``adata.obs`` column naming the slide of each spot; ``None`` for a single slide.
    neighbors
        Precomputed ``(table, ring)`` as returned by :func:`~spared_tools.pp.neighbor_table` with at least
        ``n_rings`` rings; skips building it.
    backend
        ``"numba"`` (CPU), ``"torch"`` (any device) or ``"auto"``: torch when ``device`` resolves to a
        GPU, numba otherwise.
    device
        Device for the torch backend (``None`` → ``sp.settings.device``).
    gene_chunk_size
        Genes processed at a time; ``None`` chooses about 1 GiB per chunk.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); writes

    ``adata.layers[key_added]``
        The completed matrix.
    ``adata.layers[mask_key_added]``
        Bool mask of observed entries (only when ``mask_layer`` is None and ``mask_key_added`` is set).
    ``adata.uns["median_complete"]["params"]``
        The parameters used (layer, mask, rings, backend, device, geometry).
    """
    check_adata(adata)
    if copy:
        adata = adata.copy()
    if key_added == layer:
        raise ValueError(f"key_added={key_added!r} would overwrite the input layer; choose another name.")
    X = get_matrix(adata, layer)
    what = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite_nonnegative(X, what=what, allow_negative=True)
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}.")
    check_int(n_rings, "n_rings")

    codes = slide_labels(adata, library_key)
    n_slides = int(codes.max()) + 1

    if mask_layer is not None:
        if mask_layer not in adata.layers:
            raise KeyError(
                f"mask_layer {mask_layer!r} not found in adata.layers; available: {sorted(adata.layers)}."
            )
        M = adata.layers[mask_layer]
        M = M.toarray() if sp.issparse(M) else np.asarray(M)
        if M.dtype != np.bool_:
            raise TypeError(f"adata.layers[{mask_layer!r}] must be boolean (True = observed), got {M.dtype}.")
        if M.shape != adata.shape:
            raise ValueError(f"adata.layers[{mask_layer!r}] has shape {M.shape}, expected {adata.shape}.")
        observed = M
    else:
        observed = None

    if neighbors is None:
        from ._graph import neighbor_table

        table, ring = neighbor_table(adata, n_rings=n_rings, geometry=geometry, library_key=library_key)
    else:
        table, ring = neighbors
    table = np.asarray(table)
    ring = np.asarray(ring)
    if table.ndim != 2 or table.shape[0] != adata.n_obs:
        raise ValueError(f"neighbour table must have shape (n_obs={adata.n_obs}, 1 + K), got {table.shape}.")
    if np.any(table[:, 0] != np.arange(adata.n_obs)):
        raise ValueError("column 0 of the neighbour table must be the spot itself.")
    if table.max() >= adata.n_obs or table.min() < -1:
        raise ValueError("neighbour table holds indices outside [-1, n_obs).")
    table, ring = sort_table_by_ring(table, ring)
    if int(ring.max()) < n_rings:
        raise ValueError(
            f"the neighbour table reaches ring {int(ring.max())} only; n_rings={n_rings} requested."
        )
    keep = ring <= n_rings
    table, ring = np.ascontiguousarray(table[:, keep]), ring[keep]
    nb_codes = np.where(table >= 0, codes[np.maximum(table, 0)], codes[:, None])
    if np.any(nb_codes != codes[:, None]):
        raise ValueError(
            "the neighbour table links spots of different slides; build it with library_key set."
        )

    dev = resolve_device(device)
    use_torch = backend == "torch" or (backend == "auto" and dev.type != "cpu")
    dtype = np.result_type(X.dtype, np.float32)
    n_obs, n_genes = adata.shape
    if gene_chunk_size is None:
        gene_chunk_size = max(1, _CHUNK_BYTES // (n_obs * np.dtype(dtype).itemsize))
    else:
        check_int(gene_chunk_size, "gene_chunk_size")
    if sp.issparse(X):
        X = X.tocsc()

    t0 = time.perf_counter()
    out = np.empty((n_obs, n_genes), dtype=dtype)
    store_mask = observed is None and bool(mask_key_added)
    one_chunk = gene_chunk_size >= n_genes
    # one chunk: its non-zero mask is the stored mask; several: assembled column block by block
    mask_out = np.empty((n_obs, n_genes), dtype=bool) if store_mask and not one_chunk else None
    n_missing = 0
    for g0 in range(0, n_genes, gene_chunk_size):
        g1 = min(n_genes, g0 + gene_chunk_size)
        block = _dense_columns(X, g0, g1, dtype)
        nonzero = block != 0
        obs_block = nonzero if observed is None else observed[:, g0:g1]
        if store_mask:
            if one_chunk:
                mask_out = obs_block
            else:
                assert mask_out is not None
                mask_out[:, g0:g1] = obs_block
        missing = None if observed is None else ~obs_block  # None: the zeros (read from nonzero)
        n_missing += obs_block.size - int(np.count_nonzero(obs_block))
        fallback = slide_nonzero_median(block, codes, n_slides)
        if use_torch:
            out[:, g0:g1] = adaptive_median_torch(
                block,
                ~obs_block if missing is None else missing,
                table,
                ring,
                codes,
                n_rings=n_rings,
                fallback=fallback,
                device=dev,
            )
        elif one_chunk:  # write straight into the result
            # touch the fresh pages first, on all threads: page faults taken inside the kernel's
            # irregular writes cost more than this streaming copy
            parallel_copy(out, block)
            adaptive_median_numba(
                block,
                missing,
                table,
                ring,
                codes,
                n_rings=n_rings,
                fallback=fallback,
                out=out,
                nonzero=nonzero,
            )
        else:
            out[:, g0:g1] = adaptive_median_numba(
                block, missing, table, ring, codes, n_rings=n_rings, fallback=fallback, nonzero=nonzero
            )

    adata.layers[key_added] = out
    if mask_out is not None:
        adata.layers[mask_key_added] = mask_out
    adata.uns["median_complete"] = {
        "params": {
            "layer": layer,
            "key_added": key_added,
            "mask_layer": mask_layer,
            "mask_key_added": mask_key_added if mask_out is not None else None,
            "n_rings": int(n_rings),
            "geometry": geometry,
            "library_key": library_key,
            "backend": "torch" if use_torch else "numba",
            "device": str(dev) if use_torch else "cpu",
        }
    }
    logger.info(
        "median_complete: completed %d of %d entries (%.1f%%) in %.2f s -> layers[%r]",
        n_missing,
        n_obs * n_genes,
        100.0 * n_missing / max(n_obs * n_genes, 1),
        time.perf_counter() - t0,
        key_added,
    )
    return adata if copy else None
