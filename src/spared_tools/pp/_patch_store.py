"""Where extracted patches live (``obsm`` or a ``.npy`` file), how to read them, and a torch dataset over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._docs import d
from spared_tools._keys import Key
from spared_tools._validation import check_adata


def _patch_source(adata: AnnData, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(array holding the patches, row of each spot of ``adata`` in it or None for identity)."""
    info = adata.uns.get(key)
    if key in adata.obsm:
        arr = adata.obsm[key]
        if not (isinstance(arr, np.ndarray) and arr.ndim == 4 and arr.shape[3] == 3):
            raise ValueError(f"adata.obsm[{key!r}] is not a (n_obs, H, W, 3) patch array.")
        return arr, None
    if isinstance(info, dict) and info.get("store") == "disk":
        path = Path(str(info["path"]))
        if not path.exists():
            raise FileNotFoundError(f"Patch file {path} recorded in adata.uns[{key!r}] does not exist.")
        arr = np.load(path, mmap_mode="r")
        names = pd.Index(np.asarray(info["obs_names"]).astype(str))
        rows = names.get_indexer(adata.obs_names)
        if (rows < 0).any():
            raise KeyError(
                f"{int((rows < 0).sum())} spots of adata are not in the patch file {path}; re-run extract_patches."
            )
        if rows.size == arr.shape[0] and np.array_equal(rows, np.arange(arr.shape[0])):
            return arr, None
        return arr, rows.astype(np.int64)
    raise KeyError(
        f"No patches under key {key!r}: run sp.pp.extract_patches(adata, key_added={key!r}) first "
        f"(obsm keys: {list(adata.obsm.keys())})."
    )


@d.inject
def patches_shape(adata: AnnData, key: str = Key.PATCHES) -> tuple[int, int, int, int]:
    """``(n_obs, H, W, 3)`` of the patches stored under ``key`` (memory or disk store).

    Parameters
    ----------
    %(patches_key)s

    Returns
    -------
    The shape, aligned with ``adata``'s spots.
    """
    arr, rows = _patch_source(adata, key)
    n = adata.n_obs if rows is not None else arr.shape[0]
    return (int(n), int(arr.shape[1]), int(arr.shape[2]), int(arr.shape[3]))


@d.inject
def get_patches(
    adata: AnnData, key: str = Key.PATCHES, indices: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """uint8 patches ``(n, H, W, 3)`` of ``adata``'s spots (all, or positions ``indices``), either store.

    Parameters
    ----------
    %(patches_key)s
    indices
        Positions of the spots to read (default: all; a disk store is then returned as a memmap).

    Returns
    -------
    The patches in the order of ``adata`` (or of ``indices``).
    """
    arr, rows = _patch_source(adata, key)
    if indices is None:
        return arr if rows is None else arr[rows]
    idx = np.asarray(indices, dtype=np.int64)
    return np.asarray(arr[idx if rows is None else rows[idx]])


class _NpyRowWriter:
    """Write rows of a uint8 ``.npy`` file in any order through a plain file handle.

    Unlike a writable memmap, the written pages never count toward the process's resident memory, so
    the disk store stays bounded by one decoded slide however many spots there are.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.row_bytes = int(np.prod(shape[1:]))
        self.fh = open(path, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_1_0(self.fh, header)
        self.offset = self.fh.tell()
        self.fh.truncate(self.offset + self.row_bytes * shape[0])

    def __setitem__(self, row: int, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, dtype=np.uint8)
        if value.shape != self.shape[1:]:
            raise ValueError(f"row of shape {value.shape}, expected {self.shape[1:]}")
        self.fh.seek(self.offset + int(row) * self.row_bytes)
        self.fh.write(value.tobytes())

    def close(self) -> None:
        self.fh.close()


@d.inject
class PatchDataset:
    """Torch dataset over the patches written by :func:`extract_patches` (memory or disk store).

    Items are ``(index, image)`` with ``index`` the spot's position in ``adata`` and ``image`` a uint8
    tensor ``(3, H, W)``. Disk stores are memory-mapped lazily in each worker process, so the dataset
    can be used with ``DataLoader(num_workers > 0)``.

    Parameters
    ----------
    %(patches_key)s
    augment
        Apply a uniformly random dihedral symmetry (one of 8 rotations / flips) to each item, drawn
        from torch's global generator (seeded by ``seed_everything`` and Lightning's worker seeding).
        Use only for training data.
    indices
        Positions of the spots to serve (default: all spots, in order).
    """

    def __init__(
        self,
        adata: AnnData,
        key: str = Key.PATCHES,
        *,
        augment: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        check_adata(adata, genes=False)
        arr, rows = _patch_source(adata, key)
        n = adata.n_obs
        self.key = key
        self.augment = bool(augment)
        self.indices = (
            np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        )
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"indices must lie in [0, {n}).")
        self._rows = np.arange(n, dtype=np.int64) if rows is None else rows
        if isinstance(arr, np.memmap):
            self._path: str | None = str(arr.filename)
            self._array: np.ndarray | None = None
        else:
            self._path = None
            self._array = arr
        self.image_size = (int(arr.shape[1]), int(arr.shape[2]))

    def _data(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self._path, mmap_mode="r")  # type: ignore[arg-type]
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_array"] = None
        return state

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        import torch

        pos = int(self.indices[i])
        img = torch.from_numpy(np.array(self._data()[self._rows[pos]], dtype=np.uint8)).permute(2, 0, 1)
        if self.augment:
            from spared_tools.models.image import dihedral

            k = int(torch.randint(0, 8, (1,)).item())
            img = dihedral(img, k)
        return pos, img.contiguous()
