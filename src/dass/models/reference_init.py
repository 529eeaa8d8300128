"""The weight initialisation of the DASS authors' wide ResNet and EfficientNetV2 models."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_like_reference(model: nn.Module, linear_std: float | None) -> None:
    """The reference initialisation: convs N(0, 2 / (k*k*out channels)) (Kaiming, fan-out), zero biases;
    batch norm 1 and 0; linear layers N(0, linear_std) with zero bias (PyTorch's default weight if None)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.normal_(0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.normal_(0.0, linear_std)
            if m.bias is not None:
                m.bias.zero_()
