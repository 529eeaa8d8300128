"""Mixed ops: the choice module on each edge of a supernet, and the partial-channel variant.

A search method picks the mixed-op class the supernet is built with (NNI's idea of swapping choice
modules): plain DARTS uses :class:`MixedOp`; ProxylessNAS' sampled paths subclass it and override
:meth:`MixedOp.mix`. Partial channels (PC-DARTS) wrap any of them: :func:`partial_channel_variant`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import BatchNorm2d, weighted_sum
from ..kernels.fusion import parallel_outputs
from .ops import build_op, is_pooling


class MixedOp(nn.Module):
    """Softmax-weighted sum of every candidate op on one edge. ``none`` is skipped: it adds exact zeros."""

    def __init__(self, channels: int, stride: int, ops: Sequence[str]):
        super().__init__()
        c = self.op_channels(channels)
        self.op_names = list(ops)
        self.ops = nn.ModuleList()
        self.active: list[int] = []
        for k, name in enumerate(ops):
            op = build_op(name, c, stride, affine=False)
            if is_pooling(name):
                op = nn.Sequential(op, BatchNorm2d(c, affine=False))
            self.ops.append(op)
            if name != "none":
                self.active.append(k)
        self.stride = stride

    def op_channels(self, channels: int) -> int:
        """How many of the edge's channels the candidate ops see."""
        return channels

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.mix(x, weights)

    def mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The edge's output from its ops given the op weights (softmax of alpha)."""
        if not self.active:  # an op set of only 'none'
            return self.ops[0](x) * weights[0]
        return weighted_sum(weights, self.active, parallel_outputs([self.ops[k] for k in self.active], x))


MixedOpFactory = Callable[[int, int, Sequence[str]], MixedOp]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PartialChannels:
    """PC-DARTS (Xu et al. 2020): the ops see only the first 1/K of the channels; the rest bypass the edge
    (max-pooled on reduction edges) and a channel shuffle mixes the two, cutting the search's memory and
    compute about K-fold. A mixin: combine it with a mixed-op class through :func:`partial_channel_variant`."""

    partial: int = 1
    stride: int

    def op_channels(self, channels: int) -> int:
        if channels % self.partial:
            raise ValueError(f"partial channels K={self.partial} must divide the edge's {channels} channels")
        return channels // self.partial

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // self.partial
        out = self.mix(x[:, :c], weights)  # type: ignore[attr-defined]
        rest = x[:, c:]
        if self.stride == 2:
            rest = F.max_pool2d(rest, 2, 2)
        return channel_shuffle(torch.cat([out, rest], dim=1), self.partial)


def partial_channel_variant(base: type[MixedOp], partial: int) -> type[MixedOp]:
    """``base`` running its ops on 1/``partial`` of the channels (``base`` itself for 1)."""
    if partial <= 1:
        return base
    return type(f"PartialChannel{base.__name__}", (PartialChannels, base), {"partial": partial})
