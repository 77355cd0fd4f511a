"""Image patches around each spot: :func:`sp.pp.extract_patches` (storage and dataset in ``_patch_store``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import settings
from spared_tools._validation import check_adata, check_int, check_new_key

from ._patch_crop import Interpolation, _resample, crop_padded, crop_pil, crop_window, resize_patch
from ._patch_images import (
    MixedResolutionError,
    SlideSource,
    _allow_large_images,
    _as_rgb_uint8,
    _library_entry,
    _load_fullres,
    _microns_per_pixel,
    available_memory,
    check_same_field,
    pixel_size,
    windows_outside,
)
from ._patch_store import PatchDataset, _NpyRowWriter, _patch_source, get_patches, patches_shape

__all__ = ["PatchDataset", "extract_patches", "get_patches", "patches_shape"]
# names kept importable from here (tests, benchmarks and models import them from this module)
_REEXPORTED = (
    Interpolation,
    MixedResolutionError,
    _allow_large_images,
    _as_rgb_uint8,
    _load_fullres,
    _patch_source,
    crop_padded,
    crop_pil,
    crop_window,
)

_GIB = 1024**3


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
    key_added: str = Key.PATCHES,
    interpolation: Interpolation = "bilinear",
    fill: int = 255,
    max_memory: int | float | None = None,
    overwrite: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Crop a square RGB image patch around every spot.

    The crop covers the spot diameter × ``scale`` (``spot_diameter_fullres`` from the slide's
    scalefactors) or, when ``mpp`` is given, ``size * mpp`` µm (using the slide's
    ``microns_per_pixel``, HEST-style fixed physical resolution). It is cut from the full-resolution
    image at ``uns['spatial'][lib]['metadata']['fullres_path']`` when present or else from
    ``uns['spatial'][lib]['images']['hires']`` scaled by ``tissue_hires_scalef``, then resized to
    ``size`` × ``size`` pixels. The crop window of side ``s`` px starts ``s // 2`` px before the pixel
    ``round(centre)`` (see :func:`crop_window`).

    **Physical scale.** A slide's pixel size (µm per full-resolution pixel) is
    ``uns['spatial'][lib]['scalefactors']['microns_per_pixel']`` (Space Ranger's key for Visium HD), written
    by every reader of :mod:`spared_tools.io`: from the 55 µm spot of Visium, from the spot pitch fitted on
    the spot file of legacy ST (200 µm on the 1k array, so ≈0.69 µm/px for the her2st JPEGs and ≈3.19 µm/px
    for its app images), from the shapes' size in a SpatialData. A crop of ``scale`` spot diameters
    then covers the same tissue on every slide whatever the image resolution: on her2st both a 145 px
    and a 31 px spot become a 100 µm patch of ``size`` pixels (downsampled or upsampled with
    ``interpolation``). Slides of different resolution (spot diameters in pixels more than 10 % apart)
    without a pixel size, or whose crops would differ in µm (spots of another physical size), raise
    ``MixedResolutionError``: set the pixel size, or pass ``mpp=`` for a fixed physical resolution.

    **Memory.** A TIFF full-resolution image (tiled or in strips, any codec tifffile reads; pyramidal
    OME-TIFFs use their full-resolution level) is read window by window: only the tiles under each crop
    are decoded, once each, into a cache of at most 48 MiB shared by neighbouring crops, so the image
    costs at most that cache plus a few tiles whatever the slide size (measured in
    ``benchmarks/results/memory.txt``: 64 MiB in all for a 20k × 20k px Visium-like slide, against
    1.8 GiB for a whole decode). Other formats (JPEG, PNG)
    are decoded whole, one slide at a time (``4 · W · H`` bytes in Pillow). Before any work the memory
    needed — the patch array for ``store="memory"`` plus the largest whole decode — is compared with
    ``max_memory`` (default: the memory available now) and a ``MemoryError`` gives the estimate
    instead of letting the system kill the process.

    **Outside the image.** Pixels of a crop that fall outside the image are filled with ``fill``
    (white by default, the background of H&E), so spots at the border get partly white patches. A spot
    whose whole crop lies outside gets a patch of pure ``fill``: such spots are counted per slide,
    logged as a warning and recorded in ``uns[key_added]['n_outside']``; when every spot of a slide lies
    outside its image, a ``ValueError`` is raised (coordinates in another pixel space, a wrong image or
    scale factor).

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
    max_memory
        Bytes the extraction may use (patch array plus decoded image); ``None`` uses the memory
        available when the call starts.
    overwrite
        Replace existing patches under ``key_added``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``). Writes:

    * ``obsm[key_added]`` – uint8 ``(n_obs, size, size, 3)`` patches (``store="memory"`` only);
    * ``uns[key_added]`` – ``{"params": ..., "store": ..., "shape": ..., "crop_px": {slide: side in
      source pixels}, "source": {slide: image used}, "n_outside": {slide: spots whose crop lies wholly
      outside the image}, "crop_um": {slide: crop side in µm}, "patch_mpp": {slide: µm per patch pixel}}``
      (NaN where the pixel size is unknown), plus ``"path"`` and ``"obs_names"`` (the row order of the
      file) for ``store="disk"``.

    Raises
    ------
    ValueError
        For bad arguments, or when every spot of a slide lies outside its image; its subclass
        ``MixedResolutionError`` when the slides' patches would not cover the same tissue area (see
        *Physical scale*).
    KeyError
        When coordinates, the slide column, the image or a needed scale factor is missing.
    MemoryError
        When the estimated memory exceeds ``max_memory`` (or the available memory); nothing is
        allocated then.
    """
    check_adata(adata, genes=False)  # images need no genes
    check_int(size, "size")
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
    if max_memory is not None and (
        isinstance(max_memory, bool) or not isinstance(max_memory, int | float) or not max_memory > 0
    ):
        raise ValueError(f"max_memory must be a positive number of bytes or None, got {max_memory!r}.")
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

    # plan every slide first (image sizes without decoding): resolutions, outside-image spots and memory
    crop_um: dict[str, float] = {}
    plans = []
    libs: list[str] = []
    diameters: list[float] = []
    pixel_sizes: list[float | None] = []
    for slide in slide_values:
        idx = np.flatnonzero((slides == slide).to_numpy())
        lib, entry = _library_entry(adata, slide, len(slide_values))
        sf = entry.get("scalefactors", {}) or {}
        px_um = pixel_size(sf)
        if mpp is not None:
            side_full = size * float(mpp) / _microns_per_pixel(sf, lib)
        else:
            if "spot_diameter_fullres" not in sf:
                raise KeyError(
                    f"uns['spatial'][{lib!r}]['scalefactors'] lacks 'spot_diameter_fullres'; pass mpp=."
                )
            side_full = float(sf["spot_diameter_fullres"]) * scale
            libs.append(lib)
            diameters.append(float(sf["spot_diameter_fullres"]))
            pixel_sizes.append(px_um)
        source = SlideSource(entry, lib)
        side = max(1, int(np.round(side_full * source.scale)))
        xy = coords[idx, :2] * source.scale
        plans.append((slide, idx, source, side, xy))
        # what the crop covers: side source pixels = side / source.scale full-resolution pixels
        crop_um[slide] = float("nan") if px_um is None else side / source.scale * px_um
    check_same_field(libs, diameters, pixel_sizes, scale)
    n_outside = _check_outside(plans)
    _check_memory(plans, adata.n_obs, size, store, max_memory)

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
        for slide, idx, source, side, xy in plans:
            crop_px[slide], sources[slide] = side, source.description
            reader = source.open()
            logger.info(
                f"extract_patches: slide {slide!r}: {idx.size} spots, {side} px crops from "
                f"{source.description} ({reader.how})."
            )
            it: Any = reader.order(xy)
            if show:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"patches {slide}", leave=False)
            try:
                for j in it:
                    crop = reader.crop(xy[j, 0], xy[j, 1], side, int(fill))
                    writer[idx[j]] = resize_patch(crop, size, interpolation)
            finally:
                reader.close()
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
        "max_memory": None if max_memory is None else float(max_memory),
    }
    info: dict[str, Any] = {
        "params": params,
        "store": store,
        "shape": np.asarray(shape, dtype=np.int64),
        "crop_px": crop_px,
        "source": sources,
        "n_outside": n_outside,
        "crop_um": crop_um,
        "patch_mpp": {k: v / size for k, v in crop_um.items()},
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


def _check_outside(plans: list) -> dict[str, int]:
    """Count per slide the spots whose crop lies wholly outside the image; refuse a slide with all outside."""
    counts: dict[str, int] = {}
    for slide, idx, source, side, xy in plans:
        out = windows_outside(xy, side, source.width, source.height)
        n = int(out.sum())
        counts[slide] = n
        if n and n == idx.size:
            lo, hi = xy.min(axis=0) / source.scale, xy.max(axis=0) / source.scale
            raise ValueError(
                f"All {n} spots of slide {slide!r} lie outside its {source.width} x {source.height} px image "
                f"({source.description}, scale {source.scale:g}): their centres span x {lo[0]:.0f}..{hi[0]:.0f}, "
                f"y {lo[1]:.0f}..{hi[1]:.0f} full-resolution px. Check that obsm holds [x, y] full-resolution "
                "pixels of this image and the slide's scale factors."
            )
        if n:
            logger.warning(
                f"extract_patches: {n} of {idx.size} spots of slide {slide!r} lie wholly outside its "
                f"{source.width} x {source.height} px image; their patches are pure fill (white by default). "
                "The count is in uns[key_added]['n_outside']."
            )
    return counts


def _check_memory(plans: list, n_obs: int, size: int, store: str, max_memory: float | None) -> None:
    """Raise ``MemoryError`` with the estimate when the patches plus the largest decoded image do not fit."""
    out_bytes = n_obs * size * size * 3 if store == "memory" else 0
    worst = max(plans, key=lambda p: p[2].decode_bytes)
    decode = int(worst[2].decode_bytes)
    whole = worst[2].path is not None and not worst[2].windowed  # a whole decode, worth naming
    need = out_bytes + decode
    limit = float(max_memory) if max_memory is not None else float(available_memory())
    if need <= limit:
        return
    parts = []
    if out_bytes:
        parts.append(f"the patch array {n_obs} x {size} x {size} x 3 = {out_bytes / _GIB:.2f} GiB")
    elif decode and not whole:
        parts.append(f"{decode / _GIB:.2f} GiB of image tiles")
    if whole:
        parts.append(
            f"decoding slide {worst[0]!r} ({worst[2].width} x {worst[2].height} px, {worst[2].description}) "
            f"= {decode / _GIB:.2f} GiB"
        )
    which = "max_memory" if max_memory is not None else "the memory available now"
    raise MemoryError(
        f"extract_patches would need about {need / _GIB:.2f} GiB ({' + '.join(parts)}), more than "
        f"{which} ({limit / _GIB:.2f} GiB). Use store='disk' with path= (patches written to a file), a "
        "smaller size=, or save the full-resolution image as a tiled TIFF (read window by window)."
    )
