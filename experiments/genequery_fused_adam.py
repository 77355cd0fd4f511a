"""Would the fused AdamW kernel speed up GeneQuery's training on CPU? (tried, not adopted)

Two measurements on one torch thread: the optimiser step alone on the default network's parameters
(200 steps on fixed random gradients: default per-tensor loop, ``foreach=True``, ``fused=True``, and the
largest difference of the weights they reach), and a whole training (500 synthetic spots × 128 genes, 8
views of 1,280-wide features, one network, 2 epochs) with the package's AdamW as it is and with
``fused=True`` patched in, alternated twice.

``python experiments/genequery_fused_adam.py > experiments/results/fused_adam_genequery.txt``
"""

from __future__ import annotations

import copy
import time

import anndata as ad
import numpy as np
import pandas as pd
import torch

import spared_tools as sp
from spared_tools.models.genequery import GeneQueryNet


def optimiser_step() -> None:
    torch.manual_seed(0)
    net = GeneQueryNet(1280 * 2, 384, width=128, ff_dim=256, n_heads=8, n_layers=2)
    print(
        f"network: {sum(p.numel() for p in net.parameters())} parameters in {len(list(net.parameters()))} tensors"
    )
    weights = {}
    for label, kw in (
        ("per-tensor loop (default)", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        n = copy.deepcopy(net)
        opt = torch.optim.AdamW(n.parameters(), lr=1e-3, weight_decay=1e-4, **kw)
        g = torch.Generator().manual_seed(1)
        grads = [[torch.randn(p.shape, generator=g) for p in n.parameters()] for _ in range(5)]
        times = []
        for rep in range(200):
            for p, gr in zip(n.parameters(), grads[rep % 5]):
                p.grad = gr.clone()
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        weights[label] = [p.detach().clone() for p in n.parameters()]
        print(f"  AdamW step, {label:26s} median {1000 * float(np.median(times)):.2f} ms")
    diff = max(
        (a - b).abs().max().item() for a, b in zip(weights["per-tensor loop (default)"], weights["fused"])
    )
    print(f"  largest weight difference fused vs default after 200 steps: {diff:.1e}")


def training() -> None:
    import spared_tools.models.genequery as G

    rng = np.random.default_rng(0)
    n, g, d = 500, 128, 1280
    X = rng.gamma(2, 1, (n, g)).astype(np.float32)
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"G{j}" for j in range(g)]))
    a.layers["log1p"] = np.log1p(X)
    a.obsm["X_image_features"] = rng.normal(size=(n, 8, d)).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    a.obs["array_row"], a.obs["array_col"] = np.arange(n) // side, np.arange(n) % side
    a.obsm["spatial"] = np.c_[a.obs["array_col"], a.obs["array_row"]].astype(float) * 100
    a.obs["slide_id"] = "s1"
    a.obs["split"] = pd.Categorical(np.where(rng.random(n) < 0.9, "train", "val"))
    emb = pd.DataFrame(rng.normal(size=(g, 384)), index=a.var_names)
    plain = torch.optim.AdamW
    for fused in (False, True, False, True):
        G.torch.optim.AdamW = (lambda *args, **kw: plain(*args, **kw, fused=True)) if fused else plain
        try:
            m = sp.tl.GeneQueryModel(gene_embeddings=emb, seed=0)
            m.set_params(max_epochs=2, n_models=1, context_rings=0, accelerator="cpu")
            t = time.perf_counter()
            m.train(a, features_key="X_image_features", progress=False)
            print(
                f"  training 450 spots × 128 genes, 2 epochs, {'fused' if fused else 'default'}: {time.perf_counter() - t:.1f} s"
            )
        finally:
            G.torch.optim.AdamW = plain


if __name__ == "__main__":
    torch.set_num_threads(1)
    sp.settings.verbosity = 0
    print("# genequery_fused_adam.py (1 torch thread)", flush=True)
    optimiser_step()
    training()
