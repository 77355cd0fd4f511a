"""Image patches around each spot (``sp.pp.extract_patches``) and a torch dataset over them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import settings
from spared_tools._validation import check_adata, check_new_key

__all__ = ["PatchDataset", "extract_patches", "get_patches", "patches_shape"]

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]

_MPP_KEYS = ("microns_per_pixel", "microns_per_pixel_fullres")


# ---------------------------------------------------------------------------------------------- geometry
def crop_window(center: float, side: int) -> tuple[int, int]:
    """Pixel window ``[start, start + side)`` of a crop of ``side`` pixels centred on ``center``.

    The centre pixel is ``round(center)`` (round half to even, as :func:`numpy.round`); the window starts
    ``side // 2`` pixels before it, so odd sides are exactly centred and even sides put the centre pixel
    at position ``side // 2``.

    Parameters
    ----------
    center
        Coordinate of the spot centre in pixels (column for x, row for y).
    side
        Crop side in pixels (``>= 1``).

    Returns
    -------
    ``(start, stop)`` pixel indices, possibly outside the image (padded later).
    """
    start = int(np.round(center)) - side // 2
    return start, start + side


def crop_padded(image: np.ndarray, x: float, y: float, side: int, fill: int = 255) -> np.ndarray:
    """Square ``side`` × ``side`` crop of ``image`` (H, W, C) centred on ``(x, y)``, padded with ``fill``.

    Parameters
    ----------
    image
        Image array ``(H, W, C)``.
    x
        Column of the centre, in pixels.
    y
        Row of the centre, in pixels.
    side
        Crop side in pixels.
    fill
        Value of pixels that fall outside the image.

    Returns
    -------
    The crop ``(side, side, C)`` with ``image``'s dtype.
    """
    c0, c1 = crop_window(x, side)
    r0, r1 = crop_window(y, side)
    out = np.full((side, side, image.shape[2]), fill, dtype=image.dtype)
    h, w = image.shape[:2]
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if rr0 < rr1 and cc0 < cc1:
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = image[rr0:rr1, cc0:cc1]
    return out


def _resample(name: str) -> Any:
    from PIL import Image

    table = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    if name not in table:
        raise ValueError(f"interpolation must be one of {sorted(table)}, got {name!r}.")
    return table[name]


def resize_patch(patch: np.ndarray, size: int, interpolation: Interpolation = "bilinear") -> np.ndarray:
    """Resize a uint8 ``(h, w, 3)`` patch to ``(size, size, 3)`` with Pillow (anti-aliased when shrinking).

    Parameters
    ----------
    patch
        uint8 RGB patch.
    size
        Output side in pixels.
    interpolation
        ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"lanczos"``.

    Returns
    -------
    The resized uint8 patch (``patch`` itself when it already has the requested size).
    """
    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(patch))
    return np.asarray(img.resize((size, size), resample=_resample(interpolation)))


# ---------------------------------------------------------------------------------------------- images
def _library_entry(adata: AnnData, slide: str, n_slides: int) -> tuple[str, dict]:
    spatial = adata.uns.get(Key.SPATIAL)
    if not isinstance(spatial, dict) or not spatial:
        raise KeyError(
            "adata.uns['spatial'] is missing: extract_patches needs the slide images "
            "(uns['spatial'][library_id]['images'] or ['metadata']['fullres_path'])."
        )
    if slide in spatial:
        return slide, spatial[slide]
    suffix = [k for k in spatial if str(k).endswith(f"_{slide}")]
    if len(suffix) == 1:
        return suffix[0], spatial[suffix[0]]
    if n_slides == 1 and len(spatial) == 1:
        key = next(iter(spatial))
        return key, spatial[key]
    raise KeyError(
        f"No image entry for slide {slide!r} in adata.uns['spatial'] (libraries: {sorted(spatial)}). "
        "The values of the library_key column must name the entries of uns['spatial']."
    )


def _microns_per_pixel(scalefactors: dict, lib: str) -> float:
    for key in _MPP_KEYS:
        if key in scalefactors:
            return float(scalefactors[key])
    if "spot_diameter_um" in scalefactors and "spot_diameter_fullres" in scalefactors:
        return float(scalefactors["spot_diameter_um"]) / float(scalefactors["spot_diameter_fullres"])
    raise KeyError(
        f"mpp= needs the pixel size of slide {lib!r}: set uns['spatial'][{lib!r}]['scalefactors']"
        "['microns_per_pixel'] (µm per full-resolution pixel)."
    )


@contextlib.contextmanager
def _allow_large_images() -> Iterator[None]:
    """Let Pillow open whole-slide JPEGs (~100 Mpx) that a user explicitly points us to."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _load_fullres(path: Path) -> Any:
    """Decode a full-resolution image once, as an RGB Pillow image (no extra NumPy copy of the slide)."""
    from PIL import Image

    with _allow_large_images():
        img: Any = Image.open(path)
        img.load()
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def crop_pil(image: Any, x: float, y: float, side: int, fill: int = 255) -> np.ndarray:
    """:func:`crop_padded` for a Pillow RGB image: same window, same padding, without converting the slide.

    Parameters
    ----------
    image
        Pillow image in RGB mode.
    x
        Column of the centre, in pixels.
    y
        Row of the centre, in pixels.
    side
        Crop side in pixels.
    fill
        Value of pixels that fall outside the image.

    Returns
    -------
    uint8 crop ``(side, side, 3)``.
    """
    from PIL import Image

    c0, c1 = crop_window(x, side)
    r0, r1 = crop_window(y, side)
    w, h = image.size
    if c0 >= 0 and r0 >= 0 and c1 <= w and r1 <= h:
        return np.asarray(image.crop((c0, r0, c1, r1)))
    canvas = Image.new("RGB", (side, side), (fill, fill, fill))
    cc0, rr0, cc1, rr1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
    if cc0 < cc1 and rr0 < rr1:
        canvas.paste(image.crop((cc0, rr0, cc1, rr1)), (cc0 - c0, rr0 - r0))
    return np.asarray(canvas)


