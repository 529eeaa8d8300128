"""The discrete network built from a genotype, on sparse layers (what a search's result is trained as)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DassError
from ..kernels import BatchNorm2d
from ..sparse import SparseConv2d, SparseLinear
from .genotype import Genotype
from .ops import FactorizedReduce, ReLUConvBN, build_op
from .supernet import reduction_layers

# The paper's evaluation sizes: (initial channels, cells).
SIZES: dict[str, tuple[int, int]] = {"tiny": (30, 16), "small": (36, 20), "medium": (86, 12), "large": (108, 14)}
# The stems: "cifar" (one 3x3 conv at full resolution) and "imagenet" (three stride-2 3x3 convs, 1/8 resolution).
STEMS = ("cifar", "imagenet")
# DARTS's ImageNet network: (initial channels, cells), mobile setting (< 600M multiply-adds at 224 x 224).
IMAGENET_SIZE = (48, 14)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability ``drop_prob``, rescaling the rest."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.indices = [j for _, j in edges]
        self.ops = nn.ModuleList(build_op(name, c, 2 if reduction and j < 2 else 1, affine=True) for name, j in edges)
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            node = 0
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                if self.training and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS auxiliary classifier after the second reduction (input of any size >= 2x2)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            SparseConv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            SparseConv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = SparseLinear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS's ImageNet auxiliary classifier: no batch norm after the 768-channel conv (as the reference).

    At 224 x 224 inputs it sees 7 x 7 maps and pools them as the reference does (5 x 5 windows, stride 2, to
    2 x 2); other input sizes (e.g. Tiny-ImageNet's 64 x 64, 2 x 2 maps) are pooled adaptively to 2 x 2."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)
        self.features = nn.Sequential(
            SparseConv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            SparseConv2d(128, 768, 2, bias=False), nn.ReLU(inplace=True),
        )
        self.classifier = SparseLinear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        h, w = x.shape[-2:]
        x = self.pool(x) if h in (7, 8) and w in (7, 8) else F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


@dataclass
class NetworkConfig:
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = False
    drop_path: float = 0.0
    stem_multiplier: int = 3
    in_channels: int = 3
    num_classes: int = 10
    stem: str = "cifar"              # cifar | imagenet (see STEMS); imagenet ignores stem_multiplier


class Network(nn.Module):
    """Stem, ``layers`` cells with reductions at 1/3 and 2/3 of the depth, optional auxiliary head.

    ``config.stem`` picks DARTS's CIFAR network (``cifar``: one 3x3 conv of ``stem_multiplier * C`` channels at
    full resolution) or its ImageNet network (``imagenet``, DARTS's ``NetworkImageNet``: stem0 = conv3x3 stride 2
    to C/2, BN, ReLU, conv3x3 stride 2 to C, BN; stem1 = ReLU, conv3x3 stride 2, BN; so the cells start at 1/8
    of the input resolution, 28 x 28 at 224 x 224, and end at 1/32, 7 x 7; the first cell reduces its s0 input
    with a FactorizedReduce; the auxiliary head is :class:`AuxiliaryHeadImageNet`). DARTS's ImageNet size is
    :data:`IMAGENET_SIZE` (C = 48, 14 cells)."""

    def __init__(self, genotype: Genotype, config: NetworkConfig):
        super().__init__()
        genotype.validate()
        self.genotype = genotype
        self.config = config
        self.drop_path_prob = config.drop_path
        c = config.init_channels
        if config.stem not in STEMS:
            raise DassError(f"model.stem must be one of {', '.join(STEMS)}, got {config.stem!r}")
        self.imagenet = config.stem == "imagenet"
        if self.imagenet:
            if c < 2 or c % 2:
                raise DassError(f"the imagenet stem needs an even number of initial channels (>= 2), got {c}; "
                                f"set model.init_channels to an even number (DARTS uses {IMAGENET_SIZE[0]})")
            self.stem0 = nn.Sequential(
                SparseConv2d(config.in_channels, c // 2, 3, stride=2, padding=1, bias=False), BatchNorm2d(c // 2),
                nn.ReLU(inplace=False),
                SparseConv2d(c // 2, c, 3, stride=2, padding=1, bias=False), BatchNorm2d(c),
            )
            self.stem1 = ReLUConvBN(c, c, 3, 2, 1)
            c_prev_prev, c_prev, c_curr = c, c, c
            reduction_prev = True        # s0 (stem0's output) has twice the resolution of s1 (stem1's)
        else:
            c_curr = config.stem_multiplier * c
            self.stem = nn.Sequential(SparseConv2d(config.in_channels, c_curr, 3, padding=1, bias=False),
                                      BatchNorm2d(c_curr))
            c_prev_prev, c_prev, c_curr = c_curr, c_curr, c
            reduction_prev = False
        self.cells = nn.ModuleList()
        reductions = reduction_layers(config.layers)
        self.aux_after = 2 * config.layers // 3
        c_aux = None
        for i in range(config.layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = Cell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_after:
                c_aux = c_prev
        head = AuxiliaryHeadImageNet if self.imagenet else AuxiliaryHead
        self.auxiliary = head(c_aux, config.num_classes) if config.auxiliary and c_aux else None
        self.classifier = SparseLinear(c_prev, config.num_classes)

    def forward(self, x: torch.Tensor):
        """Logits; in training with an auxiliary head, ``(logits, auxiliary_logits)``."""
        aux = None
        if self.imagenet:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_after and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
        return (logits, aux) if aux is not None else logits
