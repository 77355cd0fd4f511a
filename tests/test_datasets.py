from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image
from tests.conftest import shared_path
from tests.test_io import _write_10x_h5, _write_positions

import spared_tools as st
from spared_tools.datasets import _registry
from spared_tools.datasets._spared_table import HER2ST_SHA256, SPARED

# --------------------------------------------------------------------------- local HTTP server


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):
        return

    def do_GET(self):
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A threaded http.server on 127.0.0.1 serving ``root``; yields (root, base_url, requests)."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    server.requests = []
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("SPARED_TOOLS_DATA", str(tmp_path / "cache"))
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- registry table


REFERENCE_NAMES = [
    "10xgenomic_human_brain", "10xgenomic_human_breast_cancer", "10xgenomic_mouse_brain_coronal",
    "10xgenomic_mouse_brain_sagittal_anterior", "10xgenomic_mouse_brain_sagittal_posterior",
    "abalo_human_squamous_cell_carcinoma", "erickson_human_prostate_cancer_p1",
    "erickson_human_prostate_cancer_p2", "fan_mouse_brain_coronal", "fan_mouse_olfatory_bulb",
    "mirzazadeh_human_colon_p1", "mirzazadeh_human_colon_p2", "mirzazadeh_human_pediatric_brain_tumor_p1",
    "mirzazadeh_human_pediatric_brain_tumor_p2", "mirzazadeh_human_prostate_cancer",
    "mirzazadeh_human_small_intestine", "mirzazadeh_mouse_bone", "mirzazadeh_mouse_brain_p1",
    "mirzazadeh_mouse_brain_p2", "mirzazadeh_mouse_brain", "parigi_mouse_intestine", "vicari_human_striatium",
    "vicari_mouse_brain", "villacampa_kidney_organoid", "villacampa_lung_organoid", "villacampa_mouse_brain",
]  # fmt: skip


def test_available_matches_reference_list():
    assert st.datasets.available() == REFERENCE_NAMES  # spared.datasets.get_dataset docstring, same order


def test_spared_info_values():
    info = [st.datasets.spared_info(n) for n in st.datasets.available()]
    # published counts (REFERENCE.md: 28 configs, 22 x 128 / 6 x 32 genes; 19 slide_id / 9 patient,
    # of which batiuk_human_brain and hudson_human_brain are not among the 26 and use 128 / patient)
    assert sum(i["params"]["top_moran_genes"] == 32 for i in info) == 6
    assert sum(i["params"]["top_moran_genes"] == 128 for i in info) == 20
    assert sum(i["params"]["combat_key"] == "slide_id" for i in info) == 19
    assert sum(i["params"]["combat_key"] == "patient" for i in info) == 7
    # the one dataset with a different minimum spot count
    assert [i["name"] for i in info if i["params"]["cell_min_counts"] != 10] == [
        "mirzazadeh_human_small_intestine"
    ]
    assert st.datasets.spared_info("mirzazadeh_human_small_intestine")["params"]["cell_min_counts"] == 800
    a = st.datasets.spared_info("vicari_mouse_brain")
    assert a["organism"] == "mouse" and a["params"]["hex_geometry"] is True
    assert len(a["splits"]["train"]) == 8 and a["splits"]["test"] == ["V11T17-101_A1", "V11T17-101_B1"]
    assert st.datasets.spared_info("abalo_human_squamous_cell_carcinoma")["archive_urls"] == [
        "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/2bh5fchcv6-1.zip"
    ]
    a["params"]["top_moran_genes"] = -5  # a copy: the table is unchanged
    assert SPARED["vicari_mouse_brain"]["params"]["top_moran_genes"] == 128
    with pytest.raises(KeyError, match="Unknown SpaRED dataset 'vicari'"):
        st.datasets.spared_info("vicari")


def test_get_path_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARED_TOOLS_DATA", str(tmp_path / "c"))
    assert st.datasets.get_path() == tmp_path / "c"
    assert st.datasets.get_path("her2st") == tmp_path / "c" / "her2st"
    assert st.datasets.get_path("fan_mouse_olfatory_bulb") == tmp_path / "c" / "fan_mouse_olfatory_bulb"
    with pytest.raises(KeyError):
        st.datasets.get_path("nope")
    monkeypatch.delenv("SPARED_TOOLS_DATA")
    default = st.datasets.get_path()
    assert "spared_tools" in str(default) and "site-packages" not in str(default)


