"""The compiled CPU training kernels compute what PyTorch's ops compute, forward and backward."""

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from dass.kernels import (AvgPool2d, BatchNorm2d, MaxPool2d, avg_pool2d, batch_norm, conv2d, depthwise_group,
                          input_gradients_only, max_pool2d, subsample, use_cpu_kernels, weighted_sum)

DTYPES = [torch.float64, torch.float32]


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)


def _grad_fn_names(out: torch.Tensor) -> set[str]:
    names, todo, seen = set(), [out.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def _compare(ours, ref, inputs, dtype, kernel_name):
    out, expected = ours(*inputs), ref(*inputs)
    assert kernel_name in _grad_fn_names(out), "the compiled kernel was not used"
    torch.testing.assert_close(out, expected, **_tol(dtype))
    g = torch.randn_like(out)
    wrt = [t for t in inputs if t.requires_grad]
    for a, b in zip(torch.autograd.grad(out, wrt, g), torch.autograd.grad(expected, wrt, g)):
        torch.testing.assert_close(a, b, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,d,p", [(3, 1, 1, 1), (5, 1, 1, 2), (3, 1, 2, 2), (5, 1, 2, 4), (3, 2, 1, 1),
                                     (5, 2, 2, 4), (3, 1, 1, 0), (7, 1, 1, 3), (3, 3, 1, 1), (1, 2, 1, 0)])
@pytest.mark.parametrize("relu", [False, True])
def test_depthwise_matches_pytorch(dtype, k, s, d, p, relu):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 11, 9, dtype=dtype, requires_grad=True)
    w = torch.randn(5, 1, k, k, dtype=dtype, requires_grad=True)
    _compare(lambda x, w: conv2d(x, w, None, s, p, d, 5, relu_input=relu),
             lambda x, w: F.conv2d(F.relu(x) if relu else x, w, None, s, p, d, 5), (x, w), dtype, "_DepthwiseBackward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ci,size,stride", [(6, 7, 1), (70, 16, 1), (6, 8, 2), (16, 9, 2)])
@pytest.mark.parametrize("relu", [False, True])
def test_pointwise_matches_pytorch(dtype, ci, size, stride, relu):
    torch.manual_seed(0)
    x = torch.randn(2, ci, size, size, dtype=dtype, requires_grad=True)
    w = torch.randn(4, ci, 1, 1, dtype=dtype, requires_grad=True)
    b = torch.randn(4, dtype=dtype, requires_grad=True)
    _compare(lambda x, w, b: conv2d(x, w, b, stride, relu_input=relu),
             lambda x, w, b: F.conv2d(F.relu(x) if relu else x, w, b, stride), (x, w, b), dtype, "_PointwiseBackward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [1, 2])
def test_pooling_matches_pytorch(dtype, s):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 7, 9, dtype=dtype, requires_grad=True)
    _compare(lambda x: max_pool2d(x, 3, s, 1), lambda x: F.max_pool2d(x, 3, s, 1), (x,), dtype, "_MaxPoolBackward")
    for count_pad in (False, True):
        _compare(lambda x: avg_pool2d(x, 3, s, 1, count_include_pad=count_pad),
                 lambda x: F.avg_pool2d(x, 3, s, 1, count_include_pad=count_pad), (x,), dtype, "_AvgPoolBackward")


def test_max_pool_picks_pytorchs_winner_among_ties():
    # small integers: most windows hold several equal maxima; the gradient lands on one of them
    x = torch.randint(0, 3, (2, 4, 9, 9)).double().requires_grad_()
    for s in (1, 2):
        g = torch.randn(2, 4, *F.max_pool2d(x, 3, s, 1).shape[2:], dtype=torch.float64)
        ours = torch.autograd.grad(max_pool2d(x, 3, s, 1), x, g)[0]
        ref = torch.autograd.grad(F.max_pool2d(x, 3, s, 1), x, g)[0]
        assert torch.equal(ours, ref)


def test_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: conv2d(x, w, None, 2, 2, 2, 3, relu_input=True), (x, w))
    assert torch.autograd.gradcheck(lambda x, w: conv2d(x, w, relu_input=True), (x, pw))
    assert torch.autograd.gradcheck(lambda x: avg_pool2d(x, 3, 1, 1, count_include_pad=False), (x,))
    assert torch.autograd.gradcheck(lambda x: max_pool2d(x, 3, 2, 1), (x,))
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: batch_norm(x, None, None, a, b, training=True), (x, weight, bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_module_matches_pytorch(dtype, affine, momentum):
    torch.manual_seed(0)
    ours = BatchNorm2d(5, affine=affine, momentum=momentum).to(dtype)
    ref = nn.BatchNorm2d(5, affine=affine, momentum=momentum).to(dtype)
    if affine:
        with torch.no_grad():
            ours.weight.uniform_()
            ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    for _ in range(3):
        x = (torch.randn(4, 5, 7, 6, dtype=dtype) * 3 + 1).requires_grad_()
        params = [x] + ([ours.weight, ours.bias] if affine else [])
        ref_params = [x] + ([ref.weight, ref.bias] if affine else [])
        _compare_module(ours, ref, x, params, ref_params, dtype)
    for name, buf in ours.state_dict().items():
        torch.testing.assert_close(buf, ref.state_dict()[name], **_tol(dtype))
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), **_tol(dtype))
    plain = ours.plain()
    assert type(plain) is nn.BatchNorm2d and not plain.training
    torch.testing.assert_close(plain(x), ref(x), **_tol(dtype))


