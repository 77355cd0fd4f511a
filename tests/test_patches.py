from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import spared_tools as sp
from spared_tools.models.image import dihedral
from spared_tools.pp._patches import crop_window, get_patches, patches_shape

from .conftest import shared_path

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
# spots: interior, near each border, fractional centres (round-half-to-even), one partly outside
XY = np.array([[80.0, 60.0], [3.2, 50.0], [157.0, 10.4], [40.5, 118.0], [100.49, 0.0], [-4.0, 130.0]])


def brute_crop(image: np.ndarray, x: float, y: float, side: int, fill: int = 255) -> np.ndarray:
    out = np.full((side, side, 3), fill, dtype=np.uint8)
    r0 = int(np.round(y)) - side // 2
    c0 = int(np.round(x)) - side // 2
    for i in range(side):
        for j in range(side):
            r, c = r0 + i, c0 + j
            if 0 <= r < image.shape[0] and 0 <= c < image.shape[1]:
                out[i, j] = image[r, c]
    return out


def make_adata(image=IMAGE, xy=XY, *, scalef=1.0, diameter=21.0, lib="s1", extra_sf=None) -> ad.AnnData:
    n = len(xy)
    a = ad.AnnData(
        np.ones((n, 2), dtype=np.float32),
        obs=pd.DataFrame({"slide_id": [lib] * n}, index=[f"c{i}" for i in range(n)]),
    )
    a.obsm["spatial"] = np.asarray(xy, dtype=np.float64) / scalef
    sf = {"tissue_hires_scalef": scalef, "spot_diameter_fullres": diameter / scalef}
    sf.update(extra_sf or {})
    a.uns["spatial"] = {lib: {"images": {"hires": image}, "scalefactors": sf, "metadata": {}}}
    return a


def test_crop_window_geometry():
    assert crop_window(10.0, 5) == (8, 13)  # odd: exactly centred
    assert crop_window(10.0, 4) == (8, 12)  # even: centre pixel at position side // 2
    assert crop_window(10.5, 3) == (9, 12)  # round half to even -> 10


@pytest.mark.parametrize("side", [21, 20])
def test_crop_matches_brute_force(side):
    a = make_adata(diameter=float(side))
    sp.pp.extract_patches(a, size=side)
    P = a.obsm["patches"]
    assert P.dtype == np.uint8 and P.shape == (len(XY), side, side, 3)
    for i, (x, y) in enumerate(XY):
        np.testing.assert_array_equal(P[i], brute_crop(IMAGE, x, y, side))
    assert a.uns["patches"]["crop_px"] == {"s1": side}
    assert a.uns["patches"]["params"]["size"] == side


def test_hires_scalefactor_maps_fullres_coordinates():
    # fullres coordinates are twice the hires ones; the crop must be the same hires pixels
    a = make_adata(scalef=0.5)
    sp.pp.extract_patches(a, size=21)
    for i, (x, y) in enumerate(XY):
        np.testing.assert_array_equal(a.obsm["patches"][i], brute_crop(IMAGE, x, y, 21))


def test_resize_and_scale_match_pil():
    a = make_adata(diameter=14.0)
    sp.pp.extract_patches(a, size=32, scale=1.5, interpolation="bicubic")
    assert a.uns["patches"]["crop_px"]["s1"] == 21
    for i, (x, y) in enumerate(XY):
        ref = np.asarray(
            Image.fromarray(brute_crop(IMAGE, x, y, 21)).resize((32, 32), Image.Resampling.BICUBIC)
        )
        np.testing.assert_array_equal(a.obsm["patches"][i], ref)