def test_parigi_has_no_raw_counts():
    with pytest.raises(ValueError, match="normalised expression, not raw"):
        st.datasets.load_spared("parigi_mouse_intestine")


# --------------------------------------------------------------------------- her2st download (real code, local server)


def _serve_her2st(root: Path, sections: list[str]) -> None:
    src = shared_path("her2st_raw")
    for s in sections:
        for rel, srcfile in (
            (f"data/ST-cnts/{s}.tsv.gz", src / "ST-cnts" / f"{s}.tsv.gz"),
            (f"data/ST-spotfiles/{s}_selection.tsv", src / "ST-spotfiles" / f"{s}_selection.tsv"),
        ):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).symlink_to(srcfile)


def test_her2st_download_checks_hashes_and_caches(http_root):
    root, base, requests = http_root
    _serve_her2st(root, ["C1", "C3"])
    adata = st.datasets.her2st(["C1", "C3"], images=False, base_url=base)
    assert len(requests) == 4
    ref = st.io.read_her2st(shared_path("her2st_raw"), ["C1", "C3"], images=False)
    assert list(adata.obs_names) == list(ref.obs_names) and list(adata.var_names) == list(ref.var_names)
    np.testing.assert_array_equal(adata.X.toarray(), ref.X.toarray())
    assert list(adata.obs["patient"].unique()) == ["C"]
    assert adata.uns["spatial"]["C1"]["metadata"]["source_commit"].startswith("85df741")
    cached = st.datasets.get_path("her2st") / "data" / "ST-cnts" / "C1.tsv.gz"
    assert _sha(cached) == HER2ST_SHA256["data/ST-cnts/C1.tsv.gz"]
    st.datasets.her2st("C1", images=False, base_url=base)
    assert len(requests) == 4  # served from the cache


def test_her2st_download_rejects_a_tampered_file(http_root):
    root, base, _ = http_root
    _serve_her2st(root, ["C1"])
    bad = root / "data" / "ST-spotfiles" / "C1_selection.tsv"
    text = bad.read_text()
    bad.unlink()
    bad.write_text(text.replace("\t1\n", "\t0\n", 1))
    with pytest.raises(ValueError, match="SHA256 hash of downloaded file"):
        st.datasets.her2st("C1", images=False, base_url=base)


def test_her2st_errors(http_root):
    _, base, _ = http_root
    with pytest.raises(KeyError, match="Unknown her2st sections"):
        st.datasets.her2st("Z1", base_url=base)
    with pytest.raises(RuntimeError, match="Download of .*A1.tsv.gz.* failed"):
        st.datasets.her2st("A1", images=False, base_url=base)  # nothing served: 404


# --------------------------------------------------------------------------- load_spared (real code, local server)


def _visium_fixture_files(www: Path) -> dict[str, Path]:
    src = shared_path("fixtures", "scanpy_visium_1.0.0_raw")
    h5 = www / "counts.h5"
    shutil.copy(src / "filtered_feature_bc_matrix.h5", h5)
    tgz = www / "spatial.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src / "spatial", arcname="spatial")
    img = www / "image.tif"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(img)
    return {"filtered_feature_bc_matrix.h5": h5, "spatial.tar.gz": tgz, "image.tif": img}


