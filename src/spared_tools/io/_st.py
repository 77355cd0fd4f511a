"""Readers for legacy Spatial Transcriptomics (ST) data: :func:`read_st` and :func:`read_her2st`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger

from ._image import HIRES_MAX_SIDE, LOWRES_MAX_SIDE, downscale_array, downscale_image
from ._utils import open_text, read_header, reading, require_file, to_count_matrix

_SPOT_ID = re.compile(r"^\s*(-?\d+)x(-?\d+)\s*$")
_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")

#: Pathologist labels column written by :func:`read_her2st`.
HER2ST_LABEL_KEY = "pathology_label"


def _parse_spot_ids(ids: Sequence[str]) -> np.ndarray | None:
    """Return ``(n, 2)`` integer ``[x, y]`` parsed from ``<x>x<y>`` ids, or ``None`` if any id does not match."""
    out = np.empty((len(ids), 2), dtype=np.int64)
    for i, s in enumerate(ids):
        m = _SPOT_ID.match(str(s))
        if m is None:
            return None
        out[i, 0], out[i, 1] = int(m.group(1)), int(m.group(2))
    return out


def _read_counts_table(path: Path, sep: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Read an ST count table (spots x genes or genes x spots) as ``(values, spot_ids, genes)``."""
    header = read_header(path, sep)
    try:
        with reading(path, "Count file"), open_text(path) as fh:
            body = pd.read_csv(
                fh, sep=sep, header=None, skiprows=1, index_col=0, keep_default_na=False, na_values=[""],
            )  # fmt: skip
    except pd.errors.EmptyDataError:
        body = pd.DataFrame()
    if body.shape[0] == 0 or body.shape[1] == 0:
        raise ValueError(f"Count file {path} holds no values (shape {body.shape}).")
    if body.shape[1] == len(header) - 1:
        columns = header[1:]
    elif body.shape[1] == len(header):
        columns = header  # R write.table style: the header has no field for the row names
    else:
        raise ValueError(
            f"Count file {path}: the header has {len(header)} fields but the rows have {body.shape[1] + 1}."
        )
    nonnum = [str(c) for c, t in zip(columns, body.dtypes) if not np.issubdtype(t, np.number)]
    if nonnum:
        raise ValueError(
            f"Count file {path} has {len(nonnum)} non-numeric columns (e.g. {nonnum[:3]}); counts must be numbers."
        )
    index = [str(i).strip() for i in body.index]
    values = body.to_numpy()
    if _parse_spot_ids(index) is not None:
        return values, index, [str(c) for c in columns]
    if _parse_spot_ids(columns) is not None:
        return values.T, [str(c).strip() for c in columns], index
    raise ValueError(
        f"Count file {path}: neither the row names (e.g. {index[:2]}) nor the column names "
        f"(e.g. {columns[:2]}) are all spot ids of the form '<x>x<y>' (integer array coordinates)."
    )


def _read_spot_table(path: Path, sep: str) -> pd.DataFrame:
    """Read an ST spot file (columns ``x y [new_x new_y] pixel_x pixel_y [selected]``) indexed by ``<x>x<y>``."""
    with reading(path, "Spot file"):
        df = pd.read_csv(path, sep=sep)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in _SPOT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"Spot file {path} lacks the columns {missing}; found {list(df.columns)}. Expected the ST spot "
            "detector layout 'x y new_x new_y pixel_x pixel_y selected'."
        )
    for c in _SPOT_COLUMNS + tuple(c for c in ("new_x", "new_y", "selected") if c in df.columns):
        if not np.issubdtype(df[c].dtype, np.number):
            raise TypeError(f"Spot file {path}: column {c!r} must be numeric, got {df[c].dtype}.")
        if df[c].isna().any():
            raise ValueError(f"Spot file {path}: column {c!r} has {int(df[c].isna().sum())} missing values.")
    xy = df[["x", "y"]].to_numpy(dtype=np.float64)
    if not np.allclose(xy, np.round(xy)):
        raise ValueError(f"Spot file {path}: columns 'x' and 'y' must hold integer array coordinates.")
    df["x"] = np.round(xy[:, 0]).astype(np.int64)
    df["y"] = np.round(xy[:, 1]).astype(np.int64)
    df.index = pd.Index(df["x"].astype(str) + "x" + df["y"].astype(str))
    dup = df.index[df.index.duplicated()].unique()
    if len(dup):
        raise ValueError(f"Spot file {path} lists {len(dup)} spot ids more than once: {list(dup[:5])}.")
    return df


