"""The SpaRED dataset table and the her2st file table, read at import from ``_data/spared_table.json``.

Sources, read from the public ``spared`` repository (github.com/BCV-Uniandes/SpaRED): the per-dataset
configuration files ``spared/spared/configs/<name>.json`` (commit 7cfb51d), the dataset list and
``get_dataset`` of ``spared/spared/datasets/datasets.py`` (commit 57caf91) and the download code of its
readers ``spared/spared/readers/*Reader.py`` (commits 3bca9ff / 3ca900f / 9cc1428). Every value in the
data file is as coded there; nothing was invented. Where the reference code says something false (for
example the Vicari and Villacampa readers' docstrings, copied from the Abalo reader), only the URLs it
actually uses are recorded. The 10x Genomics files and hashes come from squidpy's dataset registry
(squidpy 1.8 ``datasets.yaml``; the ``spared`` library fetched the same samples with
``squidpy.datasets.visium``); her2st (Andersson et al. 2021, Nat. Commun.) from github.com/almaan/her2st
at ``HER2ST_COMMIT`` (the count files are ordinary gzip files in git; the Zenodo record 3957257 holds the
same data as password-protected 7z archives, not used here). Files without a hash (her2st sections
G1-H3, Vicari) are downloaded without a check.

Each entry of ``SPARED`` has ``organism``, ``download`` (``"visium_files"``: one file per Space Ranger
output, fetched file by file; ``"archive"``: a zip/tar of the whole study, fetched and extracted, slides
then located as ``layout`` says; ``"normalized_only"``: the public files hold normalised values, not raw
counts), the ``train`` / ``val`` / ``test`` slide ids of the SpaRED split, ``source``, ``archive_urls``,
``doi``, ``layout`` and ``params`` (the SpaRED processing parameters: ``SPARED_DEFAULTS`` updated with the
values the data file lists for that dataset).

``layout`` says how the slides lie in each study's archive, as the reference readers (spared 2.2.1,
``spared/readers/<Author>Reader.py``, ``download_data`` and ``get_adata_for_slide``) find or rename them:

* ``"slide_folders"``: a Space Ranger folder named after the slide id. ``tissue`` (Mirzazadeh,
  Villacampa): the folder lies under ``<tissue>/`` (Mirzazadeh: inside
  ``spaceranger_output/<tissue>.tar.gz``); ``fullres``: where the full-resolution image is
  (``"slide_folder_jpg"``: ``<slide>/*.jpg``, Abalo; ``"tissue_images"``: ``images/<tissue>/<slide>*``,
  Mirzazadeh; ``"images_folder"``: ``images/<slide>.jpg``, Villacampa).
* ``"erickson"``: ``Count_matrices/Patient N/...`` folders named ``H1_5`` etc. holding flat files (no
  ``spatial/``); images in separate folders (see ``_archives._erickson_dirs``).
* ``"fan"``: ``Ex-ST/processed_data/spaceranger_output/*modif*_<HC1|HC2|MOB1|MOB2>*`` folders and
  ``Ex-ST/raw_imgs/*modif*_<tissue><n>_<area>.jpg`` images (see ``_archives._fan_dirs``).
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

__all__ = [
    "HER2ST_BASE_URL",
    "HER2ST_COMMIT",
    "HER2ST_IMAGES",
    "HER2ST_SECTIONS",
    "HER2ST_SHA256",
    "SPARED",
    "SPARED_DEFAULTS",
    "TENX_FILES",
    "VICARI_FILES",
]

_ENTRY_KEYS = {
    "organism",
    "download",
    "train",
    "val",
    "test",
    "source",
    "archive_urls",
    "doi",
    "layout",
    "params",
}


def _read() -> dict[str, Any]:
    with files("spared_tools").joinpath("_data", "spared_table.json").open("r", encoding="utf-8") as fh:
        table = json.load(fh)
    defaults = table["spared_defaults"]
    for name, entry in table["spared"].items():
        if set(entry) != _ENTRY_KEYS or not set(entry["params"]) <= set(defaults):
            raise ValueError(f"_data/spared_table.json: malformed entry {name!r}")  # a packaging error
        entry["params"] = {**defaults, **entry["params"]}
    return table


_TABLE = _read()

#: SpaRED processing parameters shared by all 26 configurations (only the values in ``SPARED`` differ).
SPARED_DEFAULTS: dict[str, object] = _TABLE["spared_defaults"]
#: The 26 SpaRED datasets (see the module docstring for the fields).
SPARED: dict[str, dict] = _TABLE["spared"]
#: Vicari per-slide files: (slide, local file name, url, sha256 or "" when unknown).
VICARI_FILES: list[tuple[str, str, str, str]] = [tuple(row) for row in _TABLE["vicari_files"]]  # type: ignore[misc]
#: Per-slide files of the 10x Genomics samples: (slide, file name, url, sha256).
TENX_FILES: list[tuple[str, str, str, str]] = [tuple(row) for row in _TABLE["tenx_files"]]  # type: ignore[misc]
#: her2st: raw files of github.com/almaan/her2st at this commit.
HER2ST_COMMIT: str = _TABLE["her2st"]["commit"]
HER2ST_BASE_URL: str = _TABLE["her2st"]["base_url"]
#: The 36 sections of the repository (patients A-H); images exist only for some of them.
HER2ST_SECTIONS: list[str] = _TABLE["her2st"]["sections"]
#: Full-resolution H&E images present in the repository (nested as in the repository).
HER2ST_IMAGES: dict[str, str] = _TABLE["her2st"]["images"]
#: sha256 of the published her2st files (checked against copies whose gzip/EXIF headers date from 2019/2016).
HER2ST_SHA256: dict[str, str] = _TABLE["her2st"]["sha256"]