def test_load_spared_visium_files(http_root, monkeypatch):
    www, base, requests = http_root
    files = _visium_fixture_files(www)
    slides = ["S_A", "S_B"]
    table = [(s, n, base + p.name, _sha(p)) for s in slides for n, p in files.items()]
    monkeypatch.setattr(_registry, "TENX_FILES", table)
    entry = dict(SPARED["10xgenomic_human_brain"], train=["S_A"], val=["S_B"], test=[])
    monkeypatch.setitem(_registry.SPARED, "10xgenomic_fixture", entry)
    adata = st.datasets.load_spared("10xgenomic_fixture")
    assert len(requests) == 6
    ref = st.io.read_visium(shared_path("fixtures", "scanpy_visium_1.0.0_raw"), var_names="gene_ids")
    assert adata.n_obs == 2 * ref.n_obs and list(adata.var_names) == list(ref.var_names)
    np.testing.assert_array_equal(adata.X[: ref.n_obs].toarray(), ref.X.toarray())
    np.testing.assert_array_equal(adata.X[ref.n_obs :].toarray(), ref.X.toarray())
    assert list(adata.obs["split"].unique()) == ["train", "val"]
    assert set(adata.obs["patient"]) == {"unique"}
    assert adata.obs_names[0] == f"S_A_{ref.obs_names[0]}"  # barcodes repeat across slides: prefixed
    lib = adata.uns["spatial"]["S_B"]
    assert lib["metadata"]["fullres_width"] == 50 and Path(lib["metadata"]["fullres_path"]).is_file()
    assert adata.uns["spared_dataset"]["params"]["top_moran_genes"] == 128
    assert adata.uns["spared_dataset"]["params"]["wildcard_genes"] == "None"
    # bad hash -> pooch refuses the file
    table_bad = [(s, n, u, "0" * 64 if n == "filtered_feature_bc_matrix.h5" else h) for s, n, u, h in table]
    monkeypatch.setattr(_registry, "TENX_FILES", table_bad)
    monkeypatch.setenv("SPARED_TOOLS_DATA", str(www.parent / "cache2"))
    with pytest.raises(ValueError, match="SHA256"):
        st.datasets.load_spared("10xgenomic_fixture")


def test_load_spared_archive(http_root, monkeypatch):
    www, base, _ = http_root
    src = shared_path("fixtures", "scanpy_visium_1.0.0_raw")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for slide in ("V1-1_A1", "V1-2_B1"):
            zf.write(
                src / "filtered_feature_bc_matrix.h5", f"Study data/{slide}/filtered_feature_bc_matrix.h5"
            )
            for f in (src / "spatial").iterdir():
                zf.write(f, f"Study data/{slide}/spatial/{f.name}")
    (www / "study-1.zip").write_bytes(buf.getvalue())
    entry = dict(
        SPARED["abalo_human_squamous_cell_carcinoma"],
        train=["V1-1_A1"],
        val=[],
        test=["V1-2_B1"],
        archive_urls=[base + "study-1.zip"],
    )
    monkeypatch.setitem(_registry.SPARED, "archive_fixture", entry)
    adata = st.datasets.load_spared("archive_fixture")
    assert list(adata.obs["slide_id"].cat.categories) == ["V1-1_A1", "V1-2_B1"]
    assert list(adata.obs["patient"].unique()) == ["V1-1", "V1-2"]
    assert list(adata.obs["split"].unique()) == ["train", "test"]
    ref = st.io.read_visium(src, var_names="gene_ids")
    np.testing.assert_array_equal(adata.X[ref.n_obs :].toarray(), ref.X.toarray())
    missing = dict(entry, train=["V1-9_C1"], test=[])
    monkeypatch.setitem(_registry.SPARED, "archive_fixture", missing)
    with pytest.raises(FileNotFoundError, match=r"slides \['V1-9_C1'\]"):
        st.datasets.load_spared("archive_fixture")


# --------------------------------------------------------------------------- bundled example


