"""The SpaRED dataset table and the her2st file table (data only; used by :mod:`spared_tools.datasets._registry`).

Sources, read from the public ``spared`` repository (github.com/BCV-Uniandes/SpaRED): the per-dataset
configuration files ``spared/spared/configs/<name>.json`` (commit 7cfb51d), the dataset list and
``get_dataset`` of ``spared/spared/datasets/datasets.py`` (commit 57caf91) and the download code of its
readers ``spared/spared/readers/*Reader.py`` (commits 3bca9ff / 3ca900f / 9cc1428). Every value below is
as coded there; nothing was invented. Where the reference code says something false (for example the
Vicari and Villacampa readers' docstrings, copied from the Abalo reader), only the URLs it actually uses
are recorded.
"""

from __future__ import annotations

#: SpaRED processing parameters shared by all 26 configurations (only the values in ``SPARED`` differ).
SPARED_DEFAULTS: dict[str, object] = {
    "cell_min_counts": 10,
    "cell_max_counts": 1_000_000,
    "gene_min_counts": 10,
    "gene_max_counts": 1_000_000,
    "min_exp_frac": -1.0,
    "min_glob_exp_frac": -1.0,
    "real_data_percentage": 0.7,
    "top_moran_genes": 128,
    "wildcard_genes": None,
    "combat_key": "slide_id",
    "patch_size": 224,
    "patch_scale": 1.0,
    "prediction_layer": "c_d_log1p",
    "hex_geometry": True,
}

_MENDELEY_S3 = "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com"
_MIRZA = (f"{_MENDELEY_S3}/4w6krnywhn-1.zip", f"{_MENDELEY_S3}/442mhsrpcm-1.zip")
_MIRZA_SRC = "https://data.mendeley.com/datasets/4w6krnywhn/1 (+ 442mhsrpcm/1 for small intestine)"
_MIRZA_DOI = "10.1038/s41467-023-36071-5"
_VILLA = (
    "https://data.mendeley.com/public-files/datasets/xjtv62ncwr/files/d2386c24-a17f-4ea7-b3e5-bc5091c3d1c3/file_downloaded",
    "https://data.mendeley.com/public-files/datasets/xjtv62ncwr/files/65ea796b-6df6-4908-9c62-bcf728a98894/file_downloaded",
)


def _d(
    organism: str,
    download: str,
    splits: tuple,
    source: str,
    urls: tuple = (),
    doi: str = "",
    layout: dict | None = None,
    **params,
) -> dict:
    train, val, test = splits
    return {
        "organism": organism,
        "download": download,
        "train": list(train),
        "val": list(val),
        "test": list(test),
        "source": source,
        "archive_urls": list(urls),
        "doi": doi,
        "layout": dict(layout or {"kind": "slide_folders"}),
        "params": {**SPARED_DEFAULTS, **params},
    }


# How the slides lie in each study's archive, as the reference readers (spared 2.2.1,
# spared/readers/<Author>Reader.py, download_data and get_adata_for_slide) find or rename them:
#   "slide_folders": a Space Ranger folder named after the slide id. ``tissue`` (Mirzazadeh, Villacampa):
#       the folder lies under ``<tissue>/`` (Mirzazadeh: inside ``spaceranger_output/<tissue>.tar.gz``);
#       ``fullres``: where the full-resolution image is ("slide_folder_jpg": ``<slide>/*.jpg``, Abalo;
#       "tissue_images": ``images/<tissue>/<slide>*``, Mirzazadeh; "images_folder": ``images/<slide>.jpg``,
#       Villacampa).
#   "erickson": ``Count_matrices/Patient N/...`` folders named ``H1_5`` etc. holding flat files (no
#       ``spatial/``); images in separate folders (see _registry._erickson_dirs).
#   "fan": ``Ex-ST/processed_data/spaceranger_output/*modif*_<HC1|HC2|MOB1|MOB2>*`` folders and
#       ``Ex-ST/raw_imgs/*modif*_<tissue><n>_<area>.jpg`` images (see _registry._fan_dirs).
_ABALO_LAYOUT = {"kind": "slide_folders", "fullres": "slide_folder_jpg"}
_ERICKSON_LAYOUT = {"kind": "erickson"}
_FAN_LAYOUT = {"kind": "fan"}


def _mirza(tissue: str) -> dict:
    # MirzazadehReader.download_data: dataset_2_tarfile
    return {"kind": "slide_folders", "tissue": tissue, "fullres": "tissue_images"}


def _villa(tissue: str) -> dict:
    # VillacampaReader.__init__: self.tissue = "".join(dataset.split("_")[1:])
    return {"kind": "slide_folders", "tissue": tissue, "fullres": "images_folder"}


