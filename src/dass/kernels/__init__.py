"""Compiled CPU kernels for training: depthwise / pointwise convolution, pooling, batch norm, the mixed-op
weighted sum (see ``ops``)."""

from .modules import AvgPool2d, BatchNorm2d, MaxPool2d
from .ops import (avg_pool2d, batch_norm, conv2d, depthwise_group, input_gradients_only, max_pool2d, subsample,
                  use_cpu_kernels, weighted_sum)

__all__ = ["AvgPool2d", "BatchNorm2d", "MaxPool2d", "avg_pool2d", "batch_norm", "conv2d", "depthwise_group",
           "input_gradients_only", "max_pool2d", "subsample", "use_cpu_kernels", "weighted_sum"]
