from __future__ import annotations

import hashlib
import io
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