def test_mpp_uses_physical_size():
    # 0.5 µm per full-res pixel; 11 px output at 1 µm/px covers 11 µm = 22 full-res px
    a = make_adata(extra_sf={"microns_per_pixel": 0.5})
    sp.pp.extract_patches(a, size=11, mpp=1.0)
    assert a.uns["patches"]["crop_px"]["s1"] == 22
    ref = np.asarray(
        Image.fromarray(brute_crop(IMAGE, *XY[0], 22)).resize((11, 11), Image.Resampling.BILINEAR)
    )
    np.testing.assert_array_equal(a.obsm["patches"][0], ref)
    with pytest.raises(KeyError, match="microns_per_pixel"):
        sp.pp.extract_patches(make_adata(), size=11, mpp=1.0)


def test_fullres_path_preferred_and_read_from_disk(tmp_path):
    path = tmp_path / "slide.png"
    Image.fromarray(IMAGE).save(path)
    # the hires image is garbage: the full-resolution file must be used instead
    a = make_adata(image=np.zeros((10, 10, 3), np.uint8), scalef=0.1)
    a.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"] = 21.0
    a.obsm["spatial"] = XY.copy()
    a.uns["spatial"]["s1"]["metadata"]["fullres_path"] = str(path)
    sp.pp.extract_patches(a, size=21)
    for i, (x, y) in enumerate(XY):
        np.testing.assert_array_equal(a.obsm["patches"][i], brute_crop(IMAGE, x, y, 21))
    assert a.uns["patches"]["source"]["s1"] == str(path)


def test_disk_and_memory_stores_identical(tmp_path):
    a = make_adata()
    sp.pp.extract_patches(a, size=16)
    sp.pp.extract_patches(a, size=16, store="disk", path=tmp_path / "p.npy", key_added="pdisk")
    assert "pdisk" not in a.obsm
    info = a.uns["pdisk"]
    assert info["store"] == "disk" and tuple(info["shape"]) == (len(XY), 16, 16, 3)
    disk = np.load(info["path"])
    np.testing.assert_array_equal(disk, a.obsm["patches"])
    assert patches_shape(a, "pdisk") == patches_shape(a, "patches")
    # a reordered subset still maps each spot to its own row of the file
    sub = a[[4, 1, 3]].copy()
    np.testing.assert_array_equal(get_patches(sub, "pdisk"), a.obsm["patches"][[4, 1, 3]])
    ds_mem, ds_disk = sp.pp.PatchDataset(sub, "patches"), sp.pp.PatchDataset(sub, "pdisk")
    assert len(ds_mem) == len(ds_disk) == 3
    for i in range(3):
        (im, xm), (idisk, xd) = ds_mem[i], ds_disk[i]
        assert im == idisk == i
        assert xm.dtype == torch.uint8 and xm.shape == (3, 16, 16)
        torch.testing.assert_close(xm, xd)
        np.testing.assert_array_equal(xm.permute(1, 2, 0).numpy(), a.obsm["patches"][[4, 1, 3][i]])


def test_patch_dataset_augment_is_a_dihedral_transform():
    a = make_adata()
    sp.pp.extract_patches(a, size=15)
    torch.manual_seed(0)
    ds = sp.pp.PatchDataset(a, augment=True, indices=[2])
    orig = torch.from_numpy(a.obsm["patches"][2]).permute(2, 0, 1)
    seen = set()
    for _ in range(40):
        idx, x = ds[0]
        assert idx == 2
        ks = [k for k in range(8) if torch.equal(dihedral(orig, k), x)]
        assert ks
        seen.add(ks[0])
    assert len(seen) > 4


def test_multiple_slides_use_their_own_image():
    img2 = 255 - IMAGE
    a1, a2 = make_adata(lib="s1"), make_adata(image=img2, lib="s2")
    a = ad.concat([a1, a2], index_unique="-", uns_merge="unique")
    a.uns["spatial"] = {"s1": a1.uns["spatial"]["s1"], "s2": a2.uns["spatial"]["s2"]}
    sp.pp.extract_patches(a, size=21)
    n = len(XY)
    for i, (x, y) in enumerate(XY):
        np.testing.assert_array_equal(a.obsm["patches"][i], brute_crop(IMAGE, x, y, 21))
        np.testing.assert_array_equal(a.obsm["patches"][n + i], brute_crop(img2, x, y, 21))


