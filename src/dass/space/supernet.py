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

from ..kernels import BatchNorm2d, depthwise_group, weighted_sum
from ..sparse import SparseConv2d, SparseLinear
from .genotype import Genotype, derive_genotype
from .ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, build_op, hooked, is_pooling


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


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PathSampler:
    """How the mixed ops of a supernet run: all paths, or ProxylessNAS' sampled paths with binary gates.

    ``mode``: ``None`` the softmax-weighted sum of every op (DARTS); ``"weights"`` one op per edge sampled
    from softmax(alpha), run alone (the weight step); ``"arch"`` two distinct ops sampled per edge and one of
    them gated on, with the binary-gate gradient reaching alpha (the architecture step); ``"argmax"`` the
    most likely op per edge (evaluation). Only one or two paths per edge hold activations, so memory no
    longer grows with the number of candidate ops.
    """

    def __init__(self) -> None:
        self.mode: str | None = None
        self.generator: torch.Generator | None = None


class _BinaryGate(torch.autograd.Function):
    """Forward: the gated-on path's output. Backward: dL/dp_k = <dL/dout, o_k> for both sampled paths
    (BinaryConnect), which the chain rule through p = renormalized softmax turns into ProxylessNAS'
    estimator dL/dalpha_i = sum_k dL/dg_k p_k (delta_ik - p_i)."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, out_a: torch.Tensor, out_b: torch.Tensor, chosen: int) -> torch.Tensor:
        ctx.save_for_backward(out_a, out_b)
        ctx.chosen = chosen
        return (out_a if chosen == 0 else out_b).clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_a, out_b = ctx.saved_tensors
        grad_probs = torch.stack([(grad * out_a).sum(), (grad * out_b).sum()])
        return grad_probs, grad if ctx.chosen == 0 else None, grad if ctx.chosen == 1 else None, None


class MixedOp(nn.Module):
    """Softmax-weighted sum of every candidate op on one edge. ``none`` is skipped: it adds exact zeros.

    With ``partial`` K > 1 (PC-DARTS, Xu et al. 2020) the ops see only the first 1/K of the channels; the
    rest bypass the edge (max-pooled on reduction edges) and a channel shuffle mixes the two, cutting the
    memory and compute of the search about K-fold.
    """

    def __init__(self, channels: int, stride: int, ops: Sequence[str], partial: int = 1,
                 sampler: PathSampler | None = None):
        super().__init__()
        self.sampler = sampler or PathSampler()
        if channels % partial:
            raise ValueError(f"partial channels K={partial} must divide the edge's {channels} channels")
        self.partial = partial
        self.op_names = list(ops)
        self.ops = nn.ModuleList()
        self.active: list[int] = []
        for k, name in enumerate(ops):
            op = build_op(name, channels // partial, stride, affine=False)
            if is_pooling(name):
                op = nn.Sequential(op, BatchNorm2d(channels // partial, affine=False))
            self.ops.append(op)
            if name != "none":
                self.active.append(k)
        self.stride = stride

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial > 1:
            c = x.shape[1] // self.partial
            x, rest = x[:, :c], x[:, c:]
        mode = self.sampler.mode
        if mode is not None and self.active:
            out = self._sampled(x, weights, mode)
        else:
            if self.active:   # softmax-weighted sum of the ops' outputs, one pass on CPU
                out = weighted_sum(weights, self.active, self._outputs(x))
            else:  # an op set of only 'none'
                out = self.ops[0](x) * weights[0]
        if self.partial > 1:
            if self.stride == 2:
                rest = F.max_pool2d(rest, 2, 2)
            out = channel_shuffle(torch.cat([out, rest], dim=1), self.partial)
        return out


    def _outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every active op's output. The separable and dilated convs all start with a depthwise conv of
        relu(x): on CPU those run as one kernel call (one padded input, one summed input gradient)."""
        firsts = [k for k in self.active if isinstance(getattr(self.ops[k], "first_conv", None), SparseConv2d)
                  and not hooked(self.ops[k]) and not hooked(self.ops[k].first_conv)]
        convs = [self.ops[k].first_conv for k in firsts]
        ys = depthwise_group(x, [(c.effective_weight(), c.stride, c.padding, c.dilation) for c in convs]) \
            if len(convs) > 1 else None
        if ys is None:
            return [self.ops[k](x) for k in self.active]
        first = dict(zip(firsts, ys))
        return [self.ops[k].after_first(first[k]) if k in first else self.ops[k](x) for k in self.active]

    def _sampled(self, x: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
        active = torch.tensor(self.active)
        w = weights[active]
        if mode == "argmax" or len(self.active) == 1:
            return self.ops[self.active[int(w.argmax())]](x)
        g = self.sampler.generator
        if mode == "weights":
            return self.ops[self.active[int(torch.multinomial(w.detach(), 1, generator=g))]](x)
        a, b = (int(i) for i in torch.multinomial(w.detach(), 2, replacement=False, generator=g))
        probs = w[[a, b]] / w[[a, b]].sum()
        chosen = int(torch.multinomial(probs.detach(), 1, generator=g))
        return _BinaryGate.apply(probs, self.ops[self.active[a]](x), self.ops[self.active[b]](x), chosen)


class SearchCell(nn.Module):
    def __init__(self, nodes: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, ops: Sequence[str], partial: int = 1,
                 sampler: PathSampler | None = None):
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
                self.edges.append(MixedOp(c, stride, ops, partial, sampler))

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
    def __init__(self, config: SupernetConfig):
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
        self.sampler = PathSampler()   # shared by every mixed op; see PathSampler for the modes
        reduction_prev = False
        reductions = reduction_layers(config.layers)
        for i in range(config.layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = SearchCell(config.nodes, config.multiplier, c_prev_prev, c_prev, c_curr,
                              reduction, reduction_prev, config.ops, config.partial_channels, self.sampler)
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
        return [p for name, p in self.named_parameters()
                if not name.startswith(("alphas_", "betas_")) and not name.endswith("scores")]

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