def _compare_module(ours, ref, x, params, ref_params, dtype):
    out, expected = ours(x), ref(x)
    assert "_BatchNormBackward" in _grad_fn_names(out)
    torch.testing.assert_close(out, expected, **_tol(dtype))
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(expected, ref_params, g)):
        torch.testing.assert_close(a, b, **_tol(dtype))


def test_weight_gradients_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 12, 12, requires_grad=True)
    w = torch.randn(6, 1, 5, 5, requires_grad=True)
    pw = torch.randn(6, 6, 1, 1, requires_grad=True)
    previous = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = conv2d(conv2d(x, w, None, 1, 2, 1, 6, relu_input=True), pw, relu_input=True)
            grads.append(torch.autograd.grad(out.square().sum(), (x, w, pw)))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_input_gradients_only_skips_weight_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    out = conv2d(x, w, None, 1, 1, 1, 4).square().sum()
    full = torch.autograd.grad(out, x, retain_graph=True)[0]
    with input_gradients_only():
        only = torch.autograd.grad(out, x, retain_graph=True)[0]
        (gw,) = torch.autograd.grad(out, w, allow_unused=True, materialize_grads=False, retain_graph=True)
    assert torch.equal(full, only)
    assert gw is None or not gw.any()     # not computed inside the block
    assert torch.autograd.grad(out, w)[0].abs().sum() > 0   # and computed again outside it


def test_fallbacks_give_pytorchs_results_and_ops():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    with use_cpu_kernels(False):
        out = conv2d(x, w, None, 1, 1, 1, 4)
    assert "_DepthwiseBackward" not in _grad_fn_names(out)
    torch.testing.assert_close(out, F.conv2d(x, w, None, 1, 1, 1, 4))
    # shapes the kernels do not cover, and other dtypes
    dense = torch.randn(3, 4, 3, 3, requires_grad=True)
    assert "_PointwiseBackward" not in _grad_fn_names(conv2d(x, dense, None, 1, 1))
    assert "_MaxPoolBackward" not in _grad_fn_names(max_pool2d(x, 3, 1, 1, ceil_mode=True))
    half = conv2d(x.detach().bfloat16(), w.detach().bfloat16(), None, 1, 1, 1, 4)
    assert half.dtype == torch.bfloat16


def test_modules_trace_and_export_as_plain_pytorch():
    model = nn.Sequential(MaxPool2d(3, 1, 1), AvgPool2d(3, 2, 1, count_include_pad=False), BatchNorm2d(4))
    model(torch.randn(8, 4, 8, 8))       # some running statistics
    model.eval()
    traced = torch.fx.symbolic_trace(model)     # proxies take PyTorch's path
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(traced(x), model(x))
    torch.testing.assert_close(traced(x), nn.Sequential(*[m.plain() for m in model]).eval()(x))
    assert [type(m.plain()) for m in model] == [nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d]


def test_double_backward_raises_instead_of_being_wrong():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(conv2d(x, w, None, 1, 1, 1, 4).square().sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_sum_matches_pytorch(dtype):
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(8, dtype=dtype), 0).requires_grad_()
    xs = [torch.randn(3, 5, 40, 41, dtype=dtype, requires_grad=True) for _ in range(4)]   # > one 4096 block
    index = [1, 3, 4, 7]
    _compare(lambda w, *xs: weighted_sum(w, index, xs), lambda w, *xs: sum(w[i] * x for i, x in zip(index, xs)),
             (weights, *xs), dtype, "_WeightedSumBackward")


@pytest.mark.parametrize("size,step,offset", [(8, 2, 0), (8, 2, 1), (7, 2, 1), (9, 3, 2)])
def test_subsample_matches_slicing(size, step, offset):
    x = torch.randn(2, 3, size, size + 1, dtype=torch.float64, requires_grad=True)
    _compare(lambda x: subsample(x, step, offset), lambda x: x[:, :, offset::step, offset::step], (x,),
             torch.float64, "_SubsampleBackward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_group_matches_separate_convolutions(dtype, stride):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 12, 10, dtype=dtype, requires_grad=True)
    specs = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]      # DARTS' sep 3x3 / 5x5, dil 3x3 / 5x5 first stages
    ws = [torch.randn(5, 1, k, k, dtype=dtype, requires_grad=True) for k, _, _ in specs]

    def ours(x, *ws):
        return depthwise_group(x, [(w, stride, p, d) for w, (_, p, d) in zip(ws, specs)])

    def ref(x, *ws):
        return [F.conv2d(F.relu(x), w, None, stride, p, d, 5) for w, (_, p, d) in zip(ws, specs)]

    outs, refs = ours(x, *ws), ref(x, *ws)
    assert "_DepthwiseGroupBackward" in _grad_fn_names(outs[0])
    grads = [torch.randn_like(r) for r in refs]
    for a, b in zip(outs + list(torch.autograd.grad(outs, [x, *ws], grads)),
                    refs + list(torch.autograd.grad(refs, [x, *ws], grads))):
        torch.testing.assert_close(a, b, **_tol(dtype))
    # only some outputs used: the others' gradients count as zero
    a = torch.autograd.grad(ours(x, *ws)[1].square().sum(), [x, *ws], allow_unused=True, materialize_grads=True)
    b = torch.autograd.grad(ref(x, *ws)[1].square().sum(), [x, *ws], allow_unused=True, materialize_grads=True)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **_tol(dtype))