def test_example_layout_and_provenance():
    a = st.datasets.example()
    assert a.shape == (786, 1000)
    assert sp.issparse(a.X) and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() > 0
    assert list(a.obs["slide_id"].cat.categories) == ["MOB1", "MOB2"]
    assert (a.obs["slide_id"] == "MOB1").sum() == 379
    assert a.obs["array_row"].dtype == np.int64 and a.obs["array_col"].dtype == np.int64
    assert ((a.obs["array_row"] + a.obs["array_col"]) % 2 == 0).all()  # ST 2k checkerboard
    assert a.var_names[0].startswith("ENSMUSG")
    assert a.var.loc["ENSMUSG00000064339.1", "gene_symbol"] == "mt-Rnr2"
    assert (a.var["gene_symbol"] != "").sum() == 996
    lib = a.uns["spatial"]["MOB1"]
    assert lib["images"]["hires"].shape == (1905, 1905, 3) and lib["images"]["hires"].dtype == np.uint8
    assert lib["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert max(lib["images"]["lowres"].shape[:2]) == 600
    np.testing.assert_allclose(a.obsm["spatial"][:, 0], a.obs["pxl_col_in_fullres"])
    prov = a.uns["example"]
    assert "MIT" in prov["licence"] and prov["source_commit"].startswith("9a8f421")
    assert hashlib.sha256(a.X.toarray().astype(np.int32).tobytes()).hexdigest() == prov["counts_sha256"]
    b = st.datasets.example(images=False, dtype="int32")
    assert b.uns["spatial"]["MOB2"]["images"] == {} and b.X.dtype == np.int32
    lic = Path(st.__file__).parent / "_data" / "EXAMPLE_LICENSE"
    assert "MIT License" in lic.read_text(encoding="utf-8")


def test_example_matches_source_sections():
    a = st.datasets.example()
    for s in ("MOB1", "MOB2"):
        src = ad.read_h5ad(shared_path("stutility_mob", f"stutility_{s}.h5ad"))
        sub = a[a.obs["slide_id"] == s]
        assert list(sub.obs_names) == list(src.obs_names) and list(sub.var_names) == list(src.var_names)
        np.testing.assert_array_equal(sub.X.toarray(), src.X.toarray())
        np.testing.assert_array_equal(sub.obs["array_row"], src.obs["array_row"])
        np.testing.assert_allclose(sub.obsm["spatial"], src.obsm["spatial"])
        img = a.uns["spatial"][s]["images"]["hires"].astype(float)
        ref = src.uns["spatial"][f"stutility_{s}"]["images"]["hires"].astype(float)
        assert np.abs(img - ref).mean() < 3.0  # JPEG q90 re-encoding
        sf_src = src.uns["spatial"][f"stutility_{s}"]["scalefactors"]["spot_diameter_fullres"]
        assert a.uns["spatial"][s]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(sf_src)
    assert pd.api.types.is_string_dtype(a.var["gene_symbol"]) or a.var["gene_symbol"].dtype == object


def test_load_spared_nested_archive(http_root, monkeypatch):
    # Mirzazadeh-style layout: study.zip -> spaceranger_output/<tissue>.tar.gz -> <tissue>/<slide>/...
    www, base, _ = http_root
    src = shared_path("fixtures", "scanpy_visium_1.0.0_raw")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        tf.add(src / "filtered_feature_bc_matrix.h5", "colon/V9_A1/filtered_feature_bc_matrix.h5")
        tf.add(src / "spatial", "colon/V9_A1/spatial")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("Supplementary Data 1/spaceranger_output/colon.tar.gz", inner.getvalue())
        zf.writestr("Supplementary Data 1/spaceranger_output/other.tar.gz", b"not extracted")
    (www / "nested-1.zip").write_bytes(outer.getvalue())
    entry = dict(
        SPARED["mirzazadeh_human_colon_p1"],
        train=["V9_A1"],
        val=[],
        test=[],
        archive_urls=[base + "nested-1.zip"],
    )
    monkeypatch.setitem(_registry.SPARED, "nested_fixture", entry)
    adata = st.datasets.load_spared("nested_fixture")
    ref = st.io.read_visium(src, var_names="gene_ids")
    np.testing.assert_array_equal(adata.X.toarray(), ref.X.toarray())
    assert (
        list(adata.obs["patient"].unique()) == ["V9"]
        and adata.uns["spared_dataset"]["params"]["top_moran_genes"] == 32
    )


# --------------------------------------------------------------------------- archive layouts of the reference readers
#
# Synthetic archives with the folder and file names that spared 2.2.1's readers expect
# (spared/readers/{Erickson,Fan,Villacampa,Mirzazadeh,Abalo}Reader.py, download_data and
# get_adata_for_slide); every slide is a tiny Space Ranger output with its own counts and image values,
# so a slide read from the wrong folder fails the comparison.

_GENES = ["ENSG0001", "ENSG0002", "ENSG0003", "ENSG0004"]
_BARCODES = ["AAACAAGTATCTCCCA-1", "AAACACCAATAACTGC-1", "AAACAGAGCGACTCCT-1"]  # repeat across slides


def _tiny_space_ranger(folder: Path, k: int, *, nested_spatial: bool = True) -> np.ndarray:
    """Write slide number ``k`` (3 spots x 4 genes, counts ``10 k + 0..11``); return its counts."""
    X = np.arange(12).reshape(3, 4) + 10 * k
    spatial = folder / "spatial" if nested_spatial else folder
    spatial.mkdir(parents=True, exist_ok=True)
    _write_10x_h5(
        folder / "filtered_feature_bc_matrix.h5",
        sp.csr_matrix(X),
        _BARCODES,
        _GENES,
        ["G1", "G2", "G3", "G4"],
        library=f"V10A13-160_lib{k}",
    )
    _write_positions(spatial, _BARCODES[::-1], [2, 0, 1], [0, 2, 1], header=False)
    (spatial / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": 11.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1})
    )
    return X


def _png(path: Path, k: int, size: tuple[int, int] = (6, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 20 + k, np.uint8)).save(path)


def _zip_dir(src: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())


def _check_slides(adata, name: str, expected: dict[str, np.ndarray], patients: dict[str, str]) -> None:
    """Exact per-slide counts, slide order, split and patient of ``load_spared(name)``."""
    info = st.datasets.spared_info(name)
    order = info["splits"]["train"] + info["splits"]["val"] + info["splits"]["test"]
    assert list(adata.obs["slide_id"].cat.categories) == order
    assert list(adata.obs["slide_id"].unique()) == order
    assert list(adata.var_names) == _GENES
    split_of = {s: k for k, v in info["splits"].items() for s in v}
    for s in order:
        sub = adata[adata.obs["slide_id"] == s]
        np.testing.assert_array_equal(sub.X.toarray(), expected[s])
        assert set(sub.obs["split"]) == {split_of[s]}
        assert set(sub.obs["patient"]) == {patients[s]}
        np.testing.assert_array_equal(sub.obs["array_row"], [1, 0, 2])  # positions file is in reverse order
    assert adata.n_obs == 3 * len(order)
    assert list(adata.obs["split"].cat.categories) == ["train", "val", "test"]


_ERICKSON_TOP = "Spatially resolved clonal copy number alterations in benign and malignant tissueJus"
_ERICKSON_SECTIONS = {
    # patient 1: the 7 SpaRED sections and H1_1 (not in SpaRED); patient 2: the 10 SpaRED sections and H1_1
    "P1": ["H1_1", "H1_2", "H1_4", "H1_5", "H2_1", "H2_2", "H2_5", "V1_2"],
    "P2": ["H1_1", "H2_1", "H2_2", "H3_1", "H3_2", "H3_5", "H3_6", "V1_1", "V1_2", "V1_3", "V1_4"],
}


def _erickson_archive(tmp: Path) -> dict[tuple[str, str], int]:
    """The Erickson et al. (Mendeley svw96g68dv-4) layout read by EricksonReader.download_data."""
    top = tmp / _ERICKSON_TOP
    number: dict[tuple[str, str], int] = {}
    for patient, sections in _ERICKSON_SECTIONS.items():
        pdir = "Patient 1" if patient == "P1" else "Patient 2"
        counts_root = top / "Count_matrices" / pdir
        if patient == "P1":
            counts_root = counts_root / "Visium_with_annotation"
        img_root = top / "Histological_images" / ("Patient_1/Visium" if patient == "P1" else "Patient_2")
        for sec in sections:
            k = number[(patient, sec)] = len(number) + 1
            folder = counts_root / sec
            _tiny_space_ranger(folder, k, nested_spatial=False)  # the three files side by side, no spatial/
            if patient == "P1":
                (folder / f"{sec}_Final_Consensus_Annotations.csv").write_text("Barcode,Final_Annotations\n")
            _png(top / "10x_spaceranger_tissue_highres_images" / pdir / f"{sec}_tissue_hires_image.png", k)
            _png(img_root / f"{sec}.jpg", k, (10, 12))
    _png(top / "Additional_figures" / "Prostate_Patient_1.png", 0)
    return number


@pytest.mark.parametrize("name", ["erickson_human_prostate_cancer_p1", "erickson_human_prostate_cancer_p2"])
def test_load_spared_erickson_archive_layout(http_root, monkeypatch, tmp_path, name):
    www, base, requests = http_root
    number = _erickson_archive(tmp_path / "erickson")
    _zip_dir(tmp_path / "erickson", www / "svw96g68dv-4.zip")
    monkeypatch.setitem(_registry.SPARED, name, dict(SPARED[name], archive_urls=[base + "svw96g68dv-4.zip"]))
    adata = st.datasets.load_spared(name)
    slides = sum(st.datasets.spared_info(name)["splits"].values(), [])
    patient = slides[0].split("_")[0]
    assert len(slides) == (7 if patient == "P1" else 10)
    # SpaRED P1_H2-5 is the archive's Patient 1 folder H2_5 (H2_2 and H2_1 exist for both patients)
    k_of = {s: number[(patient, s.split("_")[1].replace("-", "_"))] for s in slides}
    expected = {s: np.arange(12).reshape(3, 4) + 10 * k for s, k in k_of.items()}
    _check_slides(adata, name, expected, {s: patient for s in slides})
    for s, k in k_of.items():
        lib = adata.uns["spatial"][s]
        assert lib["images"]["hires"][0, 0, 0] == 20 + k  # the section's own hires image
        section = s.split("_")[1].replace("-", "_")
        assert Path(lib["metadata"]["fullres_path"]).name == f"{section}.jpg"
        assert ("Patient_1" if patient == "P1" else "Patient_2") in lib["metadata"]["fullres_path"]
        assert lib["metadata"]["fullres_width"] == 12
    # the extracted archive is left as published: the Space Ranger layout is made of links elsewhere
    extracted = st.datasets.get_path(name) / "extracted" / "svw96g68dv-4.zip" / _ERICKSON_TOP
    assert not any(p.name == "spatial" for p in extracted.rglob("*"))
    assert (extracted / "Count_matrices" / "Patient 2" / "H2_2" / "tissue_positions_list.csv").is_file()
    # a second call reads the cache again (links already in place) without downloading
    n_requests = len(requests)
    again = st.datasets.load_spared(name, images=False)
    assert len(requests) == n_requests
    np.testing.assert_array_equal(again.X.toarray(), adata.X.toarray())
    assert "fullres_path" not in again.uns["spatial"][slides[0]]["metadata"]


def _fan_archive(tmp: Path) -> dict[str, int]:
    """The Fan et al. Ex-ST (Mendeley nrbsxrk9mp-1) layout read by FanReader.download_data."""
    ex = tmp / "Ex-ST"
    runs = ex / "processed_data" / "spaceranger_output"
    number: dict[str, int] = {}
    # "modif" runs are SpaRED's; the third '_' field HC1/HC2/MOB1/MOB2 names the slide. The other runs
    # (expansion ST, standard Visium without raw image) are not, even with the same token
    for k, folder in enumerate(
        [
            "modified_Visium_HC1",
            "modified_Visium_HC2",
            "modified_Visium_MOB1",
            "modified_Visium_MOB2",
            "expST_Visium_HC1",
            "expST_Visium_MOB2",
            "hippocampus_standard_Visium_10XGenomics",
        ],
        start=1,
    ):
        number[folder] = k
        _tiny_space_ranger(runs / folder, k)
        _png(runs / folder / "spatial" / "tissue_hires_image.png", k)
        _png(runs / folder / "spatial" / "tissue_lowres_image.png", k, (3, 4))
    for f in (
        "stereoscope_output_modified_visium",
        "stereoscope_output_expST_standard_Visium_MOB_hippocampus",
    ):
        (ex / "processed_data" / f).mkdir(parents=True)
        (ex / "processed_data" / f / "W.tsv").write_text("x\n")
    for img, k in [
        ("modified_Visium_HC1_A1.jpg", 1),
        ("modified_Visium_HC2_B1.jpg", 2),
        ("modified_Visium_MOB1_C1.jpg", 3),
        ("modified_Visium_MOB2_D1.jpg", 4),
        ("expST_HC1_A1.jpg", 5),
    ]:
        _png(ex / "raw_imgs" / img, k, (10, 14))
    return number


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("fan_mouse_brain_coronal", {"HC_B1": "modified_Visium_HC2", "HC_A1": "modified_Visium_HC1"}),
        ("fan_mouse_olfatory_bulb", {"MOB_D1": "modified_Visium_MOB2", "MOB_C1": "modified_Visium_MOB1"}),
    ],
)
def test_load_spared_fan_archive_layout(http_root, monkeypatch, tmp_path, name, runs):
    www, base, _ = http_root
    number = _fan_archive(tmp_path / "fan")
    _zip_dir(tmp_path / "fan", www / "nrbsxrk9mp-1.zip")
    monkeypatch.setitem(_registry.SPARED, name, dict(SPARED[name], archive_urls=[base + "nrbsxrk9mp-1.zip"]))
    adata = st.datasets.load_spared(name)
    expected = {s: np.arange(12).reshape(3, 4) + 10 * number[run] for s, run in runs.items()}
    _check_slides(adata, name, expected, {s: s.split("_")[0] for s in runs})
    for s, run in runs.items():
        lib = adata.uns["spatial"][s]
        assert lib["images"]["hires"][0, 0, 0] == 20 + number[run]
        assert lib["images"]["lowres"].shape == (3, 4, 3)
        assert Path(lib["metadata"]["fullres_path"]).name == f"{run}_{s.split('_')[1]}.jpg"
        assert f"spaceranger_output/{run}/" in Path(lib["metadata"]["counts_path"]).as_posix()


