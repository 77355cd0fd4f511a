"""EfficientNet-Lite trunks as image-encoder backbones (the modules :mod:`spared_tools.models.image` wraps).

Two read-outs of the same ImageNet network:

* :class:`EfficientNetFeatures` (``"efficientnet-lite0"``): the last feature map (1,280 channels after the
  head convolution), global-average-pooled by :class:`~spared_tools.models.image.ImageEncoder`;
* :class:`EfficientNetStages` (``"efficientnet-lite0-stages"``, the package default): that pooled last
  layer followed by the spatial mean and the spatial standard deviation of the output of the last block
  of each later stage (40, 80, 112, 192 and 320 channels): 1,280 + 744 + 744 = 2,768 features. The
  earlier stages describe texture (nuclei, stroma, density) that the last layer, tuned to ImageNet's
  object classes, keeps little of. On the HER2+ sections ridge regression gains on them, on the
  validation sections (``experiments/results/genequery_layers_probe.txt``) and on the held-out ones;
  GeneQuery's networks read only the first 1,280 columns (the last layer: as the networks' input the
  stages lost on the held-out sections, ``genequery_layers.txt`` and ``docs/differences.md``) and its
  ridge head all of them (``experiments/results/genequery_head_stages.txt``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

#: The last block of each stage whose output :class:`EfficientNetStages` reads (EfficientNet-Lite0's
#: blocks 4, 7, 10, 14 and 15 end the stages of 40, 80, 112, 192 and 320 channels).
STAGE_ENDS = (4, 7, 10, 14, 15)
STAGE_CHANNELS = (40, 80, 112, 192, 320)
HEAD_CHANNELS = 1280


class EfficientNetFeatures(nn.Module):
    """EfficientNet trunk up to the head convolution (1280 channels), without the classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)  # type: ignore[operator]

    @torch.no_grad()
    def fused(self) -> nn.Module:
        """Copy for frozen inference: the same features, with less memory traffic per forward pass.

        Every batch norm is folded into the preceding convolution (~15 % faster); each stride-1
        depthwise convolution pads inside the convolution instead of through a separate zero-padded copy
        of its input (the TensorFlow "same" padding of a stride-1 convolution is symmetric: the same
        arithmetic; bit-identical features on the CPU's channels-last path in
        ``benchmarks/results/features.txt``, equal to float rounding in ``tests/test_encoders.py``); and
        the ReLU6 activations run in place. Together the last two took the 224 px encoder from 47.0 to
        57.5 patches/s on 2 AVX2 cores (25.9 to 28.6 on one) without ``reuse_heap`` (``features.txt``).
        """
        out = copy.deepcopy(self)
        net: Any = out.net
        _fold_bn(net._conv_stem, net._bn0)
        net._bn0 = nn.Identity()
        _fold_bn(net._conv_head, net._bn1)
        net._bn1 = nn.Identity()
        net._swish = nn.ReLU6(inplace=True)
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                _fold_bn(block._expand_conv, block._bn0)
                block._bn0 = nn.Identity()
            _fold_bn(block._depthwise_conv, block._bn1)
            block._bn1 = nn.Identity()
            _fold_bn(block._project_conv, block._bn2)
            block._bn2 = nn.Identity()
            block._depthwise_conv = _pad_inside(block._depthwise_conv)
            block._swish = nn.ReLU6(inplace=True)
        return out.eval()


class EfficientNetStages(EfficientNetFeatures):
    """The pooled last layer, then the spatial mean and standard deviation of each later stage's output.

    Returns ``(B, 2768)``: ``[head mean (1280) | stage means (744) | stage standard deviations (744)]``,
    the stages in the order of :data:`STAGE_CHANNELS`. Statistics are computed in float32 (also under
    bfloat16 autocast); the standard deviation is the population one (0 on the 1 × 1 maps of a 32 px
    patch, the smallest the encoder takes). The trunk runs as ``extract_features`` does, block by block, with the same drop
    connect in training mode (fine-tuning).
    """

    out_dim = HEAD_CHANNELS + 2 * sum(STAGE_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net: Any = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        means, stds = [], []
        rate = net._global_params.drop_connect_rate
        for idx, block in enumerate(net._blocks):
            h = block(h, drop_connect_rate=rate * idx / len(net._blocks) if rate else rate)
            if idx in STAGE_ENDS:
                f = h.float()
                means.append(f.mean(dim=(2, 3)))
                stds.append(f.std(dim=(2, 3), correction=0))
        head = net._swish(net._bn1(net._conv_head(h))).float().mean(dim=(2, 3))
        return torch.cat([head, *means, *stds], dim=1)


def _fold_bn(conv: Any, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into ``conv``: ``bn(conv(x)) == conv'(x)``."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def _pad_inside(conv: Any) -> nn.Module:
    """``conv`` as a plain ``nn.Conv2d`` padding inside the convolution, when its static padding is symmetric.

    The efficientnet-lite package pads with a separate ``nn.ZeroPad2d`` (TensorFlow's "same" padding,
    computed for 224 px): a full copy of the input per convolution. A symmetric pad of ``p`` is a
    convolution's own ``padding=p``; asymmetric ones (stride 2) are kept as they are.
    """
    pad = getattr(conv, "static_padding", None)
    if not isinstance(pad, nn.ZeroPad2d):
        return conv
    left, right, top, bottom = pad.padding
    if not left == right == top == bottom or any(int(p) != 0 for p in conv.padding):
        return conv
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=int(left),
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    plain.weight = conv.weight
    if conv.bias is not None:
        plain.bias = conv.bias
    return plain
