"""SD-DARTS (Zhu, Li, Liu & Wang, "Improving Differentiable Architecture Search via Self-Distillation",
arXiv 2302.05629) as a DARTS variant: the supernet of earlier steps teaches the current one.

At the start of every step the supernet (its lower-level variables and its architecture parameters) is
snapshotted; the last K snapshots of the phase are the *voting teachers*. The architecture step is DARTS'
(first or second order); the weight step minimises, on the training batch,

    L = CE(z, y) + lambda * T^2 * KL(p_teach || softmax(z / T)),   p_teach = (1/K') sum_k softmax(z_k / T)

where z is the student's logits, z_k those of snapshot k on the same batch (no gradient) and K' <= K the
snapshots held so far in the phase (the teachers' soft vote: their averaged probabilities). At step t the
teachers are the supernets after steps t-1, ..., t-K, so they differ from the student by the latest
architecture update and the last few weight updates: the term penalises the change of the supernet's
predictions between consecutive steps, which the paper argues lowers the sharpness of the supernet's loss.
``lambda = search.sd_lambda`` (0: exactly DARTS), ``K = search.sd_teachers``, ``T = search.sd_temperature``.

DASS phases: snapshots hold what trains in the phase (weights, scores, or both) and the alphas, and are dropped
when a phase ends (a teacher from another phase would be a differently masked network). The teachers' passes
leave batch-norm running statistics untouched. ``state_dict`` holds the snapshots, so a resumed run continues
exactly.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DassError
from ...loop import apply_gradients, classification_loss
from ...runtime.precision import current_precision
from ..architect import preserved_buffers
from ..lower import LowerOptimizers
from .base import SearchBatch, StepPosition, register_method
from .darts import Darts
from .rarts import loaded_values

Snapshot = tuple[int, dict[str, torch.Tensor]]   # (phase, parameter values by name)


@register_method
class SdDarts(Darts):
    """DARTS whose weight step also distils from the supernets of the previous K steps."""

    name = "sd-darts"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.snapshots: deque[Snapshot] = deque(maxlen=config.sd_teachers)
        self._names: dict[int, str] = {}

    @classmethod
    def check(cls, config) -> None:
        if config.sd_lambda < 0 or config.sd_teachers < 1 or config.sd_temperature <= 0:
            raise DassError(f"sd-darts needs search.sd_lambda >= 0, search.sd_teachers >= 1 and "
                            f"search.sd_temperature > 0, got {config.sd_lambda}, {config.sd_teachers} and "
                            f"{config.sd_temperature}")

    def attach(self, model: nn.Module, architect, space) -> None:
        super().attach(model, architect, space)
        self._names = {id(p): name for name, p in model.named_parameters()}

    def step(self, batch: SearchBatch, lower: LowerOptimizers, position: StepPosition) -> dict[str, float]:
        self.remember(lower, position.phase)
        return super().step(batch, lower, position)

    def remember(self, lower: LowerOptimizers, phase: int) -> None:
        """Snapshot the supernet as it is now (before this step's updates); forget other phases' snapshots."""
        assert self.architect is not None
        while self.snapshots and self.snapshots[0][0] != phase:
            self.snapshots.popleft()
        tracked = [p for params, _, _, _ in lower.groups.values() for p in params] + list(self.architect.arch_params)
        self.snapshots.append((phase, {self._names[id(p)]: p.detach().clone() for p in tracked}))

    def teacher_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' vote: the mean of softmax(z_k / T) over the held snapshots (no gradient)."""
        assert self.model is not None and self.snapshots
        named = dict(self.model.named_parameters())
        total = None
        with torch.no_grad(), preserved_buffers(self.model):
            for _, values in self.snapshots:
                with loaded_values([named[n] for n in values], list(values.values())):
                    with current_precision().autocast():
                        output = self.model(x)
                logits = output[0] if isinstance(output, tuple) else output
                probs = F.softmax(logits.float() / self.config.sd_temperature, dim=1)
                total = probs if total is None else total + probs
        assert total is not None
        return total / len(self.snapshots)

    def distillation_loss(self, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """T^2 * KL(teacher || softmax(logits / T)), averaged over the batch."""
        t = self.config.sd_temperature
        return t * t * F.kl_div(F.log_softmax(logits.float() / t, dim=1), teacher, reduction="batchmean")

    def weight_loss(self, x: torch.Tensor, y: torch.Tensor,
                    teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weight-step loss CE + lambda * distillation, the cross-entropy alone (for the log), and the logits."""
        assert self.model is not None
        with current_precision().autocast():
            ce, logits = classification_loss(self.model(x), y)
            total = ce + self.config.sd_lambda * self.distillation_loss(logits, teacher)
        return total, ce, logits

    def weight_step(self, batch: SearchBatch, lower: LowerOptimizers) -> tuple[float, int]:
        if not self.config.sd_lambda:
            return super().weight_step(batch, lower)   # lambda = 0: DARTS' weight step
        teacher = self.teacher_probs(batch.x_train)
        loss, correct = 0.0, 0
        for params, opt, _, _ in lower.groups.values():
            loss, correct = self._distill_step(params, opt, batch, teacher)
        return loss, correct

    def _distill_step(self, params: Sequence[nn.Parameter], opt: torch.optim.Optimizer, batch: SearchBatch,
                      teacher: torch.Tensor) -> tuple[float, int]:
        """:func:`dass.loop.sgd_step` with the distillation term added to the loss."""
        total, ce, logits = self.weight_loss(batch.x_train, batch.y_train, teacher)
        apply_gradients(total, params, opt, self.config.grad_clip)
        return float(ce.detach()), int((logits.argmax(1) == batch.y_train).sum())

    # -- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"snapshots": [{"phase": phase, "values": dict(values)} for phase, values in self.snapshots]}

    def load_state_dict(self, state: dict) -> None:
        assert self.model is not None
        params = dict(self.model.named_parameters())
        self.snapshots = deque(((int(s["phase"]), {n: v.to(params[n].device) for n, v in s["values"].items()})
                                for s in state.get("snapshots", [])), maxlen=self.config.sd_teachers)


__all__ = ["SdDarts"]