def test_load_spared_villacampa_archive_layout(http_root, monkeypatch, tmp_path):
    # VillacampaReader: data tar -> data/<tissue>/<slide>/, images tar -> images/<slide>.jpg
    www, base, _ = http_root
    name = "villacampa_mouse_brain"
    info = st.datasets.spared_info(name)
    slides = info["splits"]["train"] + info["splits"]["val"] + info["splits"]["test"]
    src = tmp_path / "villa"
    expected = {}
    for k, s in enumerate(slides, start=1):
        expected[s] = _tiny_space_ranger(src / "data" / "mousebrain" / s, k)
        _png(src / "images" / f"{s}.jpg", k, (9, 11))
    # the same slide id under another tissue, sorted first: the dataset's own tissue folder wins
    _tiny_space_ranger(src / "data" / "kidneyorganoid" / slides[0], 40)
    _tiny_space_ranger(src / "data" / "kidneyorganoid" / "V19D02-085_B1", 41)
    urls = []
    for part, uuid in (("data", "d2386c24"), ("images", "65ea796b")):
        dest = www / "files" / uuid / "file_downloaded"
        dest.parent.mkdir(parents=True)
        with tarfile.open(dest, "w:gz") as tf:
            tf.add(src / part, arcname=part)
        urls.append(f"{base}files/{uuid}/file_downloaded")
    monkeypatch.setitem(_registry.SPARED, name, dict(SPARED[name], archive_urls=urls))
    adata = st.datasets.load_spared(name)
    _check_slides(adata, name, expected, {s: s.split("_")[0] for s in slides})
    assert set(adata.obs["patient"]) == {"V10F24-078", "V19T26-039"}
    for s in slides:
        full = Path(adata.uns["spatial"][s]["metadata"]["fullres_path"])
        assert full.name == f"{s}.jpg" and full.parent.name == "images"


