"""SpaCKLE building blocks on tensors: transformer, Lightning training plan, batching and inference.

Nothing here imports AnnData; :class:`spared_tools.tl.SpackleModel` turns an AnnData into the arrays
these objects consume.

Data layout shared by every function of this module
---------------------------------------------------
``values``
    ``float32 (n_obs, n_genes)`` expression in *standardised* units (per gene ``(x - mean) / std``).
    Entries that are not observed may hold anything (e.g. a median pre-completion); the model never
    reads them, the optional ``loss_on="all"`` objective uses them as targets.
``observed``
    ``bool (n_obs, n_genes)``, True where an entry was really measured (``M_s`` in the paper).
``table``
    ``int64 (n_obs, 1 + K)`` lattice neighbour table (column 0 the spot itself, ``-1`` where no spot sits
    at that lattice offset), as returned by :func:`spared_tools.pp.neighbor_table`.
``ring``
    ``int64 (1 + K,)`` the lattice ring of each table column (0 for the spot itself).

A *neighbourhood* is the ``1 + K`` rows of ``values`` / ``observed`` picked by one row of ``table``; absent
neighbours become padding tokens (zero input, excluded from attention by a key-padding mask, never
scored). Attention runs over the tokens of one neighbourhood only, so the output of a spot never depends on
the other neighbourhoods of its mini-batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from spared_tools._checks import check_number
from spared_tools._kernels.masking import check_mask_fraction, hide_entries_torch

from .spackle_data import IndexDataset, MetricSums, NeighbourhoodCollate  # noqa: F401 - re-exported

LossOn = Literal["hidden", "observed", "all"]

#: Metric names reported by :class:`SpackleTrainingPlan` and :func:`spared_tools.tl.evaluate_completion`.
METRICS: tuple[str, ...] = ("MSE", "MAE", "PCC-gene", "PCC-spot")


class _Block(nn.Module):
    """Pre-norm transformer encoder layer (self-attention + ReLU feed-forward), batch-first.

    With ``queries=1`` only the first token is updated (its attention still reads every token): the last
    layer of a centre-only forward pass needs nothing else.
    """

    def __init__(self, d_model: int, n_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, dim_feedforward)
        self.ff2 = nn.Linear(dim_feedforward, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        B, L, d = x.shape
        H = self.n_heads
        h = self.norm1(x)
        if queries is None:
            q, k, v = self.qkv(h).split(d, dim=-1)
        else:
            w_q, w_kv = self.qkv.weight.split([d, 2 * d], dim=0)
            b_q, b_kv = self.qkv.bias.split([d, 2 * d], dim=0)
            q = nn.functional.linear(h[:, :queries], w_q, b_q)
            k, v = nn.functional.linear(h, w_kv, b_kv).split(d, dim=-1)
            x = x[:, :queries]
        q = q.reshape(B, -1, H, d // H).transpose(1, 2)
        k = k.reshape(B, L, H, d // H).transpose(1, 2)
        v = v.reshape(B, L, H, d // H).transpose(1, 2)
        a = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )
        a = a.transpose(1, 2).reshape(B, -1, d)
        x = x + self.drop(self.proj(a))
        x = x + self.drop(self.ff2(self.drop(nn.functional.relu(self.ff1(self.norm2(x))))))
        return x


class SpackleEncoder(nn.Module):
    """The SpaCKLE transformer: one token per spot of a lattice neighbourhood.

    A token is the spot's gene vector with unknown entries set to zero, concatenated with the 0/1
    indicator of which entries are known (so that a measured value of 0 and an unknown value differ),
    mapped to ``d_model`` by a linear adapter; a learned embedding of the token's lattice ring (0 for the
    centre spot) is added. Pre-norm transformer layers run self-attention over the ``1 + K`` tokens of each
    neighbourhood (batch-first: attention never crosses neighbourhoods); padding tokens are never attended
    (boolean attention mask). A final layer norm and a linear adapter map every token back to ``n_genes``.

    Parameters
    ----------
    n_genes
        Number of genes ``g`` (token input size is ``2 g``, output size ``g``).
    n_positions
        Number of distinct ring ids (``max(ring) + 1``).
    d_model
        Transformer width (the paper uses 128).
    n_heads
        Attention heads; must divide ``d_model``.
    n_layers
        Transformer encoder layers.
    dim_feedforward
        Width of the feed-forward block of each layer.
    dropout
        Dropout probability inside the transformer layers (inactive in :meth:`~torch.nn.Module.eval`).
    """

    def __init__(
        self,
        n_genes: int,
        n_positions: int,
        *,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, val in (
            ("n_genes", n_genes),
            ("n_positions", n_positions),
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
            ("dim_feedforward", dim_feedforward),
        ):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}.")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
        check_number(dropout, "dropout", min=0.0, max=1.0, max_inclusive=False)
        self.n_genes = int(n_genes)
        self.d_model = int(d_model)
        self.input = nn.Linear(2 * self.n_genes, self.d_model)
        self.position = nn.Embedding(int(n_positions), self.d_model)
        self.layers = nn.ModuleList(
            [
                _Block(self.d_model, int(n_heads), int(dim_feedforward), float(dropout))
                for _ in range(int(n_layers))
            ]
        )
        self.norm = nn.LayerNorm(self.d_model)
        self.output = nn.Linear(self.d_model, self.n_genes)

    def forward(
        self,
        values: torch.Tensor,
        known: torch.Tensor,
        padding: torch.Tensor,
        positions: torch.Tensor,
        *,
        center_only: bool = False,
    ) -> torch.Tensor:
        """Predict every gene of every token.

        Parameters
        ----------
        values
            ``(B, L, g)`` standardised expression; entries where ``known`` is False are ignored.
        known
            ``(B, L, g)`` bool, True where the model may read the value.
        padding, positions, center_only
            As in :meth:`encode`.

        Returns
        -------
        What :meth:`encode` returns for these tokens: :meth:`embed` followed by :meth:`encode`.
        """
        return self.encode(self.embed(values, known), padding, positions, center_only=center_only)

    def embed(self, values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Input adapter: ``(..., g)`` values and known-mask → ``(..., d_model)`` token embeddings.

        Parameters
        ----------
        values
            Standardised expression (entries where ``known`` is False are ignored).
        known
            Bool mask of the entries the model may read.

        Returns
        -------
        Token embeddings (before the ring embedding is added).
        """
        k = known.to(values.dtype)
        return self.input(torch.cat([values * k, k], dim=-1))

    def encode(
        self,
        tokens: torch.Tensor,
        padding: torch.Tensor,
        positions: torch.Tensor,
        *,
        center_only: bool = False,
    ) -> torch.Tensor:
        """Transformer layers and output adapter on embedded tokens.

        Parameters
        ----------
        tokens
            ``(B, L, d_model)`` embeddings from :meth:`embed`.
        padding
            ``(B, L)`` bool, True for padding tokens (absent neighbours). Column 0 must never be padding.
        positions
            ``(L,)`` or ``(B, L)`` integer ring id of each token.
        center_only
            Return only the prediction for token 0 (the centre spot), shape ``(B, g)``; the last layer then
            updates the centre token only.

        Returns
        -------
        ``(B, L, g)`` predictions in standardised units (``(B, g)`` with ``center_only``).
        """
        x = tokens + self.position(positions)
        attend = (~padding)[:, None, None, :]
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x, attend, queries=1 if (center_only and i == n - 1) else None)
        if center_only:
            x = x[:, 0]
        return self.output(self.norm(x))


