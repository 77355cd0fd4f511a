"""Image helpers shared by the readers: open large microscopy images and make downscaled copies."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Long side (px) of the ``hires`` image made from a full-resolution image (Space Ranger uses 2000).
HIRES_MAX_SIDE = 2000
#: Long side (px) of the ``lowres`` image (Space Ranger uses 600).
LOWRES_MAX_SIDE = 600


@contextlib.contextmanager
def _open_large_image(path: Path) -> Iterator:
    """Open ``path`` with Pillow without its decompression-bomb limit.

    Histology images routinely exceed Pillow's default limit (~89 Mpx; a her2st JPEG is ~92 Mpx and a
    Visium full-resolution TIFF can reach 600 Mpx). The user named the file explicitly, so the limit is
    lifted for this one call only and restored afterwards; no global warning filter is installed.
    """
    from PIL import Image

    from ._utils import reading

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with reading(path, "Image file"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
            try:
                yield img
            finally:
                img.close()
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _to_rgb_uint8(img) -> np.ndarray:
    """Convert a Pillow image of any common mode to a ``uint8`` ``H x W x 3`` array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` of an image file without decoding its pixels.

    Parameters
    ----------
    path
        Image file readable by Pillow.

    Returns
    -------
    ``(width, height)`` in pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    with _open_large_image(path) as img:
        return int(img.size[0]), int(img.size[1])


def read_image(path: str | Path) -> np.ndarray:
    """Read a (small) image file as a ``uint8`` ``H x W x 3`` array.

    Parameters
    ----------
    path
        Image file readable by Pillow (PNG, JPEG, TIFF, ...).

    Returns
    -------
    The image as a contiguous ``uint8`` array of shape ``(height, width, 3)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    with _open_large_image(path) as img:
        img.load()
        return _to_rgb_uint8(img)


def downscale_image(path: str | Path, max_side: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode ``path`` at reduced size so that its long side is ``max_side`` pixels.

    JPEG files are decoded directly at a reduced DCT scale (``Image.draft``) so a ~10k x 10k px
    histology image never has to be held in memory at full resolution; the result is then resampled
    with a Lanczos filter to the exact target size. RGB TIFFs stored in tiles or strips are read band
    by band and box-reduced band by band, then resampled: the same pixels as decoding them whole
    (Pillow's ``reducing_gap=3`` path), holding one band instead of the whole image. Images already
    smaller than ``max_side`` are not upscaled.

    Parameters
    ----------
    path
        Image file readable by Pillow.
    max_side
        Target length in pixels of the longer side.

    Returns
    -------
    image
        ``uint8`` array ``(h, w, 3)``.
    scalef
        Scale factor from full-resolution pixels to pixels of ``image`` (``max_side / max(W, H)``, at
        most 1); multiply full-resolution coordinates by it to index ``image``.
    full_size
        ``(W, H)`` of the full-resolution image.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    if int(max_side) < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side!r}.")
    from ._utils import reading

    with reading(path, "Image file"):
        banded = _downscale_tiff_bands(path, int(max_side))
    if banded is not None:
        return banded
    with _open_large_image(path) as img:
        width, height = int(img.size[0]), int(img.size[1])
        scalef = min(1.0, float(max_side) / max(width, height))
        target = (max(1, round(width * scalef)), max(1, round(height * scalef)))
        if img.format == "JPEG" and scalef < 1.0:
            img.draft("RGB", target)
        if img.size != target:
            if img.mode not in ("RGB", "L", "RGBA"):
                img = Image.fromarray(_to_rgb_uint8(img))
            img = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = _to_rgb_uint8(img)
    return out, scalef, (width, height)


def downscale_array(image: np.ndarray, scalef: float) -> np.ndarray:
    """Resample a ``uint8`` RGB array by ``scalef`` (< 1) with a Lanczos filter.

    Parameters
    ----------
    image
        ``uint8`` array ``(h, w, 3)``.
    scalef
        Factor applied to both sides.

    Returns
    -------
    The resampled ``uint8`` array.
    """
    from PIL import Image

    h, w = image.shape[:2]
    target = (max(1, round(w * scalef)), max(1, round(h * scalef)))
    return np.asarray(Image.fromarray(image).resize(target, Image.Resampling.LANCZOS), dtype=np.uint8)


def _downscale_tiff_bands(path: Path, max_side: int) -> tuple[np.ndarray, float, tuple[int, int]] | None:
    """:func:`downscale_image` of a tiled / stripped RGB uint8 TIFF, one band of rows at a time.

    Reproduces Pillow's ``resize(..., LANCZOS, reducing_gap=3.0)`` of the whole image exactly: a box
    ``reduce`` by the same integer factors (done per band, with band heights a multiple of the row
    factor, so the boxes are the same), then the Lanczos resize of the reduced image over the same box.
    Returns ``None`` when the file is not such a TIFF or needs no reduction (then Pillow decodes it).
    """
    from PIL import Image

    with open(path, "rb") as fh:
        if fh.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return None
    try:
        import tifffile
        import zarr
    except ImportError:  # pragma: no cover - both come with squidpy
        return None
    with tifffile.TiffFile(path) as tif:
        level = tif.series[0].levels[0]
        page = level.keyframe
        if level.axes != "YXS" or level.shape[2] != 3 or np.dtype(level.dtype) != np.uint8:
            return None
        height, width = int(level.shape[0]), int(level.shape[1])
        scalef = min(1.0, float(max_side) / max(width, height))
        target = (max(1, round(width * scalef)), max(1, round(height * scalef)))
        fx = int(width / target[0] / 3.0) or 1
        fy = int(height / target[1] / 3.0) or 1
        chunk_rows = int(page.tilelength) if page.is_tiled else int(page.rowsperstrip or height)
        if (fx == 1 and fy == 1) or chunk_rows * 4 > height:
            return None
        store = tif.aszarr(level=0)
        try:
            z: Any = zarr.open(store, mode="r")
            band = fy * max(1, -(-chunk_rows // fy))  # a multiple of fy covering whole chunks
            reduced = Image.new("RGB", (-(-width // fx), -(-height // fy)))
            for r0 in range(0, height, band):
                rows = Image.fromarray(np.ascontiguousarray(z[r0 : min(r0 + band, height)]))
                reduced.paste(rows.reduce((fx, fy)), (0, r0 // fy))
                del rows
        finally:
            store.close()
    out = reduced.resize(target, Image.Resampling.LANCZOS, box=(0, 0, width / fx, height / fy))
    return _to_rgb_uint8(out), scalef, (width, height)
