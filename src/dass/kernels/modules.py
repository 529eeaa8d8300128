"""Batch-norm and pooling modules that run on the compiled CPU kernels: ``torch.nn``'s modules, arguments and
state, with a ``plain()`` copy as the ``torch.nn`` module itself (for export)."""

from __future__ import annotations

import torch
from torch import nn

from .ops import avg_pool2d, batch_norm, max_pool2d


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` through :func:`dass.kernels.max_pool2d` (export turns it back into ``nn.MaxPool2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                          self.return_indices)

    def plain(self) -> nn.MaxPool2d:
        return nn.MaxPool2d(self.kernel_size, self.stride, self.padding, self.dilation, self.return_indices,
                            self.ceil_mode)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` through :func:`dass.kernels.avg_pool2d` (export turns it back into ``nn.AvgPool2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                          self.divisor_override)

    def plain(self) -> nn.AvgPool2d:
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` through :func:`dass.kernels.batch_norm` in training mode (the same statistics and
    running-average updates, ``momentum=None`` included); evaluation uses PyTorch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d's own logic, calling dass.kernels.batch_norm (which falls back to F.batch_norm, also
        # for torch.fx proxies: no branch here looks at the input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return batch_norm(x, self.running_mean if use_running else None, self.running_var if use_running else None,
                          self.weight, self.bias, batch_stats, factor, self.eps)

    def plain(self) -> nn.BatchNorm2d:
        like = next(iter(self.state_dict().values()), None)
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats,
                            device=None if like is None else like.device,
                            dtype=None if like is None or not like.is_floating_point() else like.dtype)
        bn.load_state_dict(self.state_dict())
        return bn.train(self.training)