def test_copy_leaves_input_untouched():
    a = make_adata()
    b = sp.pp.extract_patches(a, size=8, copy=True)
    assert "patches" not in a.obsm and "patches" not in a.uns
    assert b.obsm["patches"].shape == (len(XY), 8, 8, 3)


def test_float_image_converted():
    a = make_adata(image=IMAGE.astype(np.float32) / 255.0)
    sp.pp.extract_patches(a, size=21)
    np.testing.assert_array_equal(a.obsm["patches"][0], brute_crop(IMAGE, *XY[0], 21))


def test_errors(tmp_path):
    a = make_adata()
    del a.uns["spatial"]
    with pytest.raises(KeyError, match="uns\\['spatial'\\] is missing"):
        sp.pp.extract_patches(a)
    a = make_adata()
    del a.uns["spatial"]["s1"]["images"]["hires"]
    with pytest.raises(KeyError, match="has no image"):
        sp.pp.extract_patches(a)
    a = make_adata()
    a.uns["spatial"]["s1"]["metadata"]["fullres_path"] = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        sp.pp.extract_patches(a)
    a = make_adata()
    del a.obsm["spatial"]
    with pytest.raises(KeyError, match="spot centres"):
        sp.pp.extract_patches(a)
    a = make_adata()
    a.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.extract_patches(a)
    a = make_adata()
    with pytest.raises(ValueError, match="path="):
        sp.pp.extract_patches(a, store="disk")
    with pytest.raises(ValueError, match="size"):
        sp.pp.extract_patches(a, size=0)
    with pytest.raises(ValueError, match="interpolation"):
        sp.pp.extract_patches(a, interpolation="cubic")
    with pytest.raises(KeyError, match="slide column"):
        sp.pp.extract_patches(a, library_key="nope")
    a.obs["slide_id"] = "other"
    a.uns["spatial"]["s2"] = a.uns["spatial"]["s1"]
    with pytest.raises(KeyError, match="No image entry for slide 'other'"):
        sp.pp.extract_patches(a)
    with pytest.raises(KeyError, match="extract_patches"):
        sp.pp.PatchDataset(make_adata())
    a = make_adata()
    sp.pp.extract_patches(a, size=8)
    with pytest.raises(KeyError, match="already exists"):
        sp.pp.extract_patches(a, size=8, overwrite=False)


def test_her2st_fixture_patches(her2st_c2_block):
    shared_path("fixtures", "her2st_C2_block.h5ad")
    a = her2st_c2_block
    sp.pp.extract_patches(a, size=40)
    entry = next(iter(a.uns["spatial"].values()))
    sf = entry["scalefactors"]
    side = int(np.round(sf["spot_diameter_fullres"] * sf["tissue_hires_scalef"]))
    assert a.uns["patches"]["crop_px"] == {"C2": side} and side == 40
    hires = entry["images"]["hires"]
    for i in (0, 17, 55):
        x, y = a.obsm["spatial"][i] * sf["tissue_hires_scalef"]
        np.testing.assert_array_equal(a.obsm["patches"][i], brute_crop(hires, x, y, side))


def test_pil_crop_equals_array_crop():
    from spared_tools.pp._patches import crop_padded, crop_pil

    img = Image.fromarray(IMAGE)
    rng = np.random.default_rng(1)
    for x, y in rng.uniform(-30, 190, size=(60, 2)):
        for side in (1, 8, 15):
            np.testing.assert_array_equal(crop_pil(img, x, y, side, 7), crop_padded(IMAGE, x, y, side, 7))