class SpackleTrainingPlan(pl.LightningModule):
    """Lightning training plan for :class:`SpackleEncoder` (masked-autoencoder objective of the paper).

    Each training step hides a random fraction ``mask_prob`` of the *observed* entries of every token of
    every neighbourhood (``M_s ⊙ M_rand``), feeds the rest to the encoder and minimises the mean squared
    error, in the original units of the layer (standardised error × gene std), over the entries selected by
    ``loss_on``. Validation uses a fixed, globally drawn hidden mask (carried by the batches) and scores the
    centre spots only; the metrics are reduced over DDP ranks before they are logged as ``val_MSE`` ...

    Parameters
    ----------
    encoder
        The network.
    ring
        ``(1 + K,)`` ring id of each neighbourhood column.
    gene_std
        ``(g,)`` per-gene standard deviation used to standardise the values (to report errors in the
        layer's units).
    mask_prob
        Fraction of observed entries hidden per training neighbourhood: a float, or ``(low, high)`` to draw
        the fraction uniformly per neighbourhood.
    loss_on
        ``"hidden"``: the randomly hidden entries (default); ``"observed"``: every observed entry (hidden ones
        and the reconstruction of visible ones); ``"all"``: every entry of the input layer including the
        median pre-completed ones (the paper's equation 5).
    lr
        Adam learning rate.
    weight_decay
        Adam weight decay.
    seed
        Seed of the random training masks (combined with the global step and the process rank, so that
        masks do not depend on other consumers of the global RNG).
    lr_plateau
        Halve the learning rate after this many validation checks without a lower ``val_MSE``
        (reduce-on-plateau, checked every ``plateau_every`` steps); ``None``: a constant rate.
    plateau_every
        Steps between the validation checks (the run's ``val_check_interval``).
    """

    def __init__(
        self,
        encoder: SpackleEncoder,
        ring: np.ndarray | torch.Tensor,
        gene_std: np.ndarray | torch.Tensor,
        *,
        mask_prob: float | tuple[float, float] = 0.3,
        loss_on: LossOn = "hidden",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        lr_plateau: int | None = None,
        plateau_every: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("ring", torch.as_tensor(np.asarray(ring), dtype=torch.int64), persistent=False)
        self.register_buffer(
            "gene_std", torch.as_tensor(np.asarray(gene_std), dtype=torch.float32), persistent=False
        )
        self.mask_prob = check_mask_prob(mask_prob)
        if loss_on not in ("hidden", "observed", "all"):
            raise ValueError(f"loss_on must be 'hidden', 'observed' or 'all', got {loss_on!r}.")
        self.loss_on = loss_on
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.lr_plateau = None if lr_plateau is None else int(lr_plateau)
        self.plateau_every = int(plateau_every)
        self._val: MetricSums | None = None

    # ---- training -------------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + int(self.global_step) * 7_919 + self.global_rank) % 2**63)
        return g

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        values, observed, padding = batch["values"], batch["observed"], batch["padding"]
        low, high = self.mask_prob
        hidden = hide_entries_torch(observed, low, high, self._generator())
        pred = self.encoder(values, observed & ~hidden, padding, self.ring)
        if self.loss_on == "hidden":
            w = hidden
        elif self.loss_on == "observed":
            w = observed
        else:
            w = (~padding).unsqueeze(-1).expand_as(observed)
        err = (pred - values) * self.gene_std
        wf = w.to(err.dtype)
        loss = (err * err * wf).sum() / wf.sum().clamp(min=1.0)
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=values.shape[0])
        return loss

    # ---- validation -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = MetricSums(self.encoder.n_genes, self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self.encoder(batch["values"], batch["observed"], batch["padding"], self.ring, center_only=True)
        std: torch.Tensor = self.gene_std  # type: ignore[assignment]
        if self._val is None:
            self._val = MetricSums(self.encoder.n_genes, self.device)
        self._val.update(batch["values"][:, 0] * std, pred * std, batch["target"])

    def on_validation_epoch_end(self) -> None:
        if self._val is None:
            return
        if self.trainer is not None and self.trainer.world_size > 1:
            self._val.all_reduce(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        metrics = self._val.compute()
        self._val = None
        # the run's best-state rule (spared_tools.models._runner.BestState) reads these logged values
        self.log_dict({f"val_{k}": float(v) for k, v in metrics.items()}, prog_bar=False, sync_dist=False)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.encoder.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_plateau is None:
            return opt
        # stepped by Lightning every `plateau_every` steps with the last validation's val_MSE (state resumes)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=self.lr_plateau - 1)
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": sched,
                "monitor": "val_MSE",
                "interval": "step",
                "frequency": self.plateau_every,
                "strict": False,
            },
        }


