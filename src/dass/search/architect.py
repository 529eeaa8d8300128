"""The architecture (upper-level) step: first order, or second order with a one-step unrolled model.

DASS's point is that the upper level sees the *masked* supernet: the validation loss is computed
with every sparse layer at its current keep ratio. The lower level is whatever trains in the
current phase (the weights in warm-up and fine-tune, the scores while pruning), and the unrolled
step uses that phase's optimizer settings:

    w' = w - xi * (momentum * buf + dL_train/dw + weight_decay * w)
    dL_val(w', a)/da  ~=  d_a L_val(w', a) - xi * [d_a L_train(w+, a) - d_a L_train(w-, a)] / (2 r)

with ``w+- = w +- r v``, ``v = d_w' L_val(w', a)`` and ``r = eps / ||v||`` (DARTS' finite
difference for the Hessian-vector product). Batch-norm running statistics are left as they were
before the step, so the extra forward passes do not skew them. Every gradient is averaged over the ranks
of a data-parallel run (:func:`dass.loop.gradients`), so all ranks take the same step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..kernels import input_gradients_only
from ..loop import GradientOverflow, gradients
from ..runtime.precision import current_precision

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


@dataclass
class LowerLevel:
    """What the lower level trains right now, and how its next SGD step would move it."""

    params: Sequence[nn.Parameter]
    optimizer: torch.optim.SGD

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def virtual_direction(self, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The update direction that ``optimizer.step()`` would take for these gradients (not applied)."""
        group = self.optimizer.param_groups[0]
        momentum, decay = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        out = []
        for p, g in zip(self.params, grads):
            d = torch.zeros_like(p) if g is None else g.clone()
            if decay:
                d.add_(p.detach(), alpha=decay)
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer") if momentum else None
            if buf is not None:
                d.add_(buf, alpha=momentum)
            out.append(d)
        return out


@contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics) after the block."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


class Architect:
    """Computes architecture gradients and applies the architecture optimizer."""

    def __init__(self, model: nn.Module, arch_params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer,
                 order: int = 2, unrolled_eps: float = 0.01, loss_fn: LossFn = cross_entropy_loss):
        if order not in (1, 2):
            raise ValueError(f"architecture step order must be 1 or 2, got {order}")
        self.model = model
        self.arch_params = list(arch_params)
        self.optimizer = optimizer
        self.order = order
        self.unrolled_eps = unrolled_eps
        self.loss_fn = loss_fn
        # an extra architecture loss that depends on the architecture parameters only (e.g. expected cost)
        self.penalty: Callable[[], torch.Tensor] | None = None

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             lower: LowerLevel | None) -> float:
        """One architecture update; returns the validation loss it was computed from. Under fp16 a step whose
        gradients overflow is skipped (the loss scale halves); the second-order step runs in float32."""
        precision = current_precision()
        try:
            with preserved_buffers(self.model):
                if self.order == 1 or lower is None:
                    with precision.autocast():
                        loss, grads = self.first_order_grads(x_val, y_val)
                else:
                    with precision.full():
                        loss, grads = self.second_order_grads(x_train, y_train, x_val, y_val, lower)
        except GradientOverflow:
            precision.update(False)
            return self._skipped_loss(x_val, y_val)
        precision.update(True)
        if self.penalty is not None:
            extra = self._dense(torch.autograd.grad(self.penalty(), self.arch_params, allow_unused=True),
                                self.arch_params)
            grads = [g + e for g, e in zip(grads, extra)]
        for p, g in zip(self.arch_params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def first_order_grads(self, x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        loss = self.loss_fn(self.model, x_val, y_val)
        # Only the alpha gradients: weight gradients are never computed for this backward pass.
        with input_gradients_only():
            grads = gradients(loss, self.arch_params)
        return float(loss.detach()), self._dense(grads, self.arch_params)

    def second_order_grads(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                           y_val: torch.Tensor, lower: LowerLevel) -> tuple[float, list[torch.Tensor]]:
        params = list(lower.params)
        xi = lower.lr
        saved = [p.detach().clone() for p in params]

        train_loss = self.loss_fn(self.model, x_train, y_train)
        g_train = gradients(train_loss, params)
        direction = lower.virtual_direction(g_train)
        try:
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(d, alpha=xi)
            val_loss = self.loss_fn(self.model, x_val, y_val)
            grads = gradients(val_loss, self.arch_params + params)
            d_alpha = self._dense(grads[:len(self.arch_params)], self.arch_params)
            v = self._dense(grads[len(self.arch_params):], params)
            hvp = self._hessian_vector_product(params, saved, v, x_train, y_train)
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved):
                    p.copy_(w)
        return float(val_loss.detach()), [da - xi * h for da, h in zip(d_alpha, hvp)]

    def _skipped_loss(self, x_val: torch.Tensor, y_val: torch.Tensor) -> float:
        """The validation loss of a skipped (overflowed) step, for the log."""
        with torch.no_grad(), preserved_buffers(self.model), current_precision().autocast():
            return float(self.loss_fn(self.model, x_val, y_val))

    @staticmethod
    def _dense(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Gradients with zeros for unused tensors (e.g. normal alphas in a net of only reduction cells)."""
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]

    def _hessian_vector_product(self, params: list[nn.Parameter], saved: list[torch.Tensor],
                                v: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
        if float(norm) == 0.0:
            return [torch.zeros_like(a) for a in self.arch_params]
        r = self.unrolled_eps / float(norm)
        grads_at = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, w, vi in zip(params, saved, v):
                    p.copy_(w).add_(vi, alpha=sign * r)
            loss = self.loss_fn(self.model, x, y)
            with input_gradients_only():
                grads = gradients(loss, self.arch_params)
            grads_at.append(self._dense(grads, self.arch_params))
        return [(gp - gm) / (2 * r) for gp, gm in zip(*grads_at)]
