"""Parameter and multiply-add counts, dense and sparse, measured with forward hooks.

Multiply-adds count convolutions and linear layers only (batch norm, pooling and additions are a
few percent of a CNN's work and are not sped up by weight sparsity). A sparse layer's sparse count
is its number of kept weights times the output positions each weight is applied at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..params import param_roles
from ..sparse.layers import SPARSE_TYPES


@dataclass
class Counts:
    params: int
    nonzero_params: int
    macs: int
    sparse_macs: int

    def to_dict(self) -> dict:
        return asdict(self)


def _kept(module: nn.Module) -> int:
    if isinstance(module, SPARSE_TYPES):
        return module.nonzero_count()
    return int(module.weight.numel())


def deployable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters a deployed model needs: not the pruning scores, not architecture weights."""
    return param_roles(model).deployable()


@torch.no_grad()
def count(model: nn.Module, input_shape: tuple[int, ...]) -> Counts:
    """Counts for one sample of ``input_shape`` (C, H, W), with the model's current masks, in eval mode."""
    params = deployable_parameters(model)
    total = sum(p.numel() for _, p in params)
    weight_ids = {}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight_ids[id(module.weight)] = module
    nonzero = sum(_kept(weight_ids[id(p)]) if id(p) in weight_ids else p.numel() for _, p in params)

    macs = sparse = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal macs, sparse
        positions = output[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
        per_position = module.weight.numel() // (module.weight.shape[0] if isinstance(module, nn.Conv2d) else 1)
        out_channels = module.weight.shape[0]
        macs += positions * (per_position * out_channels if isinstance(module, nn.Conv2d) else module.weight.numel())
        sparse += positions * _kept(module)

    forward_with_hooks(model, input_shape, {m: hook for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))})
    return Counts(total, nonzero, macs, sparse)


@torch.no_grad()
def forward_with_hooks(model: nn.Module, input_shape: tuple[int, ...], hooks: dict) -> None:
    """One eval-mode forward pass of a zero sample with ``{module: forward hook}`` attached, then restored."""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
