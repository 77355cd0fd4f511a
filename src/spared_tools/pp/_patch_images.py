"""Slide images for the patch extractor: library entries, pixel sizes and the image each slide is cut from."""

from __future__ import annotations

import abc
import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from spared_tools._keys import Key

from ._patch_crop import crop_padded, crop_pil, crop_window

_MPP_KEYS = ("microns_per_pixel", "microns_per_pixel_fullres")


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


#: Relative spread above which two slides' spot diameters (px) or crop sides (µm) count as different.
RESOLUTION_TOLERANCE = 0.1


class MixedResolutionError(ValueError):
    """Slides whose patches would not cover the same tissue area (mixed resolutions, unknown pixel size)."""


def pixel_size(scalefactors: dict) -> float | None:
    """µm per full-resolution pixel from a slide's scale factors, or ``None`` when they do not say.

    ``microns_per_pixel`` (the key of Space Ranger's ``scalefactors_json.json`` for Visium HD, written by
    every reader of this package), ``microns_per_pixel_fullres``, or ``spot_diameter_um`` divided by
    ``spot_diameter_fullres``.

    Parameters
    ----------
    scalefactors
        ``uns['spatial'][library_id]['scalefactors']``.

    Returns
    -------
    The pixel size in µm, or ``None``.
    """
    for key in _MPP_KEYS:
        if key in scalefactors:
            value = float(scalefactors[key])
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"scalefactors[{key!r}] must be a positive number of µm, got {value!r}.")
            return value
    if "spot_diameter_um" in scalefactors and "spot_diameter_fullres" in scalefactors:
        return float(scalefactors["spot_diameter_um"]) / float(scalefactors["spot_diameter_fullres"])
    return None


def _microns_per_pixel(scalefactors: dict, lib: str) -> float:
    value = pixel_size(scalefactors)
    if value is None:
        raise KeyError(
            f"mpp= needs the pixel size of slide {lib!r}: set uns['spatial'][{lib!r}]['scalefactors']"
            "['microns_per_pixel'] (µm per full-resolution pixel)."
        )
    return value


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1.0