#: The 26 SpaRED datasets. ``download`` says how the raw files are published:
#: ``"visium_files"`` one file per Space Ranger output (fetched file by file, supported end to end),
#: ``"archive"`` a zip/tar archive of the whole study (fetched and extracted; slides are then located as
#: ``layout`` says), ``"normalized_only"`` the public files hold normalised values, not raw counts.
SPARED: dict[str, dict] = {
    "10xgenomic_human_brain": _d(
        "human",
        "visium_files",
        (["V1_Human_Brain_Section_1"], ["V1_Human_Brain_Section_2"], []),
        "10x Genomics public Visium samples",
    ),
    "10xgenomic_human_breast_cancer": _d(
        "human",
        "visium_files",
        (["V1_Breast_Cancer_Block_A_Section_1"], ["V1_Breast_Cancer_Block_A_Section_2"], []),
        "10x Genomics public Visium samples",
    ),
    "10xgenomic_mouse_brain_coronal": _d(
        "mouse",
        "visium_files",
        (["V1_Adult_Mouse_Brain_Coronal_Section_1"], ["V1_Adult_Mouse_Brain_Coronal_Section_2"], []),
        "10x Genomics public Visium samples",
    ),
    "10xgenomic_mouse_brain_sagittal_anterior": _d(
        "mouse",
        "visium_files",
        (["V1_Mouse_Brain_Sagittal_Anterior"], ["V1_Mouse_Brain_Sagittal_Anterior_Section_2"], []),
        "10x Genomics public Visium samples",
    ),
    "10xgenomic_mouse_brain_sagittal_posterior": _d(
        "mouse",
        "visium_files",
        (["V1_Mouse_Brain_Sagittal_Posterior"], ["V1_Mouse_Brain_Sagittal_Posterior_Section_2"], []),
        "10x Genomics public Visium samples",
    ),
    "abalo_human_squamous_cell_carcinoma": _d(
        "human",
        "archive",
        (["V10F24-015_A1", "V10F24-015_C1"], ["V10F24-015_B1"], ["V10F24-015_D1"]),
        "https://data.mendeley.com/datasets/2bh5fchcv6/1",
        (f"{_MENDELEY_S3}/2bh5fchcv6-1.zip",),
        "10.17632/2bh5fchcv6.1",
        layout=_ABALO_LAYOUT,
    ),
    "erickson_human_prostate_cancer_p1": _d(
        "human",
        "archive",
        (["P1_H1-5", "P1_H1-4", "P1_H1-2", "P1_H2-2"], ["P1_H2-1", "P1_V1-2"], ["P1_H2-5"]),
        "https://data.mendeley.com/datasets/svw96g68dv/4",
        (f"{_MENDELEY_S3}/svw96g68dv-4.zip",),
        "10.1038/s41586-022-05023-2",
        layout=_ERICKSON_LAYOUT,
    ),
    "erickson_human_prostate_cancer_p2": _d(
        "human",
        "archive",
        (
            ["P2_H2-2", "P2_H3-1", "P2_H3-6", "P2_V1-1", "P2_V1-3"],
            ["P2_H2-1", "P2_H3-2", "P2_H3-5", "P2_V1-2", "P2_V1-4"],
            [],
        ),
        "https://data.mendeley.com/datasets/svw96g68dv/4",
        (f"{_MENDELEY_S3}/svw96g68dv-4.zip",),
        "10.1038/s41586-022-05023-2",
        layout=_ERICKSON_LAYOUT,
    ),
    "fan_mouse_brain_coronal": _d(
        "mouse",
        "archive",
        (["HC_B1"], ["HC_A1"], []),
        "https://data.mendeley.com/datasets/nrbsxrk9mp/1",
        (f"{_MENDELEY_S3}/nrbsxrk9mp-1.zip",),
        "10.1101/2022.10.25.513696",
        layout=_FAN_LAYOUT,
    ),
    "fan_mouse_olfatory_bulb": _d(
        "mouse",
        "archive",
        (["MOB_D1"], ["MOB_C1"], []),
        "https://data.mendeley.com/datasets/nrbsxrk9mp/1",
        (f"{_MENDELEY_S3}/nrbsxrk9mp-1.zip",),
        "10.1101/2022.10.25.513696",
        layout=_FAN_LAYOUT,
    ),
    "mirzazadeh_human_colon_p1": _d(
        "human",
        "archive",
        (["V11M22-349_B1"], ["V11M22-349_A1"], []),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        top_moran_genes=32,
        layout=_mirza("colon"),
    ),
    "mirzazadeh_human_colon_p2": _d(
        "human",
        "archive",
        (["V11B18-363_C1"], ["V10S29-108_B1"], []),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        top_moran_genes=32,
        combat_key="patient",
        layout=_mirza("colon"),
    ),
    "mirzazadeh_human_pediatric_brain_tumor_p1": _d(
        "human",
        "archive",
        (["V11Y03-081_B1", "V11Y03-081_C1"], ["V11Y03-081_A1", "V11Y03-081_D1"], []),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        layout=_mirza("pediatricbraintumor"),
    ),
    "mirzazadeh_human_pediatric_brain_tumor_p2": _d(
        "human",
        "archive",
        (["V10T03-322_D1"], ["V10T03-322_C1"], []),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        top_moran_genes=32,
        layout=_mirza("pediatricbraintumor"),
    ),
    "mirzazadeh_human_prostate_cancer": _d(
        "human",
        "archive",
        (["V11A20-405_C1", "V11A20-405_D1"], ["V11M22-349_C1", "V11M22-349_D1"], []),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        combat_key="patient",
        layout=_mirza("prostatecancer"),
    ),
    "mirzazadeh_human_small_intestine": _d(
        "human",
        "archive",
        (["V19T26-028_B1", "V19T26-028_D1"], ["V19T26-028_C1"], ["V11B18-363_D1"]),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        cell_min_counts=800,
        top_moran_genes=32,
        combat_key="patient",
        layout=_mirza("smallintestine"),
    ),
    "mirzazadeh_mouse_bone": _d(
        "mouse",
        "archive",
        (["V11D08-324_A1", "V11D08-324_C1"], ["V11D08-324_B1"], ["V11D08-324_D1"]),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        layout=_mirza("mousebone"),
    ),
    "mirzazadeh_mouse_brain_p1": _d(
        "mouse",
        "archive",
        (["V10S29-134_A1", "V10S29-134_C1"], ["V10S29-134_B1"], ["V10S29-134_D1"]),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        layout=_mirza("mousebrain"),
    ),
    "mirzazadeh_mouse_brain_p2": _d(
        "mouse",
        "archive",
        (["V11D08-304_A1", "V11D08-304_C1"], ["V11D08-304_D1"], ["V11D08-304_B1"]),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        layout=_mirza("mousebrain"),
    ),
    "mirzazadeh_mouse_brain": _d(
        "mouse",
        "archive",
        (
            ["V10S29-134_A1", "V10S29-134_B1", "V10S29-134_C1", "V10S29-134_D1"],
            ["V11D08-304_B1", "V11D08-304_D1"],
            ["V11D08-304_A1", "V11D08-304_C1"],
        ),
        _MIRZA_SRC,
        _MIRZA,
        _MIRZA_DOI,
        combat_key="patient",
        layout=_mirza("mousebrain"),
    ),
    "parigi_mouse_intestine": _d(
        "mouse",
        "normalized_only",
        (["B1_S2"], ["A1_S1"], []),
        "https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE169749",
        ("https://www.ncbi.nlm.nih.gov/geo/download/?acc=GSE169749&format=file",),
        "10.1038/s41467-022-28497-0",
        combat_key="patient",
    ),
    "vicari_human_striatium": _d(
        "human",
        "visium_files",
        (["V11T17-102_A1", "V11T17-102_B1"], ["V11T17-102_C1"], ["V11T17-102_D1"]),
        "https://figshare.scilifelab.se (per-file links in VICARI_FILES)",
        top_moran_genes=32,
    ),
    "vicari_mouse_brain": _d(
        "mouse",
        "visium_files",
        (
            [
                "V11L12-038_A1",
                "V11L12-038_B1",
                "V11L12-038_C1",
                "V11L12-038_D1",
                "V11L12-109_A1",
                "V11L12-109_B1",
                "V11L12-109_C1",
                "V11L12-109_D1",
            ],
            ["V11T16-085_A1", "V11T16-085_B1", "V11T16-085_C1", "V11T16-085_D1"],
            ["V11T17-101_A1", "V11T17-101_B1"],
        ),
        "https://figshare.scilifelab.se (per-file links in VICARI_FILES)",
        combat_key="patient",
    ),
    "villacampa_kidney_organoid": _d(
        "human",
        "archive",
        (["V19D02-085_B1", "V19D02-085_C1"], ["V19D02-085_D1"], []),
        "https://data.mendeley.com/datasets/xjtv62ncwr",
        _VILLA,
        layout=_villa("kidneyorganoid"),
    ),
    "villacampa_lung_organoid": _d(
        "human",
        "archive",
        (["V19D02-088_A1", "V19D02-088_B1"], ["V19D02-088_C1"], ["V19D02-088_D1"]),
        "https://data.mendeley.com/datasets/xjtv62ncwr",
        _VILLA,
        layout=_villa("lungorganoid"),
    ),
    "villacampa_mouse_brain": _d(
        "mouse",
        "archive",
        (["V10F24-078_A1", "V10F24-078_B1", "V10F24-078_C1"], ["V10F24-078_D1"], ["V19T26-039_A1"]),
        "https://data.mendeley.com/datasets/xjtv62ncwr",
        _VILLA,
        top_moran_genes=32,
        combat_key="patient",
        layout=_villa("mousebrain"),
    ),
}

