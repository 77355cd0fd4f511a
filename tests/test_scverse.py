"""scverse fit (issue 20 items 2, 5, 9; issue 21): every pp step with library_key=None, concat_slides on
anndata.concat, squidpy on our output."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sps

import spared_tools as sp
from spared_tools._logging import logger

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path


def _dense(x):
    return x.toarray() if sps.issparse(x) else np.asarray(x)


def _warnings(fn):
    records: list[logging.LogRecord] = []
    h = logging.Handler(level=logging.WARNING)
    h.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(h)
    try:
        out = fn()
    finally:
        logger.removeHandler(h)
    return out, [r.getMessage() for r in records]


@pytest.fixture(scope="module")
def _mob1_example():
    ex = sp.datasets.example()
    return ex[ex.obs["slide_id"] == "MOB1"].copy()


@pytest.fixture
def one_slide(_mob1_example):
    """MOB1 of the bundled example with its slide column, and the same without it (scanpy's layout)."""
    a = _mob1_example.copy()
    b = a.copy()
    del b.obs["slide_id"]
    b.uns["spatial"] = {"MOB1": b.uns["spatial"]["MOB1"]}  # one library, as sc.read_visium writes
    return a, b


# ------------------------------------------------------------------ library_key=None means one slide


def test_every_step_with_library_key_none_equals_one_slide_column(one_slide):
    a, b = one_slide
    sp.pp.filter_spared(a)
    sp.pp.filter_spared(b, library_key=None)
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    a = sp.pp.tpm(a, organism="mouse", missing="drop", copy=True)
    b = sp.pp.tpm(b, organism="mouse", missing="drop", copy=True)
    np.testing.assert_array_equal(_dense(a.layers["tpm"]), _dense(b.layers["tpm"]))
    for x in (a, b):
        sp.pp.log1p(x)
    sp.pp.median_complete(a, geometry="checkerboard")
    sp.pp.median_complete(b, geometry="checkerboard", library_key=None)
    np.testing.assert_array_equal(a.layers["median"], b.layers["median"])
    sp.pp.spatial_graph(a, geometry="checkerboard")
    sp.pp.spatial_graph(b, geometry="checkerboard", library_key=None)
    np.testing.assert_array_equal(
        _dense(a.obsp["spatial_connectivities"]), _dense(b.obsp["spatial_connectivities"])
    )
    ta, ra = sp.pp.neighbor_table(a, n_rings=2, geometry="checkerboard")
    tb, rb = sp.pp.neighbor_table(b, n_rings=2, geometry="checkerboard", library_key=None)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(ra, rb)
    sp.pp.moran(a, layer="median")
    sp.pp.moran(b, layer="median", library_key=None)
    np.testing.assert_allclose(a.var["moran_I"], b.var["moran_I"], rtol=1e-12)
    sp.pp.select_genes(a, n_top=20)
    sp.pp.select_genes(b, n_top=20)
    assert (a.var["spared_selected"] == b.var["spared_selected"]).all()
    sp.pp.extract_patches(a, size=16)
    sp.pp.extract_patches(b, size=16, library_key=None)
    pa, pb = np.asarray(a.obsm["patches"]), np.asarray(b.obsm["patches"])
    assert pa.shape == (a.n_obs, 16, 16, 3) and pa.std() > 0
    np.testing.assert_array_equal(pa, pb)


def test_graph_without_slide_column_equals_squidpy_grid(visium_hex):
    """scanpy's layout (no slide column): our lattice graph is squidpy's grid graph, edge for edge."""
    import squidpy as sq

    a = visium_hex
    del a.obs["slide_id"]
    b = a.copy()
    sp.pp.spatial_graph(a, library_key=None)
    sq.gr.spatial_neighbors(b, coord_type="grid", n_neighs=6)
    ours = (a.obsp["spatial_connectivities"] > 0).astype(np.int8)
    peer = (b.obsp["spatial_connectivities"] > 0).astype(np.int8)
    assert ours.nnz > 5 * a.n_obs and (ours != peer).nnz == 0


def test_missing_slide_column_errors_name_the_fix(one_slide):
    _, b = one_slide
    for fn in (
        lambda: sp.pp.filter_spared(b.copy()),
        lambda: sp.pp.spatial_graph(b.copy()),
        lambda: sp.pp.median_complete(b.copy(), layer=None),
        lambda: sp.pp.neighbor_table(b.copy()),
    ):
        with pytest.raises(KeyError, match=r"slide column 'slide_id'.*library_key=None"):
            fn()


# ------------------------------------------------------------------ concat_slides on anndata.concat


def _part(sid, genes, n, seed):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(X=sps.csr_matrix(rng.poisson(2.0, (n, len(genes))).astype(np.float32)))
    a.var_names = genes
    a.obs_names = [f"{sid}_{i}" for i in range(n)]
    a.obs["slide_id"] = sid
    a.obsm["spatial"] = rng.random((n, 2))
    return a


def test_concat_slides_equals_anndata_concat_and_masks_unmeasured_genes():
    a = _part("A", ["g1", "g2", "g3"], 5, 0)
    b = _part("B", ["g3", "g4"], 4, 1)
    out, msgs = _warnings(lambda: sp.io.concat_slides([a, b]))
    ref = ad.concat([a, b], join="outer", fill_value=0)
    np.testing.assert_array_equal(_dense(out.X), _dense(ref[:, out.var_names].X))
    m = out.varm["measured"]
    assert list(m.columns) == ["A", "B"] and m.index.equals(out.var_names)
    assert m["A"].tolist() == [True, True, True, False] and m["B"].tolist() == [False, False, True, True]
    assert len(msgs) == 1 and "3 of 4 genes" in msgs[0] and "A lacks 1" in msgs[0] and "B lacks 2" in msgs[0]
    # same genes: no warning, every gene measured everywhere
    c = _part("C", ["g1", "g2", "g3"], 3, 2)
    out2, msgs2 = _warnings(lambda: sp.io.concat_slides([a, c]))
    assert msgs2 == [] and out2.varm["measured"].all().all()


def test_concat_slides_never_relabels_two_sections_as_one():
    two = sp.datasets.example(images=False)
    other = _part("X", list(two.var_names[:3]), 3, 0)
    with pytest.raises(ValueError, match="holds 2 slides.*never relabels"):
        sp.io.concat_slides([two, other], slide_ids=["both", "X"])
    with pytest.raises(ValueError, match="holds 2 slides"):
        sp.io.concat_slides([two, other])
    assert "pass slide_ids=" not in _message(lambda: sp.io.concat_slides([two, other]))


def _message(fn):
    try:
        fn()
    except ValueError as err:
        return str(err)
    raise AssertionError("no error")


def test_concat_slides_round_trip_of_parts_subset_from_one_object():
    ex = sp.datasets.example()
    parts = [ex[ex.obs["slide_id"] == s].copy() for s in ("MOB1", "MOB2")]
    assert set(parts[0].uns["spatial"]) == {"MOB1", "MOB2"}  # subsets keep every library
    out = sp.io.concat_slides(parts)
    assert list(out.obs_names) == list(ex.obs_names) and list(out.var_names) == list(ex.var_names)
    np.testing.assert_array_equal(_dense(out.X), _dense(ex.X))
    np.testing.assert_array_equal(out.obsm["spatial"], ex.obsm["spatial"])
    assert list(out.obs["slide_id"]) == list(ex.obs["slide_id"])
    assert set(out.uns["spatial"]) == {"MOB1", "MOB2"}
    for lib in ("MOB1", "MOB2"):
        np.testing.assert_array_equal(
            out.uns["spatial"][lib]["images"]["hires"], ex.uns["spatial"][lib]["images"]["hires"]
        )
        assert out.uns["spatial"][lib]["scalefactors"] == ex.uns["spatial"][lib]["scalefactors"]
    # identical duplicates merge; different ones are refused
    p1, p2 = (p.copy() for p in parts)
    p2.uns["spatial"]["MOB1"] = {"images": {}, "scalefactors": {"spot_diameter_fullres": 3.0}}
    p2.obs["slide_id"] = "MOB1b"  # its own library is not MOB1 anymore: both libraries are kept
    with pytest.raises(ValueError, match="'MOB1' appears in uns\\['spatial'\\] of more than one input"):
        sp.io.concat_slides([p1, p2])
    # and the pipeline runs on the result as on the original
    r1 = sp.pp.spared_pipeline(out, organism="mouse")
    r2 = sp.pp.spared_pipeline(ex, organism="mouse")
    np.testing.assert_array_equal(r1.layers["median"], r2.layers["median"])


# ------------------------------------------------------------------ squidpy / scanpy on image-less sections


def test_squidpy_spatial_scatter_on_image_less_her2st_section():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    folder = shared_path("her2st_raw")
    a = sp.io.read_her2st(folder, ["C2"], images=False)
    gene = a.var_names[int(np.argmax(_dense(a.X).sum(0)))]
    sq.pl.spatial_scatter(a, color=gene, library_key="slide_id", img=False)
    ax = plt.gcf().axes[0]
    # the spots are drawn at their full-resolution positions (scale factor 1 without an image)
    coll = next(c for c in ax.collections if len(c.get_paths()) == a.n_obs)
    centres = np.array([(p.vertices.min(0) + p.vertices.max(0)) / 2 for p in coll.get_paths()])
    np.testing.assert_allclose(np.sort(centres[:, 0]), np.sort(a.obsm["spatial"][:, 0]), atol=1e-3)
    plt.close("all")
    sp.pl.spatial(a, genes=[gene], show=False)
    plt.close("all")
    # the pipeline output of an image-less section plots the same way
    out = sp.pp.spared_pipeline(a, organism="human", geometry="square")
    sq.pl.spatial_scatter(out, color=out.var_names[0], layer="median", library_key="slide_id", img=False)
    plt.close("all")


def test_image_less_spatialdata_plots_with_squidpy():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    pytest.importorskip("spatialdata")
    ex = sp.datasets.example(images=False)
    for lib in ex.uns["spatial"].values():
        lib["images"] = {}
    s = sp.io.to_spatialdata(ex)
    assert not s.images
    a = sp.io.from_spatialdata(s, table="spared")
    assert a.uns["spatial"]["MOB1"]["scalefactors"]["tissue_hires_scalef"] == 1.0
    sq.pl.spatial_scatter(a, color=a.var_names[0], library_key="slide_id", library_id="MOB1", img=False)
    plt.close("all")
