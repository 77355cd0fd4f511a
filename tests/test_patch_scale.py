"""Physical scale of patches: images of different resolution give patches of the same tissue field.

The her2st sections come at ≈0.69 µm/px (B, C: the published JPEGs) and ≈3.19 µm/px (patient A: the app
images); ``sp.pp.extract_patches`` must cut the same 100 µm of tissue from both, and refuse mixed
resolutions whose pixel size is unknown.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import spared_tools as sp
from spared_tools.pp._patches import MixedResolutionError

from .conftest import shared_path

FINE, COARSE = 0.688, 3.19  # µm per pixel of the her2st JPEGs and of the app images
SPOT_UM = 100.0  # legacy ST spot diameter


def _tissue(x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """A known 'tissue': RGB in [0, 255] at physical positions (µm), structure at 25-60 µm scales."""
    r = np.sin(2 * np.pi * x_um / 47.0) * np.cos(2 * np.pi * y_um / 61.0)
    g = np.sin(2 * np.pi * (x_um + y_um) / 33.0)
    b = np.cos(2 * np.pi * (x_um - 0.5 * y_um) / 71.0)
    return np.clip(np.stack([r, g, b], axis=-1) * 100 + 128, 0, 255)


def _render(mpp: float, extent_um: float, origin_um: float = 0.0) -> np.ndarray:
    """The tissue rendered at ``mpp`` µm per pixel: pixel (i, j) samples the area around (j, i) · mpp.

    ``origin_um`` shifts the tissue along x (another section of the same 'tumour').
    """
    n = int(np.ceil(extent_um / mpp))
    # average a k x k sub-pixel grid on coarse pixels (a camera integrates over the pixel); pixel j is
    # centred on j * mpp
    k = max(1, round(mpp))
    sub = (np.arange(k) + 0.5) / k - 0.5
    pos = (np.arange(n)[:, None] + sub[None, :]).ravel() * mpp
    img = _tissue(origin_um + pos[None, :], pos[:, None])
    return img.reshape(n, k, n, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def _slide(lib: str, mpp: float | None, spot_px: float, image: np.ndarray, xy_px: np.ndarray) -> ad.AnnData:
    n = len(xy_px)
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": [lib] * n}, index=[f"{lib}_{i}" for i in range(n)]))
    a.obsm["spatial"] = xy_px.astype(np.float64)
    sf = {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": spot_px}
    if mpp is not None:
        sf["microns_per_pixel"] = mpp
    a.uns["spatial"] = {lib: {"images": {"hires": image}, "scalefactors": sf, "metadata": {}}}
    return a


def _two_resolutions(
    spots_um: np.ndarray, *, coarse_mpp: float | None = COARSE, fine_mpp: float | None = FINE
):
    extent = float(spots_um.max()) + 2 * SPOT_UM
    fine = _slide("fine", fine_mpp, SPOT_UM / FINE, _render(FINE, extent), spots_um / FINE)
    coarse = _slide("coarse", coarse_mpp, SPOT_UM / COARSE, _render(COARSE, extent), spots_um / COARSE)
    a = ad.concat([fine, coarse])
    a.uns["spatial"] = {**fine.uns["spatial"], **coarse.uns["spatial"]}
    return a


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


SPOTS_UM = np.array([[150.0, 150.0], [350.0, 150.0], [150.0, 350.0], [350.0, 350.0], [251.0, 263.0]])


def test_patches_of_two_resolutions_cover_the_same_field():
    n = len(SPOTS_UM)
    a = _two_resolutions(SPOTS_UM)
    sp.pp.extract_patches(a, size=32)
    info = a.uns["patches"]
    # 100 µm spots: 145 px at 0.688 µm/px and 31 px at 3.19 µm/px, both ≈ 100 µm of tissue
    assert info["crop_px"] == {"fine": 145, "coarse": 31}
    np.testing.assert_allclose(info["crop_um"]["fine"], 145 * FINE)
    np.testing.assert_allclose(info["crop_um"]["coarse"], 31 * COARSE)
    np.testing.assert_allclose(list(info["crop_um"].values()), SPOT_UM, rtol=0.012)
    np.testing.assert_allclose(info["patch_mpp"]["coarse"], 31 * COARSE / 32)
    P = a.obsm["patches"].astype(np.float64)
    # the tissue rendered directly at the patch's own resolution around each spot (the truth)
    for i in range(n):
        for row, mpp_img, side in ((i, FINE, 145), (n + i, COARSE, 31)):
            crop_um = side * mpp_img
            c = np.round(SPOTS_UM[i] / mpp_img) * mpp_img  # the crop is centred on the nearest pixel
            t = (np.arange(32) + 0.5) / 32 * crop_um - (side // 2 + 0.5) * mpp_img
            truth = _tissue(c[0] + t[None, :], c[1] + t[:, None])
            assert _pcc(P[row], truth) > 0.9, (row, _pcc(P[row], truth))
        # the same spot at both resolutions: the same field
        assert _pcc(P[i], P[n + i]) > 0.9
        # ... and not another spot's field
        assert max(abs(_pcc(P[i], P[n + j])) for j in range(n) if j != i) < 0.6
    # a crop of the same number of pixels (not µm) on the coarse image covers 4.6x the field: no match
    b = _two_resolutions(SPOTS_UM, coarse_mpp=None, fine_mpp=None)
    b.uns["spatial"]["coarse"]["scalefactors"]["spot_diameter_fullres"] = SPOT_UM / FINE
    sp.pp.extract_patches(b, size=32)
    assert np.median([_pcc(b.obsm["patches"][i], b.obsm["patches"][n + i]) for i in range(n)]) < 0.5


def test_mpp_gives_the_same_field_at_both_resolutions():
    a = _two_resolutions(SPOTS_UM)
    sp.pp.extract_patches(a, size=24, mpp=3.0)  # 72 µm fields
    info = a.uns["patches"]
    assert info["crop_px"] == {"fine": round(72 / FINE), "coarse": round(72 / COARSE)}
    np.testing.assert_allclose(list(info["crop_um"].values()), 72.0, rtol=0.025)
    n = len(SPOTS_UM)
    for i in range(n):
        assert _pcc(a.obsm["patches"][i], a.obsm["patches"][n + i]) > 0.85


def test_mixed_resolution_without_pixel_size_is_a_named_error():
    a = _two_resolutions(SPOTS_UM, coarse_mpp=None)
    with pytest.raises(MixedResolutionError, match=r"different resolution.*\['coarse'\].*microns_per_pixel"):
        sp.pp.extract_patches(a, size=16)
    assert "patches" not in a.obsm and "patches" not in a.uns  # nothing written
    assert issubclass(MixedResolutionError, ValueError)
    # a pixel size from spot_diameter_um is enough
    a.uns["spatial"]["coarse"]["scalefactors"]["spot_diameter_um"] = SPOT_UM
    sp.pp.extract_patches(a, size=16)
    np.testing.assert_allclose(list(a.uns["patches"]["crop_um"].values()), SPOT_UM, rtol=0.012)
    # without any pixel size but one resolution: nothing to check, the spot diameters decide (NaN µm)
    same = _two_resolutions(SPOTS_UM, coarse_mpp=None, fine_mpp=None)
    same.uns["spatial"]["coarse"] = same.uns["spatial"]["fine"]
    sp.pp.extract_patches(same, size=16)
    assert np.isnan(same.uns["patches"]["crop_um"]["coarse"])
    # mpp= needs every pixel size
    with pytest.raises(KeyError, match="microns_per_pixel"):
        sp.pp.extract_patches(_two_resolutions(SPOTS_UM, coarse_mpp=None), size=16, mpp=2.0)


def test_spots_of_another_physical_size_need_mpp():
    # a 55 µm Visium-like spot next to a 100 µm ST spot: one spot diameter is not the same field
    a = _two_resolutions(SPOTS_UM)
    a.uns["spatial"]["coarse"]["scalefactors"]["spot_diameter_fullres"] = 55.0 / COARSE
    with pytest.raises(MixedResolutionError, match="mpp="):
        sp.pp.extract_patches(a, size=16)
    sp.pp.extract_patches(a, size=16, mpp=5.0)
    np.testing.assert_allclose(list(a.uns["patches"]["crop_um"].values()), 80.0, rtol=0.025)


def test_image_only_anndata_gets_patches():
    a = _two_resolutions(SPOTS_UM)
    assert a.n_vars == 0
    sp.pp.extract_patches(a, size=16)
    assert a.obsm["patches"].shape == (2 * len(SPOTS_UM), 16, 16, 3)


# ------------------------------------------------------------------------------------------ real images
def _write_section(folder, name, image, spots, counts):
    (folder / "ST-cnts").mkdir(parents=True, exist_ok=True)
    (folder / "ST-spotfiles").mkdir(exist_ok=True)
    (folder / "ST-imgs").mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / "ST-imgs" / f"{name}.png")
    spots.to_csv(folder / "ST-spotfiles" / f"{name}_selection.tsv", sep="\t", index=False)
    counts.to_csv(folder / "ST-cnts" / f"{name}.tsv.gz", sep="\t")


@pytest.mark.slow
def test_her2st_spot_same_field_at_app_resolution(tmp_path):
    """A C2 block at its 0.688 µm/px and rendered 4.64x coarser, as patient A's app images (3.19 µm/px).

    Both are read by ``sp.io.read_her2st``, whose pixel size comes from the spot files; every spot's patch
    from the coarse rendering must show the field of the same spot at full resolution (its most
    correlated full-resolution patch is its own).
    """
    raw = shared_path("her2st_raw")
    from spared_tools.pp._patches import _allow_large_images

    spots = pd.read_csv(raw / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    spots = spots[(spots["x"].between(14, 24)) & (spots["y"].between(17, 26))].copy()
    spots = spots.reset_index(drop=True)
    assert len(spots) >= 40
    lo = np.floor(spots[["pixel_x", "pixel_y"]].min().to_numpy() - 200).astype(int)
    hi = np.ceil(spots[["pixel_x", "pixel_y"]].max().to_numpy() + 200).astype(int)
    with _allow_large_images(), Image.open(raw / "ST-imgs" / "C2.jpg") as img:
        block = img.convert("RGB").crop((lo[0], lo[1], hi[0], hi[1]))
    f = FINE / COARSE
    small = block.resize((round(block.width * f), round(block.height * f)), Image.Resampling.LANCZOS)
    fx, fy = small.width / block.width, small.height / block.height
    ids = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    counts = pd.DataFrame({"GENE1": np.arange(len(spots)) + 1, "GENE2": 3}, index=ids.to_numpy())
    fine_spots = spots.assign(pixel_x=spots["pixel_x"] - lo[0], pixel_y=spots["pixel_y"] - lo[1])
    # the centre of full-resolution pixel p lies at p + 0.5; in the smaller image at (p + 0.5) * f - 0.5
    coarse_spots = fine_spots.assign(
        pixel_x=(fine_spots["pixel_x"] + 0.5) * fx - 0.5, pixel_y=(fine_spots["pixel_y"] + 0.5) * fy - 0.5
    )
    _write_section(tmp_path / "fine", "C2", np.asarray(block), fine_spots, counts)
    _write_section(tmp_path / "coarse", "A9", np.asarray(small), coarse_spots, counts)
    a = sp.io.concat_slides([sp.io.read_her2st(tmp_path / "fine"), sp.io.read_her2st(tmp_path / "coarse")])
    mpp = {k: v["scalefactors"]["microns_per_pixel"] for k, v in a.uns["spatial"].items()}
    assert mpp["C2"] == pytest.approx(0.688, rel=0.01) and mpp["A9"] == pytest.approx(3.19, rel=0.01)
    sp.pp.extract_patches(a, size=64)
    info = a.uns["patches"]
    assert info["crop_px"]["C2"] == pytest.approx(145, abs=1) and info["crop_px"]["A9"] == 31
    np.testing.assert_allclose(list(info["crop_um"].values()), SPOT_UM, rtol=0.015)
    n = len(spots)
    grey = a.obsm["patches"].astype(np.float64).mean(axis=3).reshape(2 * n, -1)
    grey = grey - grey.mean(axis=1, keepdims=True)
    grey /= np.linalg.norm(grey, axis=1, keepdims=True)
    corr = grey[n:] @ grey[:n].T  # coarse spot i vs fine spot j
    own = np.diag(corr)
    assert np.median(own) > 0.8, np.median(own)
    assert (corr.argmax(axis=1) == np.arange(n)).mean() >= 0.95