def check_mask_prob(mask_prob: float | tuple[float, float]) -> tuple[float, float]:
    """``mask_prob`` as a ``(low, high)`` pair in (0, 1) (:func:`spared_tools._kernels.masking.check_mask_fraction`)."""
    return check_mask_fraction(mask_prob, "mask_prob")


@torch.inference_mode()
def predict_centers(
    encoder: SpackleEncoder,
    collate: NeighbourhoodCollate,
    ring: np.ndarray | torch.Tensor,
    centers: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: Literal["32", "bf16"] = "32",
    progress: bool = False,
) -> np.ndarray:
    """Predict every gene of each centre spot from its neighbourhood, in batches gathered on the fly.

    At inference every spot's input (its known entries) is the same in every neighbourhood it belongs to,
    so the input adapter runs once per spot (``n × d_model`` embeddings) and each batch gathers the
    embeddings of its neighbourhoods; the last transformer layer updates the centre token only. Memory is
    ``O(n × d_model + batch_size × (1 + K) × max(d_model, dim_feedforward))``; nothing is ``n × n``.

    Parameters
    ----------
    encoder
        Trained encoder (put in eval mode here and moved to ``device``).
    collate
        Holds the data arrays; its ``observed`` (minus ``hidden``) decides which entries are read.
    ring
        ``(1 + K,)`` ring id per table column.
    centers
        Row indices of the spots to predict.
    batch_size
        Neighbourhoods per forward pass (small batches stay in the CPU caches).
    device
        Torch device for the forward passes.
    precision
        ``"32"``: float32 (exact, default); ``"bf16"``: bfloat16 autocast of the matrix products (about 3×
        faster on CPUs with AVX-512 BF16 / AMX and on GPUs; predictions change by ~1 % of a gene's std).
    progress
        Show a tqdm progress bar.

    Returns
    -------
    ``float32 (len(centers), g)`` predictions in standardised units.
    """
    import contextlib

    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if precision not in ("32", "bf16"):
        raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}.")
    device = torch.device(device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    was_training = encoder.training
    encoder.eval()
    encoder.to(device)
    pos = torch.as_tensor(np.asarray(ring), dtype=torch.int64, device=device)
    centers_t = torch.as_tensor(np.asarray(centers, dtype=np.int64))
    n_obs = collate.values.shape[0]
    out = np.empty((centers_t.shape[0], encoder.n_genes), dtype=np.float32)
    try:
        autocast.__enter__()
        # embeddings of every spot that appears in a requested neighbourhood
        table = collate.table[centers_t]
        needed = torch.unique(table[table >= 0])
        emb = torch.zeros((n_obs, encoder.d_model), dtype=torch.float32, device=device)
        chunk = 8192
        for s in range(0, needed.shape[0], chunk):
            r = needed[s : s + chunk]
            known = collate.observed[r]
            if collate.hidden is not None:
                known = known & ~collate.hidden[r]
            emb[r.to(device)] = encoder.embed(collate.values[r].to(device), known.to(device)).float()
        starts = range(0, centers_t.shape[0], int(batch_size))
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="SpaCKLE inference", unit="batch")
        for s in starts:
            idx = table[s : s + batch_size].to(device)
            padding = idx < 0
            tokens = emb[idx.clamp(min=0)]
            pred = encoder.encode(tokens, padding, pos, center_only=True)
            out[s : s + idx.shape[0]] = pred.float().cpu().numpy()
    finally:
        autocast.__exit__(None, None, None)
        encoder.train(was_training)
    return out
