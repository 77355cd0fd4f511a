"""GeneQuery on tensors: the network, the sequence datasets that feed it, and its Lightning training plan.

GeneQuery (Xiong et al.) predicts the expression of a gene at a spot from the spot's image feature and
an embedding of the gene's text. Both are projected to a shared width, fused by addition and passed
through a small transformer encoder whose sequence is either

* **spot-aware**: every spot of a slide for one gene (the transformer mixes information between spots
  of the same tissue), or
* **gene-aware**: every gene for one spot (the transformer mixes information between genes).

This module never touches AnnData; :class:`spared_tools.tl.GeneQueryModel` builds its inputs.

Differences from the published reference code (see ``REFERENCE.md``): key-padding masks are real
(padded tokens are never attended to and never enter the loss), long sequences are split into chunks
instead of being truncated, the head count is a true head count, and data augmentation (random image
views, e.g. the 8 dihedral symmetries) is applied to training batches only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from spared_tools._checks import check_number

from .genequery_data import GeneDataset, SpotDataset, spatial_chunks

__all__ = [
    "GeneDataset",
    "GeneQueryNet",
    "GeneQueryPlan",
    "SpotDataset",
    "gene_identity_codes",
    "FrozenNormEncoder",
    "masked_mse",
    "spatial_chunks",
]

Mode = Literal["spot", "gene"]


class GeneQueryNet(nn.Module):
    """The GeneQuery network: projections, additive fusion, transformer encoder and regressor.

    Parameters
    ----------
    image_dim
        Width of the image features (e.g. 1280 for EfficientNet-Lite0).
    gene_dim
        Width of the gene text embeddings (e.g. 384 for all-MiniLM-L6-v2).
    width
        Shared width after projection (the paper's 256).
    n_layers
        Number of transformer encoder layers (the paper's 2).
    n_heads
        Number of attention heads; must divide ``width``.
    ff_dim
        Hidden width of the transformer's feed-forward blocks.
    dropout
        Dropout in the projections and the transformer's residual and feed-forward paths (inactive in
        ``eval()`` mode). The attention weights are not dropped, so the fused (flash) attention kernel
        is used and memory stays linear in the sequence length.
    identity_dim
        How many of the last ``gene_dim`` input dimensions are a per-gene identity code rather than text
        (see :func:`gene_identity_codes`); 0 for none.
    identity_dropout
        While training, the probability that a gene token's identity code is replaced by 0 (after
        standardisation: the training genes' mean code), which is what a gene without a code (one not
        trained on) gets, so the network also learns to predict from the text alone.

    Notes
    -----
    :meth:`forward` broadcasts the image and gene tokens against each other before adding them, so
    the spot-aware layout passes images ``(1, L, image_dim)`` with genes ``(B, 1, gene_dim)`` and the
    gene-aware layout images ``(B, 1, image_dim)`` with genes ``(1, L, gene_dim)``: each projection is
    computed once per distinct input. The encoder uses pre-layer normalisation and no nested-tensor
    fast path, so padded and unpadded sequences go through the same arithmetic.
    """

    image_shift: torch.Tensor
    image_scale: torch.Tensor
    gene_shift: torch.Tensor
    gene_scale: torch.Tensor

    def __init__(
        self,
        image_dim: int,
        gene_dim: int,
        *,
        width: int = 256,
        n_layers: int = 2,
        n_heads: int = 8,
        ff_dim: int = 512,
        dropout: float = 0.1,
        identity_dim: int = 0,
        identity_dropout: float = 0.0,
        image_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_dim", image_dim),
            ("gene_dim", gene_dim),
            ("width", width),
            ("n_heads", n_heads),
            ("ff_dim", ff_dim),
        ):
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(n_layers, int | np.integer) or n_layers < 0:
            raise ValueError(f"n_layers must be a non-negative integer, got {n_layers!r}.")
        if width % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide width={width}.")
        check_number(dropout, "dropout", min=0.0, max=1.0, max_inclusive=False)
        if isinstance(identity_dim, bool) or not isinstance(identity_dim, int | np.integer):
            raise ValueError(f"identity_dim must be a non-negative integer, got {identity_dim!r}.")
        if not 0 <= identity_dim < gene_dim:
            raise ValueError(
                f"identity_dim={identity_dim} must be >= 0 and leave text dimensions in gene_dim={gene_dim}."
            )
        self.identity_dropout = check_number(
            identity_dropout, "identity_dropout", min=0.0, max=1.0, max_inclusive=False
        )
        self.image_dropout = check_number(
            image_dropout, "image_dropout", min=0.0, max=1.0, max_inclusive=False
        )
        self.image_dim, self.gene_dim, self.width = int(image_dim), int(gene_dim), int(width)
        self.identity_dim = int(identity_dim)
        self.image_proj = nn.Sequential(nn.Linear(image_dim, width), nn.Dropout(dropout))
        self.gene_proj = nn.Sequential(nn.Linear(gene_dim, width), nn.Dropout(dropout))
        if n_layers > 0:
            layer = nn.TransformerEncoderLayer(
                width,
                n_heads,
                dim_feedforward=ff_dim,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            # No dropout on the attention weights: it would force the O(L^2)-memory "math" attention
            # kernel; dropout stays on the residual and feed-forward paths.
            layer.self_attn.dropout = 0.0
            self.encoder: nn.Module | None = nn.TransformerEncoder(
                layer, n_layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
            )
        else:
            self.encoder = None
        self.regressor = nn.Linear(width, 1)
        # Per-dimension input standardisation (identity until :meth:`set_input_stats`); buffers, so they
        # are saved and loaded with the weights.
        self.register_buffer("image_shift", torch.zeros(image_dim))
        self.register_buffer("image_scale", torch.ones(image_dim))
        self.register_buffer("gene_shift", torch.zeros(gene_dim))
        self.register_buffer("gene_scale", torch.ones(gene_dim))

    @torch.no_grad()
    def set_input_stats(self, image: np.ndarray | None = None, gene: np.ndarray | None = None) -> None:
        """Standardise inputs per dimension with the mean and standard deviation of these samples.

        Parameters
        ----------
        image
            Training image features ``(n, image_dim)``; ``None`` leaves the image transform unchanged.
        gene
            Training gene embeddings ``(n, gene_dim)``; ``None`` leaves the gene transform unchanged.

        Notes
        -----
        Frozen image features and sentence embeddings of gene descriptions are not on a common scale,
        and without this step GeneQuery trained on HER2+ predicted one spatial pattern for every gene
        (``benchmarks/results/genequery_inputs.txt``). Dimensions that are constant over the samples
        are only centred. Pass training data only.
        """
        for name, x, dim in (("image", image, self.image_dim), ("gene", gene, self.gene_dim)):
            if x is None:
                continue
            x = np.asarray(x, dtype=np.float64).reshape(-1, dim)
            if x.shape[0] < 2:
                raise ValueError(f"set_input_stats needs at least 2 {name} samples, got {x.shape[0]}.")
            mu, sd = x.mean(0), x.std(0)
            sd = np.where(sd > 1e-8 * max(1.0, float(np.abs(x).max())), sd, 1.0)
            getattr(self, f"{name}_shift").copy_(torch.from_numpy(mu))
            getattr(self, f"{name}_scale").copy_(torch.from_numpy(sd))

    def forward(
        self,
        image: torch.Tensor,
        gene: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        context: int = 0,
    ) -> torch.Tensor:
        """Predict one value per token.

        Parameters
        ----------
        image
            Image features ``(B or 1, L or 1, image_dim)``.
        gene
            Gene embeddings ``(B or 1, L or 1, gene_dim)``.
        padding_mask
            Boolean ``(B, L)``, ``True`` at padded tokens (PyTorch's key-padding convention), or ``None``.
        context
            The first ``context`` tokens are a shared context: every token attends to them and to itself
            only, so a token's output does not depend on the other tokens after the context, and the
            context's outputs are those of the context alone; each later token's attention costs
            ``O(context)``, not ``O(L)``. 0 (default): full attention.

        Returns
        -------
        Predictions ``(B, L)`` in scaled target units; padded positions are set to 0.
        """
        if image.ndim != 3 or image.shape[-1] != self.image_dim:
            raise ValueError(f"image must be (B, L, {self.image_dim}), got {tuple(image.shape)}.")
        if gene.ndim != 3 or gene.shape[-1] != self.gene_dim:
            raise ValueError(f"gene must be (B, L, {self.gene_dim}), got {tuple(gene.shape)}.")
        image = (image - self.image_shift.to(image.dtype)) / self.image_scale.to(image.dtype)
        gene = (gene - self.gene_shift.to(gene.dtype)) / self.gene_scale.to(gene.dtype)
        if self.training and self.image_dropout > 0:
            image = nn.functional.dropout(image, self.image_dropout)
        if self.training and self.identity_dim and self.identity_dropout > 0:
            k = self.identity_dim
            keep = torch.rand(gene.shape[:-1] + (1,), device=gene.device) >= self.identity_dropout
            gene = torch.cat([gene[..., :-k], gene[..., -k:] * keep.to(gene.dtype)], dim=-1)
        h = self.image_proj(image) + self.gene_proj(gene)
        if padding_mask is not None:
            if padding_mask.shape != h.shape[:2]:
                raise ValueError(
                    f"padding_mask has shape {tuple(padding_mask.shape)}, expected {tuple(h.shape[:2])}."
                )
            padding_mask = padding_mask.to(torch.bool)
            if bool(padding_mask.all(dim=1).any()):
                raise ValueError("padding_mask masks every token of a sequence.")
        context = int(context)
        if not 0 <= context <= h.shape[1]:
            raise ValueError(f"context={context} must be between 0 and the sequence length {h.shape[1]}.")
        if self.encoder is not None:
            h = self._encode(h, padding_mask, context)
        out = self.regressor(h).squeeze(-1)
        if padding_mask is not None:
            out = out.masked_fill(padding_mask, 0.0)
        return out

    def _encode(self, h: torch.Tensor, padding_mask: torch.Tensor | None, context: int = 0) -> torch.Tensor:
        """The pre-norm encoder layers, written out around :func:`~torch.nn.functional.scaled_dot_product_attention`.

        Same parameters and arithmetic as ``nn.TransformerEncoder`` with ``norm_first=True`` (its
        modules hold the weights, so saved models load unchanged), but one code path for training and
        inference: PyTorch's inference fast path would materialise the ``L x L`` attention matrix, while
        the fused kernel used here keeps memory linear in ``L`` and is about twice as fast on CPU.
        """
        assert isinstance(self.encoder, nn.TransformerEncoder)
        B, L, D = h.shape
        keep = None if padding_mask is None else (~padding_mask)[:, None, None, :]
        c = context if 0 < context < L else 0
        for layer in self.encoder.layers:
            attn = layer.self_attn
            n_heads = attn.num_heads
            x = layer.norm1(h)
            qkv = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(B, L, 3, n_heads, D // n_heads).permute(2, 0, 3, 1, 4).unbind(0)
            if c:
                o = _context_attention(q, k, v, c, None if keep is None else keep[..., :c])
            else:
                o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            o = o.transpose(1, 2).reshape(B, L, D)
            h = h + layer.dropout1(attn.out_proj(o))
            x = layer.norm2(h)
            h = h + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))
        if self.encoder.norm is not None:
            h = self.encoder.norm(h)
        return h


def _context_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: int, keep: torch.Tensor | None
) -> torch.Tensor:
    """Attention where the first ``c`` tokens attend to each other and every later token to them and itself.

    ``q``, ``k``, ``v`` are ``(B, H, L, d)``; ``keep`` is ``None`` or a boolean ``(B, 1, 1, c)``, ``False``
    at padded context keys. Equal to masked attention over all ``L`` tokens, but the later tokens cost
    ``O(c)`` each (a softmax over the ``c`` context scores and the token's own) rather than ``O(L)``, and
    no ``L x L`` mask is built.
    """
    ctx = nn.functional.scaled_dot_product_attention(q[:, :, :c], k[:, :, :c], v[:, :, :c], attn_mask=keep)
    # the later tokens in float32 (autocast off), as the fused kernel accumulates in float32 under bfloat16
    with torch.autocast(q.device.type, enabled=False):
        qn, kn, vn = (x[:, :, c:].float() for x in (q, k, v))
        kc, vc = k[:, :, :c].float(), v[:, :, :c].float()
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(qn, kc.transpose(-1, -2)) * scale
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        own = (qn * kn).sum(-1, keepdim=True) * scale
        p = torch.softmax(torch.cat([scores, own], dim=-1), dim=-1)
        new = torch.matmul(p[..., :c], vc) + p[..., c:] * vn
    return torch.cat([ctx, new.to(v.dtype)], dim=2)


def gene_identity_codes(genes: Sequence[str], dim: int) -> np.ndarray:
    """Fixed random identity codes ``(len(genes), dim)``, standard normal, one per gene symbol.

    Each gene's code is drawn from a generator seeded by the CRC-32 of its symbol, so it depends on
    the symbol alone: not on the gene order, the gene list or the training seed. GeneQuery appends
    these to the text embeddings of the training genes (``GeneQueryModel(gene_identity=dim)``), which
    lets the network fit what is particular to a gene beyond what its description says.
    """
    import zlib

    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 0:
        raise ValueError(f"dim must be a non-negative integer, got {dim!r}.")
    out = np.empty((len(genes), int(dim)), dtype=np.float32)
    for i, g in enumerate(genes):
        out[i] = np.random.default_rng(zlib.crc32(str(g).encode())).standard_normal(int(dim))
    return out


def masked_mse(pred: torch.Tensor, target: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over non-padded tokens only.

    Parameters
    ----------
    pred
        Predictions ``(B, L)``.
    target
        Targets ``(B, L)``.
    padding_mask
        Boolean ``(B, L)``, ``True`` at padding, or ``None`` (no padding).

    Returns
    -------
    Scalar loss.
    """
    err = (pred - target) ** 2
    if padding_mask is None:
        return err.mean()
    valid = (~padding_mask).to(err.dtype)
    return (err * valid).sum() / valid.sum().clamp_min(1.0)


class FrozenNormEncoder(nn.Module):
    """Wrap an image encoder for fine-tuning with its batch-norm statistics frozen.

    The weights train, but every batch-norm layer stays in eval mode (running statistics from ImageNet
    pre-training): fine-tuning batches hold a few dozen patches of one tissue region, too few and too
    correlated for batch statistics.

    Parameters
    ----------
    encoder
        Module mapping uint8 images ``(N, 3, H, W)`` to features ``(N, d)`` (e.g. an
        :class:`~spared_tools.models.image.ImageEncoder`).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.module = encoder

    def train(self, mode: bool = True) -> FrozenNormEncoder:
        super().train(mode)
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class GeneQueryPlan(pl.LightningModule):
    """Lightning training plan: masked MSE, AdamW, optional cosine learning-rate decay.

    Parameters
    ----------
    net
        The :class:`GeneQueryNet` to train.
    lr
        AdamW learning rate.
    weight_decay
        AdamW weight decay.
    cosine
        Decay the learning rate with a cosine schedule over ``max_epochs`` (per epoch).
    encoder
        Trainable image encoder (fine-tune mode): batches then carry ``patches`` that it encodes into
        the image tokens. ``None``: batches carry precomputed ``image`` features.
    encoder_lr
        Learning rate of the encoder's parameters (default ``lr``).
    encoder_chunk
        Run the trainable encoder on chunks of this many patches under gradient checkpointing: only the
        chunk outputs are kept in the forward pass and each chunk's activations are recomputed in the
        backward pass, so activation memory is that of ``encoder_chunk`` patches rather than the whole
        batch, for one extra forward pass. ``None``: one pass, no checkpointing.
    """

    def __init__(
        self,
        net: GeneQueryNet,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        cosine: bool = True,
        encoder: nn.Module | None = None,
        encoder_lr: float | None = None,
        encoder_chunk: int | None = None,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr!r}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        if encoder_lr is not None and encoder_lr <= 0:
            raise ValueError(f"encoder_lr must be > 0, got {encoder_lr!r}.")
        self.net = net
        self.encoder = None if encoder is None else FrozenNormEncoder(encoder)
        self.lr, self.weight_decay, self.cosine = float(lr), float(weight_decay), bool(cosine)
        self.encoder_lr = self.lr if encoder_lr is None else float(encoder_lr)
        if encoder_chunk is not None and (isinstance(encoder_chunk, bool) or int(encoder_chunk) < 1):
            raise ValueError(f"encoder_chunk must be a positive integer or None, got {encoder_chunk!r}.")
        self.encoder_chunk = None if encoder_chunk is None else int(encoder_chunk)

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch["image"]``, or the encoded ``batch["patches"]`` laid out for the batch's mode."""
        if "patches" not in batch:
            return batch["image"]
        if self.encoder is None:
            raise RuntimeError("The batch holds patches but the plan has no image encoder.")
        x = batch["patches"]
        c = self.encoder_chunk
        if c is None or not torch.is_grad_enabled() or x.shape[0] <= c:
            f = self.encoder(x)
        else:
            from torch.utils.checkpoint import checkpoint

            f = torch.cat(
                [checkpoint(self.encoder, x[i : i + c], use_reentrant=False) for i in range(0, x.shape[0], c)]
            )
        return f[None] if bool(batch["spot_layout"]) else f[:, None, :]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(self.image_tokens(batch), batch["gene"], batch.get("padding_mask"))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        mask = batch.get("padding_mask")
        pred = self(batch)
        loss = masked_mse(pred, batch["target"], mask)
        n = int(batch["target"].numel() if mask is None else (~mask).sum())
        self.log(
            f"{stage}_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
            sync_dist=stage == "val",
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        loaders = self.trainer.train_dataloader
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        for loader in loaders:
            set_epoch = getattr(getattr(loader, "dataset", None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(self.current_epoch)

    def configure_optimizers(self) -> Any:
        groups: list[dict[str, Any]] = [{"params": list(self.net.parameters()), "lr": self.lr}]
        if self.encoder is not None:
            enc = [p for p in self.encoder.parameters() if p.requires_grad]
            if enc:
                groups.append({"params": enc, "lr": self.encoder_lr})
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        max_epochs = self.trainer.max_epochs if self.trainer is not None else None
        if not self.cosine or not max_epochs or max_epochs < 2:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(e, max_epochs) / max_epochs))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
