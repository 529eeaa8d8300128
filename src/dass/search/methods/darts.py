"""DARTS (Liu et al., ICLR 2019) on the sparse supernet: per batch an architecture step, then the lower level."""

from __future__ import annotations

from ...loop import sgd_step
from ..lower import LowerOptimizers
from .base import SearchBatch, SearchMethod, StepPosition, register_method


@register_method
class Darts(SearchMethod):
    """First or second order (``search.order``); the architect sees the masked supernet (DASS)."""

    name = "darts"

    def step(self, batch: SearchBatch, lower: LowerOptimizers, position: StepPosition) -> dict[str, float]:
        arch_loss = self.architecture_step(batch, lower)
        loss, correct = self.weight_step(batch, lower)
        return {"arch_loss": arch_loss, "train_loss": loss, "train_correct": correct,
                "train_count": len(batch.y_train)}

    def architecture_step(self, batch: SearchBatch, lower: LowerOptimizers) -> float:
        """One update of the architecture parameters on the validation batch; returns its loss."""
        assert self.architect is not None
        return self.architect.step(batch.x_train, batch.y_train, batch.x_val, batch.y_val, lower.primary())

    def weight_step(self, batch: SearchBatch, lower: LowerOptimizers) -> tuple[float, int]:
        """One SGD step of every lower-level group on the training batch (weights, scores or both)."""
        assert self.model is not None
        loss, correct = 0.0, 0
        for params, opt, _, _ in lower.groups.values():
            loss, correct = sgd_step(self.model, params, opt, batch.x_train, batch.y_train, self.config.grad_clip)
        return loss, correct


__all__ = ["Darts"]
