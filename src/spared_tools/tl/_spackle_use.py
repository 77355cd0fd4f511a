"""SpaCKLE's data binding, train / validation split, and what a trained model does (complete, evaluate, save).

The base of :class:`~spared_tools.tl.SpackleModel` (kept apart from the construction and training code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._settings import resolve_device, settings
from spared_tools._validation import check_adata, check_obs_key, check_unique_var_names, slide_labels
from spared_tools.tl._base import FORMAT_VERSION, BaseModel, SavedModel, to_json
from spared_tools.tl._spackle_data import _expression_arrays, _gene_index, _group_offsets, _neighbourhoods

if TYPE_CHECKING:
    from spared_tools.models.spackle import SpackleEncoder

#: Columns of :attr:`SpackleModel.history_` (one row per validation check).
HISTORY_COLUMNS = ["step", "MSE", "MAE", "PCC-gene", "PCC-spot", "n_scored"]


class _SpackleUse(BaseModel):
    """The split, inference and persistence of SpaCKLE (the base of :class:`~spared_tools.tl.SpackleModel`)."""

    adata: AnnData | None
    layer: str | None
    mask_layer: str | None
    library_key: str | None
    geometry: Any
    seed: int
    genes: list[str]
    n_rings: int | None
    ring: np.ndarray
    encoder: SpackleEncoder
    gene_mean: np.ndarray
    gene_std: np.ndarray
    centre_mean: np.ndarray | None
    _trained: bool
    train_info_: dict[str, Any]
    history_: pd.DataFrame
    _table: np.ndarray

    if TYPE_CHECKING:

        def _standardise(self, values: np.ndarray) -> np.ndarray: ...
        def _build_encoder(self) -> None: ...
        @property
        def hparams(self) -> dict[str, Any]: ...

    # ---- data helpers ------------------------------------------------------------------------------------
    def _arrays(self, adata: AnnData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values, observed, table, gene_idx) of ``adata`` for this model (table checked against ``ring``)."""
        check_adata(adata)
        gene_idx = _gene_index(adata, self.genes)
        values, observed = _expression_arrays(adata, self.layer, self.mask_layer, gene_idx)
        if self._table.shape[0] == adata.n_obs and adata is self.adata:
            table = self._table
        else:
            table, ring, _ = _neighbourhoods(adata, self.n_rings, self.geometry, self.library_key)
            if ring.shape != self.ring.shape or np.any(ring != self.ring):
                raise ValueError(
                    f"The lattice of adata gives {len(ring) - 1} neighbour positions per spot at "
                    f"n_rings={self.n_rings}, but the model was built for {len(self.ring) - 1} "
                    "(a different array geometry); SpaCKLE models do not transfer between Visium "
                    "(hexagonal) and legacy-ST (square) data."
                )
        return values, observed, table, gene_idx

    def _bind(
        self, adata: AnnData, layer: str | None, mask_layer: str | None, library_key: str | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bind ``adata`` and its keys (and, before the first training, its genes, lattice and a new encoder).

        Returns ``(values, observed, table)``; on an error the previous binding is kept.
        """
        check_adata(adata)
        check_unique_var_names(adata)
        before = (self.adata, self.layer, self.mask_layer, self.library_key, self._table)
        self.adata, self.layer, self.mask_layer, self.library_key = adata, layer, mask_layer, library_key
        try:
            if not self.is_trained:  # genes, ring count and weights come from the data of the first training
                _expression_arrays(adata, layer, mask_layer, np.arange(adata.n_vars))
                table, ring, n_rings = _neighbourhoods(adata, self.n_rings, self.geometry, library_key)
                self.genes = [str(g) for g in adata.var_names]
                self._table, self.ring, self.n_rings = table, ring, n_rings
                self._build_encoder()
                self.gene_mean = np.zeros(len(self.genes), dtype=np.float32)
                self.gene_std = np.ones(len(self.genes), dtype=np.float32)
            else:
                self._table = self._table[:0]  # recomputed (and checked against ring) for the new data
            values, observed, table, _ = self._arrays(adata)
            self._table = table
        except BaseException:
            self.adata, self.layer, self.mask_layer, self.library_key, self._table = before
            raise
        return values, observed, table

    def _split(
        self,
        adata: AnnData,
        split_key: str | None,
        train_value: str,
        val_value: str,
        val_slides: Sequence[str] | None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Boolean train / val spot masks and a description of how they were chosen."""
        n = adata.n_obs
        slides = (
            adata.obs[self.library_key].astype(str).to_numpy()
            if self.library_key is not None and self.library_key in adata.obs
            else np.full(n, "slide", dtype=object)
        )
        slide_labels(adata, self.library_key)  # validates the slide column
        if val_slides is not None:
            val_slides = [str(s) for s in ([val_slides] if isinstance(val_slides, str) else val_slides)]
            unknown = sorted(set(val_slides) - set(slides))
            if unknown:
                raise KeyError(f"val_slides {unknown} are not slides of adata.obs[{self.library_key!r}].")
            is_val = np.isin(slides, val_slides)
            if split_key is not None and split_key in adata.obs:
                col = check_obs_key(adata, split_key, what="split column").astype(str).to_numpy()
                is_train = (col == train_value) & ~is_val
            else:
                is_train = ~is_val
            how = f"validation slides given: {val_slides}"
        elif split_key is not None and split_key in adata.obs:
            col = check_obs_key(adata, split_key, what="split column").astype(str).to_numpy()
            is_train = col == train_value
            is_val = col == val_value
            how = f"adata.obs[{split_key!r}]: {train_value!r} trains, {val_value!r} validates"
            mixed = [s for s in np.unique(slides) if len(np.unique(col[slides == s])) > 1]
            if mixed:
                logger.warning(
                    f"adata.obs[{split_key!r}] splits {len(mixed)} slide(s) (e.g. {mixed[0]!r}) between "
                    "splits; neighbourhoods are cut at split borders, but spatial leakage between "
                    "neighbouring spots of different splits remains. Split by slide or patient."
                )
        else:
            uniq = np.unique(slides)
            if len(uniq) >= 2:
                rng = np.random.default_rng(self.seed)
                n_val = max(1, int(round(0.2 * len(uniq))))
                chosen = sorted(rng.choice(uniq, size=n_val, replace=False).tolist())
                is_val = np.isin(slides, chosen)
                how = f"no split column: {n_val} of {len(uniq)} slides held out for validation ({chosen})"
            else:
                is_val = np.zeros(n, dtype=bool)
                how = "single slide and no split column: no validation, the last weights are kept"
            is_train = ~is_val
        if not is_train.any():
            raise ValueError(f"No training spots ({how}).")
        return is_train, is_val, how

    # ---- inference ---------------------------------------------------------------------------------------
    def _data(self, adata: AnnData | None) -> AnnData:
        """``adata``, or the AnnData bound by :meth:`train` / :meth:`load` when ``None``."""
        if adata is not None:
            return adata
        if self.adata is None:
            raise ValueError(
                "This SpackleModel holds no AnnData (loaded without one): pass adata, or load it with "
                "SpackleModel.load(dir, adata)."
            )
        return self.adata

    def _predict(
        self,
        values: np.ndarray,
        observed: np.ndarray,
        table: np.ndarray,
        slides: np.ndarray,
        centers: np.ndarray,
        *,
        hidden: np.ndarray | None = None,
        batch_size: int = 256,
        device: str | None = None,
        precision: Literal["32", "bf16"] = "32",
        progress: bool = False,
    ) -> np.ndarray:
        """Predictions (layer units, float32, ``(len(centers), g)``) from standardised neighbourhoods."""
        from spared_tools.models.spackle import NeighbourhoodCollate, predict_centers

        known = observed if hidden is None else observed & ~hidden
        offsets = self._offsets(values, known, slides)
        collate = NeighbourhoodCollate(self._standardise(values - offsets), observed, table, hidden=hidden)
        z = predict_centers(
            self.encoder,
            collate,
            self.ring,
            centers,
            batch_size=batch_size,
            device=resolve_device(device),
            precision=precision,
            progress=progress,
        )
        self.encoder.cpu()
        return z * self.gene_std + self.gene_mean + offsets[np.asarray(centers)]

    def _slides(self, adata: AnnData) -> np.ndarray:
        """Each spot's slide code (``library_key``), the groups of the per-slide centring."""
        return slide_labels(adata, self.library_key)

    def _offsets(self, values: np.ndarray, known: np.ndarray, slides: np.ndarray) -> np.ndarray:
        """Per-slide centring offsets of the model's input (zeros for a model saved without centring)."""
        if self.centre_mean is None:
            return np.zeros(values.shape, dtype=np.float32)
        return _group_offsets(values, known, slides, self.centre_mean)

    def complete(
        self,
        adata: AnnData | None = None,
        *,
        batch_size: int = 256,
        device: str | None = None,
        precision: Literal["32", "bf16"] = "32",
        progress: bool | None = None,
    ) -> np.ndarray:
        """Complete the originally missing entries of every spot.

        Parameters
        ----------
        adata
            Data to complete (default: the AnnData bound by :meth:`train` or :meth:`load`). Must hold the
            model's genes (in any order), the same layers and the same lattice geometry.
        batch_size
            Neighbourhoods per forward pass; memory stays ``O(batch_size × (1 + K) × genes)``.
        device
            Torch device (``None`` → ``sp.settings.device``).
        precision
            ``"32"`` (float32, default) or ``"bf16"`` (bfloat16 autocast: about 3× faster on CPUs with
            AVX-512 BF16 / AMX and on GPUs, predictions differ by ~1 % of a gene's std).
        progress
            Progress bar over batches (``None`` → ``sp.settings.progress`` with verbosity ≥ 2 and more than
            20 batches).

        Returns
        -------
        ``float32 (n_obs, n_vars)`` matrix in ``adata.var_names`` order: the observed entries of ``layer``
        unchanged, the missing ones predicted by SpaCKLE.
        """
        self._require_trained()
        adata = self._data(adata)
        values, observed, table, gene_idx = self._arrays(adata)
        n = adata.n_obs
        if progress is None:
            progress = bool(settings.progress and settings.verbosity >= 2 and n > 20 * batch_size)
        # only spots with a missing entry need a forward pass
        need = np.flatnonzero(~observed.all(1))
        out = values.copy()
        if len(need):
            pred = self._predict(
                values,
                observed,
                table,
                self._slides(adata),
                need,
                batch_size=batch_size,
                device=device,
                precision=precision,
                progress=progress,
            )
            block = out[need]
            miss = ~observed[need]
            block[miss] = pred[miss]
            out[need] = block
        result = np.empty((n, adata.n_vars), dtype=np.float32)
        result[:, gene_idx] = out
        return result

    def evaluate(
        self,
        adata: AnnData | None = None,
        *,
        split_key: str | None = Key.SPLIT,
        eval_value: str = Key.TEST,
        slides: Sequence[str] | None = None,
        mask_frac: float | Sequence[float] = 0.3,
        n_masks: int = 10,
        seed: int | None = None,
        batch_size: int = 256,
        device: str | None = None,
    ) -> pd.DataFrame:
        """Score the model on artificially hidden real entries (the paper's protocol, SpaCKLE only).

        A thin wrapper around :func:`spared_tools.tl.evaluate_completion` with ``methods=("spackle",)``;
        see there for the protocol and the returned columns.

        Parameters
        ----------
        adata
            Data to evaluate on (default: the AnnData bound by :meth:`train` or :meth:`load`).
        split_key
            ``adata.obs`` column whose ``eval_value`` spots are evaluated.
        eval_value
            Label of the evaluated spots in ``split_key``.
        slides
            Evaluate these slides instead.
        mask_frac
            Fraction(s) of the real entries to hide.
        n_masks
            Random masks per fraction.
        seed
            Seed of the masks (``None`` → the model's seed).
        batch_size
            Neighbourhoods per forward pass.
        device
            Torch device.

        Returns
        -------
        One row per (method, mask fraction, mask) with ``MSE``, ``MAE``, ``PCC-gene``, ``PCC-spot`` and
        ``n_hidden``.
        """
        from ._evaluate_completion import evaluate_completion

        adata = self._data(adata)
        return evaluate_completion(
            adata,
            model=self,
            split_key=split_key,
            eval_value=eval_value,
            slides=slides,
            mask_frac=mask_frac,
            n_masks=n_masks,
            methods=("spackle",),
            seed=self.seed if seed is None else seed,
            batch_size=batch_size,
            device=device,
            key_added=None,
        )

    # ---- persistence -------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description of the model (everything but the weights)."""
        return to_json(
            {
                "format_version": FORMAT_VERSION,
                "model": "SpaCKLE",
                "genes": list(self.genes),
                "layer": self.layer,
                "mask_layer": self.mask_layer,
                "library_key": self.library_key,
                "geometry": self.geometry,
                "n_rings": None if self.n_rings is None else int(self.n_rings),
                "ring": [int(r) for r in self.ring],
                "seed": int(self.seed),
                "hparams": dict(self.hparams),
                "is_trained": bool(self.is_trained),
                "train_info": self.train_info_,
                "history": self.history_.to_dict(orient="list"),
            }
        )

    def _to_saved(self) -> SavedModel:
        import torch

        cfg = self.config()
        return SavedModel(
            genes=list(self.genes),
            config={k: v for k, v in cfg.items() if k not in ("format_version", "model", "genes")},
            weights={
                "encoder": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
                "gene_mean": torch.from_numpy(np.asarray(self.gene_mean, dtype=np.float32)),
                "gene_std": torch.from_numpy(np.asarray(self.gene_std, dtype=np.float32)),
                **(
                    {}
                    if self.centre_mean is None
                    else {"centre_mean": torch.from_numpy(np.asarray(self.centre_mean, dtype=np.float32))}
                ),
            },
        )

    @classmethod
    def _from_saved(cls, header: dict[str, Any], weights: dict[str, Any]) -> Any:
        cfg = header["config"]
        make: Any = cls  # SpackleModel: the constructor takes the network's settings
        self = make(
            n_rings=int(cfg["n_rings"]), geometry=cfg["geometry"], seed=int(cfg["seed"]), **cfg["hparams"]
        )
        self.layer = cfg["layer"]
        self.mask_layer = cfg["mask_layer"]
        self.library_key = cfg["library_key"]
        self.genes = list(header["genes"])
        self.ring = np.asarray(cfg["ring"], dtype=np.int64)
        self._build_encoder()
        self.encoder.load_state_dict(weights["encoder"])
        self.encoder.eval()
        self.gene_mean = weights["gene_mean"].numpy().astype(np.float32)
        self.gene_std = weights["gene_std"].numpy().astype(np.float32)
        # models saved before per-slide centring (issue 22) complete as they did
        self.centre_mean = (
            weights["centre_mean"].numpy().astype(np.float32) if "centre_mean" in weights else None
        )
        self._trained = bool(cfg["is_trained"])
        self.train_info_ = dict(cfg.get("train_info") or {})
        self.history_ = pd.DataFrame(cfg.get("history") or {}, columns=HISTORY_COLUMNS)
        return self

    def _attach(self, adata: AnnData) -> None:
        """Bind ``adata`` after :meth:`load`: exactly the model's genes (any order) and the same lattice."""
        _gene_index(adata, self.genes)  # clear error when the genes differ
        table, ring, _ = _neighbourhoods(adata, self.n_rings, self.geometry, self.library_key)
        if ring.shape != self.ring.shape or np.any(ring != self.ring):
            raise ValueError(
                f"adata's lattice gives {len(ring) - 1} neighbour positions per spot at n_rings={self.n_rings}, "
                f"but the saved model expects {len(self.ring) - 1} (a different array geometry)."
            )
        self.adata, self._table = adata, table