def test_uint16_and_bad_integer_images():
    a = make_adata(image=IMAGE.astype(np.uint16) * 257)
    sp.pp.extract_patches(a, size=21)
    np.testing.assert_array_equal(a.obsm["patches"][0], brute_crop(IMAGE, *XY[0], 21))
    with pytest.raises(ValueError, match="outside"):
        sp.pp.extract_patches(make_adata(image=IMAGE.astype(np.int32) * 2), size=21)


def test_disk_store_removed_on_error(tmp_path):
    a = make_adata()
    a.obs["slide_id"] = ["s1"] * 3 + ["s2"] * 3  # s2 has no image entry: fails after s1 was written
    a.uns["spatial"]["s9"] = a.uns["spatial"]["s1"]
    with pytest.raises(KeyError, match="s2"):
        sp.pp.extract_patches(a, size=8, store="disk", path=tmp_path / "p.npy")
    assert not (tmp_path / "p.npy").exists() and "patches" not in a.uns


def test_visium_fixture_hires_patches(visium_hex):
    shared_path("fixtures", "visium_hex_cytassist.h5ad")
    a = visium_hex
    sp.pp.extract_patches(a, size=6, scale=2.0, interpolation="nearest")
    entry = a.uns["spatial"]["codeconv"]
    sf = entry["scalefactors"]
    side = int(np.round(sf["spot_diameter_fullres"] * 2.0 * sf["tissue_hires_scalef"]))
    assert a.uns["patches"]["crop_px"] == {"codeconv": side}
    for i in (0, 100, 399):
        x, y = a.obsm["spatial"][i] * sf["tissue_hires_scalef"]
        crop = brute_crop(entry["images"]["hires"], x, y, side)
        ref = np.asarray(Image.fromarray(crop).resize((6, 6), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(a.obsm["patches"][i], ref)


@pytest.mark.slow
def test_her2st_fullres_via_reader(tmp_path):
    """read_her2st + full-resolution JPEG: patches equal a direct PIL crop of the published image."""
    folder = shared_path("her2st_raw")
    a = sp.io.read_her2st(folder, "C2")
    a = a[:12].copy()
    sp.pp.extract_patches(a, size=64, store="disk", path=tmp_path / "p.npy")
    lib = next(iter(a.uns["spatial"]))
    entry = a.uns["spatial"][lib]
    assert a.uns["patches"]["source"][str(a.obs["slide_id"].iloc[0])] == str(
        entry["metadata"]["fullres_path"]
    )
    side = int(np.round(entry["scalefactors"]["spot_diameter_fullres"]))
    assert 140 <= side <= 150  # 100 µm spots at ~0.688 µm/px
    from spared_tools.pp._patches import _allow_large_images

    with _allow_large_images(), Image.open(entry["metadata"]["fullres_path"]) as img:
        img = img.convert("RGB")
        P = get_patches(a, "patches")
        for i in (0, 5, 11):
            x, y = a.obsm["spatial"][i]
            x0, y0 = int(np.round(x)) - side // 2, int(np.round(y)) - side // 2
            ref = np.asarray(
                img.crop((x0, y0, x0 + side, y0 + side)).resize((64, 64), Image.Resampling.BILINEAR)
            )
            np.testing.assert_array_equal(P[i], ref)


# ---------------------------------------------------------------------------------------------- reliability


def test_spots_outside_the_image_are_counted_and_warned(spared_log):
    far = np.array([[80.0, 60.0], [5000.0, 60.0], [80.0, -900.0], [-4.0, 130.0], [159.0, 119.0]])
    a = make_adata(xy=far)
    sp.pp.extract_patches(a, size=21)
    P = a.obsm["patches"]
    # the three spots whose window misses the image are pure fill; the corner spot is partly real
    assert [bool((P[i] == 255).all()) for i in range(5)] == [False, True, True, True, False]
    np.testing.assert_array_equal(P[4], brute_crop(IMAGE, 159.0, 119.0, 21))
    assert a.uns["patches"]["n_outside"] == {"s1": 3}
    assert "3 of 5 spots of slide 's1' lie wholly outside its 160 x 120 px image" in spared_log.text
    # all outside: refuse, with the span of the centres
    b = make_adata(xy=far[1:4])
    with pytest.raises(
        ValueError, match=r"All 3 spots of slide 's1' lie outside its 160 x 120 px image.*span x -4\.\.5000"
    ):
        sp.pp.extract_patches(b, size=21)
    assert "patches" not in b.obsm


def test_too_large_request_fails_early_with_the_estimate(tmp_path):
    a = make_adata()
    need = len(XY) * 64 * 64 * 3
    with pytest.raises(MemoryError, match=r"patch array 6 x 64 x 64 x 3 = 0\.00 GiB.*more than max_memory"):
        sp.pp.extract_patches(a, size=64, max_memory=need - 1)
    assert "patches" not in a.obsm and "patches" not in a.uns
    sp.pp.extract_patches(a, size=64, max_memory=need)  # exactly enough
    # a whole decode (PNG) counts 4 bytes per pixel; the disk store needs no patch array
    Image.fromarray(IMAGE).save(tmp_path / "full.png")
    a.uns["spatial"]["s1"]["metadata"]["fullres_path"] = str(tmp_path / "full.png")
    with pytest.raises(MemoryError, match=r"decoding slide 's1' \(160 x 120 px.*full\.png\) = 0\.00 GiB"):
        sp.pp.extract_patches(a, size=8, store="disk", path=tmp_path / "p.npy", max_memory=160 * 120 * 4 - 1)
    assert not (tmp_path / "p.npy").exists()
    with pytest.raises(ValueError, match="max_memory"):
        sp.pp.extract_patches(a, size=8, max_memory=-5)


@pytest.mark.parametrize(
    ("tile", "compression"), [((32, 32), None), ((16, 48), "zlib"), (None, "zlib"), (None, None)]
)
def test_tiff_read_window_by_window_equals_whole_decode(tmp_path, tile, compression, spared_log):
    tifffile = pytest.importorskip("tifffile")
    kw = {"tile": tile} if tile else {"rowsperstrip": 8}
    tifffile.imwrite(tmp_path / "full.tif", IMAGE, photometric="rgb", compression=compression, **kw)
    Image.fromarray(IMAGE).save(tmp_path / "full.png")
    out = {}
    for name in ("full.tif", "full.png"):
        a = make_adata()
        a.uns["spatial"]["s1"]["metadata"]["fullres_path"] = str(tmp_path / name)
        del a.uns["spatial"]["s1"]["images"]["hires"]
        sp.pp.extract_patches(a, size=21)
        out[name] = a.obsm["patches"]
    np.testing.assert_array_equal(out["full.tif"], out["full.png"])
    for i, (x, y) in enumerate(XY):
        np.testing.assert_array_equal(out["full.tif"][i], brute_crop(IMAGE, x, y, 21))
    how = "memory-mapped TIFF" if (tile is None and compression is None) else "TIFF windows"
    assert how in spared_log.text and "decoded whole (Pillow)" in spared_log.text


def test_tiff_chunk_cache_eviction_keeps_crops_exact(tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    import spared_tools.pp._patch_images as images

    monkeypatch.setattr(images, "CHUNK_CACHE_BYTES", 1)  # the minimum of 4 chunks: constant eviction
    tifffile.imwrite(tmp_path / "full.tif", IMAGE, photometric="rgb", compression="zlib", tile=(16, 16))
    rng = np.random.default_rng(5)
    xy = np.column_stack([rng.uniform(-5, 165, 40), rng.uniform(-5, 125, 40)])
    a = make_adata(xy=xy)
    a.uns["spatial"]["s1"]["metadata"]["fullres_path"] = str(tmp_path / "full.tif")
    sp.pp.extract_patches(a, size=21)
    for i, (x, y) in enumerate(xy):
        np.testing.assert_array_equal(a.obsm["patches"][i], brute_crop(IMAGE, x, y, 21))
