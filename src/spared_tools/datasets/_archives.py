"""Downloads and study archives of :mod:`spared_tools.datasets`.

Fetch a file (pooch, sha256 when known), extract an archive safely, and find each SpaRED slide's Space
Ranger folder in the layout its study publishes (``layout`` of the dataset table; see :mod:`spared_tools.datasets._spared_table`).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from spared_tools._logging import logger
from spared_tools._settings import settings

_COUNT_NAMES = ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix")


def _fetch(url: str, sha256: str | None, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (skipped when present and matching), checking ``sha256`` when known."""
    import pooch

    dest.parent.mkdir(parents=True, exist_ok=True)
    if not sha256:
        logger.info(f"No sha256 recorded for {url}; the download is not verified.")
    try:
        out = pooch.retrieve(
            url,
            known_hash=f"sha256:{sha256}" if sha256 else None,
            fname=dest.name,
            path=dest.parent,
            progressbar=bool(settings.progress and settings.verbosity >= 2),
        )
    except ValueError:
        raise
    except Exception as err:  # network errors: name the file that failed
        raise RuntimeError(f"Download of {url} to {dest} failed: {err}") from err
    return Path(out)


def _extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into ``dest`` (refusing members that escape it)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise ValueError(f"Archive {archive} has a member outside its folder: {member!r}.")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive.")


def _has_counts(folder: Path) -> bool:
    return (folder / "spatial").is_dir() and any((folder / n).exists() for n in _COUNT_NAMES)


def _find_slide_dirs(root: Path, slides: Sequence[str], prefer: str | None = None) -> dict[str, Path]:
    """Space Ranger folders named after each slide id under ``root`` (the folder itself or its ``outs``).

    The first one in sorted order is taken, except that one with a path component ``prefer`` (the
    study's tissue folder) wins over one without.
    """
    found: dict[str, Path] = {}
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        if here.name not in slides:
            continue
        s = here.name
        preferred = prefer is not None and prefer in here.relative_to(root).parts
        if s in found and (prefer is None or prefer in found[s].relative_to(root).parts or not preferred):
            continue
        for cand in (here, here / "outs"):
            if _has_counts(cand):
                found[s] = cand
    return found


