"""CIFAR-style MobileNet-v2 (stride-1 stem, first two stages at stride 1) on sparse layers.

As in the reference CIFAR model (kuangliu/pytorch-cifar ``models/mobilenetv2.py``, which the DASS authors'
``Hydra/models/mobileNet.py`` follows): ReLU activations, and every stride-1 block is residual, through
the identity when its input and output channel counts agree and through a 1x1 convolution + batch norm
(sparse, so pruned like the rest) when they differ. Stride-2 blocks have no shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import SparseConv2d, SparseLinear

# (expansion, output channels, blocks, first stride) per stage, as in MobileNet-v2 with CIFAR strides.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int):
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1
        self.block = nn.Sequential(
            SparseConv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            SparseConv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            SparseConv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and c_in != c_out:
            self.shortcut = nn.Sequential(SparseConv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + self.shortcut(x) if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        def scale(c: int) -> int:  # channel counts stay multiples of 4
            return c if width == 1.0 else max(4, int(round(c * width / 4)) * 4)

        c_in = scale(32)
        layers: list[nn.Module] = [SparseConv2d(in_channels, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in),
                                   nn.ReLU(inplace=True)]
        for expansion, c, blocks, stride in STAGES:
            for j in range(blocks):
                layers.append(InvertedResidual(c_in, scale(c), expansion, stride if j == 0 else 1))
                c_in = scale(c)
        # Unlike the original (which keeps 1280 below width 1), the last conv scales too, so that small
        # widths give small networks: needed to match the parameter budgets of small searched networks.
        c_last = scale(1280)
        layers += [SparseConv2d(c_in, c_last, 1, bias=False), nn.BatchNorm2d(c_last), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = SparseLinear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
