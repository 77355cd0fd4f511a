"""Download registry of the 26 SpaRED datasets and of her2st, with a pooch cache.

The cache directory is ``$SPARED_TOOLS_DATA`` when set, else ``pooch.os_cache("spared_tools")`` (the
user's cache folder, never site-packages). Files with a known sha256 are verified after download.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._validation import check_subset

from ._archives import (
    _erickson_dirs,
    _extract,
    _extract_nested,
    _fan_dirs,
    _fetch,
    _find_slide_dirs,
    _slide_folder_fullres,
)
from ._spared_table import (
    HER2ST_BASE_URL,
    HER2ST_COMMIT,
    HER2ST_IMAGES,
    HER2ST_SECTIONS,
    HER2ST_SHA256,
    SPARED,
    TENX_FILES,
    VICARI_FILES,
)

#: Environment variable that overrides the cache directory.
ENV_VAR = "SPARED_TOOLS_DATA"
#: ``uns`` key written by :func:`load_spared`.
DATASET_KEY = Key.uns.dataset
_SPLITS = (Key.TRAIN, Key.VAL, Key.TEST)  # the table's slide lists, in this order


def _cache_root() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("spared_tools"))


def _check_name(name: str) -> dict:
    if not isinstance(name, str) or name not in SPARED:
        close = [n for n in SPARED if isinstance(name, str) and name.split("_")[0] in n]
        hint = f" Did you mean one of {close}?" if close else ""
        raise KeyError(f"Unknown SpaRED dataset {name!r}.{hint} See spared_tools.datasets.available().")
    return SPARED[name]


def available() -> list[str]:
    """Names of the 26 SpaRED datasets, in the order of the SpaRED publication's list.

    Returns
    -------
    The dataset names accepted by :func:`spared_info` and :func:`load_spared`.
    """
    return list(SPARED)


def spared_info(name: str) -> dict:
    """SpaRED parameters, splits and sources of one dataset.

    Values are those of the reference ``spared`` library's configuration file for the dataset.

    Parameters
    ----------
    name
        A name from :func:`available`.

    Returns
    -------
    A new dict with

    ``name``, ``organism``
        Dataset name and ``"human"`` / ``"mouse"`` (the TPM gene-length table to use).
    ``params``
        ``cell_min_counts``, ``cell_max_counts``, ``gene_min_counts``, ``gene_max_counts``,
        ``min_exp_frac``, ``min_glob_exp_frac``, ``real_data_percentage``, ``top_moran_genes``,
        ``wildcard_genes``, ``combat_key``, ``patch_size``, ``patch_scale``, ``prediction_layer``,
        ``hex_geometry``.
    ``splits``
        ``{"train": [...], "val": [...], "test": [...]}`` slide ids of the SpaRED split.
    ``download``
        ``"visium_files"``, ``"archive"`` or ``"normalized_only"`` (see :func:`load_spared`).
    ``source``, ``doi``, ``archive_urls``
        Where the raw data are published.
    """
    entry = _check_name(name)
    return {
        "name": name,
        "organism": entry["organism"],
        "params": copy.deepcopy(entry["params"]),
        "splits": {k: list(entry[k]) for k in _SPLITS},
        "download": entry["download"],
        "source": entry["source"],
        "doi": entry["doi"],
        "archive_urls": list(entry["archive_urls"]),
    }


def get_path(name: str | None = None) -> Path:
    """Directory where downloaded files are cached.

    Parameters
    ----------
    name
        ``None`` for the cache root, ``"her2st"``, or a SpaRED dataset name for its sub-folder.

    Returns
    -------
    The path (not created). The root is ``$SPARED_TOOLS_DATA`` when set, else
    ``pooch.os_cache("spared_tools")``.
    """
    root = _cache_root()
    if name is None:
        return root
    if name != "her2st":
        _check_name(name)
    return root / name


def _slide_dirs_from_archives(
    name: str, entry: dict, slides: list[str], images: bool
) -> tuple[dict[str, Path], dict[str, Path]]:
    root = get_path(name)
    extracted = root / "extracted"
    for url in entry["archive_urls"]:
        stem = url.rstrip("/").split("/")[-2 if url.endswith("file_downloaded") else -1].split("?")[0]
        archive = _fetch(url, None, root / "archives" / stem)
        marker = extracted / f".{stem}.done"
        if not marker.exists():
            _extract(archive, extracted / stem)
            marker.touch()
    layout = entry.get("layout") or {"kind": "slide_folders"}
    if layout["kind"] == "erickson":
        return _erickson_dirs(name, extracted, slides, images, root / "slides")
    if layout["kind"] == "fan":
        return _fan_dirs(name, extracted, slides, images)
    tissue = layout.get("tissue")
    nested = sorted(extracted.rglob("*.tar.gz")) + sorted(extracted.rglob("*.zip"))
    if tissue:  # Mirzazadeh: the tissue's own spaceranger_output/<tissue>.tar.gz first
        for arc in nested:
            if arc.name == f"{tissue}.tar.gz":
                _extract_nested(name, arc)
    found = _find_slide_dirs(extracted, slides, prefer=tissue)
    if len(found) < len(slides):
        # studies that ship one nested archive per tissue (e.g. spaceranger_output/colon.tar.gz): extract
        # them one at a time, stopping as soon as every slide is found
        for arc in nested:
            if arc.with_name(f".{arc.name}.done").exists():
                continue
            _extract_nested(name, arc)
            found = _find_slide_dirs(extracted, slides, prefer=tissue)
            if len(found) == len(slides):
                break
    missing = [s for s in slides if s not in found]
    if missing:
        raise FileNotFoundError(
            f"Dataset {name!r}: no Space Ranger folder named after slides {missing} (a folder with spatial/ "
            f"and a filtered_feature_bc_matrix) in the extracted archive {extracted}. The published layout "
            "of this study needs manual reading: use spared_tools.io.read_visium on each slide folder and "
            "spared_tools.io.concat_slides."
        )
    return found, (_slide_folder_fullres(layout, extracted, found) if images else {})


def _slide_dirs_from_files(
    name: str, slides: list[str], images: bool
) -> tuple[dict[str, Path], dict[str, Path]]:
    root = get_path(name)
    table = TENX_FILES if name.startswith("10xgenomic") else VICARI_FILES
    dirs: dict[str, Path] = {}
    fullres: dict[str, Path] = {}
    for s in slides:
        rows = [r for r in table if r[0] == s]
        if not rows:
            raise KeyError(f"No download links recorded for slide {s!r} of {name!r}.")
        sdir = root / s
        for _, fname, url, sha in rows:
            is_image = fname in ("image.tif", "source_image.jpg")
            if is_image and not images:
                continue
            path = _fetch(url, sha or None, sdir / fname)
            if fname == "spatial.tar.gz":
                if not (sdir / "spatial" / "scalefactors_json.json").is_file():
                    tmp = sdir / "_spatial_tar"
                    _extract(path, tmp)
                    hits = sorted(tmp.rglob("scalefactors_json.json"))
                    if not hits:
                        raise FileNotFoundError(f"{path} holds no scalefactors_json.json.")
                    shutil.copytree(hits[0].parent, sdir / "spatial", dirs_exist_ok=True)
                    shutil.rmtree(tmp)
            if is_image:
                fullres[s] = path
        dirs[s] = sdir
    return dirs, fullres


def load_spared(name: str, *, images: bool = True, dtype: str = "float32") -> AnnData:
    """Download (once) and read the raw counts of a SpaRED dataset.

    The raw Space Ranger outputs are fetched from their public sources into :func:`get_path` and read
    with :func:`~spared_tools.io.read_visium`; slides are combined with
    :func:`~spared_tools.io.concat_slides`. Nothing is filtered or normalised: run
    ``sp.pp.spared_pipeline`` with the parameters of :func:`spared_info` for the SpaRED processing.

    How each dataset is published (``spared_info(name)["download"]``):

    ``"visium_files"`` (10x Genomics samples, Vicari et al.)
        One file per Space Ranger output; fetched file by file (10x files with sha256 checks).
    ``"archive"`` (Abalo, Erickson, Fan, Mirzazadeh, Villacampa)
        A zip/tar of the whole study (several GB) is fetched and extracted once; each SpaRED slide is
        then found as the reference library's reader of that study finds or renames it
        (``spared/readers/<Author>Reader.py`` of spared 2.2.1):

        - Abalo, Villacampa (``data/<tissue>/``), Mirzazadeh (``spaceranger_output/<tissue>.tar.gz``,
          extracted first, then other nested archives one at a time only if slides are still missing):
          the Space Ranger folder named after the slide id, holding ``spatial/`` and the count matrix.
        - Erickson: slide ``P1_H2-5`` is the folder ``Count_matrices/Patient 1/Visium_with_annotation/
          H2_5/`` (patient 2: ``Count_matrices/Patient 2/<H2_1>/``), whose count matrix, scale factors
          and ``tissue_positions_list.csv`` lie side by side; its hires image is
          ``10x_spaceranger_tissue_highres_images/Patient N/H2_5*``. The reference moves these files into
          a Space Ranger layout; here that layout is made of links (hard links, else symlinks, else
          copies) under ``get_path(name)/slides/<slide>/``, leaving the extracted files as they are.
        - Fan: the folders of ``Ex-ST/processed_data/spaceranger_output`` whose name has ``modif`` are
          read in place, the third ``_`` field naming the slide (HC1 -> ``HC_A1``, HC2 -> ``HC_B1``,
          MOB1 -> ``MOB_C1``, MOB2 -> ``MOB_D1``).

        With ``images=True`` the full-resolution image is located the same way (Abalo ``<slide>/*.jpg``,
        Villacampa ``images/<slide>.jpg``, Mirzazadeh ``images/<tissue>/<slide>*``, Erickson
        ``Histological_images/Patient_N/...<H2_5>.jpg``, Fan ``Ex-ST/raw_imgs/*modif*_HC1_A1.jpg``); a
        slide without one is read without it. A ``FileNotFoundError`` names the extracted folder when a
        slide cannot be found (for instance if a study re-published its archive with another layout).
        The layouts come from the reference library's code: the real multi-GB archives were not
        downloaded when this was written (no internet access), and these paths were tested only on
        small synthetic archives that reproduce those layouts.
    ``"normalized_only"`` (Parigi et al.)
        The public files hold normalised values, not raw counts; a ``ValueError`` says so.

    Parameters
    ----------
    name
        A name from :func:`available`.
    images
        Also fetch (``visium_files`` datasets) or locate in the extracted archive (``archive``
        datasets) each slide's full-resolution image, recorded as ``metadata['fullres_path']``, not
        loaded.
    dtype
        Data type of ``X``.

    Returns
    -------
    AnnData as written by :func:`~spared_tools.io.read_visium` (``var_names`` = Ensembl ``gene_ids``,
    symbols in ``var['gene_symbols']``) for the slides of the SpaRED split, plus

    ``obs['slide_id']``, ``obs['patient']``
        Slide id and patient (the Visium capture-slide serial, the part of the slide id before ``_``;
        ``"unique"`` for the 10x samples, as in SpaRED).
    ``obs['split']``
        ``"train"`` / ``"val"`` / ``"test"`` as in SpaRED.
    ``uns['spared_dataset']``
        ``name``, ``organism``, ``params`` (the SpaRED parameters), ``source``, ``doi``, ``download``.
    """
    from spared_tools.io import concat_slides, read_visium

    entry = _check_name(name)
    if entry["download"] == "normalized_only":
        raise ValueError(
            f"Dataset {name!r}: its public files ({entry['source']}) hold normalised expression, not raw "
            "counts, so it cannot be read as raw counts (the reference library reads "
            "'*_normalized_data.tsv')."
        )
    split_of = {s: k for k in _SPLITS for s in entry[k]}
    slides = list(split_of)
    if entry["download"] == "visium_files":
        dirs, fullres = _slide_dirs_from_files(name, slides, images)
    else:
        dirs, fullres = _slide_dirs_from_archives(name, entry, slides, images)
    parts = []
    for s in slides:
        a = read_visium(
            dirs[s], library_id=s, fullres_image_path=fullres.get(s), var_names="gene_ids", dtype=dtype
        )
        a.obs[Key.SPLIT] = split_of[s]
        parts.append(a)
    patients = ["unique" if name.startswith("10xgenomic") else s.split("_")[0] for s in slides]
    adata = parts[0] if len(parts) == 1 else concat_slides(parts, slide_ids=slides, patients=patients)
    if len(parts) == 1:
        adata.obs[Key.PATIENT] = pd.Categorical([patients[0]] * adata.n_obs)
    adata.obs[Key.SPLIT] = pd.Categorical(adata.obs[Key.SPLIT], categories=list(_SPLITS))
    info = spared_info(name)
    uns = {k: info[k] for k in ("name", "organism", "source", "doi", "download")}
    # None cannot be written to .h5ad: store the reference library's spelling "None"
    uns["params"] = {k: ("None" if v is None else v) for k, v in info["params"].items()}
    adata.uns[DATASET_KEY] = uns
    return adata


def her2st(
    sections: Sequence[str] | str | None = None,
    *,
    images: bool = True,
    base_url: str | None = None,
    dtype: str = "float32",
) -> AnnData:
    """Download (once) and read sections of the her2st HER2+ breast tumour ST data set.

    Raw files of `github.com/almaan/her2st <https://github.com/almaan/her2st>`_ at commit 85df741
    (count tables ``data/ST-cnts``, spot files ``data/ST-spotfiles`` and, where the repository has one,
    the full-resolution H&E image ``data/ST-imgs``) are fetched into ``get_path("her2st")`` with sha256
    checks for the 28 sections A1-F3, then read with :func:`~spared_tools.io.read_her2st` (the
    pathologist label files are not fetched: ``obs['pathology_label']`` appears only when reading a local
    checkout that has ``ST-pat-lbl/``). The
    repository states no licence: the data are public research data; cite Andersson et al. 2021,
    Nat. Commun. 12, 6012.

    Parameters
    ----------
    sections
        Section names (``"A1"`` ... ``"H3"``); ``None`` downloads all 36.
    images
        Fetch and attach the full-resolution images of the sections that have one (B4, C2-C6; ~4 MB
        each, 9.3k x 9.9k px).
    base_url
        Mirror holding the repository layout (``<base_url>data/ST-cnts/A1.tsv.gz`` ...) instead of
        GitHub; hashes are still checked.
    dtype
        Data type of ``X``.

    Returns
    -------
    AnnData as returned by :func:`~spared_tools.io.read_her2st` (``obs['slide_id']``,
    ``obs['patient']`` = the section's letter, integer ``array_row``/``array_col``, pixel coordinates,
    images and scale factors), with ``metadata['source_commit']`` recorded per section.
    """
    from spared_tools.io import read_her2st

    sections = check_subset(
        sections, HER2ST_SECTIONS, name="sections", what="her2st sections", where="the repository has"
    )
    base = base_url or HER2ST_BASE_URL
    if not base.endswith("/"):
        base += "/"
    root = get_path("her2st")
    for s in sections:
        rels = [f"data/ST-cnts/{s}.tsv.gz", f"data/ST-spotfiles/{s}_selection.tsv"]
        if images and s in HER2ST_IMAGES:
            rels.append(HER2ST_IMAGES[s])
        for rel in rels:
            _fetch(base + rel, HER2ST_SHA256.get(rel), root / rel)
    adata = read_her2st(root, sections, images=images, dtype=dtype)
    for s in sections:
        adata.uns[Key.SPATIAL][s]["metadata"]["source_commit"] = HER2ST_COMMIT
    return adata
