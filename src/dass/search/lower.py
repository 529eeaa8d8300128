"""The lower level of the bi-level search: what trains in each phase (weights, scores, or both)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import DassError
from ..loop import LR_SCHEDULES, cosine_lr, cosine_power_lr, set_lr
from ..params import param_roles
from ..runner import PhaseSpec
from ..sparse import Phase
from .architect import LowerLevel

if TYPE_CHECKING:
    from .config import SearchConfig


class LowerOptimizers:
    """The lower-level optimizers of one phase, by name: ``weights``, ``scores``, or both (single loop).

    While pruning (HYDRA), the scores train and so do the parameters outside the sparse layers (batch norm).
    """

    def __init__(self, model: nn.Module, plan: PhaseSpec, s: "SearchConfig"):
        roles = param_roles(model)
        self.groups: dict[str, tuple[list[nn.Parameter], torch.optim.SGD, float, float]] = {}
        if plan.phase in (Phase.DENSE, Phase.FINETUNE, Phase.JOINT):
            weights = [p for p in roles.weights if p.requires_grad]
            opt = torch.optim.SGD(weights, lr=s.weight_lr, momentum=s.weight_momentum, weight_decay=s.weight_decay)
            self.groups["weights"] = (weights, opt, s.weight_lr, s.weight_lr_min)
        if plan.phase in (Phase.PRUNE, Phase.JOINT):
            extra = [p for p in roles.other if p.requires_grad] if plan.phase is Phase.PRUNE else []
            params = roles.scores + extra
            opt = torch.optim.SGD(params, lr=s.score_lr, momentum=s.score_momentum, weight_decay=s.score_weight_decay)
            self.groups["scores"] = (params, opt, s.score_lr, s.score_lr_min)
        self.epochs = plan.epochs
        if s.lr_schedule not in LR_SCHEDULES or s.lr_power < 1:
            raise DassError(f"search.lr_schedule must be one of {', '.join(LR_SCHEDULES)} and search.lr_power >= 1, "
                            f"got {s.lr_schedule!r} and {s.lr_power}")
        self.schedule, self.power = s.lr_schedule, s.lr_power

    def set_epoch(self, epoch: int) -> dict[str, float]:
        """Each group's learning rate for ``epoch`` of the phase: ``search.lr_schedule`` from its base to its
        minimum (cosine, or sharpDARTS' cosine power annealing with ``search.lr_power``)."""
        lrs = {}
        for name, (_, opt, base, minimum) in self.groups.items():
            if self.schedule == "cosine_power":
                lrs[name] = cosine_power_lr(base, minimum, epoch, self.epochs, self.power)
            else:
                lrs[name] = cosine_lr(base, minimum, epoch, self.epochs)
            set_lr(opt, lrs[name])
        return lrs

    def primary(self) -> LowerLevel:
        """The variables the architect unrolls over: the weights where they train, else the scores."""
        params, opt, _, _ = self.groups.get("weights") or self.groups["scores"]
        return LowerLevel(params, opt)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, (_, opt, _, _) in self.groups.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, (_, opt, _, _) in self.groups.items():
            opt.load_state_dict(state[name])
