"""Training on several patients whose images differ in resolution, and predicting a section from its images.

Through the public API only: ``sp.io`` readers / ``concat_slides``, ``sp.pp.extract_patches`` (µm-aware),
``sp.tl.genequery_predict`` (train, then predict an AnnData that holds spots and images but no expression).
A synthetic data set runs everywhere; the her2st one (patients A at ≈3.19 µm/px, B and C at ≈0.69 µm/px)
where ``../shared`` is present.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import spared_tools as sp
from spared_tools.pp._patches import MixedResolutionError

from .conftest import shared_path
from .test_patch_scale import COARSE, FINE, SPOT_UM, _render, _tissue

# a small network so the tests train in seconds (the package defaults are for real data)
NET = {"width": 32, "n_heads": 4, "ff_dim": 64, "n_layers": 1, "dropout": 0.0}
FIT = {
    "max_epochs": 2,
    "batch_size": 8,
    "lr": 3e-3,
    "accelerator": "cpu",
    "n_models": 1,
    "inference_precision": "32",
}
GENES = [f"G{k}" for k in range(6)]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _section(lib: str, mpp: float, offset_um: float, split: str, weights: np.ndarray, side: int = 5):
    """A section of ``side`` x ``side`` spots 200 µm apart over the known tissue, imaged at ``mpp`` µm/px.

    Expression depends on the mean colour of each spot's 100 µm field (the same function on every
    section), so a model can only learn it from patches that cover the same field at every resolution.
    """
    rr, cc = np.divmod(np.arange(side * side), side)
    um = np.column_stack([cc, rr]) * 200.0 + 150.0
    # mean colour of the 100 µm field around each spot, from the tissue itself (1 µm sampling)
    t = np.arange(-50, 50) + 0.5
    field = np.stack([_tissue(offset_um + x + t[None, :], y + t[:, None]).mean(axis=(0, 1)) for x, y in um])
    y = np.log1p(np.exp((field - 128.0) / 40.0 @ weights))
    n = side * side
    a = ad.AnnData(
        X=np.round(np.expm1(y) * 10).astype(np.float32),
        obs=pd.DataFrame(
            {"slide_id": lib, "patient": lib[0], "array_row": rr, "array_col": cc, "split": split},
            index=[f"{lib}_{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=GENES),
    )
    a.layers["log1p"] = y.astype(np.float32)
    image = _render(mpp, float(um.max()) + 200.0, origin_um=offset_um)
    a.obsm["spatial"] = um / mpp
    sf = {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": SPOT_UM / mpp, "microns_per_pixel": mpp}
    a.uns["spatial"] = {lib: {"images": {"hires": image}, "scalefactors": sf, "metadata": {}}}
    return a


@pytest.fixture(scope="module")
def sections():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, len(GENES)))
    return [
        _section("A1", COARSE, 0.0, "train", w),
        _section("B1", FINE, 40.0, "train", w),
        _section("A2", COARSE, 80.0, "val", w),
        _section("C1", FINE, 120.0, "test", w),
    ]


def _gene_table(genes):
    rng = np.random.default_rng(1)
    table = pd.DataFrame(rng.normal(size=(len(genes), 12)).astype(np.float32), index=list(genes))
    table.loc["NOVEL"] = table.loc["G3"]  # a gene never measured, with G3's text
    return table


def _image_only(adata: ad.AnnData, slide: str) -> ad.AnnData:
    """What a user has for a new section: spot positions and the image, no expression."""
    keep = (adata.obs["slide_id"] == slide).to_numpy()
    new = ad.AnnData(obs=adata.obs.loc[keep, ["slide_id", "array_row", "array_col"]].copy())
    new.obsm["spatial"] = np.asarray(adata.obsm["spatial"])[keep].copy()
    new.uns["spatial"] = {slide: adata.uns["spatial"][slide]}
    return new


def _encoder():
    from torch import nn

    from spared_tools.models.image import load_image_encoder

    torch.manual_seed(0)
    return load_image_encoder(
        nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()),
        name="tiny-conv",
    )


def _model(table, **kw):
    model = sp.tl.GeneQueryModel(image_encoder=_encoder(), gene_embeddings=table, seed=0, **NET, **kw)
    return model.set_params(**FIT)


def test_mixed_resolution_patients_train_and_predict_an_image_only_section(sections):
    adata = sp.io.concat_slides([s.copy() for s in sections])
    assert adata.n_vars == len(GENES)
    sp.pp.extract_patches(adata, size=32)
    info = adata.uns["patches"]
    # 31 px at 3.19 µm/px and 145 px at 0.688 µm/px: the same 100 µm of tissue
    assert info["crop_px"] == {"A1": 31, "B1": 145, "A2": 31, "C1": 145}
    np.testing.assert_allclose(list(info["crop_um"].values()), SPOT_UM, rtol=0.012)

    table = _gene_table(GENES)
    model = _model(table)
    sp.tl.genequery_predict(adata, model=model)  # trains on A1 + B1, validates on A2
    assert list(model.genes_) == GENES
    assert list(adata.uns["genequery"]["trained_genes"]) == GENES

    # a new section, images only: every trained gene and a gene never measured, from the images alone
    new = _image_only(adata, "C1")
    assert new.n_vars == 0
    sp.pp.extract_patches(new, size=32)
    np.testing.assert_array_equal(new.obsm["patches"], adata[adata.obs["slide_id"] == "C1"].obsm["patches"])
    genes = [*GENES, "NOVEL"]
    out = sp.tl.genequery_predict(new, model=model, train=False, genes=genes)
    assert out.shape == (new.n_obs, len(genes)) and list(out.var_names) == genes
    assert list(out.obs_names) == list(new.obs_names)
    ref = model.predict(adata[adata.obs["slide_id"] == "C1"].copy(), genes)
    np.testing.assert_allclose(out.X, ref, rtol=1e-5, atol=1e-5)
    uns = new.uns["genequery"]
    assert list(uns["trained_genes"]) == GENES and list(uns["untrained_genes"]) == ["NOVEL"]
    assert new.obsm["genequery_unseen"].shape == (new.n_obs, len(genes))
    # the same request on the full data (gene-aware: the genes queried together attend to each other, so
    # the same list): the layer and the unseen-gene table hold the image-only section's values
    sp.tl.genequery_predict(adata, model=model, train=False, genes=genes)
    keep = (adata.obs["slide_id"] == "C1").to_numpy()
    np.testing.assert_allclose(adata.layers["genequery"][keep], out.X[:, : len(GENES)], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        adata.obsm["genequery_unseen"]["NOVEL"].to_numpy()[keep], out.X[:, -1], atol=1e-5
    )


def test_multi_patient_bad_input_named_errors(sections):
    # mixed resolution without a pixel size
    adata = sp.io.concat_slides([s.copy() for s in sections])
    del adata.uns["spatial"]["A2"]["scalefactors"]["microns_per_pixel"]
    with pytest.raises(MixedResolutionError, match=r"pixel size of \['A2'\]"):
        sp.pp.extract_patches(adata, size=16)
    # a section with no image
    adata = sp.io.concat_slides([s.copy() for s in sections])
    adata.uns["spatial"]["B1"]["images"] = {}
    with pytest.raises(KeyError, match="Slide 'B1' has no image"):
        sp.pp.extract_patches(adata, size=16)
    # an unseen gene without text
    adata = sp.io.concat_slides([s.copy() for s in sections[:3]])
    sp.pp.extract_patches(adata, size=16)
    model = _model(_gene_table(GENES)).set_params(max_epochs=1)
    sp.tl.genequery_predict(adata, model=model)
    new = _image_only(adata, "A2")
    sp.pp.extract_patches(new, size=16)
    with pytest.raises(KeyError, match="no row in gene_embeddings: 'NO_TEXT'"):
        sp.tl.genequery_predict(new, model=model, train=False, genes=["G0", "NO_TEXT"])
    # training needs expression: an image-only AnnData cannot be trained on
    with pytest.raises(ValueError, match="no variables"):
        sp.tl.genequery_predict(new, model=model)


def test_unseen_gene_without_text_is_refused_before_predicting():
    from types import SimpleNamespace

    from spared_tools.tl._genequery_predict import _check_unseen_text

    model = SimpleNamespace(gene_embeddings=None, organism="human", descriptions=None)
    with pytest.raises(
        KeyError, match=r"predicted from their text alone, but 1 genes have no .*'NOT_A_GENE_XYZ'"
    ):
        _check_unseen_text(model, ["ERBB2", "NOT_A_GENE_XYZ"], ad.AnnData(np.zeros((1, 0))))
    _check_unseen_text(model, ["ERBB2"], ad.AnnData(np.zeros((1, 0))))  # in the bundled table
    model.descriptions = {"NOT_A_GENE_XYZ": "a kinase of the cell membrane"}  # the user's own text
    _check_unseen_text(model, ["NOT_A_GENE_XYZ"], ad.AnnData(np.zeros((1, 0))))


# ---------------------------------------------------------------------------------------- her2st A + B + C
@pytest.mark.slow
def test_her2st_patients_a_b_c_at_two_resolutions():
    """Patient A (app images, ≈3.19 µm/px) with B and C (JPEGs, ≈0.69 µm/px): one model, then a new section."""
    app = shared_path("her2st_app_hne")
    raw = shared_path("her2st_raw")
    # two folders (the app images of patient A, the JPEGs of B and C): one section per reader call
    sections = [("A1", app), ("A2", app), ("B4", raw), ("C2", raw)]
    adata = sp.io.concat_slides([sp.io.read_her2st(folder, s) for s, folder in sections])
    mpp = {k: v["scalefactors"]["microns_per_pixel"] for k, v in adata.uns["spatial"].items()}
    assert mpp["A1"] == pytest.approx(3.19, rel=0.01) and mpp["C2"] == pytest.approx(0.688, rel=0.01)
    sp.pp.split_by(adata, key="slide_id", train=["A1", "B4"], val=["A2"], test=["C2"])
    processed = sp.pp.spared_pipeline(adata, organism="human", split_key="split")
    sp.pp.extract_patches(processed, size=32)
    info = processed.uns["patches"]
    assert info["crop_px"]["A1"] == 31 and info["crop_px"]["C2"] == pytest.approx(145, abs=1)
    np.testing.assert_allclose(list(info["crop_um"].values()), SPOT_UM, rtol=0.015)

    genes = list(processed.var_names)
    # the default encoders (EfficientNet-Lite0, the gene texts); one view per patch keeps the test short
    model = sp.tl.GeneQueryModel(seed=0, **NET).set_params(**FIT, augment=False, tta=False)
    sp.tl.genequery_predict(processed, model=model)
    assert list(model.genes_) == genes
    metrics = processed.uns["genequery"]["metrics"]
    assert np.isfinite(metrics["pcc_all"])

    # C2 as a user would have it without sequencing: the reader's spots and image, no genes
    new = _image_only(sp.io.read_her2st(raw, "C2"), "C2")
    new = new[processed.obs_names[processed.obs["slide_id"] == "C2"].str.removeprefix("C2_")].copy()
    sp.pp.extract_patches(new, size=32)
    unseen = ["ESR1", "PGR"]  # not among the pipeline's genes; predicted from their text
    assert not set(unseen) & set(genes)
    out = sp.tl.genequery_predict(new, model=model, train=False, genes=[*genes, *unseen])
    assert list(out.var_names) == [*genes, *unseen] and out.n_obs == new.n_obs
    ref = model.predict(processed[processed.obs["slide_id"] == "C2"].copy(), [*genes, *unseen])
    np.testing.assert_allclose(out.X, ref, rtol=1e-4, atol=1e-4)
    assert list(new.uns["genequery"]["untrained_genes"]) == unseen
    with pytest.raises(KeyError, match="NOT_A_GENE_XYZ"):
        sp.tl.genequery_predict(new, model=model, train=False, genes=["NOT_A_GENE_XYZ"])