def check_same_field(
    slides: list[str], diameters: list[float], sizes: list[float | None], scale: float
) -> None:
    """Refuse spot-diameter crops that would cover different tissue areas on different slides.

    Crops of ``scale`` spot diameters cover the same tissue on every slide when the spots have one
    physical size. Slides of different resolution (spot diameters in pixels more than
    :data:`RESOLUTION_TOLERANCE` apart) must therefore say their pixel size, so that the crops can be
    compared in µm; and crops whose sides in µm differ (spots of different platforms, e.g. 55 µm Visium
    and 100 µm ST) need ``mpp=`` instead.

    Parameters
    ----------
    slides
        Library names.
    diameters
        ``spot_diameter_fullres`` of each slide.
    sizes
        µm per full-resolution pixel of each slide (``None`` when unknown).
    scale
        Crop side in spot diameters.

    Raises
    ------
    MixedResolutionError
        When the crops would cover different tissue areas or that cannot be checked.
    """
    if len(slides) < 2:
        return
    listing = ", ".join(f"{s!r}: {d:.1f} px" for s, d in zip(slides, diameters))
    if _spread(diameters) > RESOLUTION_TOLERANCE:
        unknown = [s for s, u in zip(slides, sizes) if u is None]
        if unknown:
            raise MixedResolutionError(
                f"extract_patches: the slides have images of different resolution (spot diameter {listing}) "
                f"and the pixel size of {unknown} is unknown, so their patches cannot be checked to cover the "
                "same tissue area. Set uns['spatial'][library_id]['scalefactors']['microns_per_pixel'] (µm per "
                "full-resolution pixel; the readers of sp.io write it) for every slide, or pass mpp= with "
                "the pixel sizes set."
            )
    known = [(s, d * u * scale) for s, d, u in zip(slides, diameters, sizes) if u is not None]
    if len(known) > 1 and _spread([um for _, um in known]) > RESOLUTION_TOLERANCE:
        sides = ", ".join(f"{s!r}: {um:.0f} µm" for s, um in known)
        raise MixedResolutionError(
            f"extract_patches: crops of {scale:g} spot diameter(s) would cover different tissue areas ({sides}): "
            "the slides' spots differ in physical size (e.g. 55 µm Visium and 100 µm ST spots). Pass mpp= (µm "
            "per output pixel) so that every patch covers size * mpp µm."
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


#: Decoded TIFF tiles / strips kept for neighbouring crops (bytes).
CHUNK_CACHE_BYTES = 48 * 2**20
#: Bytes per pixel Pillow holds for a decoded RGB image (it stores RGB as 32-bit pixels).
PIL_BYTES_PER_PIXEL = 4
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideReader(abc.ABC):
    """Crops of one slide image; subclasses read them from an array, a Pillow image or TIFF windows."""

    #: Short description of how the slide is read (logged).
    how = ""

    @abc.abstractmethod
    def crop(self, x: float, y: float, side: int, fill: int) -> np.ndarray:
        """uint8 ``(side, side, 3)`` crop centred on ``(x, y)``, padded with ``fill`` outside the image."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the image."""

    def order(self, xy: np.ndarray) -> np.ndarray:
        """Order in which to cut the crops centred on ``xy`` (the given order unless a reader prefers one)."""
        return np.arange(xy.shape[0])


class _ArrayReader(SlideReader):
    how = "in memory"

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def crop(self, x: float, y: float, side: int, fill: int) -> np.ndarray:
        return crop_padded(self.image, x, y, side, fill=fill)

    def close(self) -> None:
        self.image = np.zeros((0, 0, 3), np.uint8)


class _PilReader(SlideReader):
    how = "decoded whole (Pillow)"

    def __init__(self, path: Path) -> None:
        self.image: Any = _load_fullres(path)

    def crop(self, x: float, y: float, side: int, fill: int) -> np.ndarray:
        return crop_pil(self.image, x, y, side, fill=fill)

    def close(self) -> None:
        self.image.close()


class _WindowReader(SlideReader):
    """TIFF read window by window: only the tiles or strips under each crop are decoded."""

    def __init__(self, path: Path, lib: str) -> None:
        import tifffile

        self.lib = lib
        self._tif = tifffile.TiffFile(path)
        self._store: Any = None
        page = self._tif.series[0].levels[0].keyframe
        if page.is_memmappable:
            self.array: Any = tifffile.memmap(path, page=0, mode="r")
            self.how = "memory-mapped TIFF"
        else:
            import zarr

            self._store = self._tif.aszarr(level=0)
            self.array = zarr.open(self._store, mode="r")
            self.how = f"TIFF windows ({'tiles' if page.is_tiled else 'strips'})"
        self.height, self.width = int(self.array.shape[0]), int(self.array.shape[1])
        # decoded chunks (tiles / strips) shared by neighbouring crops, least recently used dropped first
        self._chunk = (
            (int(self.array.chunks[0]), int(self.array.chunks[1])) if self._store is not None else None
        )
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        if self._chunk is not None:
            per_chunk = self._chunk[0] * self._chunk[1] * 3
            self._capacity = max(4, CHUNK_CACHE_BYTES // max(per_chunk, 1))

    def _chunk_at(self, i: int, j: int) -> np.ndarray:
        key = (i, j)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        assert self._chunk is not None
        ch, cw = self._chunk
        block = _as_rgb_uint8(np.asarray(self.array[i * ch : (i + 1) * ch, j * cw : (j + 1) * cw]), self.lib)
        self._cache[key] = block
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return block

    def _window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self._chunk is None:  # memory map: slice directly
            return _as_rgb_uint8(np.asarray(self.array[r0:r1, c0:c1]), self.lib)
        ch, cw = self._chunk
        out = np.empty((r1 - r0, c1 - c0, 3), dtype=np.uint8)
        for i in range(r0 // ch, (r1 - 1) // ch + 1):
            for j in range(c0 // cw, (c1 - 1) // cw + 1):
                block = self._chunk_at(i, j)
                br0, bc0 = i * ch, j * cw
                a0, a1 = max(r0, br0), min(r1, br0 + block.shape[0])
                b0, b1 = max(c0, bc0), min(c1, bc0 + block.shape[1])
                out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = block[a0 - br0 : a1 - br0, b0 - bc0 : b1 - bc0]
        return out

    def crop(self, x: float, y: float, side: int, fill: int) -> np.ndarray:
        c0, c1 = crop_window(x, side)
        r0, r1 = crop_window(y, side)
        out = np.full((side, side, 3), fill, dtype=np.uint8)
        rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, self.height), max(c0, 0), min(c1, self.width)
        if rr0 < rr1 and cc0 < cc1:
            out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = self._window(rr0, rr1, cc0, cc1)
        return out

    def order(self, xy: np.ndarray) -> np.ndarray:
        """Visit crops row of chunks by row of chunks, so that neighbours reuse the decoded chunks."""
        if self._chunk is None:
            return np.arange(xy.shape[0])
        band = np.floor(xy[:, 1] / self._chunk[0]).astype(np.int64)
        return np.lexsort((xy[:, 0], band))

    def close(self) -> None:
        self._cache.clear()
        if self._store is not None:
            self._store.close()
        self.array = None
        self._tif.close()


def _tiff_layout(path: Path) -> tuple[int, int, int] | None:
    """``(width, height, bytes held per crop read)`` when ``path`` is a TIFF readable window by window."""
    with open(path, "rb") as fh:
        if fh.read(4) not in _TIFF_MAGIC:
            return None
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile comes with squidpy
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            level = tif.series[0].levels[0]
            page = level.keyframe
            shape, axes = tuple(level.shape), level.axes
            if axes not in ("YXS", "YX") or (axes == "YXS" and shape[2] not in (3, 4)):
                return None
            if np.dtype(level.dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16)):
                return None
            if page.is_tiled:
                chunk = int(page.tilelength) * int(page.tilewidth)
            else:
                chunk = int(page.rowsperstrip or shape[0]) * int(shape[1])
            if not page.is_memmappable and chunk * 4 > shape[0] * shape[1]:
                return None  # one strip holds (nearly) the whole image: nothing to gain
            n_ch = shape[2] if axes == "YXS" else 1
            return int(shape[1]), int(shape[0]), chunk * n_ch * np.dtype(level.dtype).itemsize
    except (OSError, ValueError, KeyError, IndexError):
        return None


class SlideSource:
    """The image a slide's patches are cut from, sized without decoding it.

    Attributes
    ----------
    scale
        Factor from full-resolution pixels to pixels of this image.
    width, height
        Size of this image in pixels.
    description
        ``images['hires']`` or the file path.
    decode_bytes
        Memory held while the slide is open for cropping (a whole decoded image, or a few tiles).
    """

    def __init__(self, entry: dict, lib: str) -> None:
        self.lib = lib
        meta = entry.get("metadata", {}) or {}
        fullres = meta.get("fullres_path")
        self.path: Path | None = None
        self.array: np.ndarray | None = None
        self.windowed = False
        if fullres is not None and str(fullres):
            path = Path(str(fullres))
            if not path.exists():
                raise FileNotFoundError(
                    f"Full-resolution image of slide {lib!r} not found at {path} "
                    f"(uns['spatial'][{lib!r}]['metadata']['fullres_path'])."
                )
            self.path, self.scale, self.description = path, 1.0, str(path)
            layout = _tiff_layout(path)
            if layout is not None:
                self.width, self.height, chunk = layout
                self.windowed = True
                self.decode_bytes = CHUNK_CACHE_BYTES + 4 * chunk
            else:
                from spared_tools.io._image import image_size

                self.width, self.height = image_size(path)
                self.decode_bytes = self.width * self.height * PIL_BYTES_PER_PIXEL
            return
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
        self.array = _as_rgb_uint8(images["hires"], lib)
        self.scale, self.description = float(sf["tissue_hires_scalef"]), "images['hires']"
        self.height, self.width = int(self.array.shape[0]), int(self.array.shape[1])
        self.decode_bytes = 0  # already in memory

    def open(self) -> SlideReader:
        """A reader for this slide's crops (decodes the image unless it is read window by window)."""
        if self.array is not None:
            return _ArrayReader(self.array)
        assert self.path is not None
        from spared_tools.io._utils import reading

        with reading(self.path, f"Full-resolution image of slide {self.lib!r}"):
            if self.windowed:
                return _WindowReader(self.path, self.lib)
            return _PilReader(self.path)


def windows_outside(xy: np.ndarray, side: int, width: int, height: int) -> np.ndarray:
    """Boolean mask of the crops (centres ``xy``, side ``side``) that do not overlap a ``width`` × ``height`` image.

    Parameters
    ----------
    xy
        ``(n, 2)`` crop centres ``[x, y]`` in image pixels.
    side
        Crop side in pixels.
    width
        Image width in pixels.
    height
        Image height in pixels.

    Returns
    -------
    True for each crop made only of padding.
    """
    start = np.round(xy).astype(np.int64) - side // 2
    stop = start + side
    return (stop[:, 0] <= 0) | (start[:, 0] >= width) | (stop[:, 1] <= 0) | (start[:, 1] >= height)


def available_memory() -> int:
    """Bytes of memory available to this process now (``MemAvailable``; psutil where /proc is absent)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)
