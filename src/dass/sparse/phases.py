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


def set_sparsity(model: nn.Module, sparsity: float, scope: str = "layer") -> GlobalMaskGroup | None:
    """Run every sparse layer at ``1 - sparsity`` kept weights, per layer or under one global threshold."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"mask scope must be 'layer' or 'global', got {scope!r}")
    layers = [layer for _, layer in sparse_layers(model)]
    for layer in layers:
        if layer.group is not None:
            layer.group.detach()
    keep = 1.0 - sparsity
    if scope == "global" and sparsity > 0:
        return GlobalMaskGroup(layers, keep)
    for layer in layers:
        layer.keep_ratio = keep
    return None


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