def _fit_pitch(array_xy: np.ndarray, pixel_xy: np.ndarray) -> float:
    """Pixels per array unit: mean absolute slope of least-squares fits pixel_x ~ x and pixel_y ~ y.

    The spot detector's sub-grid adjusted coordinates (``new_x``, ``new_y``) are used when present.
    """
    slopes = []
    for k in range(2):
        a = array_xy[:, k].astype(np.float64)
        if np.unique(a).size < 2:
            continue
        slopes.append(abs(np.polyfit(a, pixel_xy[:, k].astype(np.float64), 1)[0]))
    if not slopes or not np.isfinite(slopes).all() or min(slopes) == 0:
        raise ValueError(
            "Cannot estimate the pixel size: the spots span fewer than 2 distinct array positions. "
            "Pass microns_per_pixel= explicitly."
        )
    return float(np.mean(slopes))


def read_st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path | None = None,
    *,
    library_id: str | None = None,
    patient: str | None = None,
    microns_per_pixel: float | None = None,
    spot_diameter_um: float = 100.0,
    center_to_center_um: float = 200.0,
    hires_max_side: int = HIRES_MAX_SIDE,
    sep: str = "\t",
    dtype: str = "float32",
    min_overlap: float = 0.8,
) -> AnnData:
    """Read one legacy Spatial Transcriptomics (ST) section in the her2st / ST spot detector layout.

    The count table has one row per spot whose id is ``<x>x<y>`` (integer array coordinates) and one
    column per gene (a genes x spots table is detected and transposed). The spot file holds the columns
    ``x y new_x new_y pixel_x pixel_y selected`` of the ST spot detector: ``x, y`` match the count ids
    and ``pixel_x, pixel_y`` are the spot centres in the full-resolution image.

    Only spots present in both files are kept, in the order of the count file; the number of spots
    dropped from either file is logged and recorded in ``uns['spatial'][library_id]['metadata']``.
    Files of one section agree on (nearly) every spot — the 28 her2st sections keep all their counted
    spots and at least 98 % of the positions — so when fewer than ``min_overlap`` of the count file's
    spots, or of the spot file's positions, are shared, the two files are taken to describe different
    sections and a ``ValueError`` gives the numbers.

    Sections without an image still get ``tissue_hires_scalef = tissue_lowres_scalef = 1`` (the
    plotting "image" space is then the full-resolution pixel space of ``obsm['spatial']``), so that
    squidpy and scanpy plot them with ``img=False`` like any Visium slide.

    Parameters
    ----------
    counts
        Count table (``.tsv``, optionally gzip/bzip2/xz compressed) of raw integer counts.
    spots
        Spot file with the columns ``x``, ``y``, ``pixel_x``, ``pixel_y`` (``new_x``, ``new_y`` and
        ``selected`` are used when present).
    image
        Optional full-resolution H&E image in the spot file's pixel space. It is not kept in memory: a
        ``hires`` copy (long side ``hires_max_side`` px) and a ``lowres`` copy (long side 600 px) are
        stored, and its path is recorded as ``metadata['fullres_path']``.
    library_id
        Slide identifier written to ``obs['slide_id']`` and used as the ``uns['spatial']`` key. Defaults
        to the count file name without its extensions (``C2.tsv.gz`` -> ``"C2"``).
    patient
        Optional patient identifier written to ``obs['patient']``.
    microns_per_pixel
        Size of a full-resolution pixel in µm. When ``None`` it is estimated from the spot file as
        ``center_to_center_um`` divided by the fitted distance in pixels between adjacent array positions
        (least-squares slopes of ``pixel_x`` on ``new_x`` and ``pixel_y`` on ``new_y``, averaged; ``x``/``y``
        when the adjusted columns are absent).
    spot_diameter_um
        Physical spot diameter (100 µm on the ST 1k and 2k arrays).
    center_to_center_um
        Distance between adjacent array positions (200 µm on the ST 1k array, 100 µm on ST 2k).
    hires_max_side
        Long side in pixels of the ``hires`` image made from ``image``.
    sep
        Field separator of both files.
    dtype
        Data type of the CSR count matrix ``X`` (``"float32"``, ``"float64"``, ``"int32"`` or
        ``"int64"``); the values are the file's integers exactly.
    min_overlap
        Smallest accepted fraction (in ``[0, 1]``) of the count file's spots and of the spot file's
        positions found in the other file; ``0`` pairs any two files that share a spot.

    Returns
    -------
    AnnData with

    ``X``
        Raw counts, CSR, spots x genes, values exactly as in the count file.
    ``obs['slide_id']``
        Categorical, ``library_id``.
    ``obs['patient']``
        Categorical, only when ``patient`` is given.
    ``obs['in_tissue']``
        The spot file's ``selected`` column (1 when absent).
    ``obs['array_row']``, ``obs['array_col']``
        Integer array coordinates: ``array_row = y`` and ``array_col = x`` of the ``<x>x<y>`` spot id.
    ``obs['array_row_adj']``, ``obs['array_col_adj']``
        The spot detector's sub-grid adjusted coordinates ``new_y`` / ``new_x`` (when present).
    ``obs['pxl_row_in_fullres']``, ``obs['pxl_col_in_fullres']``
        ``pixel_y`` / ``pixel_x``.
    ``obsm['spatial']``
        ``float64`` ``[x, y]`` = ``[pixel_x, pixel_y]`` in full-resolution pixels.
    ``uns['spatial'][library_id]``
        ``images`` (``hires``/``lowres`` ``uint8`` H x W x 3 when ``image`` is given, else empty),
        ``scalefactors`` (``spot_diameter_fullres``, ``microns_per_pixel``, ``center_to_center_fullres``,
        and ``tissue_hires_scalef``/``tissue_lowres_scalef``: 1 without an image) and ``metadata`` (platform,
        file paths, ``fullres_path``, full-resolution size, dropped-spot counts).

    Examples
    --------
    >>> import spared_tools as sp
    >>> adata = sp.io.read_st("ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv", "ST-imgs/C2.jpg")  # doctest: +SKIP
    """
    counts = require_file(counts, "Count file").resolve()
    spots = require_file(spots, "Spot file").resolve()
    if image is not None:
        image = require_file(image, "Image file").resolve()
    if library_id is None:
        library_id = counts.name.split(".")[0]
    library_id = str(library_id)
    for name, val in (("spot_diameter_um", spot_diameter_um), ("center_to_center_um", center_to_center_um)):
        if not np.isfinite(val) or val <= 0:
            raise ValueError(f"{name} must be a positive number, got {val!r}.")
    if microns_per_pixel is not None and (not np.isfinite(microns_per_pixel) or microns_per_pixel <= 0):
        raise ValueError(f"microns_per_pixel must be a positive number, got {microns_per_pixel!r}.")
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, int | float) or not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap must be a number in [0, 1], got {min_overlap!r}.")

    values, spot_ids, genes = _read_counts_table(counts, sep)
    id_index = pd.Index(spot_ids)
    dup = id_index[id_index.duplicated()].unique()
    if len(dup):
        raise ValueError(f"Count file {counts} lists {len(dup)} spot ids more than once: {list(dup[:5])}.")
    table = _read_spot_table(spots, sep)

    in_spots = id_index.isin(table.index)
    n_no_pos = int((~in_spots).sum())
    n_no_counts = int((~table.index.isin(id_index)).sum())
    if not in_spots.any():
        raise ValueError(
            f"No spot id of the count file {counts} (e.g. {spot_ids[:3]}) appears in the spot file {spots} "
            f"(e.g. {list(table.index[:3])}); are they from the same section?"
        )
    n_both = int(in_spots.sum())
    frac_counts, frac_spots = n_both / len(id_index), n_both / len(table)
    if min(frac_counts, frac_spots) < min_overlap:
        raise ValueError(
            f"read_st({library_id!r}): the count file {counts} and the spot file {spots} share only "
            f"{n_both} spots: {100 * frac_counts:.1f}% of the {len(id_index)} counted spots and "
            f"{100 * frac_spots:.1f}% of the {len(table)} positions (files of one section share nearly "
            f"all; min_overlap={min_overlap}). They look like files of different sections; check the "
            "pairing, or pass min_overlap=0 to pair them anyway."
        )
    if n_no_pos or n_no_counts:
        logger.warning(
            f"read_st({library_id!r}): kept the {int(in_spots.sum())} spots present in both files; dropped "
            f"{n_no_pos} spots of the count file without a position and ignored {n_no_counts} positions "
            "without counts."
        )
    keep = np.flatnonzero(in_spots)
    values = values[keep]
    kept_ids = id_index[keep]
    X = to_count_matrix(values, dtype, where=f"count file {counts}")
    pos = table.loc[kept_ids]

    gene_index = pd.Index(genes)
    var = pd.DataFrame(index=gene_index)
    if gene_index.has_duplicates:
        n_dup = int(gene_index.duplicated().sum())
        var["gene_name_in_file"] = np.asarray(genes, dtype=object)
        from anndata.utils import make_index_unique

        var.index = make_index_unique(gene_index)
        logger.warning(
            f"read_st({library_id!r}): {n_dup} duplicated gene names made unique by appending '-1', '-2', ...; "
            "the original names are in var['gene_name_in_file']."
        )

    obs = pd.DataFrame(index=pd.Index(kept_ids.astype(str), name=None))
    obs[Key.SLIDE] = pd.Categorical([library_id] * len(obs))
    if patient is not None:
        obs[Key.PATIENT] = pd.Categorical([str(patient)] * len(obs))
    obs[Key.IN_TISSUE] = (
        pos["selected"].to_numpy().astype(np.int64) if "selected" in pos else np.ones(len(obs), np.int64)
    )
    obs[Key.ARRAY_ROW] = pos["y"].to_numpy(np.int64)
    obs[Key.ARRAY_COL] = pos["x"].to_numpy(np.int64)
    if "new_x" in pos and "new_y" in pos:
        obs["array_row_adj"] = pos["new_y"].to_numpy(np.float64)
        obs["array_col_adj"] = pos["new_x"].to_numpy(np.float64)
    pixel = pos[["pixel_x", "pixel_y"]].to_numpy(np.float64)
    obs[Key.PXL_ROW] = pixel[:, 1]
    obs[Key.PXL_COL] = pixel[:, 0]

    grid_cols = ["new_x", "new_y"] if "new_x" in table and "new_y" in table else ["x", "y"]
    if microns_per_pixel is None:
        pitch_px = _fit_pitch(table[grid_cols].to_numpy(), table[["pixel_x", "pixel_y"]].to_numpy())
        microns_per_pixel = center_to_center_um / pitch_px
    else:
        pitch_px = center_to_center_um / microns_per_pixel
    scalefactors: dict[str, float] = {
        "spot_diameter_fullres": float(spot_diameter_um / microns_per_pixel),
        "microns_per_pixel": float(microns_per_pixel),
        "center_to_center_fullres": float(pitch_px),
    }
    metadata: dict[str, object] = {
        "platform": "ST (legacy)",
        "counts_path": str(counts),
        "spots_path": str(spots),
        "spot_diameter_um": float(spot_diameter_um),
        "center_to_center_um": float(center_to_center_um),
        "n_spots_without_position": n_no_pos,
        "n_positions_without_counts": n_no_counts,
        "array_coordinates": "array_row = y, array_col = x of the '<x>x<y>' spot id",
    }
    images: dict[str, np.ndarray] = {}
    if image is None:
        # no image: the plotting space is the full-resolution pixel space (squidpy/scanpy need the keys)
        scalefactors["tissue_hires_scalef"] = 1.0
        scalefactors["tissue_lowres_scalef"] = 1.0
    else:
        hires, hires_scalef, (width, height) = downscale_image(image, hires_max_side)
        lowres_scalef = min(hires_scalef, LOWRES_MAX_SIDE / max(width, height))
        images["hires"] = hires
        images["lowres"] = (
            hires if lowres_scalef == hires_scalef else downscale_array(hires, lowres_scalef / hires_scalef)
        )
        scalefactors["tissue_hires_scalef"] = float(hires_scalef)
        scalefactors["tissue_lowres_scalef"] = float(lowres_scalef)
        metadata["fullres_path"] = str(image)
        metadata["source_image_path"] = str(image)
        metadata["fullres_width"] = width
        metadata["fullres_height"] = height
        outside = (pixel[:, 0] < 0) | (pixel[:, 0] > width) | (pixel[:, 1] < 0) | (pixel[:, 1] > height)
        if outside.any():
            logger.warning(
                f"read_st({library_id!r}): {int(outside.sum())} spot centres lie outside the {width} x {height} "
                f"image {image}; is it the full-resolution image of this section?"
            )

    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm[Key.SPATIAL] = pixel
    adata.uns[Key.SPATIAL] = {
        library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}
    }
    return adata