_MIRZA_SUP1 = (
    "Spatially resolved transcriptomic profiling of degraded and challenging fresh frozen samples "
    "Supplementary Data 1"
)


def _mirzazadeh_archives(tmp: Path, www: Path) -> dict[str, np.ndarray]:
    """The two Mirzazadeh et al. zips (Mendeley 4w6krnywhn-1, 442mhsrpcm-1) as MirzazadehReader reads them."""
    sup1, sup2 = _MIRZA_SUP1, _MIRZA_SUP1.replace("Data 1", "Data 2")
    jpg = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 9, np.uint8)).save(jpg, format="JPEG")
    expected: dict[str, np.ndarray] = {}
    tars: dict[str, bytes] = {}
    for tissue, ds in (
        ("smallintestine", "mirzazadeh_human_small_intestine"),
        ("mousebone", "mirzazadeh_mouse_bone"),
    ):
        info = st.datasets.spared_info(ds)
        for s in info["splits"]["train"] + info["splits"]["val"] + info["splits"]["test"]:
            expected[s] = _tiny_space_ranger(tmp / tissue / tissue / s, len(expected) + 1)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            tf.add(tmp / tissue / tissue, arcname=tissue)
        tars[tissue] = buf.getvalue()
    with zipfile.ZipFile(www / "4w6krnywhn-1.zip", "w") as zf:
        # sorted before mousebone.tar.gz: extracting it (it is not a tar) would fail
        zf.writestr(f"{sup1}/spaceranger_output/colon.tar.gz", b"not a tar: must not be extracted")
        zf.writestr(f"{sup1}/spaceranger_output/mousebone.tar.gz", tars["mousebone"])
        zf.writestr(f"{sup1}/images/prostate cancer/V11A20-405_C1.jpg", jpg.getvalue())
        for s in expected:
            if s.startswith("V11D08-324"):
                zf.writestr(f"{sup1}/images/mousebone/{s}.jpg", jpg.getvalue())
    with zipfile.ZipFile(www / "442mhsrpcm-1.zip", "w") as zf:
        zf.writestr(f"{sup2}/spaceranger_output/smallintestine.tar.gz", tars["smallintestine"])
        for s in expected:
            if not s.startswith("V11D08-324"):  # small-intestine images: '_' for the first '-'
                zf.writestr(f"{sup2}/smallintestine/{s.replace('-', '_', 1)}.jpg", jpg.getvalue())
    return expected


