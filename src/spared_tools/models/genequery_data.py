"""GeneQuery's datasets over arrays: spot-aware and gene-aware sequences, spatial chunks of long slides.

Tensors only (no AnnData): frozen features or patches, gene embeddings and scaled targets come in as
arrays; each item is one batch of sequences (padding-masked), reshuffled per epoch from the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def spatial_chunks(coords: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Split the spots of one slide into spatially compact chunks of at most ``max_len`` spots.

    The slide is cut into ``ceil(n / max_len)`` vertical strips of equal spot counts (by x), and each
    strip is ordered by y. A slide with at most ``max_len`` spots is one chunk in its original order.

    Parameters
    ----------
    coords
        Spot coordinates ``(n, 2)`` (x, y) of one slide.
    max_len
        Maximum chunk length.

    Returns
    -------
    List of position arrays into ``coords`` covering every spot exactly once.
    """
    n = len(coords)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    if n <= max_len:
        return [np.arange(n, dtype=np.int64)]
    n_chunks = math.ceil(n / max_len)
    order = np.lexsort((coords[:, 1], coords[:, 0]))
    chunks = []
    for part in np.array_split(order, n_chunks):
        chunks.append(part[np.lexsort((coords[part, 0], coords[part, 1]))].astype(np.int64))
    return chunks


def _epoch_rng(seed: int, epoch: int, item: int = -1) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, item + 1])


