"""Autograd functions over the CPU training kernels, and the dispatch that picks them.

``conv2d``, ``max_pool2d`` and ``avg_pool2d`` take PyTorch's arguments and return PyTorch's results
(within float rounding; max pooling picks the same winner among equal values). They use the compiled
kernels for contiguous-able float32/float64 CPU tensors in the shapes the kernels cover (depthwise
convolutions; 1x1 stride-1 convolutions; pooling without ceil mode) and fall back to ``torch.nn.functional``
for everything else: GPU tensors, other dtypes, tracing and export (ONNX, torch.fx, torch.compile), and
when the kernels are switched off (``DASS_CPU_KERNELS=0`` or :func:`use_cpu_kernels`).

Their backward passes are not differentiable themselves: a double backward (``create_graph=True``) through
them raises. dass never needs one (second-order DARTS uses finite differences); for higher-order gradients
switch the kernels off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from functools import lru_cache
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..distributed.sync_bn import sync_batch_norm
from ..distributed.world import current_world
from ..errors import DassError
from ..native import CPU_OPS, load

_state = {"enabled": os.environ.get("DASS_CPU_KERNELS", "1") != "0", "weight_grads": True}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
MAX_KERNEL = 8   # the kernels keep per-tap tables of k*k <= 64 entries on the stack


@contextlib.contextmanager
def use_cpu_kernels(enabled: bool) -> Iterator[None]:
    """Switch the compiled CPU kernels on or off inside a block (off: plain PyTorch everywhere)."""
    previous = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = previous


@contextlib.contextmanager
def input_gradients_only() -> Iterator[None]:
    """Inside, backward passes through the kernels skip the gradients of weights (and batch-norm affine
    parameters), returning none for them. For a backward that asks only for other tensors' gradients, e.g.
    the architecture weights: PyTorch's own ops skip what the engine does not need, but a custom autograd
    function cannot tell, and the weight gradients are half its backward work."""
    previous = _state["weight_grads"]
    _state["weight_grads"] = False
    try:
        yield
    finally:
        _state["weight_grads"] = previous


def _weight_grad(ctx, index: int) -> bool:
    return ctx.needs_input_grad[index] and _state["weight_grads"]


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        lib = load(CPU_OPS)
    except (DassError, OSError) as exc:
        warnings.warn(f"dass CPU kernels unavailable, using PyTorch's ops ({exc})", RuntimeWarning, stacklevel=3)
        return None
    ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {
        "sum_images": [ptr, ptr, i64, i64, cint],
        "pw_forward": [ptr, ptr, ptr, i64, i64, i64, i64, cint, ptr, cint],
        "pw_weight_grad": [ptr, ptr, ptr, i64, i64, i64, i64, cint, cint],
        "max_pool_forward": [ptr, ptr, ptr, i64, ptr, cint],
        "max_pool_backward": [ptr, ptr, ptr, i64, i64, i64, cint],
        "avg_pool_forward": [ptr, ptr, i64, ptr, cint, cint],
        "avg_pool_backward": [ptr, ptr, i64, ptr, cint, cint],
        "bn_forward": [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, ctypes.c_double, cint],
        "bn_backward": [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, cint],
        "weighted_sum": [ptr, ptr, i64, i64, ptr, cint],
        "weighted_sum_backward": [ptr, ptr, ptr, i64, i64, ptr, ptr, cint],
        "subsample_backward": [ptr, ptr, i64, i64, i64, i64, i64, i64, i64, cint],
        "dwg_forward": [ptr, ptr, ptr, ptr, i64, i64, i64, ptr, cint, cint],
        "dwg_backward": [ptr, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, ptr, cint, cint],
    }
    for name, args in signatures.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = args, None
    return lib


def _call(name: str, dtype: torch.dtype, *args) -> None:
    """Call kernel ``name`` for ``dtype``; tensor arguments pass as data pointers. (The tensors stay referenced
    by ``args`` until the call returns: a temporary such as ``grad.contiguous()`` cannot be freed under it.)"""
    fn = getattr(_library(), f"{name}_{_SUFFIX[dtype]}")
    fn(*(ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args))


@lru_cache(maxsize=1024)
def _geom(*values: int) -> torch.Tensor:
    """A geometry as the int64 array the kernels read (cached: a supernet uses a few dozen, thousands of times)."""
    return torch.tensor(values, dtype=torch.int64)


def _pointers(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    return torch.tensor([0 if t is None else t.data_ptr() for t in tensors], dtype=torch.int64)


def _threads() -> int:
    return torch.get_num_threads()


def _sum_images(part: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """A weight gradient from per-image partials (n, ...), summed in image order (thread-count independent)."""
    if part is None:
        return None
    out = torch.empty(shape, dtype=part.dtype)
    _call("sum_images", part.dtype, part, out, part.shape[0], out.numel(), _threads())
    return out


def _usable(*tensors: torch.Tensor) -> bool:
    """Real CPU float32/float64 tensors outside tracing, with the kernels on and loadable. (Checked before
    anything else touches the arguments: under torch.fx they are proxies.)"""
    if not _state["enabled"]:
        return False
    first = tensors[0]
    for t in tensors:
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            return False     # fx proxies, tensor subclasses (fake/functional tensors of export)
        if t.device.type != "cpu" or t.dtype != first.dtype or t.dtype not in _SUFFIX:
            return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return _library() is not None


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _single(v: int | Sequence[int]) -> int | None:
    """The one value of a square argument, else None."""
    if isinstance(v, int):
        return v
    v = tuple(v)
    return v[0] if len(v) in (1, 2) and len(set(v)) == 1 else None


# ---- depthwise convolution ----------------------------------------------------------------------------

class _Pointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, relu: bool) -> torch.Tensor:
        x = x.contiguous()
        w2 = w.reshape(w.shape[0], w.shape[1]).contiguous()
        n, ci, h, wd = x.shape
        co = w2.shape[0]
        out = torch.empty(n, co, h, wd, dtype=x.dtype)
        _call("pw_forward", x.dtype, x, w2, out, n, ci, co, h * wd, int(relu), None, _threads())
        ctx.save_for_backward(x, w2)
        ctx.weight_shape, ctx.relu = w.shape, relu
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, w2 = ctx.saved_tensors
        grad = grad.contiguous()
        n, ci, h, wd = x.shape
        co = w2.shape[0]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty_like(x)
            wt = w2.t().contiguous()
            _call("pw_forward", x.dtype, grad, wt, gx, n, co, ci, h * wd, 0, x if ctx.relu else None,
                  _threads())
        if _weight_grad(ctx, 1):
            part = torch.empty(n, co, ci, dtype=x.dtype)
            _call("pw_weight_grad", x.dtype, grad, x, part, n, ci, co, h * wd, int(ctx.relu), _threads())
            gw = _sum_images(part, ctx.weight_shape)
        return gx, gw, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1, relu_input: bool = False) -> torch.Tensor:
    """``F.conv2d(F.relu(x) if relu_input else x, ...)`` with the compiled kernels for depthwise and 1x1
    convolutions on CPU; the input ReLU is fused into them (no extra pass, no extra tensor)."""
    if _usable(x, weight) and x.dim() == 4 and not isinstance(padding, str):
        out = _compiled_conv(x, weight, stride, padding, dilation, groups, relu_input)
        if out is not None:
            return out if bias is None else out + bias.view(1, -1, 1, 1)
    return F.conv2d(F.relu(x) if relu_input else x, weight, bias, stride, padding, dilation, groups)


def _compiled_conv(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int,
                   relu: bool) -> torch.Tensor | None:
    k, s, p, d = _single(weight.shape[-2:]), _single(stride), _single(padding), _single(dilation)
    if None in (k, s, p, d) or k > MAX_KERNEL or min(_out_size(n, k, s, p, d) for n in x.shape[2:]) <= 0:
        return None
    c = x.shape[1]
    if groups == c and weight.shape[0] == c and weight.shape[1] == 1:
        return _Depthwise.apply(x, ((k, p, d),), s, relu, weight)[0]
    if groups == 1 and k == 1 and p == 0:
        # a strided 1x1 convolution reads every s-th pixel: the same as a stride-1 one on the subsampled input
        return _Pointwise.apply(x if s == 1 else subsample(x, s), weight, relu)
    return None


class _Subsample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, step: int, offset: int) -> torch.Tensor:
        ctx.shape, ctx.step, ctx.offset = x.shape, step, offset
        return x[:, :, offset::step, offset::step].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.shape
        if not _usable(grad):
            gx = grad.new_zeros(ctx.shape)
            gx[:, :, ctx.offset::ctx.step, ctx.offset::ctx.step] = grad
            return gx, None, None
        grad = grad.contiguous()
        gx = torch.empty(ctx.shape, dtype=grad.dtype)
        _call("subsample_backward", grad.dtype, grad, gx, n * c, h, w, ctx.step, ctx.offset, grad.shape[2],
              grad.shape[3], _threads())
        return gx, None, None


def subsample(x: torch.Tensor, step: int, offset: int = 0) -> torch.Tensor:
    """``x[:, :, offset::step, offset::step]`` as a contiguous tensor. Its backward fills one zero gradient
    (slicing both dimensions, autograd fills one per slice, each as large as its input)."""
    if _usable(x) and torch.is_grad_enabled() and x.requires_grad:
        return _Subsample.apply(x, step, offset)
    return x[:, :, offset::step, offset::step].contiguous()


class _DepthwiseGroup(torch.autograd.Function):
    """Depthwise convolutions of one input (same stride and output size): see dwg_* in cpu_ops.cpp."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, specs: tuple[tuple[int, int, int], ...], s: int, relu: bool,
                *ws: torch.Tensor):
        x = x.contiguous()
        ws = tuple(w.contiguous() for w in ws)
        n, c, h, wd = x.shape
        k0, p0, d0 = specs[0]
        ho, wo = _out_size(h, k0, s, p0, d0), _out_size(wd, k0, s, p0, d0)
        pad = max(p for _, p, _ in specs)
        geom = _geom(h, wd, 1, s, pad, 1, ho, wo)
        spec = _geom(*(v for sp in specs for v in sp))
        outs = [torch.empty(n, c, ho, wo, dtype=x.dtype) for _ in ws]
        _call("dwg_forward", x.dtype, x, _pointers(ws), _pointers(outs), spec, len(ws), n, c, geom, int(relu),
              _threads())
        ctx.save_for_backward(x, *ws)
        ctx.geom, ctx.spec, ctx.relu = geom, spec, relu
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        x, *ws = ctx.saved_tensors
        n, c = x.shape[:2]
        grads = [g.contiguous() if g is not None else torch.zeros(n, c, *ctx.geom[6:].tolist(), dtype=x.dtype)
                 for g in grads]
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        parts = [torch.empty(n, *w.shape, dtype=x.dtype) if _weight_grad(ctx, 4 + i) else None
                 for i, w in enumerate(ws)]
        _call("dwg_backward", x.dtype, x, _pointers(ws), _pointers(grads), ctx.spec, len(ws), gx,
              _pointers(parts) if any(p is not None for p in parts) else None, n, c, ctx.geom, int(ctx.relu),
              _threads())
        return (gx, None, None, None, *(_sum_images(part, w.shape) for part, w in zip(parts, ws)))