def _find_dir(root: Path, tail: Sequence[str]) -> Path | None:
    """First folder under ``root`` (sorted walk) whose path ends with ``tail``.

    Names are compared case-insensitively with spaces read as underscores, since the Mendeley archives
    spell the same folder ``Patient 2`` in one version and ``Patient_2`` in another.
    """

    def norm(x: str) -> str:
        return x.replace(" ", "_").lower()

    want = [norm(t) for t in tail]
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        parts = [norm(x) for x in Path(dirpath).relative_to(root).parts]
        if parts[-len(want) :] == want:
            return Path(dirpath)
    return None


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` the file ``src`` without touching ``src``: a hard link, else a symlink, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.exists() and os.path.samefile(src, dst):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        try:
            dst.symlink_to(src.resolve())
        except OSError:
            shutil.copy2(src, dst)


def _token_match(entries: Sequence[Path], key: str) -> Path | None:
    """First of ``entries`` whose name holds ``key`` as a whole token.

    ``H1_2`` matches ``H1_2.jpg`` and ``H1_2_tissue_hires_image.png``, not ``H1_21``; the reference takes
    the first sorted path that merely contains the name, which gives the same files unless one name
    extends another.
    """
    pattern = re.compile(rf"(?<![0-9A-Za-z]){re.escape(key)}(?![0-9A-Za-z])")
    for p in entries:
        if pattern.search(p.name):
            return p
    return None


def _listdir(folder: Path | None, *, dirs: bool) -> list[Path]:
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() == dirs and not p.name.startswith("."))


#: Erickson et al. (Mendeley svw96g68dv): per patient, the folder of the per-slide count folders, of the
#: Space Ranger hires images and of the source images, as globbed by spared's
#: ``EricksonReader.download_data`` (spared 2.2.1, readers/EricksonReader.py lines 179-188).
_ERICKSON_FOLDERS = {
    "P1": (
        ("Count_matrices", "Patient 1", "Visium_with_annotation"),
        ("10x_spaceranger_tissue_highres_images", "Patient 1"),
        ("Histological_images", "Patient_1", "Visium"),
    ),
    "P2": (
        ("Count_matrices", "Patient 2"),
        ("10x_spaceranger_tissue_highres_images", "Patient 2"),
        ("Histological_images", "Patient_2"),
    ),
}


_POSITION_NAMES = ("tissue_positions_list.csv", "tissue_positions.csv", "tissue_positions.parquet")


def _erickson_dirs(
    name: str, extracted: Path, slides: Sequence[str], images: bool, out_root: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Slide folders of the Erickson prostate archive, assembled with links under ``out_root``.

    SpaRED slide ``P1_H2-5`` is the archive's folder ``H2_5`` of patient 1 (``slide.split('_')[1]`` with
    ``-`` read as ``_``). Each such folder holds ``filtered_feature_bc_matrix.h5``,
    ``scalefactors_json.json`` and ``tissue_positions_list.csv`` side by side (no ``spatial/``); the hires
    image (``<H2_5>_tissue_hires_image.png``) and the full-resolution image (``<H2_5>.jpg``) are in the
    patient's image folders. The reference moves the files into ``<slide>/`` and ``<slide>/spatial/``;
    here the same layout is made of links to the extracted files.
    """
    dirs: dict[str, Path] = {}
    fullres: dict[str, Path] = {}
    problems: list[str] = []
    folders: dict[tuple[str, ...], Path | None] = {}

    def find(tail: tuple[str, ...]) -> Path | None:
        if tail not in folders:
            folders[tail] = _find_dir(extracted, tail)
        return folders[tail]

    for s in slides:
        patient, _, section = s.partition("_")
        if patient not in _ERICKSON_FOLDERS or not section:
            problems.append(f"{s}: not a P1_/P2_ slide id")
            continue
        org = section.replace("-", "_")
        counts_tail, hires_tail, source_tail = _ERICKSON_FOLDERS[patient]
        folder = _token_match(_listdir(find(counts_tail), dirs=True), org)
        if folder is None:
            problems.append(f"{s}: no folder {org!r} in {'/'.join(counts_tail)}")
            continue
        if _has_counts(folder):
            dirs[s] = folder
        else:
            pool = [folder, folder / "spatial"]
            counts = next((f / n for f in pool for n in _COUNT_NAMES if (f / n).exists()), None)
            scale = next(
                (f / "scalefactors_json.json" for f in pool if (f / "scalefactors_json.json").is_file()), None
            )
            pos = next((f / n for f in pool for n in _POSITION_NAMES if (f / n).is_file()), None)
            if counts is None or scale is None or pos is None:
                problems.append(
                    f"{s}: {folder} lacks a count matrix, scalefactors_json.json or tissue_positions_list.csv"
                )
                continue
            sdir = out_root / s
            if counts.is_dir():
                for f in sorted(counts.iterdir()):
                    _link(f, sdir / counts.name / f.name)
            else:
                _link(counts, sdir / counts.name)
            _link(scale, sdir / "spatial" / scale.name)
            _link(pos, sdir / "spatial" / pos.name)
            hires = _token_match(_listdir(find(hires_tail), dirs=False), org)
            if hires is not None:
                # any image format: read_visium decodes by content, as the reference's cv2.imread does
                _link(hires, sdir / "spatial" / "tissue_hires_image.png")
            dirs[s] = sdir
        if images:
            jpgs = [p for p in _listdir(find(source_tail), dirs=False) if p.suffix.lower() == ".jpg"]
            src = _token_match(jpgs, org)
            if src is not None:
                fullres[s] = src
    if problems:
        raise FileNotFoundError(
            f"Dataset {name!r}: the extracted archive {extracted} does not have the layout of the Erickson "
            "et al. archive that the reference library reads (Count_matrices/Patient 1/Visium_with_annotation/"
            "<H1_2>/, Count_matrices/Patient 2/<H2_1>/): " + "; ".join(problems) + ". Read the slides with "
            "spared_tools.io.read_visium."
        )
    return dirs, fullres


#: Fan et al. (Mendeley nrbsxrk9mp): token of a ``*modif*`` Space Ranger folder name -> capture area, from
#: spared's ``FanReader.download_data`` (``slices_names``, spared 2.2.1 readers/FanReader.py line 214).
_FAN_AREAS = {"HC1": "A1", "HC2": "B1", "MOB1": "C1", "MOB2": "D1"}


def _fan_folder_slide(folder_name: str) -> str | None:
    """SpaRED slide id of a folder of ``Ex-ST/processed_data/spaceranger_output`` (reference renaming)."""
    parts = folder_name.split("_")
    if "modif" not in folder_name or len(parts) < 3 or parts[2] not in _FAN_AREAS:
        return None
    return f"{parts[2][:-1]}_{_FAN_AREAS[parts[2]]}"


def _fan_image_slide(file_name: str) -> str | None:
    """SpaRED slide id of an image of ``Ex-ST/raw_imgs`` (``*modif*_HC1_A1.jpg`` -> ``HC_A1``)."""
    if "modif" not in file_name or not file_name.endswith(".jpg") or file_name.count("_") < 1:
        return None
    tissue, area = file_name[: -len(".jpg")].split("_")[-2:]
    return f"{tissue[:-1]}_{area}"


def _fan_dirs(
    name: str, extracted: Path, slides: Sequence[str], images: bool
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Slide folders of the Fan et al. Ex-ST archive (no file is renamed: the folders are read in place).

    The reference keeps the folders of ``Ex-ST/processed_data/spaceranger_output`` whose name has
    ``modif`` (the modified-Visium runs) and renames each ``<tissue><n>`` token (third ``_`` field) to
    ``<tissue>_<area>`` with HC1 -> A1, HC2 -> B1, MOB1 -> C1, MOB2 -> D1; the image
    ``Ex-ST/raw_imgs/*modif*_<tissue><n>_<area>.jpg`` becomes ``<tissue>_<area>.jpg``.
    """
    runs = _find_dir(extracted, ("processed_data", "spaceranger_output"))
    dirs: dict[str, Path] = {}
    for folder in _listdir(runs, dirs=True):
        s = _fan_folder_slide(folder.name)
        if s is not None and s in slides and s not in dirs:
            for cand in (folder, folder / "outs"):
                if _has_counts(cand):
                    dirs[s] = cand
    missing = [s for s in slides if s not in dirs]
    if missing:
        where = runs if runs is not None else f"{extracted} (no processed_data/spaceranger_output folder)"
        raise FileNotFoundError(
            f"Dataset {name!r}: no Space Ranger folder for slides {missing} in {where}: the reference library "
            "expects folders named '*modif*_<HC1|HC2|MOB1|MOB2>*' holding spatial/ and "
            "filtered_feature_bc_matrix.h5. Read the slides with spared_tools.io.read_visium."
        )
    fullres: dict[str, Path] = {}
    if images:
        for img in _listdir(_find_dir(extracted, ("raw_imgs",)), dirs=False):
            s = _fan_image_slide(img.name)
            if s is not None and s in slides and s not in fullres:
                fullres[s] = img
    return dirs, fullres


def _slide_folder_fullres(layout: dict, extracted: Path, dirs: dict[str, Path]) -> dict[str, Path]:
    """Full-resolution images of the archives whose slides are folders named after the slide id."""
    kind = layout.get("fullres")
    tissue = layout.get("tissue")
    fullres: dict[str, Path] = {}
    if kind == "slide_folder_jpg":  # Abalo: <slide>/*.jpg
        for s, d in dirs.items():
            base = d.parent if d.name == "outs" else d
            jpgs = sorted(p for p in base.glob("*.jpg") if p.is_file())
            if jpgs:
                fullres[s] = jpgs[0]
    elif kind == "images_folder":  # Villacampa: images/<slide>.jpg
        for dirpath, dirnames, files in os.walk(extracted):
            dirnames.sort()
            if Path(dirpath).name == "images":
                for s in dirs:
                    if s not in fullres and f"{s}.jpg" in files:
                        fullres[s] = Path(dirpath) / f"{s}.jpg"
    elif kind == "tissue_images" and tissue:
        # Mirzazadeh: images/<tissue>/<slide>*, where the archive spells the folder "prostate cancer",
        # and the small-intestine images lie in smallintestine/ with the slide id's '-' written '_'
        # (V19T26_028_B1...): the reference renames the first '_' of such names to '-'.
        for dirpath, dirnames, files in os.walk(extracted):
            dirnames[:] = sorted(d for d in dirnames if d != "spaceranger_output")
            if Path(dirpath).name.replace(" ", "") != tissue:
                continue
            for f in sorted(files):
                fixed = f.replace("_", "-", 1) if tissue == "smallintestine" and len(f.split("_")) > 2 else f
                for s in dirs:
                    if s not in fullres and fixed.startswith(s):
                        fullres[s] = Path(dirpath) / f
    return fullres


def _extract_nested(name: str, nested: Path) -> None:
    marker = nested.with_name(f".{nested.name}.done")
    if marker.exists():
        return
    logger.info(f"load_spared({name!r}): extracting nested archive {nested.name}.")
    _extract(nested, nested.parent / nested.name.split(".")[0])
    marker.touch()