class _SequenceDataset(Dataset):
    """Shared state of the two layouts: image features with views, gene embeddings, scaled targets."""

    def __init__(
        self,
        features: np.ndarray | torch.Tensor | None,
        gene_embeddings: np.ndarray | torch.Tensor,
        targets: np.ndarray | torch.Tensor | None,
        *,
        batch_size: int = 32,
        augment: bool = False,
        seed: int = 0,
        view: int | None = None,
        patches: Any = None,
        sample_genes: bool = False,
        random_views: bool = True,
    ) -> None:
        if patches is not None:
            shape = tuple(np.shape(patches))
            if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
                raise ValueError(f"patches must be square RGB images (n_spots, H, H, 3), got {shape}.")
            if np.dtype(patches.dtype) != np.uint8:
                raise TypeError(f"patches must be uint8, got {patches.dtype}.")
            # image tokens come from the patches through a trainable encoder (fine-tune mode)
            feats = torch.zeros((shape[0], 1, 0), dtype=torch.float32)
        elif features is None:
            raise ValueError("Pass image features, or patches for a trainable encoder.")
        else:
            feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if feats.ndim == 2:
            feats = feats[:, None, :]
        if feats.ndim != 3:
            raise ValueError(
                f"features must be (n_spots, d) or (n_spots, n_views, d), got {tuple(feats.shape)}."
            )
        self.features = feats
        self.patches = patches
        self.sample_genes = bool(sample_genes)
        self.genes = torch.as_tensor(np.asarray(gene_embeddings, dtype=np.float32))
        if self.genes.ndim != 2:
            raise ValueError(f"gene_embeddings must be (n_genes, d), got {tuple(self.genes.shape)}.")
        self.targets = None if targets is None else torch.as_tensor(np.asarray(targets, dtype=np.float32))
        if self.targets is not None and self.targets.shape != (feats.shape[0], self.genes.shape[0]):
            raise ValueError(
                f"targets must be (n_spots, n_genes) = {(feats.shape[0], self.genes.shape[0])}, "
                f"got {tuple(self.targets.shape)}."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        n_views = feats.shape[1]
        if view is not None and not 0 <= view < n_views:
            raise ValueError(f"view={view} but the features have {n_views} views.")
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.random_views = bool(random_views)
        self.seed = int(seed)
        self.view = view
        self.epoch = 0

    @property
    def n_views(self) -> int:
        return int(self.features.shape[1])

    def _image(self, spots: torch.Tensor, item: int) -> torch.Tensor:
        """Image features of ``spots``: a random view each (augment), the fixed ``view``, or view 0."""
        if self.augment and self.random_views and self.n_views > 1:
            rng = _epoch_rng(self.seed, self.epoch, item)
            views = torch.as_tensor(rng.integers(0, self.n_views, size=len(spots)))
            return self.features[spots, views]
        return self.features[spots, 0 if self.view is None else self.view]

    def _tokens(self, spots: torch.Tensor, item: int, spot_layout: bool) -> dict[str, torch.Tensor]:
        """The batch's image input: ``image`` features, or ``patches`` for a trainable encoder."""
        if self.patches is None:
            f = self._image(spots, item)
            return {"image": f[None] if spot_layout else f[:, None, :]}
        idx = spots.numpy()
        order = np.argsort(idx, kind="stable")  # increasing rows: sequential reads from a disk store
        arr = np.empty((idx.size, *self.patches.shape[1:]), dtype=np.uint8)
        arr[order] = self.patches[idx[order]]
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        if self.augment and self.random_views:
            from spared_tools.models.image import dihedral

            ks = _epoch_rng(self.seed, self.epoch, item).integers(0, 8, size=idx.size)
            out = torch.empty_like(x)
            for k in np.unique(ks):
                sel = torch.as_tensor(np.flatnonzero(ks == k))
                out[sel] = dihedral(x[sel], int(k))
            x = out
        return {"patches": x.contiguous(), "spot_layout": torch.tensor(spot_layout)}

    def _gene_sample(self, n_items: int, size: int) -> list[torch.Tensor]:
        """One random gene block per item (``sample_genes``): re-drawn every epoch when augmenting."""
        n_genes = self.genes.shape[0]
        rng = np.random.default_rng([self.seed, self.epoch if self.augment else 0, 0, 1])
        size = min(size, n_genes)
        return [
            torch.as_tensor(np.sort(rng.choice(n_genes, size=size, replace=False))) for _ in range(n_items)
        ]

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the epoch's gene/spot blocks and augmentation views (called by :class:`GeneQueryPlan`)."""
        self.epoch = int(epoch)
        self._shuffle_blocks()

    def _shuffle_blocks(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class SpotDataset(_SequenceDataset):
    """Spot-aware batches: one spot sequence (a slide, or a chunk of a long slide) × a block of genes.

    Every batch shares its spot sequence, so no padding is needed and the image projection is computed
    once per batch. Item ``k`` is a whole batch (use ``DataLoader(batch_size=None)``).

    Parameters
    ----------
    features
        Image features ``(n_spots, d)`` or ``(n_spots, n_views, d)``.
    gene_embeddings
        Gene embeddings ``(n_genes, d_gene)``.
    targets
        Scaled targets ``(n_spots, n_genes)`` or ``None`` (prediction).
    sequences
        Spot positions of each sequence (each slide chunk); together they should cover the spots used.
    batch_size
        Number of genes per batch.
    augment
        Draw a random view per spot and re-shuffle the gene blocks every epoch (training only).
    seed
        Seed of the shuffling and view draws (combined with the epoch number).
    view
        Fixed view to use when not augmenting (default 0).
    patches
        uint8 patches ``(n_spots, H, H, 3)`` (array or memmap) used instead of ``features`` (pass
        ``features=None``) when the image encoder is trained too; items then hold ``patches``
        ``(L, 3, H, H)`` (a random dihedral symmetry per spot when augmenting) instead of ``image``.
    sample_genes
        Pair every sequence with one random block of ``batch_size`` genes (re-drawn every epoch when
        augmenting, fixed otherwise) instead of all blocks: one pass of the sequence's patches through
        a trainable encoder per sequence and epoch.
    random_views
        With ``augment``: draw the random views (random dihedral symmetries of the patches); ``False``
        keeps view 0 (the patches as they are) and only re-shuffles the blocks.
    resample
        With ``augment``: every epoch, split each sequence at random into ``ceil(L / resample)`` parts of
        (nearly) equal size, so that a spot meets other spots of its slide in every epoch instead of
        always the same ones; ``None`` keeps the sequences as given.

    Returns
    -------
    Items are dicts with ``image`` ``(1, L, d)``, ``gene`` ``(B, 1, d_gene)``, ``spots`` ``(L,)``,
    ``genes`` ``(B,)`` and, with targets, ``target`` ``(B, L)``.
    """

    def __init__(
        self,
        features: np.ndarray | torch.Tensor | None,
        gene_embeddings: np.ndarray | torch.Tensor,
        targets: np.ndarray | torch.Tensor | None,
        sequences: Sequence[np.ndarray],
        *,
        resample: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(features, gene_embeddings, targets, **base)
        if resample is not None and (isinstance(resample, bool) or int(resample) < 1):
            raise ValueError(f"resample must be a positive integer or None, got {resample!r}.")
        self.resample = None if resample is None else int(resample)
        self.given = [torch.as_tensor(np.ascontiguousarray(s, dtype=np.int64)) for s in sequences if len(s)]
        if not self.given:
            raise ValueError("SpotDataset needs at least one non-empty spot sequence.")
        self.sequences = list(self.given)
        self._shuffle_blocks()

    def _shuffle_blocks(self) -> None:
        n_genes = self.genes.shape[0]
        if self.augment and self.resample is not None:
            rng = np.random.default_rng([self.seed, self.epoch, 0, 2])
            self.sequences = [
                torch.sort(part).values
                for seq in self.given
                for part in torch.as_tensor(rng.permutation(seq.numpy())).tensor_split(
                    math.ceil(len(seq) / self.resample)
                )
            ]
        if self.sample_genes:
            self.items = list(enumerate(self._gene_sample(len(self.sequences), self.batch_size)))
            return
        order = np.arange(n_genes)
        if self.augment:
            order = _epoch_rng(self.seed, self.epoch).permutation(n_genes)
        blocks = [order[i : i + self.batch_size] for i in range(0, n_genes, self.batch_size)]
        self.items = [(s, torch.as_tensor(b)) for s in range(len(self.sequences)) for b in blocks]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        s, genes = self.items[k]
        spots = self.sequences[s]
        out = {
            **self._tokens(spots, k, True),
            "gene": self.genes[genes][:, None, :],
            "spots": spots,
            "genes": genes,
        }
        if self.targets is not None:
            out["target"] = self.targets[spots][:, genes].T.contiguous()
        return out


class GeneDataset(_SequenceDataset):
    """Gene-aware batches: a block of spots × one gene sequence (all genes, or a chunk of a long list).

    Parameters
    ----------
    features, gene_embeddings, targets
        As for :class:`SpotDataset`.
    spots
        Spot positions to iterate over (e.g. the training split).
    max_len
        Maximum gene-sequence length; longer gene lists are split into chunks (shuffled into new
        chunks every epoch when augmenting), never truncated.
    batch_size
        Number of spots per batch.
    augment
        Draw a random view per spot and re-shuffle spot blocks and gene chunks every epoch.
    seed
        Seed of the shuffling and view draws (combined with the epoch number).
    view
        Fixed view to use when not augmenting (default 0).
    patches
        uint8 patches ``(n_spots, H, H, 3)`` used instead of ``features`` (pass ``features=None``) when
        the image encoder is trained too; items then hold ``patches`` ``(B, 3, H, H)`` instead of
        ``image``.
    sample_genes
        Pair every spot block with one random gene sequence of ``max_len`` genes (re-drawn every epoch
        when augmenting, fixed otherwise) instead of all gene chunks.
    random_views
        As for :class:`SpotDataset`.
    n_known
        Prediction with genes the network was not trained on: the first ``n_known`` genes are the
        trained ones, in the chunks they would form alone; each chunk of the others follows the first
        trained chunk, which is their *context*: a gene not trained on attends to the context and to
        itself only (``GeneQueryNet.forward(context=...)``). So no gene's prediction depends on which
        other genes are asked for. ``None``: every gene is a trained one.

    Returns
    -------
    Items are dicts with ``image`` ``(B, 1, d)``, ``gene`` ``(1, L, d_gene)``, ``spots`` ``(B,)``,
    ``genes`` ``(L,)``, ``context`` (the number of leading context genes whose outputs are not this
    item's, 0 without) and, with targets, ``target`` ``(B, L)``.
    """

    def __init__(
        self,
        features: np.ndarray | torch.Tensor | None,
        gene_embeddings: np.ndarray | torch.Tensor,
        targets: np.ndarray | torch.Tensor | None,
        spots: np.ndarray,
        *,
        max_len: int = 1024,
        n_known: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(features, gene_embeddings, targets, **base)
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}.")
        self.spots = np.asarray(spots, dtype=np.int64)
        if self.spots.size == 0:
            raise ValueError("GeneDataset needs at least one spot.")
        self.max_len = int(max_len)
        n_genes = self.genes.shape[0]
        if n_known is not None and not 1 <= n_known <= n_genes:
            raise ValueError(f"n_known must be between 1 and the {n_genes} genes, got {n_known}.")
        if n_known is not None and n_known < n_genes and (self.augment or self.sample_genes):
            raise ValueError("n_known (genes not trained on) is for prediction: no augment, no sample_genes.")
        self.n_known = n_genes if n_known is None else int(n_known)
        self._shuffle_blocks()

    def _shuffle_blocks(self) -> None:
        n_genes = self.genes.shape[0]
        spots, genes = self.spots, np.arange(n_genes)
        if self.augment:
            rng = _epoch_rng(self.seed, self.epoch)
            spots, genes = rng.permutation(spots), rng.permutation(genes)
        blocks = [
            torch.as_tensor(spots[i : i + self.batch_size]) for i in range(0, len(spots), self.batch_size)
        ]
        if self.sample_genes:
            self.items = [
                (b, g, 0) for b, g in zip(blocks, self._gene_sample(len(blocks), self.max_len), strict=True)
            ]
            return
        known, new = genes[: self.n_known], genes[self.n_known :]  # no shuffling here when n_known < n_genes
        chunks = [(c, 0) for c in np.array_split(known, math.ceil(known.size / self.max_len))]
        if new.size:  # each chunk of the others after the first trained chunk, their context
            ctx = chunks[0][0]
            chunks += [
                (np.concatenate([ctx, c]), ctx.size)
                for c in np.array_split(new, math.ceil(new.size / self.max_len))
            ]
        self.items = [(b, torch.as_tensor(c), n) for b in blocks for c, n in chunks]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        spots, genes, context = self.items[k]
        out = {
            **self._tokens(spots, k, False),
            "gene": self.genes[genes][None],
            "spots": spots,
            "genes": genes,
            "context": torch.tensor(context),
        }
        if self.targets is not None:
            out["target"] = self.targets[spots][:, genes].contiguous()
        return out
