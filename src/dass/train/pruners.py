"""Pruners of final training, as classes chosen by name (``train.pruner``, ``--pruner``).

Torch-Pruning's split: the *mechanism* is shared (every sparse layer keeps the top-k of its scores, per
layer or under one global threshold: :mod:`dass.sparse`); a pruner supplies the *importance* (what the
scores are: learned, or the weight magnitudes) and the *schedule* (how sparse the network is at each
step of the prune phase), and says what trains meanwhile (its :class:`~dass.sparse.Phase`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..registry import Registry
from ..sparse import Phase, init_scores, set_sparsity
from ..sparse.layers import sparse_layers


class Pruner:
    """Base class; subclasses set ``name`` and ``phase`` and are registered with :func:`register_pruner`."""

    name: ClassVar[str] = ""
    phase: ClassVar[Phase] = Phase.PRUNE   # what trains during the prune phase

    def __init__(self, model: nn.Module, sparsity: float, scope: str = "layer", updates: int = 1):
        self.model, self.sparsity, self.scope, self.updates = model, sparsity, scope, updates

    def start(self, fresh: bool, total_steps: int) -> None:
        """The prune phase begins (``fresh``) or resumes; it lasts ``total_steps`` steps."""
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """Called before step ``step`` (counted from the start of the prune phase)."""

    def resume(self, keep_ratios: dict[str, float]) -> None:
        """Restore the schedule's state mid-phase from the checkpointed per-layer keep ratios."""


class Hydra(Pruner):
    """HYDRA (Sehwag et al. 2020), the paper's: scores start as the scaled weight magnitudes and are trained at
    the target sparsity with the weights frozen (straight-through gradient through the top-k mask)."""

    name = "hydra"
    phase = Phase.PRUNE

    def start(self, fresh: bool, total_steps: int) -> None:
        set_sparsity(self.model, self.sparsity, self.scope)
        if fresh:
            init_scores(self.model)


class GradualMagnitude(Pruner):
    """Zhu & Gupta (2017): the weights keep training while the sparsity rises along
    ``s_t = s_f * (1 - (1 - t/T)^3)``, the mask re-derived from the weight magnitudes at ``updates`` evenly
    spaced steps of the prune phase."""

    name = "gmp"
    phase = Phase.GRADUAL

    def start(self, fresh: bool, total_steps: int) -> None:
        self.total = max(total_steps, 1)
        self.every = max(self.total // self.updates, 1)
        if fresh:
            self.update(0)

    def sparsity_at(self, step: int) -> float:
        """The cubic ramp from 0 to the target, in ``updates`` stairs."""
        progress = min((step // self.every + 1) * self.every / self.total, 1.0)
        return self.sparsity * (1.0 - (1.0 - progress) ** 3)

    def before_step(self, step: int) -> None:
        if step > 0 and step % self.every == 0:
            self.update(step)

    @torch.no_grad()
    def update(self, step: int) -> None:
        for _, layer in sparse_layers(self.model):
            layer.init_scores_from_weights()  # scores = scaled |W|: the mask is magnitude pruning
        set_sparsity(self.model, self.sparsity_at(step), self.scope)

    def resume(self, keep_ratios: dict[str, float]) -> None:
        set_sparsity(self.model, 1.0 - min(keep_ratios.values()), self.scope)


PRUNERS: Registry[type[Pruner]] = Registry("pruner")
register_pruner = PRUNERS.register     # class decorator: selectable by ``name`` (``train.pruner``, ``--pruner``)
available_pruners = PRUNERS.names
get_pruner = PRUNERS.get

register_pruner(Hydra)
register_pruner(GradualMagnitude)