def _her2st_root(folder: Path) -> Path:
    """Return the directory holding ``ST-cnts`` (``folder`` itself or ``folder/data`` of a repo checkout)."""
    for cand in (folder, folder / "data"):
        if (cand / "ST-cnts").is_dir():
            return cand
    raise FileNotFoundError(
        f"No 'ST-cnts' directory in {folder} (nor in {folder / 'data'}); expected a her2st checkout with "
        "ST-cnts/, ST-spotfiles/ and optionally ST-imgs/ and ST-pat-lbl/."
    )


def _her2st_image(root: Path, section: str) -> Path | None:
    """Find the full-resolution image of a section: ``ST-imgs/<s>.jpg`` or the repo's ``ST-imgs/<P>/<s>/*.jpg``."""
    imgs = root / "ST-imgs"
    for ext in (".jpg", ".jpeg", ".tif", ".tiff", ".png"):
        if (imgs / f"{section}{ext}").is_file():
            return imgs / f"{section}{ext}"
    nested = (
        sorted((imgs / section[0] / section).glob("*.jpg")) if (imgs / section[0] / section).is_dir() else []
    )
    return nested[0] if nested else None


def _her2st_sections(root: Path) -> list[str]:
    names = {p.name.split(".")[0] for p in (root / "ST-cnts").iterdir() if ".tsv" in p.name}
    return sorted(names, key=lambda s: (s[0], int(s[1:]) if s[1:].isdigit() else s[1:]))