def _as_rgb_uint8(img: np.ndarray, lib: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"The image of slide {lib!r} has shape {img.shape}; expected (H, W, 3) RGB.")
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ValueError(f"The image of slide {lib!r} contains NaN or infinite values.")
        hi = 1.0 if img.max() <= 1.0 else 255.0
        return np.clip(np.round(img / hi * 255.0), 0, 255).astype(np.uint8)
    if img.dtype == np.uint16:
        return np.round(img / 257.0).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        if img.size and (img.min() < 0 or img.max() > 255):
            raise ValueError(
                f"The image of slide {lib!r} has integer values outside [0, 255]; convert it to uint8."
            )
        return img.astype(np.uint8)
    raise TypeError(f"The image of slide {lib!r} has unsupported dtype {img.dtype}.")


def _slide_image(entry: dict, lib: str) -> tuple[Any, float, str]:
    """(image, scale from full-resolution pixels to image pixels, source description)."""
    meta = entry.get("metadata", {}) or {}
    fullres = meta.get("fullres_path")
    if fullres is not None and str(fullres):
        path = Path(str(fullres))
        if not path.exists():
            raise FileNotFoundError(
                f"Full-resolution image of slide {lib!r} not found at {path} "
                f"(uns['spatial'][{lib!r}]['metadata']['fullres_path'])."
            )
        return _load_fullres(path), 1.0, str(path)
    images = entry.get("images", {}) or {}
    if "hires" not in images:
        raise KeyError(
            f"Slide {lib!r} has no image: set uns['spatial'][{lib!r}]['metadata']['fullres_path'] or "
            f"provide uns['spatial'][{lib!r}]['images']['hires'] (found images: {sorted(images)})."
        )
    sf = entry.get("scalefactors", {}) or {}
    if "tissue_hires_scalef" not in sf:
        raise KeyError(
            f"uns['spatial'][{lib!r}]['scalefactors'] lacks 'tissue_hires_scalef' for the hires image."
        )
    return _as_rgb_uint8(images["hires"], lib), float(sf["tissue_hires_scalef"]), "images['hires']"


# ---------------------------------------------------------------------------------------------- storage
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


def patches_shape(adata: AnnData, key: str = "patches") -> tuple[int, int, int, int]:
    """``(n_obs, H, W, 3)`` of the patches stored under ``key`` (memory or disk store).

    Parameters
    ----------
    adata
        Annotated data with patches.
    key
        Key given to :func:`extract_patches` as ``key_added``.

    Returns
    -------
    The shape, aligned with ``adata``'s spots.
    """
    arr, rows = _patch_source(adata, key)
    n = adata.n_obs if rows is not None else arr.shape[0]
    return (int(n), int(arr.shape[1]), int(arr.shape[2]), int(arr.shape[3]))


