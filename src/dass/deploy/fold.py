"""From a pruned training model to an inference graph: masks applied, batch norm folded into convolutions.

``materialize`` replaces every sparse layer by a plain ``nn.Conv2d`` / ``nn.Linear`` holding ``W * M``
(zeros where pruned), so the model no longer needs scores. ``fold_batchnorm`` traces the model with
torch.fx and folds each BatchNorm that directly follows a convolution into that convolution's weight
and bias; folding scales whole output channels, so pruned weights stay exactly zero.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn
from torch.fx.experimental.optimization import fuse

from ..kernels import AvgPool2d, BatchNorm2d, MaxPool2d
from ..sparse.layers import SparseConv2d, SparseLinear


def _plain(module: nn.Module) -> nn.Module:
    weight = module.effective_weight().detach().clone()
    if isinstance(module, SparseConv2d):
        plain: nn.Module = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                     module.padding, module.dilation, module.groups, module.bias is not None,
                                     module.padding_mode)
    else:
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    plain.weight = nn.Parameter(weight, requires_grad=False)
    if module.bias is not None:
        plain.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return plain


@torch.no_grad()
def materialize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode in plain ``torch.nn`` layers: every sparse layer replaced by its masked
    dense equivalent, dass's kernel-backed pooling and batch norm by ``torch.nn``'s."""
    out = copy.deepcopy(model).eval()
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (SparseConv2d, SparseLinear)):
                setattr(module, child_name, _plain(child))
            elif isinstance(child, (MaxPool2d, AvgPool2d, BatchNorm2d)):
                setattr(module, child_name, child.plain())
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """Materialize, trace, and fold Conv2d -> BatchNorm2d pairs (eval-mode statistics)."""
    plain = materialize(model)
    return fuse(plain, inplace=True)
