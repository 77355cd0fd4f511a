"""SpatialData in and out (issue 20 item 3): real SpatialData objects from spatialdata-io and built here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sps

import spared_tools as sp

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path

sd = pytest.importorskip("spatialdata")


def _dense(x):
    return x.toarray() if sps.issparse(x) else np.asarray(x)


@pytest.fixture(scope="module")
def visium_sdata():
    sdio = pytest.importorskip("spatialdata_io")
    return sdio.visium(shared_path("fixtures", "scanpy_visium_1.0.0_raw"), dataset_id="custom")


def test_from_spatialdata_visium_equals_read_visium(visium_sdata):
    folder = shared_path("fixtures", "scanpy_visium_1.0.0_raw")
    ref = sp.io.read_visium(folder)
    a = sp.io.from_spatialdata(visium_sdata)
    assert list(a.obs_names) == list(ref.obs_names) and list(a.var_names) == list(ref.var_names)
    np.testing.assert_array_equal(_dense(a.X), _dense(ref.X))
    np.testing.assert_allclose(a.obsm["spatial"], ref.obsm["spatial"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(a.obs[["array_row", "array_col"]], ref.obs[["array_row", "array_col"]])
    got, want = a.uns["spatial"]["custom"], ref.uns["spatial"]["custom"]
    for k in ("hires", "lowres"):
        np.testing.assert_array_equal(got["images"][k], want["images"][k])  # RGBA -> RGB, same pixels
    for k in ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef", "microns_per_pixel"):
        assert got["scalefactors"][k] == pytest.approx(want["scalefactors"][k], rel=1e-7), k
    assert a.obs["slide_id"].tolist() == ["custom"] * a.n_obs
    assert a.uns["spatialdata"]["region_key"] == "region" and a.uns["spatialdata"]["regions"] == ["custom"]
    # the table itself is untouched
    assert "slide_id" not in visium_sdata.tables["table"].obs.columns


def test_squidpy_and_scanpy_plot_from_spatialdata(visium_sdata):
    import matplotlib.pyplot as plt
    import scanpy as sc
    import squidpy as sq

    a = sp.io.from_spatialdata(visium_sdata)
    gene = a.var_names[int(np.argmax(_dense(a.X).sum(0)))]
    sq.pl.spatial_scatter(a, color=gene, library_key="slide_id", library_id="custom", img_res_key="hires")
    sc.pl.spatial(a, color=gene, library_id="custom", show=False)
    ax = plt.gca()
    # scanpy draws the hires image scaled into the spot coordinates: the axis spans image pixels
    assert ax.get_images() and ax.get_images()[0].get_array().shape[:2] == (2000, 2000)
    plt.close("all")


def test_results_round_trip_linked_to_the_same_shapes(visium_sdata, tmp_path):
    s = sd.deepcopy(visium_sdata)
    a = sp.io.from_spatialdata(s)
    sp.pp.tpm(a, organism="human", missing="keep")
    sp.pp.log1p(a)
    sp.pp.spatial_graph(a)
    keep = np.asarray(a.X.sum(1)).ravel() > 5  # the pipeline drops spots: the table keeps only those
    b = a[keep].copy()
    b.obsm["genequery_unseen"] = pd.DataFrame(
        {"NEWGENE": np.arange(b.n_obs, dtype=np.float32)}, index=b.obs_names
    )
    sp.io.to_spatialdata(b, s, table="spared")
    with pytest.raises(KeyError, match="already has a table"):
        sp.io.to_spatialdata(b, s, table="spared")
    path = tmp_path / "visium.zarr"
    s.write(path)
    back = sd.read_zarr(path)
    t = back.tables["spared"]
    assert list(np.atleast_1d(t.uns["spatialdata_attrs"]["region"])) == ["custom"]
    assert list(t.obs_names) == list(b.obs_names)
    for k in ("tpm", "log1p"):
        np.testing.assert_array_equal(_dense(t.layers[k]), _dense(b.layers[k]))
    np.testing.assert_array_equal(
        _dense(t.obsp["spatial_connectivities"]), _dense(b.obsp["spatial_connectivities"])
    )
    np.testing.assert_array_equal(t.obsm["genequery_unseen"]["NEWGENE"], np.arange(b.n_obs))
    assert "images" not in t.uns["spatial"]["custom"]  # images are not duplicated into the table
    # the linked instances are the spots' own circles: their centres equal obsm['spatial']
    shapes = back.shapes["custom"]
    centres = np.column_stack([shapes.geometry.x, shapes.geometry.y])[
        shapes.index.get_indexer(t.obs["spot_id"].to_numpy())
    ]
    np.testing.assert_allclose(centres, b.obsm["spatial"])
    # and reading the written table back gives the same AnnData
    c = sp.io.from_spatialdata(back, table="spared")
    np.testing.assert_array_equal(_dense(c.layers["log1p"]), _dense(b.layers["log1p"]))
    np.testing.assert_allclose(c.obsm["spatial"], b.obsm["spatial"])


def test_example_to_new_spatialdata_and_back_through_the_pipeline(tmp_path):
    ex = sp.datasets.example()
    s = sp.io.to_spatialdata(ex)
    assert sorted(s.shapes) == ["MOB1", "MOB2"] and "MOB1_hires_image" in s.images
    path = tmp_path / "mob.zarr"
    s.write(path)
    a = sp.io.from_spatialdata(sd.read_zarr(path), table="spared")
    assert list(a.obs_names) == list(ex.obs_names)
    np.testing.assert_array_equal(_dense(a.X), _dense(ex.X))
    np.testing.assert_allclose(a.obsm["spatial"], ex.obsm["spatial"], atol=1e-9)
    for lib in ("MOB1", "MOB2"):
        got, want = a.uns["spatial"][lib], ex.uns["spatial"][lib]
        np.testing.assert_array_equal(got["images"]["hires"], want["images"]["hires"])
        for k in ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef"):
            assert got["scalefactors"][k] == pytest.approx(want["scalefactors"][k], rel=1e-9)
    # the pipeline runs on it exactly as on the example, and its results go back as a linked table
    out = sp.pp.spared_pipeline(a, organism="mouse", geometry="checkerboard")
    ref = sp.pp.spared_pipeline(ex, organism="mouse", geometry="checkerboard")
    np.testing.assert_array_equal(out.layers["median"], ref.layers["median"])
    s2 = sd.read_zarr(path)
    sp.io.to_spatialdata(out, s2, table="processed")
    s2.write_element("processed")
    t = sd.read_zarr(path).tables["processed"]
    assert list(t.uns["spatialdata_attrs"]["region"]) == ["MOB1", "MOB2"]
    np.testing.assert_array_equal(t.layers["median"], out.layers["median"])
    np.testing.assert_array_equal(
        _dense(t.obsp["spatial_connectivities"]), _dense(out.obsp["spatial_connectivities"])
    )
    assert t.uns["log1p"]["base"] == 2


def _visium_hd_like(n=12, side=20.0, bin_um=8.0, seed=0, scale_factors=None):
    """A Visium HD-style object built here: square bins on a grid, an image and a count table."""
    import anndata as ad
    import geopandas as gpd
    from shapely.geometry import box
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    rng = np.random.default_rng(seed)
    rr, cc = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    polys = [box(c * side, r * side, (c + 1) * side, (r + 1) * side) for r, c in zip(rr, cc)]
    name = f"hd_square_{int(bin_um):03d}um"  # spatialdata_io.visium_hd: "<dataset>_square_008um"
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=polys, index=np.arange(rr.size)), transformations={"global": Identity()}
    )
    img = rng.integers(0, 255, (3, n * 10, n * 10), dtype=np.uint8)  # half the full resolution
    image = Image2DModel.parse(
        img,
        dims=("c", "y", "x"),
        transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))},
        scale_factors=scale_factors,
    )
    table = ad.AnnData(X=sps.csr_matrix(rng.poisson(2.0, (rr.size, 5)).astype(np.float32)))
    table.obs_names = [f"s_{i:06d}" for i in range(rr.size)]
    table.var_names = [f"g{i}" for i in range(5)]
    table.obs["array_row"] = rr
    table.obs["array_col"] = cc
    table.obs["region"] = pd.Categorical([name] * rr.size)
    table.obs["location_id"] = np.arange(rr.size)
    table = TableModel.parse(table, region=name, region_key="region", instance_key="location_id")
    return sd.SpatialData(shapes={name: shapes}, images={"hires_image": image}, tables={name[3:]: table})


def test_from_spatialdata_visium_hd_bins_are_a_square_lattice():
    s = _visium_hd_like()
    a = sp.io.from_spatialdata(s, table="square_008um")
    sf = a.uns["spatial"]["hd_square_008um"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(20.0)
    assert sf["microns_per_pixel"] == pytest.approx(8.0 / 20.0)
    assert sf["tissue_hires_scalef"] == pytest.approx(0.5)
    # bin centres are the squares' centroids
    np.testing.assert_allclose(a.obsm["spatial"][:, 0], (a.obs["array_col"] + 0.5) * 20.0)
    np.testing.assert_allclose(a.obsm["spatial"][:, 1], (a.obs["array_row"] + 0.5) * 20.0)
    sp.pp.spatial_graph(a)
    assert a.uns["spatial_neighbors"]["params"]["geometry"] == "square"
    deg = np.asarray((a.obsp["spatial_connectivities"] > 0).sum(1)).ravel()
    interior = (a.obs["array_row"].between(1, 10) & a.obs["array_col"].between(1, 10)).to_numpy()
    assert (deg[interior] == 4).all() and (deg[~interior] < 4).all()
    # a patch of 8 µm spans 20 full-resolution pixels: extract_patches reads microns_per_pixel
    assert a.uns["spatial"]["hd_square_008um"]["images"]["hires"].shape == (120, 120, 3)


def test_from_spatialdata_errors(visium_sdata):
    with pytest.raises(KeyError, match="no table 'nope'"):
        sp.io.from_spatialdata(visium_sdata, table="nope")
    with pytest.raises(KeyError, match="no 'missing'"):
        sp.io.from_spatialdata(visium_sdata, image="missing")
    with pytest.raises(ValueError, match="no transformation to coordinate system"):
        sp.io.from_spatialdata(
            visium_sdata, image="custom_lowres_image", coordinate_system="custom_downscaled_hires"
        )
    with pytest.raises(KeyError, match="no transformation to coordinate system 'xyz'"):
        sp.io.from_spatialdata(visium_sdata, coordinate_system="xyz")
    with pytest.raises(TypeError, match="SpatialData"):
        sp.io.from_spatialdata(sp.datasets.example())
    # only the chosen image is attached
    a = sp.io.from_spatialdata(visium_sdata, image="custom_lowres_image")
    assert list(a.uns["spatial"]["custom"]["images"]) == ["lowres"]


def test_package_imports_without_spatialdata():
    code = (
        "import sys; sys.modules['spatialdata'] = None; sys.modules['spatialdata_io'] = None\n"
        "import spared_tools as sp\n"
        "try:\n    sp.io.to_spatialdata(sp.datasets.example())\n"
        "except ImportError as e:\n    print('IMPORTERROR', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "IMPORTERROR" in res.stdout and "spared-tools[spatialdata]" in res.stdout


def test_pipeline_on_spatialdata_points_to_from_spatialdata(visium_sdata):
    with pytest.raises(TypeError, match=r"sp.io.from_spatialdata\(sdata"):
        sp.pp.spared_pipeline(visium_sdata, organism="human")


def test_cli_process_reads_a_spatialdata_store(tmp_path, capsys):
    import anndata as ad

    from spared_tools.cli import main

    store = tmp_path / "mob.zarr"
    sp.io.to_spatialdata(sp.datasets.example(), table="counts").write(store)
    dst = tmp_path / "p.h5ad"
    assert main(["-v", "quiet", "process", str(store), "-o", str(dst), "--organism", "mouse"]) == 0
    out = ad.read_h5ad(dst)
    ref = sp.pp.spared_pipeline(sp.datasets.example(), organism="mouse")
    assert out.uns["spared"]["cli"]["input_kind"] == "spatialdata"
    assert list(out.obs_names) == list(ref.obs_names) and list(out.var_names) == list(ref.var_names)
    np.testing.assert_allclose(out.layers["median"], ref.layers["median"])
    (tmp_path / "bad.zarr").mkdir()
    assert (
        main(["process", str(tmp_path / "bad.zarr"), "-o", str(dst), "--organism", "mouse", "--force"]) == 1
    )
    err = capsys.readouterr().err
    assert "Cannot read" in err and len(err.strip().splitlines()) == 1


def test_from_spatialdata_two_regions_become_two_slides():
    sdio = pytest.importorskip("spatialdata_io")
    folder = shared_path("fixtures", "scanpy_visium_1.0.0_raw")
    parts = [sdio.visium(folder, dataset_id=d) for d in ("A", "B")]
    for d, part in zip(("A", "B"), parts):  # the same barcodes twice: make the spot names distinct
        part.tables["table"].obs_names = [f"{d}_{n}" for n in part.tables["table"].obs_names]
    s = sd.concatenate(parts, concatenate_tables=True)
    a = sp.io.from_spatialdata(s)
    ref = sp.io.read_visium(folder)
    assert a.obs["slide_id"].value_counts().to_dict() == {"A": 100, "B": 100}
    assert set(a.uns["spatial"]) == {"A", "B"}
    for lib in ("A", "B"):
        rows = (a.obs["slide_id"] == lib).to_numpy()
        np.testing.assert_allclose(a.obsm["spatial"][rows], ref.obsm["spatial"])
        np.testing.assert_array_equal(
            a.uns["spatial"][lib]["images"]["hires"], ref.uns["spatial"]["custom"]["images"]["hires"]
        )
    # and back: one table annotating both circles elements
    sp.pp.log1p(a, layer=None, key_added="lg")
    sp.io.to_spatialdata(a, s, table="spared")
    assert sorted(np.atleast_1d(s.tables["spared"].uns["spatialdata_attrs"]["region"])) == ["A", "B"]


def test_from_spatialdata_multiscale_image_uses_the_full_resolution_level():
    single = sp.io.from_spatialdata(_visium_hd_like(), table="square_008um")
    multi_sd = _visium_hd_like(scale_factors=[2])
    assert not hasattr(multi_sd.images["hires_image"], "transpose")  # a DataTree, not a DataArray
    multi = sp.io.from_spatialdata(multi_sd, table="square_008um")
    lib = "hd_square_008um"
    np.testing.assert_array_equal(
        multi.uns["spatial"][lib]["images"]["hires"], single.uns["spatial"][lib]["images"]["hires"]
    )
    assert multi.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.5)
