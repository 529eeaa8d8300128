"""The DARTS search supernet on sparse layers: mixed ops, search cells, architecture weights.

The architecture weights (``alphas_normal``, ``alphas_reduce``) are ordinary parameters of the
module so that checkpoints, ``.to()`` and distributed wrappers treat them like any other tensor;
:meth:`Supernet.arch_parameters` and :meth:`Supernet.weight_parameters` split them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import BatchNorm2d
from ..params import param_roles
from ..sparse import SparseConv2d, SparseLinear
from .genotype import Genotype, derive_genotype
from .mixed import MixedOp, MixedOpFactory, partial_channel_variant
from .ops import PRIMITIVES, FactorizedReduce, ReLUConvBN


@dataclass
class SupernetConfig:
    init_channels: int = 16
    layers: int = 8
    nodes: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    ops: Sequence[str] = field(default_factory=lambda: list(PRIMITIVES))
    in_channels: int = 3
    num_classes: int = 10
    partial_channels: int = 1   # PC-DARTS: ops see 1/K of the channels; K > 1 adds edge normalization


class SearchCell(nn.Module):
    def __init__(self, nodes: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, ops: Sequence[str], mixed_op: MixedOpFactory = MixedOp):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(mixed_op(c, stride, ops))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            if edge_weights is None:
                s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                s = sum(edge_weights[offset + j] * self.edges[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


def num_edges(nodes: int) -> int:
    return sum(2 + i for i in range(nodes))


def reduction_layers(layers: int) -> frozenset[int]:
    """Cells that halve the resolution and double the channels: at 1/3 and 2/3 of the depth."""
    return frozenset({layers // 3, 2 * layers // 3})


class Supernet(nn.Module):
    """The DARTS search supernet. ``mixed_op``: the choice module of every edge (the search method's pick);
    with ``config.partial_channels`` K > 1 it runs on 1/K of the channels and edge weights join the alphas."""

    def __init__(self, config: SupernetConfig, mixed_op: type[MixedOp] = MixedOp):
        super().__init__()
        self.config = config
        c = config.init_channels
        c_curr = config.stem_multiplier * c
        self.stem = nn.Sequential(
            SparseConv2d(config.in_channels, c_curr, 3, padding=1, bias=False),
            BatchNorm2d(c_curr),
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, c
        self.cells = nn.ModuleList()
        edge_op = partial_channel_variant(mixed_op, config.partial_channels)
        reduction_prev = False
        reductions = reduction_layers(config.layers)
        for i in range(config.layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = SearchCell(config.nodes, config.multiplier, c_prev_prev, c_prev, c_curr,
                              reduction, reduction_prev, config.ops, edge_op)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, config.multiplier * c_curr
        self.classifier = SparseLinear(c_prev, config.num_classes)
        k, n = num_edges(config.nodes), len(config.ops)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, n))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, n))
        # PC-DARTS edge normalization: one weight per edge, softmax over each node's incoming edges
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(k)) if config.partial_channels > 1 else None
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(k)) if config.partial_channels > 1 else None

    # -- parameter groups --------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        betas = [self.betas_normal, self.betas_reduce] if self.betas_normal is not None else []
        return [self.alphas_normal, self.alphas_reduce, *betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything but the architecture weights and the pruning scores."""
        return param_roles(self).weights

    def edge_weights(self, betas: torch.Tensor | None) -> torch.Tensor | None:
        """Softmax of the edge weights over the incoming edges of each node (None without PC-DARTS)."""
        if betas is None:
            return None
        parts, start = [], 0
        for i in range(self.config.nodes):
            parts.append(F.softmax(betas[start:start + 2 + i], dim=-1))
            start += 2 + i
        return torch.cat(parts)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        e_normal, e_reduce = self.edge_weights(self.betas_normal), self.edge_weights(self.betas_reduce)
        # NCHW-contiguous activations throughout: with PyTorch's ops, a channels-last batch (a permuted NHWC array)
        # carried its strides into every op and partial-channel slices of it made the backward 5-10x slower
        s0 = s1 = self.stem(x.contiguous())
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return self.classifier(out)

    def genotype(self) -> Genotype:
        with torch.no_grad():
            return derive_genotype(self.alphas_normal, self.alphas_reduce, self.config.ops, self.config.multiplier,
                                   self.edge_weights(self.betas_normal), self.edge_weights(self.betas_reduce))

    def alpha_softmax(self) -> dict[str, list[list[float]]]:
        return {
            "normal": F.softmax(self.alphas_normal.detach(), dim=-1).tolist(),
            "reduce": F.softmax(self.alphas_reduce.detach(), dim=-1).tolist(),
        }
