"""VGG-16 with batch norm for 32x32 inputs, on sparse layers.

As the reference CIFAR model (kuangliu/pytorch-cifar ``models/vgg.py``): each 3x3 convolution has a bias
(redundant before batch norm, but part of the reference's parameter count; folding for deployment absorbs
it), five 2x2 max-pools, and one linear classifier on the 512 remaining features.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..sparse import SparseConv2d, SparseLinear

def pool_if_possible(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool, skipped once the map is 1 pixel wide (small inputs run out of pixels before 5 pools)."""
    return F.max_pool2d(x, 2) if x.shape[-1] > 1 and x.shape[-2] > 1 else x


torch.fx.wrap("pool_if_possible")  # a leaf for torch.fx tracing (its branch depends on the input's shape)

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, plan: list = VGG16):
        super().__init__()
        self.stages = nn.ModuleList()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in plan:
            if item == "M":
                self.stages.append(nn.Sequential(*layers))
                layers = []
                continue
            c = max(1, int(round(item * width)))
            layers += [SparseConv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        if layers:
            self.stages.append(nn.Sequential(*layers))
        self.classifier = SparseLinear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = pool_if_possible(stage(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))
