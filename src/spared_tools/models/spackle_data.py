"""SpaCKLE's data side on tensors: neighbourhood batches gathered from arrays, and the masked validation sums.

Tensors only (no AnnData). The metrics are the ones of :func:`spared_tools._kernels.metrics.masked_metrics`,
accumulated batch by batch on the device (and reduced over DDP ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

LossOn = Literal["hidden", "observed", "all"]

#: Metric names reported by :class:`SpackleTrainingPlan` and :func:`spared_tools.tl.evaluate_completion`.


class IndexDataset(torch.utils.data.Dataset):
    """A dataset whose items are row indices (the neighbourhood centres); see :class:`NeighbourhoodCollate`.

    Parameters
    ----------
    indices
        Integer row indices into the arrays held by the collate function.
    """

    def __init__(self, indices: np.ndarray) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])


class NeighbourhoodCollate:
    """Collate function that gathers the neighbourhoods of a list of centre indices on the fly.

    Nothing of size ``n_obs × n_obs`` (or ``n_obs × (1 + K) × g``) is ever built: each batch gathers its own
    ``(B, 1 + K, g)`` block.

    Parameters
    ----------
    values
        ``float32 (n_obs, g)`` standardised expression.
    observed
        ``bool (n_obs, g)`` originally observed entries.
    table
        ``int64 (n_obs, 1 + K)`` neighbour table (``-1`` = absent).
    hidden
        Optional ``bool (n_obs, g)`` entries hidden for evaluation: they are removed from the model's input
        for every token and the batch carries ``target`` = ``hidden`` of the centre spots.
    """

    def __init__(
        self,
        values: np.ndarray | torch.Tensor,
        observed: np.ndarray | torch.Tensor,
        table: np.ndarray | torch.Tensor,
        hidden: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        # numpy storage: pickles as plain bytes for spawned DDP workers; torch views are made per batch
        self._values = np.ascontiguousarray(_numpy(values), dtype=np.float32)
        self._observed = np.ascontiguousarray(_numpy(observed), dtype=bool)
        self._table = np.ascontiguousarray(_numpy(table), dtype=np.int64)
        self._hidden = None if hidden is None else np.ascontiguousarray(_numpy(hidden), dtype=bool)

    @property
    def values(self) -> torch.Tensor:
        return torch.from_numpy(self._values)

    @property
    def observed(self) -> torch.Tensor:
        return torch.from_numpy(self._observed)

    @property
    def table(self) -> torch.Tensor:
        return torch.from_numpy(self._table)

    @property
    def hidden(self) -> torch.Tensor | None:
        return None if self._hidden is None else torch.from_numpy(self._hidden)

    def gather(self, centers: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gather the neighbourhoods of ``centers`` (1-D int64 tensor of row indices).

        Parameters
        ----------
        centers
            Row indices of the centre spots.

        Returns
        -------
        Dict with ``values`` ``(B, L, g)`` float32, ``observed`` ``(B, L, g)`` bool (originally observed
        minus evaluation-hidden entries; False on padding), ``padding`` ``(B, L)`` bool, ``center`` ``(B,)``
        indices, and ``target`` ``(B, g)`` bool (hidden entries of the centres) when ``hidden`` was given.
        """
        idx = self.table[centers]
        padding = idx < 0
        safe = idx.clamp(min=0)
        observed, hidden = self.observed, self.hidden
        known = observed[safe]
        if hidden is not None:
            known = known & ~hidden[safe]
        known = known & ~padding.unsqueeze(-1)
        batch = {
            "values": self.values[safe] * (~padding).unsqueeze(-1),
            "observed": known,
            "padding": padding,
            "center": centers,
        }
        if hidden is not None:
            batch["target"] = hidden[centers] & observed[centers]
        return batch

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        return self.gather(torch.as_tensor(items, dtype=torch.int64))


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class MetricSums:
    """Additive sufficient statistics of the completion metrics (summable over mini-batches and DDP ranks).

    Metrics are computed on the scored entries only (hidden real entries of centre spots):
    ``MSE`` and ``MAE`` over all scored entries; ``PCC-gene`` the mean over genes of the Pearson correlation
    between truth and prediction across the spots where the gene was scored; ``PCC-spot`` the mean over spots
    of the correlation across the genes scored in that spot. Genes/spots with fewer than two scored entries or
    a constant truth or prediction are left out of the mean.

    Parameters
    ----------
    n_genes
        Number of genes.
    device
        Device of the accumulators.
    """

    def __init__(self, n_genes: int, device: torch.device | str = "cpu") -> None:
        z = torch.zeros
        f = torch.float64
        self.sse = z((), dtype=f, device=device)
        self.sae = z((), dtype=f, device=device)
        self.n = z((), dtype=f, device=device)
        # per-gene moments for PCC-gene
        self.g_n = z(n_genes, dtype=f, device=device)
        self.g_x = z(n_genes, dtype=f, device=device)
        self.g_y = z(n_genes, dtype=f, device=device)
        self.g_xx = z(n_genes, dtype=f, device=device)
        self.g_yy = z(n_genes, dtype=f, device=device)
        self.g_xy = z(n_genes, dtype=f, device=device)
        # PCC-spot: sum of per-spot correlations and number of valid spots
        self.s_sum = z((), dtype=f, device=device)
        self.s_n = z((), dtype=f, device=device)

    def fields(self) -> list[torch.Tensor]:
        return [
            self.sse,
            self.sae,
            self.n,
            self.g_n,
            self.g_x,
            self.g_y,
            self.g_xx,
            self.g_yy,
            self.g_xy,
            self.s_sum,
            self.s_n,
        ]

    @torch.no_grad()
    def update(self, truth: torch.Tensor, pred: torch.Tensor, scored: torch.Tensor) -> None:
        """Add a block of ``(n_spots, n_genes)`` truth, prediction and bool scored-entry mask.

        Parameters
        ----------
        truth
            True values (any float dtype).
        pred
            Predicted values, same shape.
        scored
            Bool mask of the entries to score, same shape.
        """
        w = scored.to(torch.float64)
        x = truth.to(torch.float64) * w
        y = pred.to(torch.float64) * w
        d = (x - y) * w
        self.sse += (d * d).sum()
        self.sae += d.abs().sum()
        self.n += w.sum()
        self.g_n += w.sum(0)
        self.g_x += x.sum(0)
        self.g_y += y.sum(0)
        self.g_xx += (x * x).sum(0)
        self.g_yy += (y * y).sum(0)
        self.g_xy += (x * y).sum(0)
        r = _pearson_from_moments(
            w.sum(1), x.sum(1), y.sum(1), (x * x).sum(1), (y * y).sum(1), (x * y).sum(1)
        )
        ok = torch.isfinite(r)
        self.s_sum += r[ok].sum()
        self.s_n += ok.sum()

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every accumulator by ``reduce(accumulator)`` (e.g. a DDP sum over ranks).

        Parameters
        ----------
        reduce
            Function summing a tensor over processes.
        """
        flat = torch.cat([t.reshape(-1) for t in self.fields()])
        flat = reduce(flat)
        pos = 0
        for t in self.fields():
            k = t.numel()
            t.copy_(flat[pos : pos + k].reshape(t.shape))
            pos += k

    def compute(self) -> dict[str, float]:
        """Return ``MSE``, ``MAE``, ``PCC-gene``, ``PCC-spot`` and ``n_scored`` (NaN where undefined)."""
        n = float(self.n)
        r_gene = _pearson_from_moments(self.g_n, self.g_x, self.g_y, self.g_xx, self.g_yy, self.g_xy)
        ok = torch.isfinite(r_gene)
        return {
            "MSE": float(self.sse) / n if n else float("nan"),
            "MAE": float(self.sae) / n if n else float("nan"),
            "PCC-gene": float(r_gene[ok].mean()) if ok.any() else float("nan"),
            "PCC-spot": float(self.s_sum / self.s_n) if float(self.s_n) else float("nan"),
            "n_scored": n,
        }


def _pearson_from_moments(n, sx, sy, sxx, syy, sxy) -> torch.Tensor:
    """Pearson correlation from sums; NaN where fewer than two entries or a constant side."""
    nn_ = n.clamp(min=1)
    cov = sxy - sx * sy / nn_
    vx = sxx - sx * sx / nn_
    vy = syy - sy * sy / nn_
    eps = 1e-12 * (sxx.abs() + syy.abs() + 1.0)
    valid = (n >= 2) & (vx > eps) & (vy > eps)
    r = cov / torch.sqrt(vx.clamp(min=1e-300) * vy.clamp(min=1e-300))
    return torch.where(valid, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))