_FIG = "https://figshare.scilifelab.se/ndownloader/files/"
#: Vicari et al. per-slide figshare file ids: (json, filtered h5, positions, hires png, source jpg).
_VICARI_IDS: dict[str, tuple[int, int, int, int, int]] = {
    "V11L12-038_A1": (40480214, 40480217, 40480220, 40480223, 40493688),
    "V11L12-038_B1": (40480243, 40480240, 40480249, 40480246, 40493690),
    "V11L12-038_C1": (40480311, 40480308, 40480317, 40480314, 40493693),
    "V11L12-038_D1": (40480338, 40480335, 40480344, 40480341, 40493691),
    "V11L12-109_A1": (40480350, 40480347, 40480356, 40480353, 40493697),
    "V11L12-109_B1": (40480410, 40480407, 40480416, 40480413, 40493699),
    "V11L12-109_C1": (40480446, 40480443, 40480452, 40480449, 40493700),
    "V11L12-109_D1": (40480500, 40480497, 40480782, 40480779, 40493702),
    "V11T16-085_A1": (40480788, 40480785, 40480794, 40480791, 40493766),
    "V11T16-085_B1": (40480890, 40480887, 40480896, 40480893, 40493772),
    "V11T16-085_C1": (40481447, 40484657, 40481456, 40481453, 40493778),
    "V11T16-085_D1": (40481621, 40481618, 40481627, 40481624, 40493820),
    "V11T17-101_A1": (40482452, 40482449, 40482458, 40482455, 40493724),
    "V11T17-101_B1": (40482746, 40482743, 40482752, 40482749, 40493733),
    "V11T17-102_A1": (40483314, 40483311, 40483320, 40483317, 40493714),
    "V11T17-102_B1": (40483416, 40483413, 40483422, 40483419, 40493712),
    "V11T17-102_C1": (40483587, 40483584, 40483593, 40483590, 40493723),
    "V11T17-102_D1": (40483677, 40483674, 40483686, 40483683, 40493721),
}
_VICARI_NAMES = (
    "spatial/scalefactors_json.json",
    "filtered_feature_bc_matrix.h5",
    "spatial/tissue_positions_list.csv",
    "spatial/tissue_hires_image.png",
    "source_image.jpg",
)
#: Vicari per-slide files: (slide, local file name, url, sha256 or "" when unknown).
VICARI_FILES: list[tuple[str, str, str, str]] = [
    (slide, name, f"{_FIG}{fid}", "")
    for slide, ids in _VICARI_IDS.items()
    for name, fid in zip(_VICARI_NAMES, ids)
]

