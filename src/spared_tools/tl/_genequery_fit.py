"""GeneQuery's loops: training (datasets, the Lightning plan, the runner, ensembles, weights kept) and prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from spared_tools._logging import logger
from spared_tools._settings import resolve_device, resolve_precision, settings

from ._genequery_base import _GeneQueryBase
from ._genequery_settings import check_settings
from ._genequery_text import _TextScaler

if TYPE_CHECKING:
    from spared_tools.models._runner import RunOptions

__all__: list[str] = []

#: Penalties of the ridge head (``ridge_blend``), relative to the number of training spots.
RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 8))


class _GeneQueryFit(_GeneQueryBase):
    """Training and prediction of :class:`~spared_tools.tl.GeneQueryModel` (``_fit``, ``_predict``)."""

    def _fit(  # type: ignore[override]
        self, adata: AnnData, Z: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, run: RunOptions
    ) -> None:
        """Train the networks; ``run`` holds how (progress bar, checkpoints, Trainer keywords of :meth:`train`).

        Network ``k`` of the ensemble writes its resumable checkpoints to ``<checkpoint_dir>/member<k>``;
        ``ckpt_path`` resumes an interrupted training of one network (``n_models=1``, checked by
        :meth:`train`) to the same result as an uninterrupted run with the same data, arguments and seed.
        """
        import pytorch_lightning as pl
        import torch
        from torch.utils.data import DataLoader

        from spared_tools.models._runner import run_training
        from spared_tools.models.genequery import (
            GeneDataset,
            GeneQueryPlan,
            SpotDataset,
        )
        from spared_tools.models.image import NETWORK_COLUMNS

        assert self.genes_ is not None and self.scaler_ is not None
        self.image_dim_ = None
        self.gene_dim_ = None
        encoder = None
        patches = None
        if self.finetune:
            patches = self._patches(adata, "(finetune=True) trains its image encoder from the patches")
            encoder = self._fresh_encoder()
            feats = None
            image_dim = int(encoder.out_dim)
        else:
            self.feature_dim_ = self.network_columns_ = None
            raw = self._frozen_features(adata, views=self.augment)  # read and checked once
            self.feature_dim_ = int(raw.shape[-1])
            made = adata.uns.get(self.features_key)
            made = made.get("params", {}) if isinstance(made, dict) else {}
            self.network_columns_ = NETWORK_COLUMNS.get(str(made.get("encoder")))  # None: all columns
            feats, head_input = self._split_features(adata, raw)
            image_dim = int(feats.shape[-1])
            if self.augment and feats.shape[1] == 1:
                logger.info(
                    f"GeneQuery: adata.obsm[{self.features_key!r}] holds one view per spot, so training "
                    "goes without dihedral augmentation; image_features(adata, views=True) computes all 8."
                )
        text = self._embed(self.genes_, adata)
        scaler = _TextScaler.from_base(self.scaler_)
        scaler.fit_text(text)
        self.scaler_ = scaler
        if self.gene_identity:
            from spared_tools.models.genequery import gene_identity_codes

            emb = np.hstack([text, gene_identity_codes(self.genes_, self.gene_identity)])
        else:
            emb = text
        self.image_dim_, self.gene_dim_ = image_dim, int(emb.shape[1])
        self.gene_embeddings_ = emb

        stats: np.ndarray | None = None
        if self.standardize:  # training spots and training genes only
            if feats is not None:
                stats = feats[train_idx] if self.augment else feats[train_idx, :1]  # the views trained on
            else:
                from spared_tools.models.image import encode_patches

                assert encoder is not None and patches is not None
                try:
                    stats = encode_patches(
                        patches[np.sort(train_idx)],
                        encoder,
                        view=0,
                        device=self.device,
                        precision="32",  # the fine-tuned encoder trains in float32
                        desc="input statistics",
                    )
                finally:
                    encoder.cpu()

        # fine-tune mode: patches through the trainable encoder, one gene sample per step
        tuned = {"patches": patches, "sample_genes": True} if self.finetune else {}
        spot_len = self.finetune_spots if self.finetune else None
        gene_len = min(self.max_len, self.finetune_genes) if self.finetune else self.max_len

        def make(idx: np.ndarray, augment: bool, seed: int):
            base = {"augment": augment, "random_views": self.augment, "seed": seed, **tuned}
            if self.mode == "spot":
                sequences = self._sequences(adata, idx, max_len=spot_len)
                batch = self.finetune_genes if self.finetune else self.batch_size
                return SpotDataset(
                    feats, emb, Z, sequences, batch_size=batch, resample=self.spot_resample, **base
                )
            batch = self.finetune_spots if self.finetune else self.batch_size
            return GeneDataset(feats, emb, Z, idx, max_len=gene_len, batch_size=batch, **base)

        epochs = int(self.max_epochs)
        seeds = [int(self.seed) + k for k in range(self.n_models)]
        average_from = epochs // 2 if self.checkpoint == "average" else None
        nets: list[Any] = []
        members: list[dict[str, Any]] = []
        for k, seed in enumerate(seeds):
            if self.n_models > 1:
                logger.info(f"GeneQuery: training network {k + 1} of {self.n_models} (seed {seed}).")
            pl.seed_everything(seed, workers=True, verbose=False)
            net = self._new_net()
            if stats is not None:
                net.set_input_stats(image=stats, gene=emb)
            gen = torch.Generator().manual_seed(seed)
            train_loader = DataLoader(
                make(train_idx, True, seed), batch_size=None, shuffle=True, generator=gen
            )
            val_loader = DataLoader(make(val_idx, False, seed), batch_size=None) if val_idx.size else None
            optim = {k: getattr(self, k) for k in ("lr", "weight_decay", "encoder_lr", "encoder_chunk")}
            plan = GeneQueryPlan(net, encoder=encoder, **optim)
            fit = run_training(
                plan,
                train_loader,
                val_loader,
                monitor="val_loss",
                average_from=average_from,
                validate_restored=average_from is not None,
                eval_modules=encoder is not None,
                max_epochs=epochs,
                accelerator=self.accelerator,
                devices=self.devices,
                strategy=self.strategy,
                precision=self.precision,
                desc="GeneQuery" if self.n_models == 1 else f"GeneQuery {k + 1}/{self.n_models}",
                **run.runner_kwargs(member=k),
            )
            best = fit.best
            average_val = fit.restored_metrics.get("val_loss")
            nets.append(plan.net.cpu().eval())
            if plan.encoder is not None:  # fine-tune mode (n_models == 1)
                self.encoder_ = plan.encoder.module.cpu().eval()
            members.append(
                {
                    "seed": seed,
                    "epochs": best.epochs,
                    "best_epoch": best.best_epoch if best.best_epoch is not None else epochs - 1,
                    "best_val_loss": best.best_score,
                    "selected": "best validation loss"
                    if best.best_state is not None
                    else "last epoch (no validation)",
                }
            )
            if best.average_state is not None:
                members[-1]["selected"] = f"mean of the weights of epochs {average_from}-{epochs - 1}"
                members[-1]["average_val_loss"] = average_val
                if best.best_epoch == epochs - 1 and epochs > 2:
                    logger.info(
                        "GeneQuery: the validation loss was lowest at the last epoch, so training had not "
                        "converged and the mean of the second half's weights lags behind it; more "
                        "max_epochs, or checkpoint='best', keeps up."
                    )
        self.nets_ = nets
        self.net_ = nets[0]
        if encoder is None:
            self.encoder_ = None
        self._encoder_state = None
        # the first network's record at the top level (what n_models=1 gives); every network's in "members"
        self.history_ = {k: v for k, v in members[0].items() if k != "seed"}
        if self.n_models > 1:
            self.history_["members"] = members
        self.ridge_head_ = None
        if self.ridge_blend > 0:
            assert feats is not None  # no ridge head in fine-tune mode (check_settings)
            self._fit_ridge_head(adata, head_input, Z, train_idx, val_idx, raw)
        self.train_params_.update(
            {
                "mode": self.mode,
                "max_epochs": epochs,
                "image_dim": self.image_dim_,
                "finetune": self.finetune,
            }
        )

    def _fit_ridge_head(
        self,
        adata: AnnData,
        F: np.ndarray,
        Z: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        raw: np.ndarray,
    ) -> None:
        """Ridge of the trained genes on ``F``, calibrated to the networks' scale (``ridge_blend``).

        ``F`` is the mean of the views' features ``raw`` ``(n_obs, views, d)``, all columns (the networks
        may read fewer, see ``network_columns_``), followed by their mean over the ``context_rings``, as
        ``tta="features"`` predicts. With several views, each view of a training spot is a sample (that
        view's features followed by their ring mean), as the networks train on one view at a time: the map
        is then fitted to be the same whatever the tissue's orientation (chosen on validation sections,
        ``experiments/results/genequery_head_views.txt`` for gene mode, ``..._views_spot.txt`` for spot
        mode); the penalty is chosen on the validation spots' views' mean.

        Both predictions of the training spots are standardised per gene (mean, standard deviation), so
        the head's weights and intercept are rescaled to give ``m_net + s_net / s_ridge * (ridge - m_ridge)``:
        the mix is the same whatever the penalty's shrinkage.
        """
        from ._baselines import fit_ridge

        assert self.genes_ is not None
        F = F.astype(np.float64, copy=False)
        views = None
        if raw.shape[1] > 1:
            views = (raw.shape[1], lambda j: self._with_context(adata, raw[:, j].astype(np.float64)))
        fit = fit_ridge(
            F,
            Z,
            train_idx,
            val_idx,
            RIDGE_ALPHAS,
            name="GeneQuery ridge head",
            edge_warning=False,
            views=views,
        )
        ridge = fit.predict(F[train_idx])
        # the networks (no head yet) on the whole AnnData, so every training spot gets the image context
        # and spot sequences it trained with; only the training rows are used
        nets = self._predict(adata, list(self.genes_)).astype(np.float64)[train_idx]
        s_r, s_n = ridge.std(0), nets.std(0)
        c = np.divide(s_n, s_r, out=np.zeros_like(s_n), where=s_r > 1e-12)
        self.ridge_head_ = {
            "coef": fit.coef * c,
            "intercept": nets.mean(0) + c * (fit.intercept - ridge.mean(0)),
            "x_mean": fit.x_mean,
            "x_scale": fit.x_scale,
        }
        self.history_["ridge_head"] = {
            "alpha": fit.alpha,
            "criterion": fit.history["criterion"],
            "ridge_blend": self.ridge_blend,
            "samples_per_spot": views[0] if views else 1,  # the views fitted as samples
        }

    def _blend_ridge(
        self, Zs: list[np.ndarray], F: np.ndarray, names: list[str], pos: dict[str, int]
    ) -> None:
        """Mix the ridge head into the trained genes' columns of each array of ``Zs`` (in place).

        ``names`` are the columns of ``Zs``, ``pos`` each trained gene's index in ``genes_``.
        """
        head, w = self.ridge_head_, self.ridge_blend
        if head is None or not w:
            return
        cols = [j for j, g in enumerate(names) if g in pos]
        rows = [pos[names[j]] for j in cols]
        R = (F - head["x_mean"]) / head["x_scale"] @ head["coef"][:, rows] + head["intercept"][rows]
        for Z in Zs:
            Z[..., cols] = (1 - w) * Z[..., cols] + w * R

    # ------------------------------------------------------------------ prediction
    def _inference_bf16(self, device: Any) -> bool:
        """Resolve ``inference_precision`` on ``device``; the value used is kept in ``inference_precision_used_``."""
        self.inference_precision_used_ = resolve_precision(self.inference_precision, device)
        return self.inference_precision_used_ == "bf16"

    def _predict(self, adata: AnnData, genes: list[str]) -> np.ndarray:
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from spared_tools.models.genequery import GeneDataset, SpotDataset

        assert self.genes_ is not None and self.gene_embeddings_ is not None and self.net_ is not None
        if self.finetune:
            feats, F_head = self._tuned_features(adata), None
        else:
            feats, F_head = self._features(adata, views=self.tta)
        F_head = F_head if self.ridge_head_ is not None else None  # float64 already (_split_features)
        pos = {g: i for i, g in enumerate(self.genes_)}
        unseen = list(dict.fromkeys(g for g in genes if g not in pos))
        emb_unseen = self._embed(unseen, adata)
        if unseen:
            logger.info(
                f"GeneQuery: {len(unseen)} genes were not trained on; predicting them from their text."
            )
            if isinstance(self.scaler_, _TextScaler):
                self.scaler_.set_unseen(unseen, emb_unseen)
            if self.gene_identity:  # no code of their own: the training genes' mean code
                mean_code = self.net_.gene_shift[-self.gene_identity :].cpu().numpy()
                emb_unseen = np.hstack([emb_unseen, np.tile(mean_code, (len(unseen), 1))])
        if self.mode == "spot":
            names = list(dict.fromkeys(genes))
        else:
            names = list(self.genes_) + unseen
        lookup = {g: i for i, g in enumerate(names)}
        upos = {g: i for i, g in enumerate(unseen)}
        rows = [self.gene_embeddings_[pos[g]] if g in pos else emb_unseen[upos[g]] for g in names]
        emb = np.stack(rows).astype(np.float32)
        if self.gene_identity and not self.use_identity:  # every gene from its text alone
            emb[:, -self.gene_identity :] = self.net_.gene_shift[-self.gene_identity :].cpu().numpy()
        device = resolve_device(self.device)
        nets = [n.to(device).eval() for n in (self.nets_ or [self.net_])]
        tta = check_settings({"tta": self.tta}, finetune=self.finetune)["tta"]  # also when set as attribute
        if tta == "features" and feats.shape[1] > 1:  # one pass on the mean of the views' features
            feats = feats.mean(1, keepdims=True, dtype=np.float32)
        views = range(feats.shape[1]) if tta else [0]
        bs = max(self.batch_size, 64)
        Zall = np.zeros((adata.n_obs, len(names)), dtype=np.float64)
        # each network's prediction apart, when predict_with_std asks for the ensemble's spread
        Zk = np.zeros((len(nets), *Zall.shape)) if self._member_preds is not None and len(nets) > 1 else None
        show = settings.progress and settings.verbosity >= 2
        bf16 = self._inference_bf16(device)
        ds: Any
        for v in views:
            if self.mode == "spot":
                ds = SpotDataset(
                    feats, emb, None, self._sequences(adata, np.arange(adata.n_obs)), batch_size=bs, view=v
                )
            else:
                # the trained genes in the chunks they form alone; the others after their context
                ds = GeneDataset(
                    feats,
                    emb,
                    None,
                    np.arange(adata.n_obs),
                    max_len=self.max_len,
                    batch_size=bs,
                    view=v,
                    n_known=len(self.genes_),
                )
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for batch in tqdm(
                    DataLoader(ds, batch_size=None), disable=not show, desc="GeneQuery predict"
                ):
                    image, gene = batch["image"].to(device), batch["gene"].to(device)
                    c = int(batch.get("context", 0))  # outputs of the context are those of its own chunk
                    outs = [net(image, gene, context=c)[:, c:].double().cpu().numpy() for net in nets]
                    s, g = batch["spots"].numpy(), batch["genes"].numpy()[c:]
                    cell = np.ix_(s, g)
                    Zall[cell] += sum(o.T if self.mode == "spot" else o for o in outs)
                    for k, o in enumerate(outs if Zk is not None else []):
                        Zk[k][cell] += o.T if self.mode == "spot" else o  # type: ignore[index]
        Zall /= len(views) * len(nets)
        if Zk is not None:
            Zk /= len(views)
        if F_head is not None:
            self._blend_ridge([Zall] if Zk is None else [Zall, Zk], F_head, names, pos)
        cols = [lookup[g] for g in genes]
        if Zk is not None:
            self._member_preds = list(Zk[:, :, cols].astype(np.float32))
        return Zall[:, cols].astype(np.float32)