class _Depthwise(_DepthwiseGroup):
    """One depthwise convolution: the group kernel with one op (its own name in autograd graphs)."""


def depthwise_group(x: torch.Tensor, convs: Sequence[tuple[torch.Tensor, int, int, int]],
                    relu_input: bool = True) -> list[torch.Tensor] | None:
    """Several depthwise convolutions ``(weight, stride, padding, dilation)`` of one input (of its ReLU) in one
    kernel call, or None where the kernels do not apply (then run them one by one)."""
    if len(convs) < 2 or not _usable(x, *(w for w, *_ in convs)) or x.dim() != 4:
        return None
    c = x.shape[1]
    specs, strides, sizes = [], set(), set()
    for w, s, p, d in convs:
        k, s, p, d = _single(w.shape[-2:]), _single(s), _single(p), _single(d)
        if None in (k, s, p, d) or k > MAX_KERNEL or w.shape[0] != c or w.shape[1] != 1:
            return None
        specs.append((k, p, d))
        strides.add(s)
        sizes.add(tuple(_out_size(n, k, s, p, d) for n in x.shape[2:]))
    if len(strides) != 1 or len(sizes) != 1 or min(next(iter(sizes))) <= 0:
        return None
    return list(_DepthwiseGroup.apply(x, tuple(specs), strides.pop(), relu_input, *(w for w, *_ in convs)))


