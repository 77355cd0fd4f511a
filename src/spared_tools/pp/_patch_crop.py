"""Crop geometry shared by the patch extractor: windows, padded crops, resizing."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from spared_tools._docs import d

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


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


@d.inject
def crop_padded(image: np.ndarray, x: float, y: float, side: int, fill: int = 255) -> np.ndarray:
    """Square ``side`` × ``side`` crop of ``image`` (H, W, C) centred on ``(x, y)``, padded with ``fill``.

    Parameters
    ----------
    image
        Image array ``(H, W, C)``.
    %(crop_centre)s

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


@d.inject
def crop_pil(image: Any, x: float, y: float, side: int, fill: int = 255) -> np.ndarray:
    """:func:`crop_padded` for a Pillow RGB image: same window, same padding, without converting the slide.

    Parameters
    ----------
    image
        Pillow image in RGB mode.
    %(crop_centre)s

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