@pytest.mark.parametrize("name", ["mirzazadeh_human_small_intestine", "mirzazadeh_mouse_bone"])
def test_load_spared_mirzazadeh_archive_layout(http_root, monkeypatch, tmp_path, name):
    # MirzazadehReader: two zips; spaceranger_output/<tissue>.tar.gz -> <tissue>/<slide>/ (only the
    # dataset's tissue is extracted); images/<tissue>/<slide>*, small-intestine images in smallintestine/
    # named with '_' for the slide id's '-' (V19T26_028_B1.jpg)
    www, base, _ = http_root
    expected = _mirzazadeh_archives(tmp_path / "mirza", www)
    entry = dict(SPARED[name], archive_urls=[base + "4w6krnywhn-1.zip", base + "442mhsrpcm-1.zip"])
    monkeypatch.setitem(_registry.SPARED, name, entry)
    adata = st.datasets.load_spared(name)
    slides = list(adata.obs["slide_id"].cat.categories)
    _check_slides(adata, name, {s: expected[s] for s in slides}, {s: s.split("_")[0] for s in slides})
    bone = name == "mirzazadeh_mouse_bone"
    assert adata.uns["spared_dataset"]["params"]["cell_min_counts"] == (10 if bone else 800)
    for s in slides:
        meta = adata.uns["spatial"][s]["metadata"]
        assert Path(meta["fullres_path"]).name == (f"{s}.jpg" if bone else f"{s.replace('-', '_', 1)}.jpg")
        assert meta["fullres_width"] == 7
    done = sorted(p.name for p in st.datasets.get_path(name).rglob(".*.tar.gz.done"))
    assert done == ([".mousebone.tar.gz.done"] if bone else [".smallintestine.tar.gz.done"])