# ---- pooling --------------------------------------------------------------------------------------------

class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, s: int, p: int, d: int) -> torch.Tensor:
        x = x.contiguous()
        n, c, h, wd = x.shape
        ho, wo = _out_size(h, k, s, p, d), _out_size(wd, k, s, p, d)
        out = torch.empty(n, c, ho, wo, dtype=x.dtype)
        idx = torch.empty(n, c, ho, wo, dtype=torch.int32)
        geom = _geom(h, wd, k, s, p, d, ho, wo)
        _call("max_pool_forward", x.dtype, x, out, idx, n * c, geom, _threads())
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        ctx.mark_non_differentiable(idx)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        n, c, h, wd = ctx.in_shape
        gx = torch.empty(ctx.in_shape, dtype=grad.dtype)
        _call("max_pool_backward", grad.dtype, grad.contiguous(), idx, gx, n * c, h * wd,
              idx.shape[2] * idx.shape[3], _threads())
        return gx, None, None, None, None


class _AvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, s: int, p: int, count_pad: bool) -> torch.Tensor:
        x = x.contiguous()
        n, c, h, wd = x.shape
        ho, wo = _out_size(h, k, s, p, 1), _out_size(wd, k, s, p, 1)
        geom = _geom(h, wd, k, s, p, 1, ho, wo)
        out = torch.empty(n, c, ho, wo, dtype=x.dtype)
        _call("avg_pool_forward", x.dtype, x, out, n * c, geom, int(count_pad), _threads())
        ctx.geom, ctx.count_pad, ctx.in_shape = geom, count_pad, x.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, c = ctx.in_shape[:2]
        gx = torch.empty(ctx.in_shape, dtype=grad.dtype)
        _call("avg_pool_backward", grad.dtype, grad.contiguous(), gx, n * c, ctx.geom, int(ctx.count_pad),
              _threads())
        return gx, None, None, None, None


