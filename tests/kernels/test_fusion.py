"""The fused paths give the plain paths' results (forward and gradients), and step aside for hooked modules."""

import torch

from dass.kernels.fusion import offset_pair_conv, parallel_outputs
from dass.space.ops import FactorizedReduce, build_op, pad_to_even
from dass.kernels import use_cpu_kernels

OPS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "skip_connect"]


def _grads(outs, params, x):
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    return torch.autograd.grad(loss, [x, *params])


def test_parallel_outputs_equal_the_ops_called_one_by_one():
    torch.manual_seed(0)
    for stride in (1, 2):
        ops = [build_op(name, 6, stride, affine=False).double() for name in OPS]
        params = [p for op in ops for p in op.parameters() if p.requires_grad]
        x = torch.randn(3, 6, 9, 9, dtype=torch.float64, requires_grad=True)
        fused = parallel_outputs(ops, x)
        with use_cpu_kernels(False):
            plain = [op(x) for op in ops]
        for a, b in zip(fused, plain):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for a, b in zip(_grads(fused, params, x), _grads(plain, params, x)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_hooked_ops_are_called_as_modules():
    torch.manual_seed(0)
    ops = [build_op(name, 4, 1, affine=False) for name in ("sep_conv_3x3", "dil_conv_3x3")]
    seen = []
    ops[0][0][1].register_forward_hook(lambda m, i, o: seen.append(m))   # the first depthwise conv
    parallel_outputs(ops, torch.randn(2, 4, 8, 8))
    assert seen == [ops[0][0][1]]


def test_offset_pair_conv_equals_the_plain_factorized_reduce():
    torch.manual_seed(0)
    fr = FactorizedReduce(5, 8).double()
    for size in (8, 7):
        x = torch.randn(2, 5, size, size, dtype=torch.float64, requires_grad=True)
        fused = offset_pair_conv(x, fr.relu, fr.conv_1, fr.conv_2, pad_to_even)
        with use_cpu_kernels(False):
            y = pad_to_even(torch.relu(x))
            plain = [fr.conv_1(y), fr.conv_2(y[:, :, 1:, 1:])]
        params = [fr.conv_1.weight, fr.conv_2.weight]
        for a, b in zip(fused, plain):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for a, b in zip(_grads(fused, params, x), _grads(plain, params, x)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
