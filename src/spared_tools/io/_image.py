"""Image helpers shared by the readers: open large microscopy images and make downscaled copies."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

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
    with a Lanczos filter to the exact target size. Images already smaller than ``max_side`` are not
    upscaled.

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
