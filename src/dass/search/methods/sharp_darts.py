"""sharpDARTS' Max-W weighting of the mixed op (Hundt, Jain & Hager, arXiv 1903.09900) as a DARTS variant.

DARTS weighs each candidate op of an edge by w = softmax(alpha). Max-W shifts those weights so that the
strongest op of the edge always enters with weight one:

    w'_k = 1 - max_j w_j + w_k

(the authors' ``MixedOp.forward`` with ``--weighting_algorithm max_w``, ``cnn/model_search.py``; the maximum is
taken over every op of the edge, ``none`` included, and the gradient flows through it as in their code). The
differences between ops are those of softmax(alpha), but the leading op is never scaled down, so the
supernet's output is closer to the discrete cell's (the paper's "generalization gap" argument). The
architecture is still read from alpha (argmax of alpha = argmax of w'), so derivation is unchanged.

The other two sharpDARTS pieces are options every method can use: the cosine power annealing schedule
(``search.lr_schedule=cosine_power``, ``train.lr_schedule=cosine_power``; :func:`dass.loop.cosine_power_lr`)
and the SharpSepConv ops (:data:`dass.space.ops.SHARP_PRIMITIVES` in ``model.ops``).
"""

from __future__ import annotations

import torch

from ...space.mixed import MixedOp
from .base import register_method
from .darts import Darts


def max_w(weights: torch.Tensor) -> torch.Tensor:
    """Max-W weights of one edge: ``1 - max(w) + w`` (the largest becomes exactly 1)."""
    return 1.0 - weights.max() + weights


class MaxWMixedOp(MixedOp):
    """A mixed op that weighs its ops by :func:`max_w` of the softmax weights instead of the weights themselves."""

    def mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return super().mix(x, max_w(weights))


@register_method
class SharpDarts(Darts):
    """DARTS (first or second order) on a supernet of Max-W mixed ops; composes with every DASS phase."""

    name = "sharp-darts"
    mixed_op = MaxWMixedOp


__all__ = ["MaxWMixedOp", "SharpDarts", "max_w"]
