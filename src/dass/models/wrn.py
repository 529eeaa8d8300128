"""CIFAR wide ResNets (WRN-depth-k, Zagoruyko & Komodakis 2016) on sparse layers.

The architecture of the DASS authors' ``Hydra/models/wrn_cifar.py`` (``wrn_28_10``, ``wrn_28_4``,
``wrn_28_1``, ``wrn_34_10``, ``wrn_40_2``): a 3x3 stem with 16 channels, three groups of (depth - 4) / 6
pre-activation basic blocks with 16k, 32k and 64k channels (the last two groups start at stride 2), then
batch norm, ReLU, global average pooling and a linear classifier. A block whose channel count changes takes
its shortcut through a 1x1 convolution of the pre-activated input; the others add the identity.

The reference also builds a fourth group (``sub_block1``) that its forward pass never uses; its parameters
are not part of the network that runs, so they are left out here (its ``parameters()`` total is larger by them).
The initialisation is the reference's (Kaiming-normal fan-out convs, zero linear bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import SparseConv2d, SparseLinear
from .reference_init import init_like_reference


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = SparseConv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = SparseConv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if c_in != c_out or stride != 1:
            self.shortcut = SparseConv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # the identity carries the block's raw input; a projection shortcut sees the pre-activated one
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"a wide ResNet has depth 6n + 4 (n >= 1), got {depth}")
        per_group = (depth - 4) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)]
        self.stem = SparseConv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks, c_in = [], widths[0]
        for group, c in enumerate(widths[1:]):
            for j in range(per_group):
                blocks.append(PreActBlock(c_in, c, 2 if (group > 0 and j == 0) else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.classifier = SparseLinear(c_in, num_classes)
        init_like_reference(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def wide_resnet(depth: int, widen_factor: int):
    """A builder ``(num_classes, in_channels, width) -> WideResNet`` for the registry."""
    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_channels, width)
    build.__name__ = f"wrn_{depth}_{widen_factor}"
    return build
