"""Fast paths for the DARTS ops, chosen here so that the search space stays plain PyTorch.

Three fusions, each with the plain computation beside it (timm's "fast path inside the layer" idea):

* :func:`relu_conv`: ``conv(relu(x))`` with the ReLU fused into a sparse convolution's kernel;
* :func:`parallel_outputs`: every candidate op of a mixed edge on one input, where the depthwise
  convolutions that several ops apply first to ``relu(x)`` run as one kernel call (one padded input,
  one summed input gradient);
* :func:`offset_pair_conv`: factorized reduction's two stride-2 1x1 convolutions (the second shifted by
  one pixel) as stride-1 convolutions of subsampled inputs, ReLU fused.

A module with forward hooks (MAC counting, the cost model) is always called as a module, so hooks see it.
Ops are recognised by structure, not by class: a chain of ``nn.Sequential`` whose first two members are a
ReLU and a depthwise convolution with ``effective_weight()`` (a sparse layer).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .ops import conv2d, depthwise_group, subsample


def hooked(module: nn.Module) -> bool:
    """Whether calling the module runs hooks: fused paths that skip the module call are not taken then."""
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _fusable_conv(conv: nn.Module) -> bool:
    return callable(getattr(conv, "effective_weight", None)) and not hooked(conv)


def relu_conv(relu: nn.Module, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(relu(x))``; a sparse conv takes the ReLU fused into its kernel (exported plain convs do not)."""
    if _fusable_conv(conv):
        return conv(x, relu_input=True)
    return conv(relu(x))


def _split_first(op: nn.Module) -> tuple[nn.Module, list[nn.Module]] | None:
    """``(depthwise conv, modules after it)`` for an op that starts ReLU -> depthwise conv, else None."""
    if not isinstance(op, nn.Sequential) or hooked(op) or len(op) == 0:
        return None
    head = op[0]
    if isinstance(head, nn.ReLU) and len(op) >= 2:
        conv = op[1]
        if isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels > 1 and _fusable_conv(conv):
            return conv, list(op)[2:]
        return None
    inner = _split_first(head)
    return None if inner is None else (inner[0], inner[1] + list(op)[1:])


def _run_chain(modules: Sequence[nn.Module], y: torch.Tensor) -> torch.Tensor:
    for m in modules:
        y = m(y)
    return y


def parallel_outputs(ops: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """``[op(x) for op in ops]``, with the leading depthwise convs of relu(x) batched into one kernel call."""
    split = [_split_first(op) for op in ops]
    firsts = [k for k, s in enumerate(split) if s is not None]
    convs = [split[k][0] for k in firsts]
    ys = depthwise_group(x, [(c.effective_weight(), c.stride, c.padding, c.dilation) for c in convs]) \
        if len(convs) > 1 else None
    if ys is None:
        return [op(x) for op in ops]
    first = dict(zip(firsts, ys))
    return [_run_chain(split[k][1], first[k]) if k in first else op(x) for k, op in enumerate(ops)]


def offset_pair_conv(x: torch.Tensor, relu: nn.Module, conv_a: nn.Module, conv_b: nn.Module,
                     pad: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``[conv_a(y), conv_b(y[:, :, 1:, 1:])]`` with ``y = pad(relu(x))``, for two stride-2 1x1 convs.

    Fused: each is a stride-1 conv of every other pixel (even, then odd rows and columns) of ``pad(x)``, the
    ReLU in the kernel (``pad`` adds zeros, which commutes with it). ``pad`` is the caller's (a torch.fx leaf
    there)."""
    if _fusable_conv(conv_a) and _fusable_conv(conv_b):
        x = pad(x)
        return [conv2d(subsample(x, 2, offset), conv.effective_weight(), conv.bias, relu_input=True)
                for offset, conv in ((0, conv_a), (1, conv_b))]
    x = pad(relu(x))
    return [conv_a(x), conv_b(x[:, :, 1:, 1:])]
