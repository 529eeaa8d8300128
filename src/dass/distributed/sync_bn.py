"""Batch norm over the global batch of a data-parallel run (what ``nn.SyncBatchNorm`` does on CUDA only).

Forward: one all-reduce of (sum, sum of squares, count) per channel, in float64. Backward: one all-reduce
of (sum dy, sum dy * x_hat) per channel, so each rank's input gradient is that of the sum of all ranks'
losses; the returned weight/bias gradients are the local ones (the parameter-gradient average takes care
of them). With it, a run of N ranks normalises exactly as one process with the same global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .world import World

_DIMS = (0, 2, 3)


def _channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, world: World):
        c = x.shape[1]
        local = x.double()
        stats = torch.cat([local.sum(_DIMS), (local * local).sum(_DIMS),
                           torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)])
        world.sum_(stats)
        count = float(stats[-1])
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_(min=0.0)
        invstd = torch.rsqrt(var + eps)
        x_hat = (x - _channel(mean.to(x.dtype))) * _channel(invstd.to(x.dtype))
        y = x_hat
        if weight is not None:
            y = y * _channel(weight) + _channel(bias)
        ctx.save_for_backward(x_hat, invstd.to(x.dtype), weight)
        ctx.count, ctx.world = count, world
        return y, mean.to(x.dtype), var.to(x.dtype)

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x_hat, invstd, weight = ctx.saved_tensors
        c = dy.shape[1]
        sum_dy = dy.sum(_DIMS)
        sum_dy_xhat = (dy * x_hat).sum(_DIMS)
        both = ctx.world.sum_(torch.cat([sum_dy, sum_dy_xhat]).double())
        g_dy, g_dy_xhat = both[:c].to(dy.dtype), both[c:].to(dy.dtype)
        scale = invstd if weight is None else invstd * weight
        dx = _channel(scale) * (dy - _channel(g_dy / ctx.count) - x_hat * _channel(g_dy_xhat / ctx.count))
        if weight is None:
            return dx, None, None, None, None
        return dx, sum_dy_xhat, sum_dy, None, None


def sync_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    weight: torch.Tensor | None, bias: torch.Tensor | None, momentum: float, eps: float,
                    world: World) -> torch.Tensor:
    """Training-mode batch norm of an NCHW batch with the statistics of every rank's shard together."""
    y, mean, var = _SyncBatchNorm.apply(x, weight, bias, eps, world)
    if running_mean is not None and running_var is not None:
        count = x.numel() // x.shape[1] * world.size
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (count / max(count - 1, 1)), alpha=momentum)
    return y


def use_sync_batch_norm(model: nn.Module) -> nn.Module:
    """Give every plain ``nn.BatchNorm2d`` of ``model`` dass's batch-norm module (same state, same maths on one
    process), whose training forward syncs over the ranks of a distributed run."""
    from ..kernels.modules import BatchNorm2d

    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = BatchNorm2d
    return model
