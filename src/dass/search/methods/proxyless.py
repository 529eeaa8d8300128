"""ProxylessNAS' sampled paths (Cai et al., ICLR 2019) as a DARTS variant: only one or two ops per edge run.

Each weight step runs one op per edge sampled from softmax(alpha); each architecture step samples two
distinct ops per edge and gates one on, the binary-gate gradient reaching alpha; between steps
(evaluation) each edge runs its most likely op. Only one or two paths per edge hold activations, so
memory no longer grows with the number of candidate ops. Paths are drawn from a generator keyed by the
step's position, so a resumed run draws the same paths.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ContextManager, Iterator

import torch
from torch import nn

from ...data import stream_generator
from ...errors import DassError
from ...space.mixed import MixedOp
from ..lower import LowerOptimizers
from .base import SearchBatch, StepPosition, register_method
from .darts import Darts

PATH_STREAM = 4   # the random stream of path sampling (1-3 are the train, val and eval batches)


class PathSampler:
    """How the sampled mixed ops of one supernet run right now; shared by all of them.

    ``mode``: ``None`` every path, softmax-weighted (DARTS); ``"weights"`` one op per edge sampled from
    softmax(alpha); ``"arch"`` two distinct sampled ops, one gated on; ``"argmax"`` the most likely op.
    """

    def __init__(self) -> None:
        self.mode: str | None = None
        self.generator: torch.Generator | None = None

    @contextmanager
    def paths(self, mode: str | None, generator: torch.Generator | None = None) -> Iterator[None]:
        """Run the block in ``mode``, then return to the previous one."""
        saved = self.mode, self.generator
        self.mode, self.generator = mode, generator or self.generator
        try:
            yield
        finally:
            self.mode, self.generator = saved


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


class SampledMixedOp(MixedOp):
    """A mixed op that runs the paths its :class:`PathSampler` says (every path while none is set)."""

    def __init__(self, channels: int, stride: int, ops) -> None:
        super().__init__(channels, stride, ops)
        self.sampler = PathSampler()

    def mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        mode = self.sampler.mode
        if mode is None or not self.active:
            return super().mix(x, weights)
        w = weights[torch.tensor(self.active)]
        if mode == "argmax" or len(self.active) == 1:
            return self.ops[self.active[int(w.argmax())]](x)
        g = self.sampler.generator   # a CPU generator: draws happen on CPU copies of the (tiny) weights
        if mode == "weights":
            return self.ops[self.active[int(torch.multinomial(w.detach().cpu(), 1, generator=g))]](x)
        a, b = (int(i) for i in torch.multinomial(w.detach().cpu(), 2, replacement=False, generator=g))
        probs = w[[a, b]] / w[[a, b]].sum()
        chosen = int(torch.multinomial(probs.detach().cpu(), 1, generator=g))
        return _BinaryGate.apply(probs, self.ops[self.active[a]](x), self.ops[self.active[b]](x), chosen)


def share_sampler(model: nn.Module) -> PathSampler:
    """One sampler for every sampled mixed op of ``model`` (they switch modes together)."""
    sampler = PathSampler()
    for module in model.modules():
        if isinstance(module, SampledMixedOp):
            module.sampler = sampler
    return sampler


@register_method
class Proxyless(Darts):
    """DARTS with sampled paths and binary gates (first order only)."""

    name = "proxyless"
    mixed_op = SampledMixedOp

    @classmethod
    def check(cls, config) -> None:
        if config.order != 1:
            raise DassError("search method proxyless needs first-order architecture steps (--order 1)")

    def attach(self, model: nn.Module, architect, space) -> None:
        super().attach(model, architect, space)
        self.sampler = share_sampler(model)

    def enter_phase(self) -> None:
        self.sampler.mode = "argmax"   # evaluation between steps uses the most likely paths

    def step(self, batch: SearchBatch, lower: LowerOptimizers, position: StepPosition) -> dict[str, float]:
        self.sampler.generator = stream_generator(position.seed, PATH_STREAM, position.phase, position.epoch,
                                                  position.step)
        return super().step(batch, lower, position)

    def architecture_step(self, batch: SearchBatch, lower: LowerOptimizers) -> float:
        with self.sampler.paths("arch"):
            return super().architecture_step(batch, lower)

    def weight_step(self, batch: SearchBatch, lower: LowerOptimizers) -> tuple[float, int]:
        with self.sampler.paths("weights"):
            return super().weight_step(batch, lower)

    def measuring(self) -> ContextManager[None]:
        return self.sampler.paths(None)
