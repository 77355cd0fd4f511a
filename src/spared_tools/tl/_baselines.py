"""Baselines for expression prediction from histology, with the :class:`Predictor` API of GeneQuery.

* :class:`MeanPredictor` – every spot gets the training-split mean of each gene (no image).
* :class:`RidgePredictor` – ridge regression on frozen image features (HEST's honest baseline), closed
  form via one SVD, the penalty picked on the validation split (or by generalised cross-validation).
* :class:`LinearHeadPredictor` – an image encoder with a linear multi-gene head (STNet-style), trained
  with PyTorch Lightning, fine-tuning the encoder or on frozen features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from torch import nn

from spared_tools._kernels.metrics import pearson_per_gene
from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_nonnegative_int
from spared_tools.tl._base import register_model
from spared_tools.tl._predictor import Predictor, Scaling

__all__ = ["MeanPredictor", "RidgeFit", "RidgePredictor", "fit_ridge", "ridge_path"]


# --------------------------------------------------------------------------------------------- mean
@register_model("Mean")
class MeanPredictor(Predictor):
    """Predict, for every spot, the mean of each gene over the training spots.

    The floor any image model must beat. It reads no image, so ``predict`` works on any AnnData.

    Parameters
    ----------
    scaling
        Per-gene target scaling (no effect on the result: the mean commutes with affine scaling).
    seed
        Recorded for reproducibility (the predictor is deterministic).
    """

    uses_images = False

    def __init__(self, *, scaling: Scaling = "minmax", seed: int | None = None) -> None:
        super().__init__(scaling=scaling, seed=seed)
        self.mean_: np.ndarray | None = None

    def _fit(
        self, adata: AnnData, Z: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, **kwargs: Any
    ) -> None:
        if kwargs:
            raise TypeError(f"MeanPredictor.train got unexpected options {sorted(kwargs)}.")
        self.mean_ = Z[train_idx].astype(np.float64).mean(axis=0)

    def _predict(self, adata: AnnData, genes: list[str]) -> np.ndarray:
        assert self.mean_ is not None and self.genes_ is not None
        pos = {g: i for i, g in enumerate(self.genes_)}
        row = self.mean_[[pos[g] for g in genes]]
        return np.broadcast_to(row, (adata.n_obs, len(genes))).copy()

    def _state(self) -> dict[str, Any]:
        assert self.mean_ is not None
        return {"mean": torch.from_numpy(np.asarray(self.mean_))}

    def _set_state(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        self.mean_ = state["mean"].numpy()


# --------------------------------------------------------------------------------------------- ridge
def ridge_path(
    X: np.ndarray, Y: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge solutions for several penalties from one thin SVD (no intercept; centre inputs first).

    ``W(α) = V diag(s / (s² + α)) Uᵀ Y`` minimises ``||Y - X W||² + α ||W||²``.

    Parameters
    ----------
    X
        ``(n, p)`` inputs.
    Y
        ``(n, g)`` targets.
    alphas
        Penalties ``α >= 0`` (``α = 0`` gives the minimum-norm least-squares solution).

    Returns
    -------
    ``(U, s, Vt, UtY)`` such that ``W(α) = Vt.T @ ((s / (s² + α))[:, None] * UtY)``.
    """
    U, s, Vt = np.linalg.svd(np.asarray(X, dtype=np.float64), full_matrices=False)
    keep = s > s.max(initial=0.0) * max(X.shape) * np.finfo(np.float64).eps
    U, s, Vt = U[:, keep], s[keep], Vt[keep]
    if any(a < 0 for a in alphas):
        raise ValueError("Ridge penalties must be >= 0.")
    return U, s, Vt, U.T @ np.asarray(Y, dtype=np.float64)


def _ridge_weights(s: np.ndarray, Vt: np.ndarray, UtY: np.ndarray, alpha: float) -> np.ndarray:
    return Vt.T @ ((s / (s**2 + alpha))[:, None] * UtY)


@dataclass
class RidgeFit:
    """A ridge fit of :func:`fit_ridge`: predictions are ``(F - x_mean) / x_scale @ coef + intercept``."""

    coef: np.ndarray
    intercept: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    alpha: float
    history: dict[str, Any]

    def predict(self, F: np.ndarray) -> np.ndarray:
        """Predictions ``(n, g)`` for the inputs ``F`` ``(n, p)``."""
        return (F - self.x_mean) / self.x_scale @ self.coef + self.intercept