def _her2st_labels(root: Path, section: str, adata: AnnData) -> pd.Series | None:
    """Pathologist labels of a section, matched on the spot detector's adjusted coordinates."""
    path = root / "ST-pat-lbl" / f"{section}_labeled_coordinates.tsv"
    if not path.is_file() or "array_col_adj" not in adata.obs:
        return None
    with reading(path, "Pathology label file"):
        lbl = pd.read_csv(path, sep="\t")
    lbl = lbl.dropna(subset=["x", "y", "label"])
    key = lbl["x"].round(3).astype(str) + "_" + lbl["y"].round(3).astype(str)
    lbl = pd.Series(lbl["label"].astype(str).to_numpy(), index=key.to_numpy())
    lbl = lbl[~lbl.index.duplicated(keep=False)]
    obs_key = (
        adata.obs["array_col_adj"].round(3).astype(str)
        + "_"
        + adata.obs["array_row_adj"].round(3).astype(str)
    )
    return pd.Series(lbl.reindex(obs_key.to_numpy()).to_numpy(), index=adata.obs_names)


def read_her2st(
    folder: str | Path,
    sections: Sequence[str] | str | None = None,
    *,
    images: bool = True,
    hires_max_side: int = HIRES_MAX_SIDE,
    dtype: str = "float32",
) -> AnnData:
    """Read sections of the HER2-positive breast tumour ST data set (Andersson et al. 2021).

    Reads a checkout of `github.com/almaan/her2st <https://github.com/almaan/her2st>`_ (the repository
    root or its ``data/`` folder): ``ST-cnts/<s>.tsv.gz``, ``ST-spotfiles/<s>_selection.tsv`` and, when
    present, the full-resolution image ``ST-imgs/<s>.jpg`` (or the repository's nested
    ``ST-imgs/<patient>/<s>/*.jpg``) and the pathologist labels ``ST-pat-lbl/<s>_labeled_coordinates.tsv``.
    Each section goes through :func:`read_st` (spot pitch 200 µm, spot diameter 100 µm, ``microns_per_pixel``
    fitted on the spot file: ≈0.688 for the JPEGs, ≈3.19 for the viewer app's images) and the sections are
    combined with :func:`~spared_tools.io.concat_slides`, as sections read from several folders can be
    (one section per call); :func:`~spared_tools.pp.extract_patches` then cuts 100 µm fields from all.

    Parameters
    ----------
    folder
        The her2st checkout (its root or its ``data/`` directory).
    sections
        Section names such as ``"C2"`` or ``["A1", "B1"]``; ``None`` reads every section in ``ST-cnts``
        (28 in the published data).
    images
        Read the full-resolution images where present (sections without one get no image).
    hires_max_side
        Long side in pixels of each ``hires`` image.
    dtype
        Data type of the CSR count matrix ``X``.

    Returns
    -------
    AnnData as written by :func:`read_st` for each section, concatenated with genes aligned on their
    union (zeros filled, first-seen order) and, in addition,

    ``obs['slide_id']``
        The section name (categorical, in the order read).
    ``obs['patient']``
        The patient letter (``"A"`` ... ``"F"``).
    ``obs['pathology_label']``
        Pathologist region label for the sections that have one (``A1``, ``B1``, ... ``F1``), ``NaN``
        elsewhere; only written when at least one read section has labels.

    ``obs_names`` are the ``<x>x<y>`` spot ids, prefixed with ``"<section>_"`` when several sections are read
    and ids collide.
    """
    from ._concat import concat_slides

    root = _her2st_root(Path(folder))
    available = _her2st_sections(root)
    if not available:
        raise FileNotFoundError(f"No count files (*.tsv[.gz]) in {root / 'ST-cnts'}.")
    if sections is None:
        sections = available
    elif isinstance(sections, str):
        sections = [sections]
    sections = [str(s) for s in sections]
    unknown = [s for s in sections if s not in available]
    if unknown:
        raise KeyError(f"Unknown her2st sections {unknown}; available in {root / 'ST-cnts'}: {available}.")
    if len(set(sections)) != len(sections):
        raise ValueError(f"sections lists a section more than once: {sections}.")

    slides = []
    any_labels = False
    for s in sections:
        cnt = next(p for p in (root / "ST-cnts").iterdir() if p.name.split(".")[0] == s and ".tsv" in p.name)
        spots = require_file(root / "ST-spotfiles" / f"{s}_selection.tsv", f"Spot file of section {s}")
        img = _her2st_image(root, s) if images else None
        if images and img is None:
            logger.info(f"read_her2st: no full-resolution image for section {s}; reading it without one.")
        a = read_st(cnt, spots, img, library_id=s, patient=s[0], hires_max_side=hires_max_side, dtype=dtype)
        a.uns[Key.SPATIAL][s]["metadata"].update(
            {
                "source_repo": "github.com/almaan/her2st",
                "organism": "Homo sapiens",
                "tissue": "HER2+ breast tumour",
                "platform": "ST (legacy, 1k array, square grid)",
            }
        )
        labels = _her2st_labels(root, s, a)
        if labels is not None:
            any_labels = True
            n_missing = int(labels.isna().sum())
            if n_missing:
                logger.info(f"read_her2st: {n_missing} spots of section {s} have no pathologist label.")
            a.obs[HER2ST_LABEL_KEY] = labels.to_numpy(dtype=object)
        slides.append(a)
    if len(slides) == 1:
        adata = slides[0]
    else:
        adata = concat_slides(slides, library_key=Key.SLIDE, patient_key=Key.PATIENT)
    if any_labels:
        adata.obs[HER2ST_LABEL_KEY] = pd.Categorical(adata.obs[HER2ST_LABEL_KEY].astype(object))
    return adata
