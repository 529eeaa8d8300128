"""The DARTS primitive operations, built on sparse layers.

Every convolution is a :class:`~dass.sparse.SparseConv2d`, so each candidate op can be pruned.
``affine=False`` is used inside the search supernet (DARTS convention: the architecture weights,
not batch-norm scales, decide how much each op contributes).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..kernels import AvgPool2d, BatchNorm2d, MaxPool2d
from ..kernels.fusion import offset_pair_conv, relu_conv
from ..sparse import SparseConv2d

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            SparseConv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[2](relu_conv(self[0], self[1], x))


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            SparseConv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                         groups=c_in, bias=False),
            SparseConv2d(c_in, c_out, 1, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[3](self[2](relu_conv(self[0], self[1], x)))


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable blocks; only the first one strides."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class SharpSepConv(nn.Sequential):
    """sharpDARTS' SharpSepConv (Hundt et al. 2019, ``cnn/operations.py``): two depthwise-separable blocks, only
    the first strided and dilated, through ``c_mid`` middle channels (``c`` when not given). Every SharpSepConv
    op has the same depth, unlike DARTS' one-block ``dil_conv``. With ``c_mid = c`` and no dilation it is
    DARTS' :class:`SepConv`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                 affine: bool = True, c_mid: int | None = None):
        c_mid = c_out if c_mid is None else c_mid
        super().__init__(
            DilConv(c_in, c_mid, kernel, stride, padding, dilation, affine),
            DilConv(c_mid, c_out, kernel, 1, (kernel - 1) // 2, 1, affine),
        )


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Pad odd heights/widths by one pixel (bottom/right), so both stride-2 paths agree in size."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return x


torch.fx.wrap("pad_to_even")  # a leaf for torch.fx tracing (its branch depends on the input's shape)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, so no input pixel is skipped."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = SparseConv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = SparseConv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat(offset_pair_conv(x, self.relu, self.conv_1, self.conv_2, pad_to_even), dim=1))


OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda c, stride, affine: AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda c, stride, affine: MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda c, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "sep_conv_7x7": lambda c, stride, affine: SepConv(c, c, 7, stride, 3, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
    "conv_3x3": lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 1, affine),
    # sharpDARTS' ops (their names there: dil_conv_*, flood_*, choke_*; sep_conv_* there is our sep_conv_*)
    "sharp_dil_conv_3x3": lambda c, stride, affine: SharpSepConv(c, c, 3, stride, 2, 2, affine),
    "sharp_dil_conv_5x5": lambda c, stride, affine: SharpSepConv(c, c, 5, stride, 4, 2, affine),
    "flood_conv_3x3": lambda c, stride, affine: SharpSepConv(c, c, 3, stride, 1, 1, affine, c_mid=4 * c),
    "flood_conv_5x5": lambda c, stride, affine: SharpSepConv(c, c, 5, stride, 2, 1, affine, c_mid=4 * c),
    "dil_flood_conv_3x3": lambda c, stride, affine: SharpSepConv(c, c, 3, stride, 2, 2, affine, c_mid=4 * c),
    "choke_conv_3x3": lambda c, stride, affine: SharpSepConv(c, c, 3, stride, 1, 1, affine, c_mid=32),
    "dil_choke_conv_3x3": lambda c, stride, affine: SharpSepConv(c, c, 3, stride, 2, 2, affine, c_mid=32),
}

# sharpDARTS' op set on the DARTS skeleton (their SHARPER_PRIMITIVES, renamed where a DARTS name means another op):
# --set "model.ops=[none, max_pool_3x3, ...]" with these names, for any search method.
SHARP_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "sharp_dil_conv_3x3",
    "sharp_dil_conv_5x5",
    "flood_conv_3x3",
    "flood_conv_5x5",
    "dil_flood_conv_3x3",
)


def build_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}") from None
    return factory(channels, stride, affine)


def is_pooling(name: str) -> bool:
    return "pool" in name
