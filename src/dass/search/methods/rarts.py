"""RARTS (Xue, Qi & Xin, "RARTS: An Efficient First-Order Relaxed Architecture Search Method", arXiv 2008.03901).

Data and network splitting: two copies of the lower-level variables share one architecture. ``w`` (the run's
supernet, what is evaluated, checkpointed as the model and derived from) trains on the training split; ``y``
(held here) trains on the validation split; a relaxation term couples them, and the architecture is updated
from both losses without any second derivative. Per step, in Gauss-Seidel order (each update sees the
others' newest values), on the relaxed objective

    L(w, y, a) = L_val(y, a) + lambda * L_train(w, a) + (beta / 2) * ||w - y||^2

    w <- w - eta_w * (grad_w L_train(w, a) + beta * (w - y))              training batch
    y <- y - eta_y * (grad_y L_val(y, a)   + beta * (y - w))              validation batch (the new w)
    a <- a - eta_a * (grad_a L_val(y, a)   + lambda * grad_a L_train(w, a))   (the new w and y)

``lambda = search.rarts_lambda``, ``beta = search.rarts_beta``. The two weight updates are the gradients of
each network's own loss plus the coupling (lambda scales the training loss in the architecture gradient only,
so with lambda = 1 and beta = 0 the w step is exactly DARTS' weight step). ``eta_w`` and ``eta_y`` are the
phase's lower-level SGD (its learning rate, schedule, momentum, weight decay and gradient clipping; y keeps
its own momentum); the architecture step is the run's architecture optimizer (Adam) plus any cost penalty.

DASS phases: w and y are whatever the lower level trains in the phase (weights, scores, or both); y starts
as a copy of w at the first step of each phase. The val network's batch-norm running statistics are not kept
(its passes leave the supernet's untouched). ``state_dict`` holds y, its momentum and its phase, so a
resumed run continues exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ...errors import DassError
from ...kernels import input_gradients_only
from ...loop import GradientOverflow, classification_loss, gradients
from ...runtime.precision import current_precision
from ..architect import preserved_buffers
from ..lower import LowerOptimizers
from .base import SearchBatch, SearchMethod, StepPosition, register_method


@contextmanager
def loaded_values(params: Sequence[nn.Parameter], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Hold ``values`` in ``params`` for the block, then put the parameters' own values back. Backward passes
    must finish inside the block (autograd refuses tensors changed in place after the forward pass)."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


def _dense(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _apply(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], clip: float | None) -> None:
    """Set ``grads`` as the parameters' gradients, clipped to total norm ``clip`` (as :func:`dass.loop.sgd_step`)."""
    for p, g in zip(params, grads):
        p.grad = g
    if clip:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip)


