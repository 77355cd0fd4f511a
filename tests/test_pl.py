"""Tests for ``sp.pl``: values drawn checked against direct computations, errors, and baseline images.

Baseline images live in ``tests/baseline_images/``. To regenerate them after an intended change, run
``SPARED_UPDATE_BASELINES=1 .venv/bin/python -m pytest tests/test_pl.py -k baseline`` and look at every
image before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sparse
from matplotlib.collections import EllipseCollection, PolyCollection
from matplotlib.testing.compare import compare_images

import spared_tools as sp
from spared_tools.pl._filtering import filter_qc
from spared_tools.pl._geometry import _lattice

BASELINE = Path(__file__).parent / "baseline_images"
TOL = 3.0  # RMS difference in 0-255 grey levels; text rendering is pinned below


# ---------------------------------------------------------------------------------------------------
# synthetic data following the DEVELOPMENT.md contract
# ---------------------------------------------------------------------------------------------------
def _hex_slide(name: str, n_rows: int, n_cols: int, rng, *, spacing: float = 100.0, offset=(50.0, 60.0)):
    """Visium-like hexagonal lattice: array_col even/odd by row parity, 100 px spacing in full-res."""
    rows, cols = [], []
    for r in range(n_rows):
        for c in range(r % 2, 2 * n_cols, 2):
            rows.append(r)
            cols.append(c)
    rows, cols = np.array(rows), np.array(cols)
    x = offset[0] + cols * spacing / 2
    y = offset[1] + rows * spacing * np.sqrt(3) / 2
    obs = pd.DataFrame(
        {"slide_id": name, "array_row": rows, "array_col": cols},
        index=[f"{name}_{r}x{c}" for r, c in zip(rows, cols)],
    )
    return obs, np.column_stack([x, y])


def _image(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([200 + 40 * np.sin(xx / 9 + seed), 150 + 60 * np.cos(yy / 7), 200 + 0 * xx], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_adata(n_genes: int = 6, seed: int = 0) -> ad.AnnData:
    """Two hexagonal slides (A: 6×5, B: 5×4 spots), counts, log and completed layers, images, var stats."""
    rng = np.random.default_rng(seed)
    parts, coords = [], []
    for name, nr, nc in (("A", 6, 5), ("B", 5, 4)):
        obs, xy = _hex_slide(name, nr, nc, rng)
        parts.append(obs)
        coords.append(xy)
    obs = pd.concat(parts)
    obs["slide_id"] = pd.Categorical(obs["slide_id"], categories=["A", "B"])
    xy = np.vstack(coords)
    base = np.exp(np.sin(xy[:, :1] / 150.0) + np.cos(xy[:, 1:] / 170.0))  # smooth spatial pattern
    lam = base * np.linspace(1, 6, n_genes)[None, :]
    counts = rng.poisson(lam).astype(np.int32)
    genes = [f"G{i}" for i in range(n_genes)]
    adata = ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = xy
    adata.layers["counts"] = adata.X.copy()
    log = np.log2(counts + 1.0)
    adata.layers["log1p"] = log
    adata.layers["median"] = np.where(counts > 0, log, np.median(log, axis=0))
    adata.layers["spackle"] = np.where(counts > 0, log, log.mean(axis=0))
    adata.layers["mask"] = counts > 0
    scalef = 0.1
    adata.uns["spatial"] = {
        s: {
            "images": {
                "hires": _image(int((xy[:, 1].max() + 150) * scalef), int((xy[:, 0].max() + 150) * scalef), k)
            },
            "scalefactors": {"tissue_hires_scalef": scalef, "spot_diameter_fullres": 55.0},
        }
        for k, s in enumerate(["A", "B"])
    }
    mi = np.linspace(0.6, -0.1, n_genes)
    adata.var["moran_I"] = mi
    adata.var["spared_selected"] = mi >= mi[2]
    adata.varm["moran_I_per_slide"] = pd.DataFrame({"A": mi + 0.05, "B": mi - 0.04}, index=genes)
    return adata


def _square_adata(n: int = 5, spacing: float = 200.0) -> ad.AnnData:
    r, c = np.divmod(np.arange(n * n), n)
    obs = pd.DataFrame(
        {"slide_id": "S", "array_row": r, "array_col": c}, index=[f"s{i}" for i in range(n * n)]
    )
    adata = ad.AnnData(np.arange(n * n, dtype=np.float32)[:, None] + np.zeros((1, 2), np.float32), obs=obs)
    adata.var_names = ["g1", "g2"]
    adata.obsm["spatial"] = np.column_stack([c * spacing + 100, r * spacing + 100]).astype(float)
    adata.uns["spatial"] = {
        "S": {
            "images": {"hires": _image(120, 120, 3)},
            "scalefactors": {"tissue_hires_scalef": 0.1, "spot_diameter_fullres": 100.0},
        }
    }
    return adata


@pytest.fixture
def adata():
    return make_adata()


@pytest.fixture(autouse=True)
def _pinned_style():
    """Pin rcParams and fonts so renders are reproducible, and close every figure afterwards."""
    with mpl.rc_context():
        mpl.rcdefaults()
        from matplotlib.testing import set_font_settings_for_testing, set_reproducibility_for_testing

        set_font_settings_for_testing()
        set_reproducibility_for_testing()
        mpl.rcParams.update({"figure.dpi": 60, "savefig.dpi": 60, "font.size": 9})
        yield
        plt.close("all")


def check_baseline(fig, name: str, tmp_path: Path) -> None:
    """Render ``fig`` to PNG and compare it with ``tests/baseline_images/<name>.png``."""
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=60)
    expected = BASELINE / f"{name}.png"
    if os.environ.get("SPARED_UPDATE_BASELINES") == "1":
        BASELINE.mkdir(exist_ok=True)
        expected.write_bytes(actual.read_bytes())
        pytest.skip(f"baseline {expected.name} written")
    assert expected.exists(), f"missing baseline image {expected}; see this module's docstring"
    err = compare_images(str(expected), str(actual), tol=TOL)
    assert err is None, err


# ---------------------------------------------------------------------------------------------------
# sp.pl.spatial
# ---------------------------------------------------------------------------------------------------
def _panels(fig):
    return [a for a in fig.axes if a.get_title()]


def test_spatial_panels_values_and_shared_scale(adata):
    genes, layers = ["G1", "G4"], ["log1p", "median", "spackle"]
    fig = sp.pl.spatial(adata, genes, layers, show=False)
    panels = _panels(fig)
    assert len(panels) == 2 * 2 * 3  # slides × genes × layers
    slide_a = (adata.obs["slide_id"] == "A").to_numpy()
    # first row: slide A, gene G1; columns are layers, values in spot order
    for k, lay in enumerate(layers):
        coll = next(c for c in panels[k].collections if isinstance(c, PolyCollection))
        np.testing.assert_allclose(np.asarray(coll.get_array()), adata[slide_a, "G1"].layers[lay].ravel())
        assert panels[k].get_title() == f"A: G1 | {lay}"
    for g_i, g in enumerate(genes):
        norms = {
            (c.norm.vmin, c.norm.vmax)
            for r in (g_i, 2 + g_i)  # same gene in slide A and slide B rows
            for a in panels[r * 3 : r * 3 + 3]
            for c in a.collections
            if isinstance(c, PolyCollection)
        }
        assert len(norms) == 1  # one colour scale per gene
        allv = np.concatenate([adata[:, g].layers[lay].ravel() for lay in layers])
        np.testing.assert_allclose(norms.pop(), (allv.min(), allv.max()))


def test_spatial_single_layer_genes_as_columns(adata):
    fig = sp.pl.spatial(adata, ["G0", "G5"], "median", show=False)
    panels = _panels(fig)
    assert [a.get_title() for a in panels] == [
        "A: G0 | median",
        "A: G5 | median",
        "B: G0 | median",
        "B: G5 | median",
    ]
    for k, g in enumerate(["G0", "G5"]):
        v = adata[:, g].layers["median"].ravel()
        for a in (panels[k], panels[2 + k]):  # same gene, both slides: one scale over both
            coll = next(c for c in a.collections if isinstance(c, PolyCollection))
            np.testing.assert_allclose((coll.norm.vmin, coll.norm.vmax), (v.min(), v.max()))
    assert len(fig.axes) == 4 + 4  # one colour bar per panel


def test_spatial_hexagons_true_size(adata):
    fig = sp.pl.spatial(adata, "G0", "log1p", slides="A", show=False)
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    verts = np.asarray(coll.get_paths()[0].vertices[:6])
    centre = adata.obsm["spatial"][0] * 0.1
    np.testing.assert_allclose(verts.mean(axis=0), centre, atol=1e-9)
    # inscribed diameter (flat to flat) = spot_diameter_fullres × tissue_hires_scalef = 5.5 px
    r_circ = np.linalg.norm(verts - centre, axis=1)
    np.testing.assert_allclose(r_circ, 5.5 / 2 / np.cos(np.pi / 6))
    # edges face the neighbour in the same row (angle 0): a vertex points straight up (pointy-top)
    ang = np.degrees(np.arctan2(verts[:, 1] - centre[1], verts[:, 0] - centre[0])) % 60
    np.testing.assert_allclose(ang, 30, atol=1e-6)


def test_spatial_square_and_circle_shapes():
    adata = _square_adata()
    spacing, shape, angle = _lattice(adata.obsm["spatial"])
    assert (spacing, shape) == (200.0, "square") and abs(angle) < 1e-9
    fig = sp.pl.spatial(adata, "g1", show=False)
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    verts = np.asarray(coll.get_paths()[0].vertices[:4])
    side = np.ptp(verts, axis=0)
    np.testing.assert_allclose(side, [10.0, 10.0])  # 100 px × 0.1, axis-aligned square
    fig = sp.pl.spatial(adata, "g1", shape="circle", size=0.5, show=False)
    ell = next(c for c in fig.axes[0].collections if isinstance(c, EllipseCollection))
    np.testing.assert_allclose(ell._widths * 2, 5.0)  # matplotlib stores half-widths


def test_spatial_detects_hex_and_percentile_limits(adata):
    _, shape, _ = _lattice(adata.obsm["spatial"][(adata.obs["slide_id"] == "A").to_numpy()])
    assert shape == "hex"
    fig = sp.pl.spatial(adata, "G5", "log1p", vmin="p10", vmax="p90", img=False, show=False)
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    v = adata[:, "G5"].layers["log1p"].ravel()
    np.testing.assert_allclose((coll.norm.vmin, coll.norm.vmax), np.percentile(v, [10, 90]))
    assert not fig.axes[0].images  # img=False draws no image


def test_spatial_nan_values_use_na_color(adata):
    adata.layers["pred"] = adata.layers["log1p"].copy()
    adata.layers["pred"][:3, 0] = np.nan
    fig = sp.pl.spatial(adata, "G0", "pred", slides="A", na_color="red", show=False)
    fig.canvas.draw()
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    fc = coll.get_facecolors()
    np.testing.assert_allclose(fc[:3, :3], [[1, 0, 0]] * 3)
    assert not np.allclose(fc[3, :3], [1, 0, 0])


def test_spatial_library_mapping_and_save(adata, tmp_path):
    adata.uns["spatial"] = {f"lib_{k}": v for k, v in adata.uns["spatial"].items()}
    fig = sp.pl.spatial(adata, "G0", show=False, save=tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 0
    assert len(fig.axes[0].images) == 1
    fig = sp.pl.spatial(adata, "G0", library_id={"A": "lib_B", "B": "lib_A"}, show=False)
    assert fig.axes[0].images[0].get_array().shape == adata.uns["spatial"]["lib_B"]["images"]["hires"].shape


def test_spatial_obs_columns(adata):
    """Categorical obs columns use uns['<key>_colors'] and a legend; numeric ones their own scale."""
    labels = np.where(adata.obs["array_row"].to_numpy() < 2, "tumour", "stroma")
    adata.obs["region"] = pd.Categorical(labels, categories=["stroma", "tumour"])
    adata.uns["region_colors"] = ["#00ff00", "#0000ff"]
    adata.obs["total"] = np.asarray(adata.X.sum(axis=1)).ravel()
    fig = sp.pl.spatial(adata, ["region", "G0", "total"], ["log1p", "median"], slides="A", show=False)
    fig.canvas.draw()
    panels = _panels(fig)
    assert [a.get_title() for a in panels] == ["region", "G0 | log1p", "G0 | median", "total"]
    coll = next(c for c in panels[0].collections if isinstance(c, PolyCollection))
    slide_a = (adata.obs["slide_id"] == "A").to_numpy()
    expected = np.where(labels[slide_a] == "tumour", 1, 0)
    np.testing.assert_allclose(coll.get_facecolors()[:, :3], np.array([[0, 1, 0], [0, 0, 1]])[expected])
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["stroma", "tumour"]
    coll = next(c for c in panels[3].collections if isinstance(c, PolyCollection))
    tot = adata.obs["total"].to_numpy()
    np.testing.assert_allclose((coll.norm.vmin, coll.norm.vmax), (tot[slide_a].min(), tot[slide_a].max()))
    assert not fig.axes[2 * 2 + 1].axison  # the unused second column of an obs row is hidden


def test_spatial_image_choice(adata):
    lowres = adata.uns["spatial"]["A"]["images"].pop("hires")[::2, ::2]
    adata.uns["spatial"]["A"]["images"]["lowres"] = lowres
    adata.uns["spatial"]["A"]["scalefactors"]["tissue_lowres_scalef"] = 0.05
    fig = sp.pl.spatial(adata, "G0", slides="A", show=False)  # "auto": falls back to lowres
    assert fig.axes[0].images[0].get_array().shape == lowres.shape
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    centre = np.asarray(coll.get_paths()[0].vertices[:6]).mean(axis=0)
    np.testing.assert_allclose(centre, adata.obsm["spatial"][0] * 0.05)
    with pytest.raises(KeyError, match="No 'hires' image"):
        sp.pl.spatial(adata, "G0", slides="A", img_key="hires", img=True, show=False)
    fig = sp.pl.spatial(adata, "G0", slides="A", img_key=None, show=False)
    assert not fig.axes[0].images


def test_spatial_single_axes(adata):
    fig0, ax = plt.subplots()
    fig = sp.pl.spatial(adata, "G0", slides=["B"], ax=ax, show=False)
    assert fig is fig0
    with pytest.raises(ValueError, match="single panel"):
        sp.pl.spatial(adata, ["G0", "G1"], slides=["B"], ax=ax, show=False)


def test_spatial_errors(adata):
    with pytest.raises(KeyError, match="neither in adata.var_names nor columns of adata.obs: 'nope'"):
        sp.pl.spatial(adata, ["G0", "nope"], show=False)
    with pytest.raises(KeyError, match="Layer 'nope'"):
        sp.pl.spatial(adata, "G0", "nope", show=False)
    with pytest.raises(KeyError, match="Slides"):
        sp.pl.spatial(adata, "G0", slides="Z", show=False)
    bad = adata.copy()
    del bad.obsm["spatial"]
    with pytest.raises(KeyError, match="obsm\\['spatial'\\] are missing"):
        sp.pl.spatial(bad, "G0", show=False)
    bad = adata.copy()
    bad.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite coordinates"):
        sp.pl.spatial(bad, "G0", show=False)
    bad = adata.copy()
    del bad.uns["spatial"]["A"]["images"]["hires"]
    with pytest.raises(KeyError, match="No 'hires' image"):
        sp.pl.spatial(bad, "G0", img=True, show=False)
    sp.pl.spatial(bad, "G0", show=False)  # img=None: plots without the missing image
    bad = adata.copy()
    bad.uns["spatial"] = {"x": {}, "y": {}}
    with pytest.raises(KeyError, match="library_id"):
        sp.pl.spatial(bad, "G0", show=False)
    bad = adata.copy()
    bad.layers["txt"] = np.full(bad.shape, "a", dtype=object)
    with pytest.raises(TypeError, match="numeric"):
        sp.pl.spatial(bad, "G0", "txt", show=False)
    with pytest.raises(ValueError, match="vmax"):
        sp.pl.spatial(adata, "G0", vmin=5, vmax=1, show=False)
    with pytest.raises(ValueError, match="percentile"):
        sp.pl.spatial(adata, "G0", vmax="q99", show=False)
    with pytest.raises(ValueError, match="size"):
        sp.pl.spatial(adata, "G0", size=0, show=False)
    with pytest.raises(ValueError, match="shape"):
        sp.pl.spatial(adata, "G0", shape="star", show=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sp.pl.spatial(adata, "G0", save="/nonexistent_dir_xyz/a.png", show=False)
    with pytest.raises(TypeError, match="AnnData"):
        sp.pl.spatial(adata.to_df(), "G0", show=False)


def test_spatial_without_uns_spatial(adata):
    """No images or scale factors (e.g. array-unit coordinates): spots one lattice spacing wide."""
    del adata.uns["spatial"]
    fig = sp.pl.spatial(adata, "G0", slides="B", show=False)
    assert not fig.axes[0].images
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    verts = np.asarray(coll.get_paths()[0].vertices[:6])
    flat_to_flat = 2 * np.linalg.norm(verts[:2].mean(axis=0) - verts.mean(axis=0))
    np.testing.assert_allclose(flat_to_flat, 100.0)  # the synthetic lattice's spot pitch


def test_spatial_one_spot_slide():
    adata = _square_adata()[:1].copy()
    fig = sp.pl.spatial(adata, "g1", show=False)  # diameter known from the scale factors
    assert len(_panels(fig)) == 1
    del adata.uns["spatial"]
    with pytest.raises(ValueError, match="single spot"):
        sp.pl.spatial(adata, "g1", show=False)


def test_spatial_her2st_fixture(her2st_c2_block):
    a = her2st_c2_block
    gene = a.var_names[int(np.argmax(np.asarray(a.X.sum(axis=0)).ravel()))]
    fig = sp.pl.spatial(a, gene, show=False)
    coll = next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))
    verts = np.asarray(coll.get_paths()[0].vertices[:4])
    sf = next(iter(a.uns["spatial"].values()))["scalefactors"]
    side = np.linalg.norm(verts[1] - verts[0])
    np.testing.assert_allclose(side, sf["spot_diameter_fullres"] * sf["tissue_hires_scalef"], rtol=1e-9)


def test_spatial_visium_fixture_is_hex(visium_hex):
    _, shape, _ = _lattice(visium_hex.obsm["spatial"])
    assert shape == "hex"


# ---------------------------------------------------------------------------------------------------
# sp.pl.moran
# ---------------------------------------------------------------------------------------------------
def test_moran_ranking(adata):
    ax = sp.pl.moran(adata, show=False)
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(y, np.sort(adata.var["moran_I"].to_numpy())[::-1])
    np.testing.assert_array_equal(x, np.arange(1, adata.n_vars + 1))
    n_sel = int(adata.var["spared_selected"].sum())
    vlines = [ln.get_xdata()[0] for ln in ax.lines[1:] if np.ptp(ln.get_xdata()) == 0]
    assert vlines == [n_sel + 0.5]
    assert [t.get_text() for t in ax.texts[1:4]] == ["G0", "G1", "G2"]


def test_moran_reads_pipeline_gene_stats(adata):
    """After the pipeline subsets to the selected genes, the ranking uses uns['spared']['gene_stats']."""
    stats = pd.DataFrame({"moran_I": [0.9, 0.1, 0.5, 0.7], "spared_selected": [True, False, False, True]})
    stats.index = ["G0", "X1", "X2", "G1"]
    sub = adata[:, ["G0", "G1"]].copy()
    sub.uns["spared"] = {"gene_stats": stats}
    ax = sp.pl.moran(sub, n_labels=4, show=False)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.9, 0.7, 0.5, 0.1])
    assert [t.get_text() for t in ax.texts[1:]] == ["G0", "G1", "X2", "X1"]
    ax = sp.pl.moran(sub, stats_key=None, show=False)  # adata.var only
    np.testing.assert_allclose(ax.lines[0].get_ydata(), sub.var["moran_I"])
    ax = sp.pl.moran(stats, show=False)  # a plain table
    assert len(ax.lines[0].get_ydata()) == 4


def test_moran_errors(adata):
    bad = adata.copy()
    del bad.var["moran_I"]
    with pytest.raises(KeyError, match="sp.pp.moran"):
        sp.pl.moran(bad, show=False)
    bad = adata.copy()
    bad.var["spared_selected"] = 1
    with pytest.raises(TypeError, match="boolean"):
        sp.pl.moran(bad, show=False)
    bad = adata.copy()
    bad.var["moran_I"] = np.nan
    with pytest.raises(ValueError, match="no finite"):
        sp.pl.moran(bad, show=False)


# ---------------------------------------------------------------------------------------------------
# sp.pl.filtering
# ---------------------------------------------------------------------------------------------------
def _brute_force_filter(X, slides, p):
    """Loop-by-loop SpaRED filter, written independently of the vectorised one."""
    X = np.asarray(X, dtype=float)
    n, g = X.shape
    spot_ok = [p["cell_min_counts"] < X[i].sum() < p["cell_max_counts"] for i in range(n)]
    rows = [i for i in range(n) if spot_ok[i]]
    exp_frac, glob, gene_ok = [], [], []
    for j in range(g):
        fr = []
        for s in sorted(set(slides)):
            idx = [i for i in rows if slides[i] == s]
            fr.append(sum(X[i, j] > 0 for i in idx) / len(idx))
        exp_frac.append(min(fr))
        glob.append(sum(X[i, j] > 0 for i in rows) / len(rows))
        gene_ok.append(p["gene_min_counts"] < sum(X[i, j] for i in rows) < p["gene_max_counts"])
    cand = sorted([j for j in range(g) if gene_ok[j]], key=lambda j: -exp_frac[j])
    keep = 0
    for k in range(1, len(cand) + 1):
        if np.mean([glob[j] for j in cand[:k]]) >= p["real_data_percentage"]:
            keep = k
    genes = set(cand[:keep])
    spots = [spot_ok[i] and sum(X[i, j] for j in genes) > 0 for i in range(n)]
    return np.array(spots), np.array([j in genes for j in range(g)]), np.array(exp_frac), np.array(glob)


def test_filter_qc_matches_brute_force():
    rng = np.random.default_rng(3)
    X = rng.poisson(rng.gamma(0.6, 2.0, size=(1, 30)), size=(80, 30))
    X[:5] = 0
    X[5, :] = 1  # one low-count spot
    slides = np.repeat([0, 1, 2], [30, 30, 20])
    p = {
        "cell_min_counts": 10,
        "cell_max_counts": 1e6,
        "gene_min_counts": 10,
        "gene_max_counts": 400,
        "real_data_percentage": 0.5,
    }
    qc = filter_qc(X, slides, p)
    spots, genes, ef, glob = _brute_force_filter(X, slides, p)
    np.testing.assert_array_equal(qc.spot_kept, spots)
    np.testing.assert_array_equal(qc.gene_kept, genes)
    np.testing.assert_allclose(qc.exp_frac, ef)
    np.testing.assert_allclose(qc.glob_exp_frac, glob)
    assert 0 < genes.sum() < 30 and 0 < spots.sum() < 80


@pytest.mark.parametrize("with_split", [False, True])
def test_filter_qc_matches_pp_filter_spared(with_split):
    adata = make_adata(n_genes=30, seed=1)
    adata.obs["split"] = np.where(np.arange(adata.n_obs) % 3 == 0, "test", "train")
    p = {
        "cell_min_counts": 60,
        "cell_max_counts": 1e6,
        "gene_min_counts": 10,
        "gene_max_counts": 500,
        "real_data_percentage": 0.96,
    }
    try:
        kw = {"split_key": "split"} if with_split else {}
        ref = sp.pp.filter_spared(adata, layer="counts", inplace=False, **p, **kw)
    except NotImplementedError:
        pytest.skip("sp.pp.filter_spared not implemented yet")
    fit = (adata.obs["split"] == "train").to_numpy() if with_split else None
    qc = filter_qc(adata.layers["counts"], adata.obs["slide_id"].cat.codes.to_numpy(), p, fit)
    np.testing.assert_array_equal(qc.spot_kept, ref["obs_mask"])
    np.testing.assert_array_equal(qc.gene_kept, ref["var_mask"])
    fig = sp.pl.filtering(adata, **p, split_key="split" if with_split else None, show=False)
    assert fig.axes[3].get_title().endswith(f"genes kept: {int(ref['var_mask'].sum())} of 30")


def test_filtering_plot_uses_recorded_params(adata):
    adata.uns["spared"] = {"params": {"cell_min_counts": 20, "real_data_percentage": 0.9}}
    fig = sp.pl.filtering(adata, show=False)
    ax_s, ax_g, ax_f, ax_b = fig.axes
    qc = filter_qc(adata.layers["counts"], adata.obs["slide_id"].cat.codes.to_numpy(),
                   {"cell_min_counts": 20, "cell_max_counts": 1e6, "gene_min_counts": 10,
                    "gene_max_counts": 1e6, "real_data_percentage": 0.9})  # fmt: skip
    assert ax_s.get_legend().get_texts()[0].get_text() == f"kept ({int(qc.spot_kept.sum())})"
    assert ax_f.get_title().startswith(f"(c) expression-fraction rule: {qc.n_prefix} of")
    np.testing.assert_allclose(ax_f.lines[2].get_ydata(), qc.running_mean)
    assert [t.get_text() for t in ax_b.get_xticklabels()] == ["A", "B"]


def test_filtering_errors(adata):
    bad = adata.copy()
    bad.layers["counts"] = bad.layers["counts"].astype(float)
    bad.layers["counts"][0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        sp.pl.filtering(bad, show=False)
    bad.layers["counts"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pl.filtering(bad, show=False)
    with pytest.raises(KeyError, match="slide column"):
        sp.pl.filtering(adata, library_key="nope", show=False)
    with pytest.raises(KeyError, match="Layer"):
        sp.pl.filtering(adata, layer="nope", show=False)
    with pytest.raises(ValueError, match="real_data_percentage"):
        sp.pl.filtering(adata, real_data_percentage=2, show=False)
    with pytest.raises(KeyError, match="split column"):
        sp.pl.filtering(adata, split_key="nope", show=False)


# ---------------------------------------------------------------------------------------------------
# sp.pl.completion
# ---------------------------------------------------------------------------------------------------
def _completion_result(seed=0, n=400):
    rng = np.random.default_rng(seed)
    t = rng.gamma(2.0, 1.0, n)
    vals = pd.DataFrame(
        {"true": t, "spackle": t + rng.normal(0, 0.3, n), "median": 0.5 * t + rng.normal(0, 1, n)}
    )
    curve = pd.DataFrame(
        {
            "mask_fraction": [0.1, 0.3, 0.5] * 2,
            "method": ["spackle"] * 3 + ["median"] * 3,
            "mse": [0.2, 0.25, 0.35, 1.1, 1.15, 1.2],
            "mse_std": [0.02, 0.03, 0.04, 0.05, 0.05, 0.06],
        }
    )
    return {"values": vals, "curve": curve}


def test_completion_values_and_curve():
    res = _completion_result()
    fig = sp.pl.completion(res, show=False)
    a_sp, a_med, a_curve = fig.axes
    v = res["values"]
    for a, m in ((a_sp, "spackle"), (a_med, "median")):
        mse = np.mean((v[m] - v["true"]) ** 2)
        pcc = np.corrcoef(v["true"], v[m])[0, 1]
        assert a.get_title().startswith(f"{m}: MSE {mse:.3f}, PCC {pcc:.3f}")
        np.testing.assert_allclose(a.collections[0].get_offsets()[:, 1], v[m])
    x, y = a_curve.lines[0].get_data()
    np.testing.assert_allclose(x, [0.1, 0.3, 0.5])
    np.testing.assert_allclose(y, [0.2, 0.25, 0.35])


def test_completion_overlay():
    res = _completion_result()
    fig = sp.pl.completion(res, overlay=True, show=False)
    assert len(fig.axes) == 2
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    v = res["values"]
    assert (
        texts[1]
        == f"median: MSE {np.mean((v['median'] - v['true']) ** 2):.3f}, PCC {np.corrcoef(v['true'], v['median'])[0, 1]:.3f}"
    )
    assert len(fig.axes[0].collections) == 2


def test_completion_wide_curve_subsampling_and_anndata():
    res = _completion_result(n=1000)
    wide = pd.DataFrame({"spackle": [0.2, 0.3], "median": [1.0, 1.1]}, index=pd.Index([0.1, 0.3]))
    adata = ad.AnnData(np.zeros((2, 2)))
    adata.uns["eval"] = {"values": res["values"], "mse_curve": wide}
    fig = sp.pl.completion(adata, key="eval", max_points=100, seed=1, show=False)
    assert fig.axes[0].collections[0].get_offsets().shape == (100, 2)
    np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(), [1.0, 1.1])
    fig = sp.pl.completion({"curve": wide}, show=False)  # curve only
    assert len(fig.axes) == 1


def test_completion_from_evaluate_completion_table():
    """Per-mask rows as sp.tl.evaluate_completion returns them: mean ± std over masks per fraction."""
    rng = np.random.default_rng(2)
    rows = [
        {"method": m, "mask_frac": f, "mask": k, "MSE": base + f + rng.normal(0, 0.01), "MAE": 0.0}
        for m, base in (("spackle", 0.1), ("median", 0.9))
        for f in (0.1, 0.3)
        for k in range(4)
    ]
    table = pd.DataFrame(rows)
    fig = sp.pl.completion(table, show=False)
    (ax,) = fig.axes
    g = table.groupby(["method", "mask_frac"])["MSE"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), g.mean()["spackle"].to_numpy())
    np.testing.assert_allclose(ax.lines[1].get_ydata(), g.mean()["median"].to_numpy())
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    lo = (g.mean() - g.std(ddof=0))["spackle"].to_numpy()
    np.testing.assert_allclose(band.min(), lo.min())
    adata = ad.AnnData(np.zeros((1, 1)))
    adata.uns["spackle_evaluation"] = {"results": table, "summary": None, "params": {}}
    vals = _completion_result()["values"]
    fig = sp.pl.completion(adata, values=vals, metric="mse", show=False)
    assert len(fig.axes) == 3


def test_completion_errors():
    with pytest.raises(KeyError, match="neither"):
        sp.pl.completion({"x": 1}, show=False)
    with pytest.raises(KeyError, match="'true'"):
        sp.pl.completion({"values": {"spackle": [1.0, 2.0]}}, show=False)
    with pytest.raises(KeyError, match="none of the methods"):
        sp.pl.completion({"values": {"true": [1.0], "other": [1.0]}}, show=False)
    with pytest.raises(KeyError, match="mask_frac"):
        sp.pl.completion({"curve": pd.DataFrame({"method": ["a"], "MSE": [1.0]})}, show=False)
    with pytest.raises(KeyError, match="no column 'MAE'"):
        sp.pl.completion(
            pd.DataFrame({"method": ["a"], "mask_frac": [0.1], "MSE": [1.0]}), metric="MAE", show=False
        )
    with pytest.raises(KeyError, match="evaluate_completion"):
        sp.pl.completion(ad.AnnData(np.zeros((1, 1))), show=False)
    with pytest.raises(TypeError, match="mapping"):
        sp.pl.completion([1, 2], show=False)


# ---------------------------------------------------------------------------------------------------
# sp.pl.prediction
# ---------------------------------------------------------------------------------------------------
def _pcc_tables(genes, seed=0):
    rng = np.random.default_rng(seed)
    n = len(genes)
    out = {}
    for k, name in enumerate(["GeneQuery", "ridge"]):
        df = pd.DataFrame(
            {
                "pcc": rng.uniform(-0.2, 0.8, n) / (k + 1),
                "heg": np.arange(n) < n // 2,
                "hvg": np.arange(n) % 2 == 0,
            },
            index=genes,
        )
        out[name] = df
    out["ridge"].iloc[0, 0] = np.nan
    return out


def test_prediction_means_and_maps(adata):
    tables = _pcc_tables(adata.var_names)
    adata.layers["pred"] = adata.layers["log1p"] * 0.5
    fig = sp.pl.prediction(tables, adata=adata, true_layer="log1p", pred_layer="pred", slides="A",
                           n_best=1, n_worst=1, show=False)  # fmt: skip
    ax = fig.axes[0]
    means = sorted(float(t.get_text()) for t in ax.texts)
    expected = []
    for df in tables.values():
        p = df["pcc"]
        expected += [p.mean(), p[df["heg"]].mean(), p[df["hvg"]].mean()]
    np.testing.assert_allclose(means, sorted(expected), atol=0.0051)  # printed to 2 decimals
    assert "1 NaN genes left out" in ax.get_legend().get_texts()[1].get_text()
    pcc = tables["GeneQuery"]["pcc"]
    titles = [a.get_title() for a in fig.axes[1:] if a.get_title()]
    assert titles[0].startswith(f"{pcc.idxmax()} (PCC {pcc.max():.2f})")
    assert titles[2].startswith(f"{pcc.idxmin()} (PCC {pcc.min():.2f})")
    assert len(titles) == 4


def _edge_lengths(coll) -> np.ndarray:
    v = coll.get_paths()[0].vertices[:-1]  # closed polygon: drop the repeated first vertex
    return np.linalg.norm(np.roll(v, -1, axis=0) - v, axis=1)


def test_spatial_lattice_size_tiles_the_grid():
    a = _square_adata()  # 100 µm spots 200 full-res px apart; hires at 0.1
    true = sp.pl.spatial(a, "g1", show=False)
    tiles = sp.pl.spatial(a, "g1", size="lattice", show=False)
    get = lambda fig: next(c for c in fig.axes[0].collections if isinstance(c, PolyCollection))  # noqa: E731
    # squares: side = spot diameter (100 px x 0.1) at true size, = the spacing (200 px x 0.1) as tiles
    np.testing.assert_allclose(_edge_lengths(get(true)), 10.0, rtol=1e-9)
    np.testing.assert_allclose(_edge_lengths(get(tiles)), 20.0, rtol=1e-9)
    with pytest.raises(ValueError, match="size"):
        sp.pl.spatial(a, "g1", size=-1.0, show=False)


def test_prediction_maps_tile_the_lattice_and_align_titles(adata):
    tables = _pcc_tables(adata.var_names)
    adata.layers["pred"] = adata.layers["log1p"] * 0.5
    fig = sp.pl.prediction(tables, adata=adata, true_layer="log1p", pred_layer="pred", slides="A",
                           n_best=1, n_worst=1, show=False)  # fmt: skip
    maps = [a for a in fig.axes[1:] if a.get_title()]
    polys = [next(c for c in a.collections if isinstance(c, PolyCollection)) for a in maps]
    # hexagons one lattice spacing across the flats: the distance between neighbouring spot centres
    centres = np.array([p.vertices[:-1].mean(axis=0) for p in polys[0].get_paths()])
    from scipy.spatial import cKDTree

    spacing = np.median(cKDTree(centres).query(centres, k=2)[0][:, 1])
    side = _edge_lengths(polys[0])
    # a hexagon measures side * sqrt(3) across its flats
    np.testing.assert_allclose(side * np.sqrt(3), spacing, rtol=1e-6)
    # true and predicted of one gene on one colour scale, titles on the same number of lines
    for true_ax, pred_ax, t, q in zip(maps[::2], maps[1::2], polys[::2], polys[1::2]):
        assert (t.norm.vmin, t.norm.vmax) == (q.norm.vmin, q.norm.vmax)
        assert true_ax.get_title().count("\n") == pred_ax.get_title().count("\n")


def test_prediction_from_evaluate_prediction(adata):
    rng = np.random.default_rng(5)
    truth = adata.layers["log1p"]
    pred = truth + rng.normal(0, 1.0, truth.shape)
    try:
        res = sp.tl.evaluate_prediction(truth, pred, n_top=2)
    except (NotImplementedError, TypeError):
        pytest.skip("sp.tl.evaluate_prediction has another signature or is not implemented")
    per_gene = res["per_gene"]
    fig = sp.pl.prediction({"noisy": res, "same": {"per_gene": per_gene}}, show=False)
    means = sorted(float(t.get_text()) for t in fig.axes[0].texts)
    expected = [res["pcc_all"], res["pcc_heg"], res["pcc_hvg"]] * 2
    np.testing.assert_allclose(means, sorted(expected), atol=0.0051)  # printed to 2 decimals


def test_prediction_long_table_and_errors(adata):
    tables = _pcc_tables(adata.var_names)
    long = pd.concat([df.assign(model=m) for m, df in tables.items()])
    fig = sp.pl.prediction(long, groups=["ALL"], show=False)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["ALL"]
    with pytest.raises(ValueError, match="Unknown gene groups"):
        sp.pl.prediction(tables, groups=["TOP"], show=False)
    with pytest.raises(KeyError, match="'hvg'"):
        sp.pl.prediction({"m": tables["ridge"].drop(columns="hvg")}, show=False)
    with pytest.raises(KeyError, match="'pcc'"):
        sp.pl.prediction({"m": tables["ridge"].drop(columns="pcc")}, show=False)
    with pytest.raises(ValueError, match="pred_layer"):
        sp.pl.prediction(tables, adata=adata, show=False)
    with pytest.raises(KeyError, match="Model 'x'"):
        sp.pl.prediction(tables, adata=adata, pred_layer="log1p", model="x", show=False)
    with pytest.raises(TypeError, match="DataFrame"):
        sp.pl.prediction([1, 2], show=False)


# ---------------------------------------------------------------------------------------------------
# sp.pl.training_history
# ---------------------------------------------------------------------------------------------------
def _history():
    h = [{"step": s, "epoch": s // 50, "train_loss": 1 / (1 + s / 50)} for s in range(0, 300, 10)]
    h += [{"step": s, "val_loss": 1.2 / (1 + s / 60) + s / 800, "val_mse": 1 / (1 + s / 60) + s / 700}
          for s in range(0, 300, 50)]  # fmt: skip
    return h


def test_training_history_from_adata():
    adata = ad.AnnData(np.zeros((1, 1)))
    adata.uns["spackle"] = {"history": _history(), "params": {}}
    ax = sp.pl.training_history(adata, show=False)
    labels = [ln.get_label() for ln in ax.lines]
    assert labels == ["train_loss", "val_loss", "val_mse"]
    x, y = ax.lines[2].get_data()
    np.testing.assert_array_equal(x, np.arange(0, 300, 50))
    vm = np.array([1 / (1 + s / 60) + s / 700 for s in range(0, 300, 50)])
    np.testing.assert_allclose(y, vm)
    star = ax.collections[0].get_offsets()[0]
    np.testing.assert_allclose(star, [50 * np.argmin(vm), vm.min()])


def test_training_history_spackle_and_genequery_formats():
    spackle = pd.DataFrame(
        {"step": [100, 200, 300], "MSE": [0.9, 0.6, 0.7], "MAE": [0.7, 0.5, 0.55],
         "PCC-gene": [0.2, 0.4, 0.38], "n_scored": [1000, 1000, 1000]}
    )  # fmt: skip
    adata = ad.AnnData(np.zeros((1, 1)))
    adata.uns["spackle"] = {"history": spackle}
    ax = sp.pl.training_history(adata, show=False)
    assert [ln.get_label() for ln in ax.lines] == ["MSE", "MAE"]  # n_scored left out
    twin = ax.figure.axes[1]
    np.testing.assert_allclose(twin.lines[0].get_ydata(), spackle["PCC-gene"])
    np.testing.assert_allclose(ax.collections[0].get_offsets()[0], [200, 0.6])  # best MSE
    gq = {"epochs": [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1 / (e + 1) + 0.1 * e} for e in range(4)],
          "best_epoch": 2, "best_val_loss": 1 / 3 + 0.2, "selected": "best validation loss"}  # fmt: skip
    ax = sp.pl.training_history(gq, show=False)
    assert ax.get_xlabel() == "epoch"
    np.testing.assert_allclose(ax.collections[0].get_offsets()[0], [2, 1 / 3 + 0.2])


def test_training_history_errors():
    with pytest.raises(KeyError, match="uns has no entry"):
        sp.pl.training_history(ad.AnnData(np.zeros((1, 1))), show=False)
    with pytest.raises(ValueError, match="empty"):
        sp.pl.training_history([], show=False)
    with pytest.raises(KeyError, match="Metrics"):
        sp.pl.training_history(_history(), metrics=["acc"], show=False)
    with pytest.raises(KeyError, match="column 'time'"):
        sp.pl.training_history(_history(), x="time", show=False)
    with pytest.raises(TypeError, match="dict"):
        sp.pl.training_history([1, 2], show=False)


# ---------------------------------------------------------------------------------------------------
# baseline images (rendered with the Agg backend at 60 dpi)
# ---------------------------------------------------------------------------------------------------
def test_baseline_spatial(adata, tmp_path):
    fig = sp.pl.spatial(adata, ["G2"], ["log1p", "spackle"], layer_titles={"spackle": "SpaCKLE"}, show=False)
    check_baseline(fig, "spatial", tmp_path)


def test_baseline_spatial_square(tmp_path):
    fig = sp.pl.spatial(_square_adata(), ["g1"], show=False)
    check_baseline(fig, "spatial_square", tmp_path)


def test_baseline_moran(adata, tmp_path):
    check_baseline(sp.pl.moran(adata, show=False).figure, "moran", tmp_path)


def test_baseline_filtering(tmp_path):
    adata = make_adata(n_genes=30, seed=1)
    check_baseline(
        sp.pl.filtering(
            adata, cell_min_counts=60, gene_max_counts=500, real_data_percentage=0.96, show=False
        ),
        "filtering",
        tmp_path,
    )


def test_baseline_completion(tmp_path):
    check_baseline(sp.pl.completion(_completion_result(), show=False), "completion", tmp_path)


def test_baseline_prediction(adata, tmp_path):
    adata.layers["pred"] = adata.layers["log1p"] * 0.5 + 1
    fig = sp.pl.prediction(_pcc_tables(adata.var_names), adata=adata, true_layer="log1p", pred_layer="pred",
                           slides="B", n_best=1, n_worst=1, show=False)  # fmt: skip
    check_baseline(fig, "prediction", tmp_path)


def test_baseline_training_history(tmp_path):
    check_baseline(
        sp.pl.training_history(_history(), logy=True, show=False).figure, "training_history", tmp_path
    )


@pytest.mark.parametrize("rot", [0.0, 0.3, -0.5])
def test_lattice_detection_rotated_and_small(rot):
    """Hexagonal, square and checkerboard lattices, rotated, down to 7 spots."""
    c, s = np.cos(rot), np.sin(rot)
    R = np.array([[c, -s], [s, c]])
    hex_xy = np.array([[0, 0]] + [[np.cos(a), np.sin(a)] for a in np.arange(6) * np.pi / 3]) * 10
    sq = np.array([[i, j] for i in range(3) for j in range(3)], float) * 10
    checker = np.array([[i, j] for i in range(4) for j in range(4) if (i + j) % 2 == 0], float) * 10
    for xy, shape, ang in ((hex_xy, "hex", rot), (sq, "square", rot), (checker, "square", rot + np.pi / 4)):
        spacing, got, angle = _lattice(xy @ R.T)
        assert got == shape
        period = np.pi / 3 if shape == "hex" else np.pi / 2
        d = (angle - ang + period / 2) % period - period / 2
        assert abs(d) < 1e-9


def test_baseline_training_history_spackle(tmp_path):
    s = np.arange(100, 1100, 100)
    df = pd.DataFrame(
        {"step": s, "MSE": 0.5 + 300 / s, "MAE": 0.4 + 150 / s, "PCC-gene": 0.6 - 90 / s, "n_scored": 500}
    )
    check_baseline(sp.pl.training_history(df, show=False).figure, "training_history_spackle", tmp_path)


def test_baseline_completion_overlay(tmp_path):
    res = _completion_result()
    fig = sp.pl.completion(res, overlay=True, method_labels={"spackle": "SpaCKLE"}, show=False)
    check_baseline(fig, "completion_overlay", tmp_path)


def test_baseline_spatial_obs(adata, tmp_path):
    adata.obs["region"] = pd.Categorical(np.where(adata.obs["array_col"].to_numpy() < 4, "left", "right"))
    fig = sp.pl.spatial(adata, ["region", "G3"], ["log1p", "median"], slides="A", show=False)
    check_baseline(fig, "spatial_obs", tmp_path)


def test_show_returns_none_and_save_dpi(adata, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    assert sp.pl.moran(adata, show=True) is None
    assert shown == [True]
    monkeypatch.setattr(mpl, "is_interactive", lambda: True)
    assert sp.pl.training_history(_history()) is None  # show=None follows interactive mode
    assert len(shown) == 2
    ax = sp.pl.moran(adata, show=False, save=tmp_path / "m.png", dpi=30, figsize=(4, 3))
    from PIL import Image

    w, h = Image.open(tmp_path / "m.png").size
    assert ax is not None and abs(w - 4 * 30) <= 10 and abs(h - 3 * 30) <= 10  # "tight" bbox: a few px off


def test_save_is_atomic_and_keeps_matplotlibs_extension_rule(adata, tmp_path, monkeypatch):
    # a figure saved without an extension gets the default format's, as with Figure.savefig
    sp.pl.moran(adata, show=False, save=tmp_path / "plain", dpi=20)
    fmt = mpl.rcParams["savefig.format"]
    assert (tmp_path / f"plain.{fmt}").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "keep.pdf").write_bytes(b"old figure")
    sp.pl.moran(adata, show=False, save=tmp_path / "keep.pdf")
    assert (tmp_path / "keep.pdf").read_bytes()[:5] == b"%PDF-"
    # a failing write leaves the previous file and no temporary file behind
    from matplotlib.figure import Figure

    def broken(self, fname, **kwargs):
        Path(fname).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        sp.pl.moran(adata, show=False, save=tmp_path / "keep.pdf")
    assert (tmp_path / "keep.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pdf", f"plain.{fmt}"]


def test_plot_docstrings_carry_the_shared_fragments():
    from spared_tools._docs import d

    for name in sp.pl.__all__:
        doc = getattr(sp.pl, name).__doc__
        assert "%(" not in doc, name
        assert d.fragments["show_save_dpi"].replace("\n", "\n    ") in doc, name
    assert "    ax\n        Axes to draw on; a new figure" in sp.pl.moran.__doc__


def test_doc_fragments_fill_whole_lines_at_their_indentation():
    from spared_tools._docs import DocFragments

    frag = DocFragments(two="a\n    first\nb\n    second\n")
    doc = "Summary, 10 % of it.\n\n    Parameters\n    ----------\n    x\n        X.\n    %(two)s\n    Returns\n"
    out = frag.substitute(doc)
    assert out == (
        "Summary, 10 % of it.\n\n    Parameters\n    ----------\n    x\n        X.\n"
        "    a\n        first\n    b\n        second\n    Returns\n"
    )
    assert frag.substitute("inline %(two)s stays") == "inline %(two)s stays"
    with pytest.raises(KeyError, match="No docstring fragment 'three'"):
        frag.substitute("    %(three)s\n")

    @frag.inject
    def f():
        """Doc.

        %(two)s
        """

    assert "        a\n            first" in f.__doc__


def test_plot_arguments_are_checked_by_the_shared_helpers(adata):
    with pytest.raises(ValueError, match=r"^n_labels must be a non-negative integer, got -1"):
        sp.pl.moran(adata, n_labels=-1, show=False)
    with pytest.raises(
        ValueError, match=r"^shape must be one of 'auto', 'hex', 'square', 'circle'; got 'oval'"
    ):
        sp.pl.spatial(adata, "G0", shape="oval", show=False)
    with pytest.raises(ValueError, match=r"^size must be a finite number in \(0, inf\), got 0"):
        sp.pl.spatial(adata, "G0", size=0, show=False)
    with pytest.raises(ValueError, match=r"^n_best must be a non-negative integer, got 1.5"):
        sp.pl.prediction(pd.DataFrame({"pcc": [0.1], "heg": [True], "hvg": [True]}), n_best=1.5, show=False)
