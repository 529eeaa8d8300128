"""EfficientNetV2-S (Tan & Le 2021) on sparse layers, as the DASS authors run it on CIFAR-10.

The authors' CIFAR model (``Scripts/effenetv2.py``, used by ``Scripts/get_models.get_model_efficeint`` with
10 classes; the same as ``Hydra/models/effnetv2.py``) is the ImageNet EfficientNetV2-S unchanged: a stride-2
3x3 stem with 24 channels, fused-MBConv stages (3x3 expansion conv, 1x1 projection) then MBConv stages (1x1
expansion, 3x3 depthwise, squeeze-and-excitation, 1x1 projection), SiLU activations, a 1x1 head conv to 1792
channels, global average pooling and a linear classifier. A 32x32 input ends at 1x1 after the five stride-2
steps. Blocks with equal input/output channels at stride 1 add the identity; there is no stochastic depth.

The squeeze-and-excitation bottleneck is ``make_divisible(block input channels // 4, 8)`` wide, as in the
reference; its two linear layers are sparse (with bias) like every other weight layer. ``width`` scales all
channel counts to multiples of 8 (the reference's ``width_mult``), and, unlike the reference (which keeps
1792 below width 1), the head as well, so that small widths give small networks as for MobileNet-v2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import SparseConv2d, SparseLinear
from .reference_init import init_like_reference

# (expansion, output channels, blocks, first stride, squeeze-and-excitation) per stage: EfficientNetV2-S
STAGES_S = [(1, 24, 2, 1, False), (4, 48, 4, 2, False), (4, 64, 4, 2, False), (4, 128, 6, 2, True),
            (6, 160, 9, 1, True), (6, 256, 15, 2, True)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` (at least ``divisor``), rounded up if rounding lost over 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_silu(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [SparseConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.SiLU(inplace=True)]


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = SparseLinear(channels, squeezed)
        self.expand = SparseLinear(squeezed, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
        return x * gate.unsqueeze(-1).unsqueeze(-1)


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, squeeze_excite: bool):
        super().__init__()
        hidden = round(c_in * expansion)
        self.use_residual = stride == 1 and c_in == c_out
        if squeeze_excite:
            layers = conv_bn_silu(c_in, hidden, 1) + conv_bn_silu(hidden, hidden, 3, stride, groups=hidden)
            layers.append(SqueezeExcite(hidden, make_divisible(c_in // 4, 8)))
        else:  # fused: the expansion and the spatial conv are one 3x3 conv
            layers = conv_bn_silu(c_in, hidden, 3, stride)
        layers += [SparseConv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class EfficientNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stages: list = STAGES_S,
                 stem: int = 24, head: int = 1792):
        super().__init__()
        c_in = make_divisible(stem * width)
        layers: list[nn.Module] = [nn.Sequential(*conv_bn_silu(in_channels, c_in, 3, stride=2))]
        for expansion, c, blocks, stride, squeeze_excite in stages:
            c_out = make_divisible(c * width)
            for j in range(blocks):
                layers.append(MBConv(c_in, c_out, stride if j == 0 else 1, expansion, squeeze_excite))
                c_in = c_out
        c_head = head if width == 1.0 else make_divisible(head * width)
        layers.append(nn.Sequential(*conv_bn_silu(c_in, c_head, 1)))
        self.features = nn.Sequential(*layers)
        self.classifier = SparseLinear(c_head, num_classes)
        init_like_reference(self, linear_std=0.001)  # the reference's: linear layers N(0, 0.001^2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
