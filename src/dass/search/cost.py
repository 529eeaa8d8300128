"""A cost-aware architecture objective: the expected nonzero multiply-adds of the cells (ProxylessNAS style).

Each candidate op on each edge has a cost: the multiply-adds its sparse layers perform at the target
sparsity (per-layer top-k keeps ``kept_count(n, 1 - s)`` weights of each layer; under a global threshold,
the current mask's nonzeros). The expected cost of the architecture is the sum over edges of the op
weights (softmax of alpha, times the PC-DARTS edge weight where used) times these costs. The
architecture loss becomes ``val_loss + cost_weight * expected / reference``, with the reference the
expected cost under uniform alphas, so ``cost_weight`` is a dimensionless trade-off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.counting import forward_with_hooks
from ..space import Genotype
from ..space.supernet import Supernet
from ..sparse.layers import SPARSE_TYPES, kept_count, sparse_layers
from ..sparse.phases import erk_keep_ratios

_EDGE_OP = re.compile(r"^cells\.(\d+)\.edges\.(\d+)\.ops\.(\d+)\.")


@torch.no_grad()
def edge_op_costs(model: Supernet, input_shape: tuple[int, int, int], sparsity: float,
                  scope: str = "layer", budget: str = "uniform") -> dict[str, torch.Tensor]:
    """Nonzero multiply-adds per sample of each (edge, op), summed over the cells of each kind (per-layer budgets:
    uniform, or ERK's share of each layer)."""
    layers = [layer for _, layer in sparse_layers(model)]
    keep = dict(zip(map(id, layers), erk_keep_ratios(layers, 1.0 - sparsity) if budget == "erk"
                    else [1.0 - sparsity] * len(layers)))
    k, n = model.alphas_normal.shape
    costs = {"normal": torch.zeros(k, n, dtype=torch.float64), "reduce": torch.zeros(k, n, dtype=torch.float64)}
    kinds = {i: "reduce" if cell.reduction else "normal" for i, cell in enumerate(model.cells)}
    hooks = {}
    for name, module in model.named_modules():
        match = _EDGE_OP.match(name + ".")
        if not match or not isinstance(module, SPARSE_TYPES):
            continue
        cell, edge, op = (int(g) for g in match.groups())

        def hook(mod: nn.Module, inputs, output, key=(kinds[cell], edge, op)) -> None:
            positions = output[0, 0].numel() if output.dim() == 4 else 1
            nonzero = kept_count(mod.weight.numel(), keep[id(mod)]) if scope == "layer" else mod.nonzero_count()
            costs[key[0]][key[1], key[2]] += positions * nonzero   # each kept weight: one MAC per position

        hooks[module] = hook
    forward_with_hooks(model, input_shape, hooks)
    return costs


@dataclass
class CostObjective:
    """The expected-cost term added to the architecture loss."""

    model: Supernet
    costs: dict[str, torch.Tensor]
    weight: float

    def __post_init__(self) -> None:
        self.reference = float(self.expected(uniform=True)) or 1.0

    def expected(self, uniform: bool = False) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for kind, alphas, betas in (("normal", self.model.alphas_normal, self.model.betas_normal),
                                    ("reduce", self.model.alphas_reduce, self.model.betas_reduce)):
            a = torch.zeros_like(alphas) if uniform else alphas
            w = F.softmax(a, dim=-1).double()
            edges = self.model.edge_weights(torch.zeros_like(betas) if uniform and betas is not None else betas)
            if edges is not None:
                w = w * edges.double()[:, None]
            total = total + (w * self.costs[kind]).sum()
        return total

    def penalty(self) -> torch.Tensor:
        """``weight * expected / reference``: differentiable in the architecture parameters."""
        return (self.weight * self.expected() / self.reference).float()


def genotype_cost(genotype: Genotype, costs: dict[str, torch.Tensor], ops: list[str], nodes: int) -> float:
    """Nonzero multiply-adds per sample of the chosen ops, as measured in the supernet's cells."""
    starts = [sum(2 + j for j in range(i)) for i in range(nodes)]
    total = 0.0
    for kind, edges in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        for position, (op, j) in enumerate(edges):
            total += float(costs[kind][starts[position // 2] + j, ops.index(op)])
    return total