@register_method
class Rarts(SearchMethod):
    """First order by construction; two networks (train split, val split) coupled by ``search.rarts_beta``."""

    name = "rarts"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.phase: int | None = None                 # the phase y belongs to (None: not started)
        self.y: dict[str, torch.Tensor] = {}          # the val network's lower-level variables, by parameter name
        self.momentum: dict[str, torch.Tensor] = {}   # y's SGD momentum buffers
        self._names: dict[int, str] = {}

    @classmethod
    def check(cls, config) -> None:
        if config.order != 1:
            raise DassError("search method rarts is first order by construction: use --order 1")
        if config.rarts_lambda < 0 or config.rarts_beta < 0:
            raise DassError(f"search.rarts_lambda and search.rarts_beta must not be negative, got "
                            f"{config.rarts_lambda} and {config.rarts_beta}")

    def attach(self, model: nn.Module, architect, space) -> None:
        super().attach(model, architect, space)
        self._names = {id(p): name for name, p in model.named_parameters()}

    # -- the step ---------------------------------------------------------------------------------
    def step(self, batch: SearchBatch, lower: LowerOptimizers, position: StepPosition) -> dict[str, float]:
        self.split(lower, position.phase)
        loss, correct = 0.0, 0
        for params, opt, _, _ in lower.groups.values():
            loss, correct = self.train_network_step(params, opt, batch)
        for params, opt, _, _ in lower.groups.values():
            self.val_network_step(params, opt, lower, batch)
        arch_loss = self.architecture_step(batch, lower)
        return {"arch_loss": arch_loss, "train_loss": loss, "train_correct": correct,
                "train_count": len(batch.y_train)}

    def split(self, lower: LowerOptimizers, phase: int) -> None:
        """Start the val network as a copy of the train network's lower-level variables, once per phase."""
        if self.phase == phase and self.y:
            return
        self.y = {self._names[id(p)]: p.detach().clone() for p in self._lower_params(lower)}
        self.momentum = {}
        self.phase = phase

    def val_values(self, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
        return [self.y[self._names[id(p)]] for p in params]

    def train_network_step(self, params: Sequence[nn.Parameter], opt: torch.optim.Optimizer,
                           batch: SearchBatch) -> tuple[float, int]:
        """w <- w - eta_w (grad_w L_train(w, a) + beta (w - y)) through the phase's optimizer."""
        assert self.model is not None
        precision = current_precision()
        with precision.autocast():
            loss, logits = classification_loss(self.model(batch.x_train), batch.y_train)
        result = float(loss.detach()), int((logits.argmax(1) == batch.y_train).sum())
        try:
            grads = gradients(loss, params)
        except GradientOverflow:
            precision.update(False)
            return result
        beta = self.config.rarts_beta
        if beta:
            grads = [(torch.zeros_like(p) if g is None else g) + beta * (p.detach() - y)
                     for p, g, y in zip(params, grads, self.val_values(params))]
        _apply(params, grads, self.config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        precision.update(True)
        return result

    def val_network_step(self, params: Sequence[nn.Parameter], opt: torch.optim.Optimizer,
                         lower: LowerOptimizers, batch: SearchBatch) -> None:
        """y <- y - eta_y (grad_y L_val(y, a) + beta (y - w)), SGD with the phase optimizer's settings."""
        assert self.model is not None
        precision = current_precision()
        every = self._lower_params(lower)
        try:
            with loaded_values(every, self.val_values(every)), preserved_buffers(self.model):
                with precision.autocast():
                    loss, _ = classification_loss(self.model(batch.x_val), batch.y_val)
                grads = gradients(loss, params)
        except GradientOverflow:
            precision.update(False)
            return
        precision.update(True)
        ys = self.val_values(params)
        beta = self.config.rarts_beta
        grads = [(torch.zeros_like(y) if g is None else g) + beta * (y - p.detach()) if beta else g
                 for p, g, y in zip(params, grads, ys)]
        if self.config.grad_clip:
            present = [g for g in grads if g is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present])) \
                if present else torch.zeros(())
            scale = torch.clamp(self.config.grad_clip / (norm + 1e-6), max=1.0)
            grads = [None if g is None else g * scale for g in grads]
        group = opt.param_groups[0]
        lr, momentum, decay = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        with torch.no_grad():
            for p, g, y in zip(params, grads, ys):
                if g is None:
                    continue
                d = g.add(y, alpha=decay) if decay else g.clone()
                if momentum:
                    name = self._names[id(p)]
                    buf = self.momentum.get(name)
                    if buf is None:
                        buf = self.momentum[name] = d
                    else:
                        buf.mul_(momentum).add_(d)
                    d = buf
                y.sub_(d, alpha=lr)

    def architecture_step(self, batch: SearchBatch, lower: LowerOptimizers) -> float:
        """a <- a - eta_a (grad_a L_val(y, a) + lambda grad_a L_train(w, a)) through the architecture optimizer;
        returns the val network's validation loss."""
        assert self.model is not None and self.architect is not None
        architect, precision = self.architect, current_precision()
        arch = architect.arch_params
        every = self._lower_params(lower)
        try:
            with preserved_buffers(self.model):
                with loaded_values(every, self.val_values(every)):
                    with precision.autocast():
                        val_loss, _ = classification_loss(self.model(batch.x_val), batch.y_val)
                    with input_gradients_only():
                        g_val = _dense(gradients(val_loss, arch), arch)
                grads = g_val
                if self.config.rarts_lambda:
                    with precision.autocast():
                        train_loss, _ = classification_loss(self.model(batch.x_train), batch.y_train)
                    with input_gradients_only():
                        g_train = _dense(gradients(train_loss, arch), arch)
                    grads = [gv + self.config.rarts_lambda * gt for gv, gt in zip(g_val, g_train)]
        except GradientOverflow:
            precision.update(False)
            return float(val_loss.detach())
        precision.update(True)
        if architect.penalty is not None:
            extra = _dense(torch.autograd.grad(architect.penalty(), arch, allow_unused=True), arch)
            grads = [g + e for g, e in zip(grads, extra)]
        for p, g in zip(arch, grads):
            p.grad = g
        architect.optimizer.step()
        architect.optimizer.zero_grad(set_to_none=True)
        return float(val_loss.detach())

    @staticmethod
    def _lower_params(lower: LowerOptimizers) -> list[nn.Parameter]:
        return [p for params, _, _, _ in lower.groups.values() for p in params]

    # -- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"phase": self.phase, "y": dict(self.y), "momentum": dict(self.momentum)}

    def load_state_dict(self, state: dict) -> None:
        assert self.model is not None
        if not state:   # a checkpoint without the method's state (written before any step)
            return
        params = dict(self.model.named_parameters())
        place = lambda values: {n: v.to(params[n].device) for n, v in values.items()}   # noqa: E731
        self.phase = state["phase"]
        self.y, self.momentum = place(state["y"]), place(state["momentum"])


__all__ = ["Rarts", "loaded_values"]
