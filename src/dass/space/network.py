"""The discrete network built from a genotype, on sparse layers (what a search's result is trained as)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import BatchNorm2d
from ..sparse import SparseConv2d, SparseLinear
from .genotype import Genotype
from .ops import FactorizedReduce, ReLUConvBN, build_op
from .supernet import reduction_layers

# The paper's evaluation sizes: (initial channels, cells).
SIZES: dict[str, tuple[int, int]] = {"tiny": (30, 16), "small": (36, 20), "medium": (86, 12), "large": (108, 14)}


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


@dataclass
class NetworkConfig:
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = False
    drop_path: float = 0.0
    stem_multiplier: int = 3
    in_channels: int = 3
    num_classes: int = 10


class Network(nn.Module):
    """Stem, ``layers`` cells with reductions at 1/3 and 2/3 of the depth, optional auxiliary head."""

    def __init__(self, genotype: Genotype, config: NetworkConfig):
        super().__init__()
        genotype.validate()
        self.genotype = genotype
        self.config = config
        self.drop_path_prob = config.drop_path
        c = config.init_channels
        c_curr = config.stem_multiplier * c
        self.stem = nn.Sequential(SparseConv2d(config.in_channels, c_curr, 3, padding=1, bias=False),
                                  BatchNorm2d(c_curr))
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, c
        self.cells = nn.ModuleList()
        reductions = reduction_layers(config.layers)
        self.aux_after = 2 * config.layers // 3
        reduction_prev = False
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
        self.auxiliary = AuxiliaryHead(c_aux, config.num_classes) if config.auxiliary and c_aux else None
        self.classifier = SparseLinear(c_prev, config.num_classes)

    def forward(self, x: torch.Tensor):
        """Logits; in training with an auxiliary head, ``(logits, auxiliary_logits)``."""
        aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_after and self.auxiliary is not None and self.training:
                aux = self.auxiliary(s1)
        logits = self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
        return (logits, aux) if aux is not None else logits