def test_load_spared_abalo_archive_layout(http_root, monkeypatch, tmp_path):
    # AbaloReader: the zip holds one folder per slide id with spatial/, the h5 and the source *.jpg
    www, base, _ = http_root
    name = "abalo_human_squamous_cell_carcinoma"
    info = st.datasets.spared_info(name)
    slides = info["splits"]["train"] + info["splits"]["val"] + info["splits"]["test"]
    src = tmp_path / "abalo"
    expected = {}
    for k, s in enumerate(slides, start=1):
        expected[s] = _tiny_space_ranger(src / s, k)
        _png(src / s / "spatial" / "tissue_hires_image.png", k)
        _png(src / s / f"HE_{s}.jpg", k, (4, 5 + k))
    _zip_dir(src, www / "2bh5fchcv6-1.zip")
    monkeypatch.setitem(_registry.SPARED, name, dict(SPARED[name], archive_urls=[base + "2bh5fchcv6-1.zip"]))
    adata = st.datasets.load_spared(name)
    _check_slides(adata, name, expected, {s: "V10F24-015" for s in slides})
    for k, s in enumerate(slides, start=1):
        meta = adata.uns["spatial"][s]["metadata"]
        assert Path(meta["fullres_path"]).name == f"HE_{s}.jpg" and meta["fullres_width"] == 5 + k
        assert adata.uns["spatial"][s]["images"]["hires"][0, 0, 0] == 20 + k