def _pool_args(kernel_size, stride, padding, dilation=1) -> tuple[int, int, int, int] | None:
    k = _single(kernel_size)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _single(stride)
    p, d = _single(padding), _single(dilation)
    if None in (k, s, p, d) or p > k // 2 or k > MAX_KERNEL:
        return None
    return k, s, p, d


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False) -> torch.Tensor:
    """``F.max_pool2d`` with the compiled kernel on CPU (same winner among equal values)."""
    if _usable(x) and x.dim() == 4 and not ceil_mode and not return_indices:
        args = _pool_args(kernel_size, stride, padding, dilation)
        if args:
            return _MaxPool.apply(x, *args)
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> torch.Tensor:
    """``F.avg_pool2d`` with the compiled kernel on CPU."""
    if _usable(x) and x.dim() == 4 and not ceil_mode and divisor_override is None:
        args = _pool_args(kernel_size, stride, padding)
        if args:
            k, s, p, _ = args
            return _AvgPool.apply(x, k, s, p, count_include_pad)
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


# ---- batch normalization ----------------------------------------------------------------------------------

class _BatchNorm(torch.autograd.Function):
    """Training-mode batch norm of an NCHW batch; also returns the batch mean and biased variance."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        x = x.contiguous()
        n, c, h, wd = x.shape
        y = torch.empty_like(x)
        mean, invstd, var = (torch.empty(c, dtype=x.dtype) for _ in range(3))
        w = weight.contiguous() if weight is not None else None
        b = bias.contiguous() if bias is not None else None
        _call("bn_forward", x.dtype, x, w, b, y, mean, invstd, var, n, c, h * wd, eps,
              _threads())
        ctx.save_for_backward(x, mean, invstd, w)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, _mean, _var):
        x, mean, invstd, w = ctx.saved_tensors
        n, c, h, wd = x.shape
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gw = torch.empty(c, dtype=x.dtype) if _weight_grad(ctx, 1) else None
        gb = torch.empty(c, dtype=x.dtype) if _weight_grad(ctx, 2) else None
        _call("bn_backward", x.dtype, grad.contiguous(), x, mean, invstd, w, gx, gw, gb,
              n, c, h * wd, _threads())
        return gx, gw, gb, None


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` with the compiled kernel for training-mode NCHW batches on CPU; over the global batch
    in a data-parallel run (:mod:`dass.distributed`)."""
    world = current_world()
    if training and world.distributed and x.dim() == 4:
        return sync_batch_norm(x, running_mean, running_var, weight, bias, momentum, eps, world)
    tensors = [t for t in (x, running_mean, running_var, weight, bias) if t is not None]
    if training and _usable(*tensors) and x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] > 1:
        y, mean, var = _BatchNorm.apply(x, weight, bias, eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                count = x.shape[0] * x.shape[2] * x.shape[3]
                running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(var * (count / (count - 1)), alpha=momentum)
        return y
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


# ---- weighted sum -----------------------------------------------------------------------------------------

_SUM_BLOCK = 4096   # kSumBlock in cpu_ops.cpp


class _WeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights: torch.Tensor, index: tuple[int, ...], *xs: torch.Tensor) -> torch.Tensor:
        xs = tuple(x.contiguous() for x in xs)
        w = weights.detach()[list(index)].contiguous()
        out = torch.empty_like(xs[0])
        ptrs = _pointers(xs)
        _call("weighted_sum", out.dtype, ptrs, w, len(xs), out.numel(), out, _threads())
        ctx.save_for_backward(weights, w, *xs)
        ctx.index = index
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        weights, w, *xs = ctx.saved_tensors
        grad = grad.contiguous()
        gxs = [torch.empty_like(x) if ctx.needs_input_grad[2 + t] else None for t, x in enumerate(xs)]
        gptrs = _pointers(gxs)
        ptrs = _pointers(xs)
        blocks = -(-grad.numel() // _SUM_BLOCK)
        dots = torch.empty(blocks, len(xs), dtype=grad.dtype)
        _call("weighted_sum_backward", grad.dtype, grad, ptrs, w, len(xs), grad.numel(), gptrs, dots, _threads())
        gw = None
        if ctx.needs_input_grad[0]:
            gw = torch.zeros_like(weights)
            gw[list(ctx.index)] = dots.sum(0)
        return (gw, None, *gxs)


def weighted_sum(weights: torch.Tensor, index: Sequence[int], xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum(weights[i] * x for i, x in zip(index, xs))`` (a mixed op's output) in one pass over the tensors,
    with the compiled kernel on CPU."""
    index = tuple(int(i) for i in index)
    if (xs and _usable(weights, *xs) and weights.dim() == 1 and len(index) == len(xs)
            and all(x.shape == xs[0].shape for x in xs)):
        return _WeightedSum.apply(weights, index, *xs)
    out = None
    for i, x in zip(index, xs):
        y = weights[i] * x
        out = y if out is None else out + y
    return out
