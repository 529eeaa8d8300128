"""Switching what trains in each pruning phase, and reporting how sparse a model is.

The three HYDRA/DASS phases differ only in which tensors receive gradients and which keep
ratio the sparse layers run at:

* ``dense``    weights train, the layers run unmasked (keep ratio 1);
* ``prune``    scores train at the target keep ratio, sparse-layer weights and biases are frozen;
* ``finetune`` the mask is frozen, weights train under it;
* ``gradual``  weights train while a schedule moves the mask (gradual magnitude pruning);
* ``joint``    weights and scores both train (single-loop search).

Parameters that belong to no sparse layer (batch norm, architecture weights) are left alone:
the caller decides about those.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

from .layers import GlobalMaskGroup, SparseMixin, sparse_layers


class Phase(str, Enum):
    DENSE = "dense"
    PRUNE = "prune"
    FINETUNE = "finetune"
    JOINT = "joint"      # weights and scores both train (single-loop search)
    GRADUAL = "gradual"  # weights train while a pruning schedule moves the mask


BUDGETS = ("uniform", "erk")


def set_sparsity(model: nn.Module, sparsity: float, scope: str = "layer",
                 budget: str = "uniform") -> GlobalMaskGroup | None:
    """Run the sparse layers at ``sparsity`` overall: per layer (each at ``1 - sparsity``, or at its ERK share with
    ``budget="erk"``) or under one global threshold."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"mask scope must be 'layer' or 'global', got {scope!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    layers = [layer for _, layer in sparse_layers(model)]
    for layer in layers:
        if layer.group is not None:
            layer.group.detach()
    keep = 1.0 - sparsity
    if scope == "global" and sparsity > 0:
        return GlobalMaskGroup(layers, keep)
    ratios = erk_keep_ratios(layers, keep) if budget == "erk" and sparsity > 0 else [keep] * len(layers)
    for layer, ratio in zip(layers, ratios):
        layer.keep_ratio = ratio
    return None


def erk_keep_ratios(layers: list[SparseMixin], keep: float) -> list[float]:
    """Erdos-Renyi-Kernel budgets (Evci et al., RigL, 2020): a layer's density is proportional to
    ``sum(shape) / prod(shape)`` of its weight (out, in per group, kernel h, kernel w), capped at 1, scaled so
    that the kept weights total ``keep`` of all. Small layers (pointwise and depthwise convs on few channels,
    1x1 preprocessing, the classifier) keep more than a uniform ratio would leave them: at 90% a uniform
    budget leaves a 3x3 depthwise conv on 8 channels with 7 weights, most channels with none."""
    sizes = [layer.weight.numel() for layer in layers]
    scores = [sum(layer.weight.shape) / layer.weight.numel() for layer in layers]
    total = keep * sum(sizes)
    dense: set[int] = set()
    while True:
        budget = total - sum(sizes[i] for i in dense)
        weight = sum(scores[i] * sizes[i] for i in range(len(layers)) if i not in dense)
        eps = budget / weight if weight > 0 else 0.0
        capped = {i for i in range(len(layers)) if i not in dense and eps * scores[i] >= 1.0}
        if not capped:
            return [1.0 if i in dense else eps * scores[i] for i in range(len(layers))]
        dense |= capped


def init_scores(model: nn.Module) -> None:
    """Scaled-magnitude score initialisation in every sparse layer (start of the prune phase)."""
    for _, layer in sparse_layers(model):
        layer.init_scores_from_weights()


def configure_phase(model: nn.Module, phase: Phase | str) -> None:
    """Set ``requires_grad`` of sparse-layer weights, biases and scores for a phase."""
    phase = Phase(phase)
    train_weights = phase in (Phase.DENSE, Phase.FINETUNE, Phase.JOINT, Phase.GRADUAL)
    train_scores = phase in (Phase.PRUNE, Phase.JOINT)
    for _, layer in sparse_layers(model):
        layer.weight.requires_grad_(train_weights)
        if layer.bias is not None:
            layer.bias.requires_grad_(train_weights)
        layer.scores.requires_grad_(train_scores)


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [layer.scores for _, layer in sparse_layers(model)]


@dataclass(frozen=True)
class LayerDensity:
    name: str
    shape: tuple[int, ...]
    total: int
    nonzero: int

    @property
    def density(self) -> float:
        return self.nonzero / self.total


def density_report(model: nn.Module) -> list[LayerDensity]:
    """Per sparse layer: weight count and how many are kept by the current mask."""
    return [
        LayerDensity(name, tuple(layer.weight.shape), layer.weight.numel(), layer.nonzero_count())
        for name, layer in sparse_layers(model)
    ]


def overall_density(model: nn.Module) -> float:
    report = density_report(model)
    total = sum(r.total for r in report)
    return sum(r.nonzero for r in report) / total if total else 1.0


__all__ = [
    "Phase", "set_sparsity", "init_scores", "configure_phase", "score_parameters",
    "LayerDensity", "density_report", "overall_density", "SparseMixin",
]
