"""Small synthetic spatial data with spatial and gene-gene structure, for the SpaCKLE tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

import spared_tools as sp


def lattice(side: int, geometry: str) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(
        np.arange(side), np.arange(2 * side if geometry == "hex" else side), indexing="ij"
    )
    rows, cols = rows.ravel(), cols.ravel()
    if geometry == "hex":
        keep = (rows + cols) % 2 == 0
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def make_adata(
    *,
    n_slides: int = 3,
    side: int = 8,
    n_genes: int = 12,
    geometry: str = "square",
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> ad.AnnData:
    """``n_slides`` slides of a ``side × side`` lattice; genes = smooth spatial factors × loadings + noise.

    Entries drop out with a probability that grows as the value falls (as in real data). Writes layers
    ``log1p`` (zeros = missing), ``mask`` and ``median`` (SpaRED median completion) and ``obs['split']``.
    """
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(4, n_genes))
    obs, blocks = [], []
    for s in range(n_slides):
        rows, cols = lattice(side, geometry)
        x = cols * (0.5 if geometry == "hex" else 1.0)
        y = rows.astype(float)
        ph = rng.uniform(0, 6, size=4)
        F = np.stack(
            [
                np.sin(x / 2.5 + ph[0]),
                np.cos(y / 3 + ph[1]),
                np.sin((x + y) / 4 + ph[2]),
                np.cos((x - y) / 3 + ph[3]),
            ],
            1,
        )
        L = np.clip(3 + 0.8 * F @ W + rng.normal(scale=0.2, size=(len(rows), n_genes)), 0.2, None)
        dropped = rng.random(L.shape) < 1 / (1 + np.exp(2 * (L - 2.0)))
        blocks.append(np.where(dropped, 0.0, L))
        obs.append(
            pd.DataFrame(
                {
                    "slide_id": f"s{s}",
                    "array_row": rows,
                    "array_col": cols,
                    "split": splits[s % len(splits)],
                }
            )
        )
    obs = pd.concat(obs, ignore_index=True)
    obs.index = [f"spot{i}" for i in range(len(obs))]
    X = np.vstack(blocks).astype(np.float32)
    a = ad.AnnData(X=X.copy(), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    a.layers["log1p"] = X
    prev = sp.settings.verbosity
    sp.settings.verbosity = 1
    try:
        sp.pp.median_complete(a, layer="log1p")
    finally:
        sp.settings.verbosity = prev
    return a