def fit_ridge(
    F: np.ndarray,
    Z: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    alphas: Sequence[float],
    *,
    select: Literal["pcc", "mse"] = "pcc",
    name: str = "ridge",
    edge_warning: bool = True,
    views: tuple[int, Callable[[int], np.ndarray]] | None = None,
) -> RidgeFit:
    """Ridge of every column of ``Z`` on ``F``, the penalty chosen on ``val_idx`` (or by GCV without it).

    Inputs are standardised with the training rows' mean and standard deviation, targets centred (the
    intercept is not penalised), the weights for every penalty ``alpha * n_train`` come from one SVD of
    the training inputs (:func:`ridge_path`). With validation rows the penalty maximising their mean
    per-gene Pearson correlation (``select="pcc"``) or minimising their MSE is kept, else the one
    minimising generalised cross-validation on the training rows. A warning (prefixed by ``name``) is
    logged when the choice is an end of the grid (an INFO line with ``edge_warning=False``).

    ``views=(k, view)``: the training samples are the ``k`` views of each training spot instead, each
    with its spot's targets; ``view(j)`` returns view ``j``'s inputs for all rows of ``F``, and ``F``
    must be the views' mean (the validation rows and :meth:`RidgeFit.predict` use it; for a linear map
    that is the mean of the views' predictions). Compared with a fit on the mean, the penalty then also
    shrinks the directions in which a spot's views differ. Solved from one eigendecomposition of a Gram
    matrix, of the stacked rows or of the inputs (:func:`_views_basis`).
    """
    F = np.asarray(F, dtype=np.float64)
    Ytr = Z[train_idx].astype(np.float64)
    y_mean = Ytr.mean(axis=0)
    Yc = Ytr - y_mean
    if any(a < 0 for a in alphas):
        raise ValueError("Ridge penalties must be >= 0.")
    if views is None:
        Xtr = F[train_idx]
        x_mean = Xtr.mean(axis=0)
        x_scale = Xtr.std(axis=0)
        x_scale = np.where(x_scale > 0, x_scale, 1.0)
        _, s, Vt, UtY = ridge_path((Xtr - x_mean) / x_scale, Yc, alphas)
        n, yy = Xtr.shape[0], float((Yc**2).sum())
    else:
        x_mean, x_scale, s, Vt, UtY = _views_basis(F, Yc, train_idx, *views)
        n, yy = views[0] * train_idx.size, views[0] * float((Yc**2).sum())
    scores = []
    if val_idx.size:
        # the validation rows in the SVD's basis, once: each penalty then costs (n_val x r) @ (r x g)
        XvaV = ((F[val_idx] - x_mean) / x_scale) @ Vt.T
        Yva = Z[val_idx].astype(np.float64)
        for a in alphas:
            P = XvaV @ ((s / (s**2 + a * n))[:, None] * UtY) + y_mean
            if select == "pcc":
                r = pearson_per_gene(Yva, P)
                scores.append(float(np.nanmean(r)) if np.isfinite(r).any() else -np.inf)
            else:
                scores.append(-float(((Yva - P) ** 2).mean()))
        criterion = f"validation {select}"
    else:
        # generalised cross-validation: n ||(I - H) y||² / (n - tr H)²
        resid_out = yy - (UtY**2).sum()
        for a in alphas:
            shrink = s**2 / (s**2 + a * n)
            rss = resid_out + (((1.0 - shrink)[:, None] * UtY) ** 2).sum()
            dof = shrink.sum()
            scores.append(-n * rss / max(n - dof, 1e-12) ** 2)
        criterion = "GCV"
    alpha = alphas[int(np.argmax(scores))]
    history = {
        "alphas": list(alphas),
        "scores": [float(v) for v in scores],
        "criterion": criterion,
        "alpha": alpha,
    }
    logger.info(f"{name}: alpha={alpha:g} selected by {criterion}.")
    if len(alphas) > 1 and alpha in (min(alphas), max(alphas)):
        side = "largest" if alpha == max(alphas) else "smallest"
        message = f"{name}: {criterion} picked the {side} penalty of the grid (alpha={alpha:g})"
        if edge_warning:
            logger.warning(f"{message}; the best penalty may lie beyond it: pass a wider alphas= grid.")
        else:
            logger.info(f"{message}.")
    W = _ridge_weights(s, Vt, UtY, alpha * n)
    return RidgeFit(W, y_mean, x_mean, x_scale, alpha, history)


