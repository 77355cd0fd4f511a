"""Gene-aware prediction of genes not trained on: they follow a context of trained genes, so no gene's
prediction depends on which other genes are asked for."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spared_tools.models.genequery import GeneDataset, GeneQueryNet

sys.path.insert(0, str(Path(__file__).parent))
from test_genequery import SMALL, _gq, _synthetic

pytestmark = pytest.mark.usefixtures("quiet_one_thread")


@pytest.mark.parametrize("n_layers", [1, 2])
def test_context_attention_against_brute_force(n_layers):
    """With ``context=c``: the context tokens get what the context alone gives them; token j >= c gets
    what [context, j] gives it (one layer: plain full attention over those c + 1 tokens is the reference,
    as j attends to the context and itself, and what the context sees of j never reaches j's output)."""
    torch.manual_seed(0)
    net = GeneQueryNet(10, 6, width=32, n_heads=4, ff_dim=48, n_layers=n_layers).eval()
    B, L, c = 3, 9, 4
    img, gen = torch.randn(B, 1, 10), torch.randn(1, L, 6)
    with torch.no_grad():
        out = net(img, gen, context=c)
        full = net(img, gen)
        alone = net(img, gen[:, :c])
        pairs = [torch.cat([gen[:, :c], gen[:, j : j + 1]], 1) for j in range(c, L)]
        one = [net(img, x, context=c if n_layers > 1 else 0)[:, -1] for x in pairs]
    torch.testing.assert_close(out[:, :c], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, c:], torch.stack(one, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, c:], full[:, c:], atol=1e-3)  # full attention differs: the mask acts
    with pytest.raises(ValueError, match="context=10"):
        net(img, gen, context=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_context_kernel_against_masked_attention_in_float64(dtype):
    """The O(context) kernel against attention with the explicit L x L mask (key in the context or the
    query itself; padded context keys excluded), in float64; inputs strided as the encoder passes them."""
    from spared_tools.models.genequery import _context_attention

    torch.manual_seed(1)
    B, H, L, d, c = 5, 4, 23, 8, 9
    q, k, v = torch.randn(B, L, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    keep = torch.ones(B, 1, 1, c, dtype=torch.bool)
    keep[1, ..., 6:] = False  # a sequence whose context has 3 padded tokens
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):  # as predict runs it
        out = _context_attention(q.to(dtype), k.to(dtype), v.to(dtype), c, keep).double()
    pos = torch.arange(L)
    allowed = ((pos[None, :] < c) | (pos[:, None] == pos[None, :]))[None, None].expand(B, 1, L, L).clone()
    allowed[:, :, :, :c] &= keep
    qd, kd, vd = (x.to(dtype).double() for x in (q, k, v))
    scores = (qd @ kd.transpose(-1, -2) / d**0.5).masked_fill(~allowed, float("-inf"))
    ref = torch.softmax(scores, -1) @ vd
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16 output: 8 bits of mantissa
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_gene_dataset_chunks_trained_genes_as_alone_and_the_others_after_the_first_chunk():
    feats = np.zeros((5, 1, 4), dtype=np.float32)
    emb = np.zeros((11, 3), dtype=np.float32)
    ds = GeneDataset(feats, emb, None, np.arange(5), max_len=3, batch_size=5, n_known=5)
    chunks = [(it["genes"].tolist(), int(it["context"])) for it in ds]
    # trained 0-4 in two chunks (as predicting them alone), unseen 5-10 in two chunks of 3 after [0, 1, 2]
    assert chunks == [
        ([0, 1, 2], 0),
        ([3, 4], 0),
        ([0, 1, 2, 5, 6, 7], 3),
        ([0, 1, 2, 8, 9, 10], 3),
    ]
    alone = GeneDataset(feats, emb[:5], None, np.arange(5), max_len=3, batch_size=5)
    assert [it["genes"].tolist() for it in alone] == [c for c, n in chunks if n == 0]
    with pytest.raises(ValueError, match="n_known"):
        GeneDataset(feats, emb, None, np.arange(5), max_len=3, batch_size=5, n_known=0)
    with pytest.raises(ValueError, match="for prediction"):
        GeneDataset(feats, emb, None, np.arange(5), max_len=3, augment=True, n_known=5)


@pytest.mark.parametrize("max_len", [64, 5])
def test_gene_aware_predictions_do_not_depend_on_the_other_genes_asked_for(max_len):
    adata, table = _synthetic(n_slides=4)
    trained = [f"G{j}" for j in range(8)]
    model = _gq(
        gene_embeddings=table, max_epochs=2, batch_size=8, seed=0, max_len=max_len, tta=False, **SMALL
    )
    model.train(adata.copy(), genes=trained)
    base = model.predict(adata, trained)
    mixed = model.predict(adata, [*trained, "G20", "G21", "G22", "NOVEL"])
    np.testing.assert_allclose(mixed[:, :8], base, atol=1e-5)
    # each unseen gene as when asked for alone, in any company and order
    for k, g in enumerate(["G20", "G21", "G22", "NOVEL"]):
        np.testing.assert_allclose(mixed[:, 8 + k], model.predict(adata, [g])[:, 0], atol=1e-5)
    rev = model.predict(adata, ["NOVEL", "G22", "G21", "G20", "G0"])
    np.testing.assert_allclose(rev[:, :4], mixed[:, 8:][:, ::-1], atol=1e-5)
    # NOVEL shares G3's text and G3 was trained on; G22 is a different gene: their predictions differ
    assert not np.allclose(mixed[:, 10], mixed[:, 11], atol=1e-3)