#: Per-slide files of the 10x Genomics samples: (slide, file name, url, sha256), from squidpy's dataset registry
#: (squidpy 1.8 ``datasets.yaml``; the ``spared`` library fetched the same samples with ``squidpy.datasets.visium``).
TENX_FILES: list[tuple[str, str, str, str]] = [
    (
        "V1_Mouse_Brain_Sagittal_Anterior",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Anterior/V1_Mouse_Brain_Sagittal_Anterior_filtered_feature_bc_matrix.h5",
        "56078d8d6fe6c13de248fdb1c518b691cdef78fb00021b659786b4a47c6656d5",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Anterior",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Anterior/V1_Mouse_Brain_Sagittal_Anterior_spatial.tar.gz",
        "5f41a803e2bd69fa4dfca6abc8fa2d4e0d76aeb6c72d7038a5fdcf9cc50a36f8",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Anterior",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Anterior/V1_Mouse_Brain_Sagittal_Anterior_image.tif",
        "5837c44e4e1d0f77b3ade2350a4f2159922f4c388e882f1c38b5683ff7bd086d",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Anterior_Section_2",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Anterior_Section_2/V1_Mouse_Brain_Sagittal_Anterior_Section_2_filtered_feature_bc_matrix.h5",
        "6ffcca5979b722f7f112202a9a8273cdad60a2b40ba4f651d465fbba577b5a5c",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Anterior_Section_2",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Anterior_Section_2/V1_Mouse_Brain_Sagittal_Anterior_Section_2_spatial.tar.gz",
        "0fa49dd44835e0a77c4f24653abe6092c0a164c594696540ee3d9e2eee2e34a2",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Anterior_Section_2",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Anterior_Section_2/V1_Mouse_Brain_Sagittal_Anterior_Section_2_image.tif",
        "f6573c85a2e56fd9f70e6ce59134ed03a14140a074e2f85161f8b4778dad5bfb",
    ),
    (
        "V1_Adult_Mouse_Brain_Coronal_Section_1",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Adult_Mouse_Brain_Coronal_Section_1/V1_Adult_Mouse_Brain_Coronal_Section_1_filtered_feature_bc_matrix.h5",
        "005cecf7aed6704c8a29f446e6cb092a9db960b39cf312720ff0238ef94cca81",
    ),
    (
        "V1_Adult_Mouse_Brain_Coronal_Section_1",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Adult_Mouse_Brain_Coronal_Section_1/V1_Adult_Mouse_Brain_Coronal_Section_1_spatial.tar.gz",
        "96c5d31c3c8e9639e5545dcb4494580cbe8f7e0b63ca92476c800d332796e0f2",
    ),
    (
        "V1_Adult_Mouse_Brain_Coronal_Section_1",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Adult_Mouse_Brain_Coronal_Section_1/V1_Adult_Mouse_Brain_Coronal_Section_1_image.tif",
        "9ce5353f60c6a19657cdd43db392d0cb9cb253891daa8751c00bd2918af892e3",
    ),
    (
        "V1_Adult_Mouse_Brain_Coronal_Section_2",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Adult_Mouse_Brain_Coronal_Section_2/V1_Adult_Mouse_Brain_Coronal_Section_2_filtered_feature_bc_matrix.h5",
        "140366bde796174172d7c91b9c03107dfee3912c7cc060df0a47c030b6c72caf",
    ),
    (
        "V1_Adult_Mouse_Brain_Coronal_Section_2",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Adult_Mouse_Brain_Coronal_Section_2/V1_Adult_Mouse_Brain_Coronal_Section_2_spatial.tar.gz",
        "2b1e930d55fe8dff239d6838aa53389fe10ff011558a02ea654dad9d16737b03",
    ),
    (
        "V1_Adult_Mouse_Brain_Coronal_Section_2",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Adult_Mouse_Brain_Coronal_Section_2/V1_Adult_Mouse_Brain_Coronal_Section_2_image.tif",
        "4df93ac227d129250ee3ade3d0d33175bd51f0baae0bcf2841be779b3df03b4a",
    ),
    (
        "V1_Breast_Cancer_Block_A_Section_1",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Breast_Cancer_Block_A_Section_1/V1_Breast_Cancer_Block_A_Section_1_filtered_feature_bc_matrix.h5",
        "b3cbb6ead60afad848ebcc07a34835613d9d2d79e416ad8300b210d9de584b65",
    ),
    (
        "V1_Breast_Cancer_Block_A_Section_1",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Breast_Cancer_Block_A_Section_1/V1_Breast_Cancer_Block_A_Section_1_spatial.tar.gz",
        "415530a9d31172f63fd358d5d1cefb0798698ef9c0e614f52825894cd45c61bf",
    ),
    (
        "V1_Breast_Cancer_Block_A_Section_1",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Breast_Cancer_Block_A_Section_1/V1_Breast_Cancer_Block_A_Section_1_image.tif",
        "73a94ca956d1b5c027dcaf1ac42c15fed4d4a12eefee4b4b597e62f34cc5959e",
    ),
    (
        "V1_Breast_Cancer_Block_A_Section_2",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Breast_Cancer_Block_A_Section_2/V1_Breast_Cancer_Block_A_Section_2_filtered_feature_bc_matrix.h5",
        "e325b4e53f0036a71904cea6b7cd65945f10c25cf2ef8e2f681de9ac1ff7766c",
    ),
    (
        "V1_Breast_Cancer_Block_A_Section_2",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Breast_Cancer_Block_A_Section_2/V1_Breast_Cancer_Block_A_Section_2_spatial.tar.gz",
        "15fcf837478bcba847b50e393b016f95f02067ea930e81f96b103f2a14bf6db0",
    ),
    (
        "V1_Breast_Cancer_Block_A_Section_2",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Breast_Cancer_Block_A_Section_2/V1_Breast_Cancer_Block_A_Section_2_image.tif",
        "1ad96042cba8e05b22566ef5b8197714e06d4a5e98d040e926c8591ffdb48cc7",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Posterior",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Posterior/V1_Mouse_Brain_Sagittal_Posterior_filtered_feature_bc_matrix.h5",
        "df962209143860488bd679ff7a1b3bb14985208d0929fb814934ba7571c488b6",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Posterior",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Posterior/V1_Mouse_Brain_Sagittal_Posterior_spatial.tar.gz",
        "b878d7eaca487ffc17224a870f86599abf9d45a99033c1ef65661ff119cef0d5",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Posterior",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Posterior/V1_Mouse_Brain_Sagittal_Posterior_image.tif",
        "18558cd21345f6d590af4f519859a3710b400508ed31ae1e0b1d66b561de5e5f",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Posterior_Section_2",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Posterior_Section_2/V1_Mouse_Brain_Sagittal_Posterior_Section_2_filtered_feature_bc_matrix.h5",
        "7e4dbea6a2037b3478719d121eec33a56b96d0c904daade9c8cbeb428f415bc4",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Posterior_Section_2",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Posterior_Section_2/V1_Mouse_Brain_Sagittal_Posterior_Section_2_spatial.tar.gz",
        "e8be08bf867387a6209c4f37ede4266d1305dfb038c77411b213a28fc2d79107",
    ),
    (
        "V1_Mouse_Brain_Sagittal_Posterior_Section_2",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Mouse_Brain_Sagittal_Posterior_Section_2/V1_Mouse_Brain_Sagittal_Posterior_Section_2_image.tif",
        "ccc41944ae7586b1468141f840897c6096e1ce9506e6e0774b9ef3d89054b12c",
    ),
    (
        "V1_Human_Brain_Section_1",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Brain_Section_1/V1_Human_Brain_Section_1_filtered_feature_bc_matrix.h5",
        "076e5d1fa82243349ee963e069b362c81198e8c4f752ad9680dfb0714d0c240f",
    ),
    (
        "V1_Human_Brain_Section_1",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Brain_Section_1/V1_Human_Brain_Section_1_spatial.tar.gz",
        "3979bcbeb13a61d5e1a2ffb066bd76b4c121a1cd1293c66da7578cd1fbb1d247",
    ),
    (
        "V1_Human_Brain_Section_1",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Brain_Section_1/V1_Human_Brain_Section_1_image.tif",
        "68ac2d8b72514248eeb7666a7409c286d1e7d4af30b700baed36ebe85dcf2961",
    ),
    (
        "V1_Human_Brain_Section_2",
        "filtered_feature_bc_matrix.h5",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Brain_Section_2/V1_Human_Brain_Section_2_filtered_feature_bc_matrix.h5",
        "1ee773e152a1befb9a4fce1b4883f62790e717546d5db092e209c6ac4c1f9d2d",
    ),
    (
        "V1_Human_Brain_Section_2",
        "spatial.tar.gz",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Brain_Section_2/V1_Human_Brain_Section_2_spatial.tar.gz",
        "74b40c7f38d69b086d47739a565a8b17e558c2c5cf2c83c17c999e9ac7c25f83",
    ),
    (
        "V1_Human_Brain_Section_2",
        "image.tif",
        "https://exampledata.scverse.org/squidpy/10x_genomics/V1_Human_Brain_Section_2/V1_Human_Brain_Section_2_image.tif",
        "87881ff452472bc326c6267184a43ad5c53fb4caa39637679a59143228266ef1",
    ),
]