def _views_basis(
    F: np.ndarray, Yc: np.ndarray, train_idx: np.ndarray, k: int, view: Callable[[int], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardisation and ridge basis ``(x_mean, x_scale, s, Vt, UtY)`` of the ``k`` stacked views (:func:`fit_ridge`).

    The stacked training rows' mean is the views' mean ``F``'s. With fewer stacked rows than inputs the
    thin SVD comes from the eigendecomposition of the rows' ``(kn x kn)`` Gram matrix; else from the inputs'
    ``(p x p)`` one, centred, summed one view at a time (memory: one view and ``p x p``) and standardised,
    with ``UtY = diag(1/s) Vt Xᵀ Yc`` where ``Xᵀ Yc = k X̄ᵀ Yc`` (every view of a spot has its targets).
    Directions with an eigenvalue below ``size * eps`` of the largest are dropped.
    """
    x_mean = F[train_idx].mean(axis=0)
    n, p = train_idx.size, F.shape[1]

    def centred(j: int) -> np.ndarray:
        Xj = np.asarray(view(j), dtype=np.float64)
        if Xj.shape != F.shape:
            raise ValueError(
                f"View {j} has inputs of shape {Xj.shape}; expected {F.shape}, as the views' mean."
            )
        return Xj[train_idx] - x_mean

    if k * n < p:
        X = np.concatenate([centred(j) for j in range(k)])  # view-major rows
        var = (X**2).mean(axis=0)
        x_scale = np.where(var > 0, np.sqrt(var), 1.0)
        X /= x_scale
        w, U = np.linalg.eigh(X @ X.T)
        keep = w > w.max(initial=0.0) * k * n * np.finfo(np.float64).eps
        s, U = np.sqrt(w[keep]), U[:, keep]
        return x_mean, x_scale, s, (U.T @ X) / s[:, None], U.T @ np.tile(Yc, (k, 1))
    G = np.zeros((p, p))
    for j in range(k):
        Xj = centred(j)
        G += Xj.T @ Xj
    var = np.diag(G) / (k * n)
    x_scale = np.where(var > 0, np.sqrt(var), 1.0)
    G /= np.outer(x_scale, x_scale)
    w, V = np.linalg.eigh(G)
    keep = w > w.max(initial=0.0) * p * np.finfo(np.float64).eps
    s, Vt = np.sqrt(w[keep]), V[:, keep].T
    XtY = k * (((F[train_idx] - x_mean) / x_scale).T @ Yc)
    return x_mean, x_scale, s, Vt, (Vt @ XtY) / s[:, None]


def _encoder_param(encoder: Any) -> Any:
    if encoder is None or isinstance(encoder, str):
        return encoder
    raise TypeError(
        "A model with a custom image module cannot be saved as JSON parameters: compute the features yourself "
        "(sp.pp.image_features(adata, encoder=module)) and use encoder='precomputed', or save the "
        "module's weights and pass them with load_image_encoder(..., weights=)."
    )


@register_model("Ridge")
class RidgePredictor(Predictor):
    """Ridge regression of every gene on frozen image features (HEST-style baseline).

    Features are standardised with the training mean and standard deviation, targets centred (the
    intercept is not penalised), and the weights obtained in closed form from one SVD of the training
    features for every candidate penalty. The penalty maximising the mean per-gene Pearson correlation
    (or minimising MSE) on the validation spots is kept; without validation spots it is chosen by
    generalised cross-validation on the training spots.

    Parameters
    ----------
    encoder
        A registered encoder name (default ``"efficientnet-lite0-stages"``, the features of
        :func:`spared_tools.pp.image_features`; ``"efficientnet-lite0"`` for the last layer alone), a torch module (see
        :func:`spared_tools.models.image.load_image_encoder`), or ``"precomputed"`` to use the features
        already in ``adata.obsm[features_key]`` (e.g. a pathology foundation model's embeddings).
    alphas
        Candidate penalties, relative to the number of training spots: the penalty is ``alpha * n_train``.
        A warning is logged when the criterion picks the smallest or largest one (widen the grid then).
    select
        Validation criterion: ``"pcc"`` (mean per-gene PCC, the benchmark metric) or ``"mse"``.
    features_key
        ``obsm`` key where image features are cached (or read, for ``encoder="precomputed"``).
    tta
        Average features over the 8 dihedral symmetries of each patch.
    context_rings
        ``0`` (default, HEST-style): regress on each spot's own features. ``k > 0``: on the features
        followed by their mean over the spot and its lattice neighbours within ``k`` rings on the same
        slide (:func:`~spared_tools.pp.context_features`; needs ``obs['array_row']`` /
        ``obs['array_col']``). On HER2+ ``context_rings=1`` (on the mean of the 8 dihedral views'
        features) raised ridge's test HEG on every one of four held-out sections, on average from 0.269 to
        0.306 (``benchmarks/results/genequery_context_average.txt``).
    library_key
        ``obs`` column of slide identifiers for ``context_rings`` (``None``: one slide).
    batch_size
        Patches per forward pass of the encoder (``None``: 8 on CPU, 64 on GPU).
    device
        Torch device for feature extraction (``None``: ``sp.settings.device``).
    patches_key
        Key of the patches from :func:`spared_tools.pp.extract_patches`.
    scaling
        Per-gene target scaling (ridge predictions are equivariant to it).
    seed
        Recorded seed (the fit is deterministic).
    """

    def __init__(
        self,
        *,
        encoder: str | nn.Module | None = "efficientnet-lite0-stages",
        alphas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4),
        select: Literal["pcc", "mse"] = "pcc",
        features_key: str = Key.IMAGE_FEATURES,
        tta: bool = False,
        context_rings: int = 0,
        library_key: str | None = Key.SLIDE,
        batch_size: int | None = None,
        device: str | None = None,
        patches_key: str = Key.PATCHES,
        scaling: Scaling = "minmax",
        seed: int | None = None,
    ) -> None:
        super().__init__(patches_key=patches_key, scaling=scaling, seed=seed)
        self.context_rings = check_nonnegative_int(context_rings, "context_rings")
        self.library_key = library_key
        alphas = [float(a) for a in alphas]
        if not alphas or any(not np.isfinite(a) or a < 0 for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of finite penalties >= 0, got {alphas!r}.")
        if select not in ("pcc", "mse"):
            raise ValueError(f"select must be 'pcc' or 'mse', got {select!r}.")
        self.encoder = encoder
        self.alphas = alphas
        self.select = select
        self.features_key = features_key
        self.tta = bool(tta)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.device = device
        self.uses_images = encoder != "precomputed"
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.x_mean_: np.ndarray | None = None
        self.x_scale_: np.ndarray | None = None
        self.alpha_: float | None = None

    def _params_for_save(self) -> dict[str, Any]:
        params = self.get_params()
        params["encoder"] = _encoder_param(self.encoder)
        return params

    def _features(self, adata: AnnData) -> np.ndarray:
        F = self._own_features(adata)
        if not self.context_rings:
            return F
        from spared_tools.pp import context_features

        return context_features(adata, F, n_rings=self.context_rings, library_key=self.library_key)

    def _own_features(self, adata: AnnData) -> np.ndarray:
        if self.encoder == "precomputed":
            if self.features_key not in adata.obsm:
                raise KeyError(f"encoder='precomputed' needs features in adata.obsm[{self.features_key!r}].")
            F = np.asarray(adata.obsm[self.features_key], dtype=np.float64)
            if F.ndim != 2 or not np.isfinite(F).all():
                raise ValueError(f"adata.obsm[{self.features_key!r}] must be a finite (n_obs, d) matrix.")
            return F
        from spared_tools.pp import image_features

        return np.asarray(
            image_features(
                adata,
                patches_key=self.patches_key,
                encoder=self.encoder,
                batch_size=self.batch_size,
                tta=self.tta,
                device=self.device,
                key_added=self.features_key,
            ),
            dtype=np.float64,
        )

    def _fit(
        self, adata: AnnData, Z: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, **kwargs: Any
    ) -> None:
        if kwargs:
            raise TypeError(f"RidgePredictor.train got unexpected options {sorted(kwargs)}.")
        F = self._features(adata)
        fit = fit_ridge(F, Z, train_idx, val_idx, self.alphas, select=self.select, name="RidgePredictor")
        self.alpha_ = fit.alpha
        self.coef_, self.intercept_ = fit.coef, fit.intercept
        self.x_mean_, self.x_scale_ = fit.x_mean, fit.x_scale
        self.history_ = fit.history

    def _predict(self, adata: AnnData, genes: list[str]) -> np.ndarray:
        assert self.coef_ is not None and self.genes_ is not None
        F = self._features(adata)
        if F.shape[1] != self.coef_.shape[0]:
            raise ValueError(
                f"Image features have {F.shape[1]} dimensions; the model was fit on {self.coef_.shape[0]}."
            )
        pos = {g: i for i, g in enumerate(self.genes_)}
        cols = [pos[g] for g in genes]
        X = (F - self.x_mean_) / self.x_scale_
        return X @ self.coef_[:, cols] + self.intercept_[cols]  # type: ignore[index]

    def _state(self) -> dict[str, Any]:
        assert self.coef_ is not None and self.intercept_ is not None
        assert self.x_mean_ is not None and self.x_scale_ is not None
        arrays = {
            "coef": self.coef_,
            "intercept": self.intercept_,
            "x_mean": self.x_mean_,
            "x_scale": self.x_scale_,
        }
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def _extra_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha_}

    def _set_state(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        self.coef_, self.intercept_ = state["coef"].numpy(), state["intercept"].numpy()
        self.x_mean_, self.x_scale_ = state["x_mean"].numpy(), state["x_scale"].numpy()
        self.alpha_ = float(extra["alpha"])