def get_patches(
    adata: AnnData, key: str = "patches", indices: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """uint8 patches ``(n, H, W, 3)`` of ``adata``'s spots (all, or positions ``indices``), either store.

    Parameters
    ----------
    adata
        Annotated data with patches.
    key
        Key given to :func:`extract_patches` as ``key_added``.
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


# ---------------------------------------------------------------------------------------------- public
def extract_patches(
    adata: AnnData,
    *,
    library_key: str | None = Key.SLIDE,
    spatial_key: str = Key.SPATIAL,
    size: int = 224,
    scale: float = 1.0,
    mpp: float | None = None,
    store: Literal["memory", "disk"] = "memory",
    path: str | Path | None = None,
    key_added: str = "patches",
    interpolation: Interpolation = "bilinear",
    fill: int = 255,
    overwrite: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Crop a square RGB image patch around every spot.

    The crop covers the spot diameter × ``scale`` (``spot_diameter_fullres`` from the slide's
    scalefactors) or, when ``mpp`` is given, ``size * mpp`` µm (using the slide's
    ``microns_per_pixel``, HEST-style fixed physical resolution). It is cut from the full-resolution
    image at ``uns['spatial'][lib]['metadata']['fullres_path']`` when present (decoded one slide at a
    time and released) or else from ``uns['spatial'][lib]['images']['hires']`` scaled by
    ``tissue_hires_scalef``, then resized to ``size`` × ``size`` pixels. Pixels outside the image are
    filled with ``fill`` (white, the background of H&E). The crop window of side ``s`` px starts
    ``s // 2`` px before the pixel ``round(centre)`` (see :func:`crop_window`).

    Parameters
    ----------
    adata
        Annotated data with spot centres in ``obsm[spatial_key]`` (``[x, y]`` full-resolution pixels)
        and the slide images in ``uns['spatial']``.
    library_key
        ``obs`` column naming each spot's slide (an entry of ``uns['spatial']``); ``None`` for one slide.
    spatial_key
        ``obsm`` key of the spot centres.
    size
        Output patch side in pixels.
    scale
        Crop side as a multiple of the spot diameter (ignored when ``mpp`` is given).
    mpp
        Output resolution in µm per pixel: the crop covers ``size * mpp`` µm.
    store
        ``"memory"``: ``obsm[key_added]`` uint8 ``(n_obs, size, size, 3)``. ``"disk"``: a uint8 ``.npy``
        file at ``path``, written row by row and read back memory-mapped, so memory stays bounded by one
        decoded slide however many spots there are. The file is removed if extraction fails.
    path
        ``.npy`` file for ``store="disk"``.
    key_added
        Key of the patches in ``obsm`` (memory) and of their description in ``uns``.
    interpolation
        Resampling used to resize crops: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"lanczos"``.
    fill
        uint8 value of pixels outside the image.
    overwrite
        Replace existing patches under ``key_added``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``). Writes:

    * ``obsm[key_added]`` – uint8 ``(n_obs, size, size, 3)`` patches (``store="memory"`` only);
    * ``uns[key_added]`` – ``{"params": ..., "store": ..., "shape": ..., "crop_px": {slide: side in
      source pixels}, "source": {slide: image used}}``, plus ``"path"`` and ``"obs_names"`` (the row
      order of the file) for ``store="disk"``.
    """
    check_adata(adata)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}.")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}.")
    if mpp is not None and (not np.isfinite(mpp) or mpp <= 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}.")
    if store not in ("memory", "disk"):
        raise ValueError(f"store must be 'memory' or 'disk', got {store!r}.")
    if store == "disk" and path is None:
        raise ValueError("store='disk' needs path= (the .npy file to write).")
    if not 0 <= int(fill) <= 255:
        raise ValueError(f"fill must be a uint8 value in [0, 255], got {fill!r}.")
    _resample(interpolation)
    check_new_key(adata.obsm, key_added, where="adata.obsm", overwrite=overwrite)
    check_new_key(adata.uns, key_added, where="adata.uns", overwrite=overwrite)
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{spatial_key!r}] with the spot centres (x, y in full-resolution pixels) is missing."
        )
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must be (n_obs, 2) [x, y]; got shape {coords.shape}.")
    if not np.isfinite(coords[:, :2]).all():
        raise ValueError(f"adata.obsm[{spatial_key!r}] contains NaN or infinite coordinates.")
    if store == "disk" and not adata.obs_names.is_unique:
        raise ValueError("store='disk' needs unique adata.obs_names; call adata.obs_names_make_unique().")

    if copy:
        adata = adata.copy()
    if library_key is None:
        slides = pd.Series(["__single__"] * adata.n_obs, index=adata.obs_names)
    else:
        if library_key not in adata.obs.columns:
            raise KeyError(
                f"adata.obs has no slide column {library_key!r}; pass library_key=None for one slide."
            )
        slides = adata.obs[library_key].astype(str)
        if adata.obs[library_key].isna().any():
            raise ValueError(f"adata.obs[{library_key!r}] has missing values.")
    slide_values = list(pd.unique(slides.to_numpy()))

    shape = (adata.n_obs, size, size, 3)
    if store == "disk":
        path = Path(path)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        writer: _NpyRowWriter | np.ndarray = _NpyRowWriter(path, shape)
    else:
        writer = np.empty(shape, dtype=np.uint8)

    crop_px: dict[str, int] = {}
    sources: dict[str, str] = {}
    show = settings.progress and settings.verbosity >= 2
    try:
        for slide in slide_values:
            idx = np.flatnonzero((slides == slide).to_numpy())
            lib, entry = _library_entry(adata, slide, len(slide_values))
            sf = entry.get("scalefactors", {}) or {}
            if mpp is not None:
                side_full = size * float(mpp) / _microns_per_pixel(sf, lib)
            else:
                if "spot_diameter_fullres" not in sf:
                    raise KeyError(
                        f"uns['spatial'][{lib!r}]['scalefactors'] lacks 'spot_diameter_fullres'; pass mpp=."
                    )
                side_full = float(sf["spot_diameter_fullres"]) * scale
            image, img_scale, source = _slide_image(entry, lib)
            side = max(1, int(np.round(side_full * img_scale)))
            crop_px[slide], sources[slide] = side, source
            logger.info(f"extract_patches: slide {slide!r}: {idx.size} spots, {side} px crops from {source}.")
            xy = coords[idx, :2] * img_scale
            it = range(idx.size)
            if show:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"patches {slide}", leave=False)
            for j in it:
                if isinstance(image, np.ndarray):
                    crop = crop_padded(image, xy[j, 0], xy[j, 1], side, fill=int(fill))
                else:
                    crop = crop_pil(image, xy[j, 0], xy[j, 1], side, fill=int(fill))
                writer[idx[j]] = resize_patch(crop, size, interpolation)
            del image
    except BaseException:
        if isinstance(writer, _NpyRowWriter):  # do not leave a half-written file behind
            writer.close()
            Path(path).unlink(missing_ok=True)  # type: ignore[arg-type]
        raise

    params = {
        "library_key": library_key,
        "spatial_key": spatial_key,
        "size": int(size),
        "scale": float(scale),
        "mpp": None if mpp is None else float(mpp),
        "store": store,
        "interpolation": interpolation,
        "fill": int(fill),
    }
    info: dict[str, Any] = {
        "params": params,
        "store": store,
        "shape": np.asarray(shape, dtype=np.int64),
        "crop_px": crop_px,
        "source": sources,
    }
    if store == "disk":
        assert isinstance(writer, _NpyRowWriter)
        writer.close()
        info["path"] = str(Path(path).resolve())  # type: ignore[arg-type]
        info["obs_names"] = np.asarray(adata.obs_names.astype(str))
        if key_added in adata.obsm:
            del adata.obsm[key_added]
    else:
        adata.obsm[key_added] = writer
    adata.uns[key_added] = info
    return adata if copy else None


class PatchDataset:
    """Torch dataset over the patches written by :func:`extract_patches` (memory or disk store).

    Items are ``(index, image)`` with ``index`` the spot's position in ``adata`` and ``image`` a uint8
    tensor ``(3, H, W)``. Disk stores are memory-mapped lazily in each worker process, so the dataset
    can be used with ``DataLoader(num_workers > 0)``.

    Parameters
    ----------
    adata
        Annotated data with patches.
    key
        Key given to :func:`extract_patches` as ``key_added``.
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
        key: str = "patches",
        augment: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        check_adata(adata)
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