#: her2st (Andersson et al. 2021, Nat. Commun.): raw files of github.com/almaan/her2st at this commit.
#: The count files are ordinary gzip files in git (no git-lfs); the Zenodo record 3957257 holds the same
#: data as password-protected 7z archives (passwords in the repository README), which are not used here.
HER2ST_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
HER2ST_BASE_URL = f"https://raw.githubusercontent.com/almaan/her2st/{HER2ST_COMMIT}/"
#: The 36 sections of the repository (patients A-H); images exist only for some of them.
HER2ST_SECTIONS: list[str] = [
    f"{p}{i}" for p, n in zip("ABCDEFGH", (6, 6, 6, 6, 3, 3, 3, 3)) for i in range(1, n + 1)
]
#: Full-resolution H&E images present in the repository (nested as in the repository).
HER2ST_IMAGES: dict[str, str] = {
    "B4": "data/ST-imgs/B/B4/BT10737_D2_HE.jpg",
    "C2": "data/ST-imgs/C/C2/5714_HE_BT_C2.jpg",
    "C3": "data/ST-imgs/C/C3/5714_HE_BT_D1.jpg",
    "C4": "data/ST-imgs/C/C4/5714_HE_BT_D2.jpg",
    "C5": "data/ST-imgs/C/C5/5714_HE_BT_E1.jpg",
    "C6": "data/ST-imgs/C/C6/5714_HE_BT_E2.jpg",
}
#: sha256 of the published her2st files (almaan/her2st @ 85df741; checked against copies whose gzip/EXIF
#: headers date from 2019/2016). Files not listed (sections G1-H3) are downloaded without a hash check.
HER2ST_SHA256: dict[str, str] = {
    "data/ST-cnts/A1.tsv.gz": "d91035e5d8a9c4ce7865e4c61446deec1a7318602d41b3220e9fcb3ce7e41fe3",
    "data/ST-cnts/A2.tsv.gz": "1c84f44bfc0bce6d5647b78e4598e2456f769e29f72ca52911d5bc4be81e410c",
    "data/ST-cnts/A3.tsv.gz": "dd0107ff76b643d7b72330c7bfe282e2b27eb7dd58b77680b0e6bcbeae95852f",
    "data/ST-cnts/A4.tsv.gz": "3283ba1bf1550b26119966fe06a844d815e7fc73c493943b936dd3d933c4c331",
    "data/ST-cnts/A5.tsv.gz": "ff40c29d552391b3a4c4f37bb8c5cefce82e4dc64a277d4b80e2425405c59722",
    "data/ST-cnts/A6.tsv.gz": "65b4f4d25b1afab5b6556c7a6aab2b8910562d03b173cebcf568ab7190695aec",
    "data/ST-cnts/B1.tsv.gz": "97b3abf2676c596ac7dd53829780005724cab62a6f676697516006481a443f74",
    "data/ST-cnts/B2.tsv.gz": "b43cef41e3164ffe4a3b43b6ed396f664d971451d3dc151dea4d91a09e84d95c",
    "data/ST-cnts/B3.tsv.gz": "bd1fd03f33bdc14ca68a271525587d27b1e78323ea695413d274d6c388becf7a",
    "data/ST-cnts/B4.tsv.gz": "e38231c2a38c9bc7e6d550eec0e527c1869ee0e525fc913e708d1323c34f5ebb",
    "data/ST-cnts/B5.tsv.gz": "05bdd1ea4234f62d5223f94a96d37f2f87b48e95062251560cdd676f5514948a",
    "data/ST-cnts/B6.tsv.gz": "bfb2b4e5d99b6021c43f546a3e773c32f4f13a4b461cdd1684d364f9fe550e2b",
    "data/ST-cnts/C1.tsv.gz": "8383130eebf0f9f8186f006ed6b704149ba62303605a312a9080fa9901be9c20",
    "data/ST-cnts/C2.tsv.gz": "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d",
    "data/ST-cnts/C3.tsv.gz": "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a",
    "data/ST-cnts/C4.tsv.gz": "33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da",
    "data/ST-cnts/D1.tsv.gz": "8fe13d29763b3f6a9e85322dae97e05c4ca42b57cef4b1077c88b9b7b6a980ac",
    "data/ST-cnts/D2.tsv.gz": "e63818ad8717b47ca949e082c1f28b9c807475b8d722a6f5c1acda7b618b5495",
    "data/ST-cnts/D3.tsv.gz": "0bdfa82f3a2f4c659757cbd9f9b5734f9faabc44c4ee72094bf2b8609c86e01f",
    "data/ST-cnts/D4.tsv.gz": "4da2a65ffdd6ce52993e4f68b3730326c00ce9304cf8aebaf125efe9997fb898",
    "data/ST-cnts/D5.tsv.gz": "a1592e1742913cd37f2534153467752ded6eade730d5acdc227daad55c9e551f",
    "data/ST-cnts/D6.tsv.gz": "3b9ab37e0cacf7956da1354c8c0ee2a7fc5e12be78ccb4d10578df36a6bf7271",
    "data/ST-cnts/E1.tsv.gz": "b2f572ea0a95d256cb172a9284e96b6d2ff236398d4934a992df85c96d11c4cc",
    "data/ST-cnts/E2.tsv.gz": "a725a87e1a74ef0c096d421664dd9100bf973e5768c28acfa9c17abb63677a95",
    "data/ST-cnts/E3.tsv.gz": "8030d33e51c2831f7c758ed0374baa9f121d2e2dce6decd47228ff070c7f0ac4",
    "data/ST-cnts/F1.tsv.gz": "187aa13f204d514851d3674dfa09b4a8d7f2676f1d40d2ef63e9e368c7cf672a",
    "data/ST-cnts/F2.tsv.gz": "7de4ca7c3ccb923f4d636b21a4639284c66da9d97a93e1ab6712b3c453229c04",
    "data/ST-cnts/F3.tsv.gz": "6b7eb2d7ff8c6a8826cfba304de2d3b87bb8e30f68d050b83007de9888546743",
    "data/ST-spotfiles/A1_selection.tsv": "e5f79223be2ea2aebb082c4759059ab7079b0132052d0944209048ac57788c5d",
    "data/ST-spotfiles/A2_selection.tsv": "b21f48c8492ff1d71c0d0d396dbde64735ff8fa5419bcc6f5cffe60f68d7cb09",
    "data/ST-spotfiles/A3_selection.tsv": "09a5434745c4ce3c6859f3af00ea414a4b947685977e97f24595e77d1a0ff78e",
    "data/ST-spotfiles/A4_selection.tsv": "d1e41fb1d50ea04b55743f3c67104bdde46e1aea6a086e6cfdaf5109da0d2e02",
    "data/ST-spotfiles/A5_selection.tsv": "1237571fecfa2809292eeb7c7ee6b7da220a516121b94a71802cbbc971dc0daa",
    "data/ST-spotfiles/A6_selection.tsv": "d771bdc9dcb386cce0e628339c9ff94e5392fff191790b31aba4d73ff44b7554",
    "data/ST-spotfiles/B1_selection.tsv": "7ea9963677db80199db928d763b0b34ea1015fb7452e85ac7b21d42ee15c3875",
    "data/ST-spotfiles/B2_selection.tsv": "963e3f0b0e6eb17586788f2228dbd829ca7d13eb0211bf8b1a5685d3a33b8153",
    "data/ST-spotfiles/B3_selection.tsv": "23b07cc9e5142802915cefedb7a8259766b58544fa7a2ac3eda21feaa267b9c9",
    "data/ST-spotfiles/B4_selection.tsv": "192b46f3ca414c85753a01a4fb5760a697ca6c0a1aadb949c4687cc6efa9faa0",
    "data/ST-spotfiles/B5_selection.tsv": "dc206c6e6448e81ba55d01f16fa862d07f5f7087fe16772eab919355e43cd1a7",
    "data/ST-spotfiles/B6_selection.tsv": "63b90d6283071d2db43d5486eeba0e76091998e64fa8c4a95b4501086c8aff33",
    "data/ST-spotfiles/C1_selection.tsv": "9a5187c98d2c312064057d3bad192d4a19105b5135ff2b68f5e4547cade0954d",
    "data/ST-spotfiles/C2_selection.tsv": "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c",
    "data/ST-spotfiles/C3_selection.tsv": "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755",
    "data/ST-spotfiles/C4_selection.tsv": "47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c",
    "data/ST-spotfiles/D1_selection.tsv": "7ba7843b52ddc2b147ee968fe9466a5d1fa0d884b51def292ce340d88da034eb",
    "data/ST-spotfiles/D2_selection.tsv": "5e0cadc230094060d071124cfb5ab6223d3dbb56b6aa6c3e4f8f9c8f1e329fb5",
    "data/ST-spotfiles/D3_selection.tsv": "e820564d7720c1fbc9910f5440368a43a2b862d617a9c107582ddb706af61a3b",
    "data/ST-spotfiles/D4_selection.tsv": "82e12ff5f14a9564fd0aa9755243e4412e6786fdb559210cef9c3c6ff35a05b0",
    "data/ST-spotfiles/D5_selection.tsv": "f19eebb34f6a031fe766715d7f97a7682e201f30097fd0fa15ebf8f34ff95853",
    "data/ST-spotfiles/D6_selection.tsv": "82d80015e0e789bbbfe2d6ea033da43207a1803666a0ec5b162db380b3cc1cb7",
    "data/ST-spotfiles/E1_selection.tsv": "a979c36f6310fff965c96f05ad290ca322d88e400b5aed2a1139fdd6f0e2da92",
    "data/ST-spotfiles/E2_selection.tsv": "1beeac4b7a45e432eb4d9c34460e7a2a3342f77e0bb6dcffae66ae31b1584444",
    "data/ST-spotfiles/E3_selection.tsv": "f0fe37cfb98e3757587d0d43d45fc734b3627d336ccab4da179548b86c5c1d9c",
    "data/ST-spotfiles/F1_selection.tsv": "cf479a5812c317541c7f7d6a4ebf1bfd93b0a1ab3eef35a8da15b9e76164f2f4",
    "data/ST-spotfiles/F2_selection.tsv": "3a9149a67b05971dfb27edb2261d9ffd2443543021356b0d46f26d8237c1a20d",
    "data/ST-spotfiles/F3_selection.tsv": "106ba9b275b29fd745116b8961a1a0bb39ec41d9d0433932d6b129f98a46c093",
}
HER2ST_SHA256.update(
    {
        "data/ST-imgs/B/B4/BT10737_D2_HE.jpg": "3cb165614ce2a13426381e450220dccac980cc9bda6a90fb041c28ca0e2c753d",
        "data/ST-imgs/C/C2/5714_HE_BT_C2.jpg": "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
        "data/ST-imgs/C/C3/5714_HE_BT_D1.jpg": "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
        "data/ST-imgs/C/C4/5714_HE_BT_D2.jpg": "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    }
)
