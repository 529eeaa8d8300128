"""Compile a pruned model into a packed program for the sparse runtime.

:func:`compile_model` reads as its list of passes: materialize masks and fold batch norm
(``fold_batchnorm``), trace with torch.fx and propagate shapes for one input size, lower each graph node to
IR ops (through tables keyed by layer type and by function, which :func:`register_lowering` extends), fuse
(duplicate activations, residual additions into convs, activations into their producer or into the
consumers' padded input copies), lay values out (concatenation inputs in place, padded conv outputs,
shared padded copies), then emit: each convolution's weights packed (CSR-like tap lists, or dense with a
shared tap table when density is high) and one activation arena planned with buffer reuse by liveness.
The result is a :class:`Program`: plain NumPy arrays that run without PyTorch. :class:`CompileOptions`
turns single layout choices off, for A/B measurements.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import DassError
from .fold import fold_batchnorm
from .batched import lower_batched, segments_by_chunk
from .program import (IM2COL_MAX_PADDED, N_FIELDS, Act, Batched, Field, Layout, Op, PoolKind, Program, Scratch,
                      shifted_plane)

ALIGN = 16  # floats: arena buffers start on cache lines


@dataclass(frozen=True)
class CompileOptions:
    """How the compiler lays a network out. The defaults are the measured-fastest choices; each switch turns
    one optimization off, to time it against the layout without it or to rule it out when hunting a bug."""

    dense_threshold: float = 0.5  # layers at or above this weight density use the dense layout
    unfold_max_pixels: int = 16   # convs with at most this many output pixels unfold their input (no gain at 8x8)
    rows16: bool = True           # unfolded 4x4 layers store taps as 16-bit row numbers
    pad_values: bool = True       # conv outputs read only by convs are stored padded (no copy in the readers)
    share_copies: bool = True     # a conv reads the padded copy the previous one made of the same input
    private_unfold: bool = True   # stride-1 convs on small planes unfold into per-thread copies
    private_depthwise: bool = True  # depthwise convs copy each channel's padded plane just before using it
    shifted_copies: bool = True   # convs copy their input as column-shifted planes (aligned loads, taps chunked)
    chunked_pointwise: bool = True  # pointwise convs chunk their taps too (tiles of pixels outside the channels)
    batched: bool = True          # also compile the batch-interleaved program for batches of 16+ (dass.deploy.batched)
    compose_separable: int = 150  # depthwise -> pointwise pairs become one conv when it has at most this percent
                                  # of the pair's nonzeros (0: never; see _compose_separable_convs)


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise DassError(f"cannot compile node {node.name!r} ({node.target}): it does not produce one tensor")
    shape = tuple(int(s) for s in meta.shape[1:])
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) != 3:
        raise DassError(f"cannot compile node {node.name!r}: the runtime handles (C,) and (C, H, W) tensors, "
                        f"got per-sample shape {shape}")
    return shape


@dataclass
class Value:
    """A tensor of the program: its per-image shape and where it lives.

    Normally a value owns its buffer. A value that is an input of a concatenation is instead written
    straight into its channel slice of the concatenation's buffer (``at`` floats into each image of
    ``stride`` floats), so the concatenation costs nothing. A value with ``pad`` > 0 is stored with a zero
    border of that width around each channel plane, which its consuming convolutions read in place.
    """

    shape: tuple[int, int, int]
    buffer: int
    at: int = 0
    stride: int = 0      # 0: the value's own size
    pad: int = 0

    @property
    def size(self) -> int:
        c, h, w = self.shape
        return c * (h + 2 * self.pad) * (w + 2 * self.pad)

    @property
    def image_stride(self) -> int:
        return self.stride or self.size


@dataclass
class IROp:
    """One op of the IR: ``kind`` is a runtime op (conv, act, add, affine, pool, gap, shift, zero) or concat."""

    kind: str
    inputs: list[int]            # value ids
    output: int                  # value id
    params: dict = field(default_factory=dict)
    act: Act = Act.NONE          # applied to the output (the activation itself for an act op)
    in_act: Act = Act.NONE       # convs: applied to the input on its way into the padded copy
    alive: bool = True


@dataclass
class _Graph:
    """The IR: values and ops in execution order; the passes rewrite it in place."""

    values: list[Value] = field(default_factory=list)
    ops: list[IROp] = field(default_factory=list)
    input_id: int = -1
    output_id: int = -1
    output_dims: tuple[int, ...] = ()

    def users(self, value: int) -> list[IROp]:
        return [op for op in self.ops if op.alive and value in op.inputs]

    def producers(self) -> dict[int, IROp]:
        return {op.output: op for op in self.ops}

    def io(self, op: IROp) -> tuple[Value, Value]:
        """The op's (first) input and its output."""
        return self.values[op.inputs[0]], self.values[op.output]

    def redirect(self, old: int, new: int) -> None:
        """Readers of value ``old`` read ``new`` instead."""
        for op in self.ops:
            op.inputs = [new if i == old else i for i in op.inputs]
        if self.output_id == old:
            self.output_id = new

    def drop_dead(self) -> None:
        self.ops = [op for op in self.ops if op.alive]

    def kept_buffers(self) -> set[int]:
        """The program's input and output buffers: alive for the whole run, never stored padded."""
        return {self.values[self.output_id].buffer, self.values[self.input_id].buffer}


# ---- lowering: graph nodes to IR ops, by tables --------------------------------------------------------

class Lowering:
    """Turns a traced, shape-propagated graph into IR ops over values.

    A lowering function (see :func:`register_lowering`) reads its node's tensor arguments with :meth:`arg`,
    then either emits one IR op for the node (:meth:`emit`) or makes the node another name for a value
    (:meth:`alias`).
    """

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.graph = _Graph()
        self.env: dict[str, int] = {}

    def new_value(self, shape: tuple[int, ...]) -> int:
        values = self.graph.values
        values.append(Value(tuple(shape), len(values)))
        return len(values) - 1

    def alias(self, node: torch.fx.Node, src: int) -> None:
        self.env[node.name] = src

    def emit(self, kind: str, node: torch.fx.Node, inputs: list[int], act: Act = Act.NONE, **params) -> int:
        """A new op of ``kind`` computing ``node`` (of the node's shape) from the values ``inputs``."""
        out = self.new_value(_shape(node))
        self.graph.ops.append(IROp(kind, inputs, out, params, act))
        self.env[node.name] = out
        return out

    def arg(self, a) -> int:
        """The value id of a tensor argument."""
        if not isinstance(a, torch.fx.Node):
            raise DassError(f"the runtime cannot use a constant tensor argument ({a!r})")
        return self.env[a.name]

    def run(self) -> _Graph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.graph.input_id >= 0:
                    raise DassError("the runtime compiles models with one input")
                self.graph.input_id = self.new_value(_shape(node))
                self.env[node.name] = self.graph.input_id
            elif node.op == "output":
                out = node.args[0][0] if isinstance(node.args[0], (tuple, list)) else node.args[0]
                self.graph.output_id = self.arg(out)
                self.graph.output_dims = tuple(int(d) for d in out.meta["tensor_meta"].shape[1:])
            elif node.op == "call_module":
                self._call_module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                _function_lowering(node)(self, node)
            elif node.op == "get_attr":
                raise DassError(f"the runtime cannot use parameter {node.target!r} outside a layer")
        return self.graph

    def _call_module(self, node: torch.fx.Node, m: nn.Module) -> None:
        for cls in type(m).__mro__:   # the most specific registered type
            if cls in MODULE_LOWERINGS:
                return MODULE_LOWERINGS[cls](self, node, m)
        raise DassError(f"the runtime does not support layer {node.target!r} ({type(m).__name__}); "
                        "dass.deploy.compiler.register_lowering adds a lowering")


ModuleLowering = Callable[[Lowering, torch.fx.Node, nn.Module], None]
FunctionLowering = Callable[[Lowering, torch.fx.Node], None]
MODULE_LOWERINGS: dict[type, ModuleLowering] = {}            # layer type -> fn(lowering, node, module)
FUNCTION_LOWERINGS: dict[object, FunctionLowering] = {}      # function, or function / method name -> fn(lowering, node)


def register_lowering(*targets) -> Callable:
    """Decorator: lower call_module nodes of these ``torch.nn`` layer types (and their subclasses), or
    call_function / call_method nodes of these functions or names, with the decorated function.

    torch.fx keeps ``torch.nn`` layers and functions wrapped with ``torch.fx.wrap`` as single nodes; other
    modules are traced through, so their ops are what gets lowered. A name matches any function or method
    of that ``__name__`` (``"add"``: ``operator.add``, ``torch.add``, ``Tensor.add``).
    """
    def add(fn: Callable) -> Callable:
        for target in targets:
            is_layer = isinstance(target, type) and issubclass(target, nn.Module)
            (MODULE_LOWERINGS if is_layer else FUNCTION_LOWERINGS)[target] = fn
        return fn
    return add


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _unsupported(node: torch.fx.Node) -> DassError:
    return DassError(f"the runtime does not support {node.op} {_target_name(node)!r} (node {node.name}); "
                     "dass.deploy.compiler.register_lowering adds a lowering")


def _function_lowering(node: torch.fx.Node) -> FunctionLowering:
    lower = FUNCTION_LOWERINGS.get(node.target) or FUNCTION_LOWERINGS.get(_target_name(node))
    if lower is None:
        raise _unsupported(node)
    return lower


def _scalar_pair(v, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise DassError(f"the runtime supports square {what} only, got {v}")
        v = v[0]
    return int(v)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().numpy()


@register_lowering(nn.Conv2d)
def _conv2d(low: Lowering, node: torch.fx.Node, m: nn.Conv2d) -> None:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise DassError(f"{node.target}: the runtime supports numeric zero padding only")
    low.emit("conv", node, [low.arg(node.args[0])], weight=_numpy(m.weight), bias=_numpy(m.bias),
             stride=_scalar_pair(m.stride, "strides"), pad=_scalar_pair(m.padding, "padding"),
             dil=_scalar_pair(m.dilation, "dilation"), groups=m.groups)


@register_lowering(nn.Linear)
def _linear(low: Lowering, node: torch.fx.Node, m: nn.Linear) -> None:
    """A 1x1 conv on a 1x1 plane."""
    low.emit("conv", node, [low.arg(node.args[0])], weight=_numpy(m.weight)[:, :, None, None], bias=_numpy(m.bias),
             stride=1, pad=0, dil=1, groups=1, linear=True)


@register_lowering(nn.BatchNorm2d)
def _batchnorm(low: Lowering, node: torch.fx.Node, m: nn.BatchNorm2d) -> None:
    """A batch norm left unfolded (after a concat or an addition): a per-channel affine map."""
    scale = (m.weight if m.affine else torch.ones_like(m.running_var)) / torch.sqrt(m.running_var + m.eps)
    shift = (m.bias if m.affine else torch.zeros_like(m.running_mean)) - m.running_mean * scale
    low.emit("affine", node, [low.arg(node.args[0])], scale=_numpy(scale), shift=_numpy(shift))


def _activation(act: Act) -> Callable:
    def lower(low: Lowering, node: torch.fx.Node, *_module) -> None:
        low.emit("act", node, [low.arg(node.args[0])], act=act)
    return lower


def _same_value(low: Lowering, node: torch.fx.Node, *_module) -> None:
    """Layers and functions that do nothing at inference on (C, H, W) values."""
    low.alias(node, low.arg(node.args[0]))


def _global_avg_pool(low: Lowering, node: torch.fx.Node, *_module) -> None:
    if _shape(node)[1:] != (1, 1):
        raise DassError(f"{node.name}: the runtime supports global average pooling only")
    low.emit("gap", node, [low.arg(node.args[0])])


def _pool_kind(is_max: bool, count_include_pad: bool) -> PoolKind:
    if is_max:
        return PoolKind.MAX
    return PoolKind.AVG_PADDED if count_include_pad else PoolKind.AVG_INSIDE


def _emit_pool(low: Lowering, node: torch.fx.Node, x: int, k, s, p, kind: PoolKind, ceil_mode: bool = False,
               dilation=1) -> None:
    if ceil_mode or _scalar_pair(dilation, "dilation") != 1:
        raise DassError(f"{node.name}: pooling with ceil_mode or dilation is not supported by the runtime")
    s = k if s is None or s == [] else s
    low.emit("pool", node, [x], k=_scalar_pair(k, "pool windows"), stride=_scalar_pair(s, "strides"),
             pad=_scalar_pair(p, "padding"), pool_kind=kind)


@register_lowering(nn.MaxPool2d, nn.AvgPool2d)
def _pool_layer(low: Lowering, node: torch.fx.Node, m: nn.Module) -> None:
    kind = _pool_kind(isinstance(m, nn.MaxPool2d), getattr(m, "count_include_pad", True))
    _emit_pool(low, node, low.arg(node.args[0]), m.kernel_size, m.stride, m.padding, kind, m.ceil_mode,
               getattr(m, "dilation", 1))


register_lowering(nn.ReLU, F.relu, torch.relu, "relu")(_activation(Act.RELU))
register_lowering(nn.ReLU6, F.relu6, "relu6")(_activation(Act.RELU6))
register_lowering(nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, torch.mean)(_global_avg_pool)
register_lowering(nn.Identity, nn.Dropout, nn.Flatten, torch.flatten, "flatten", "view", "reshape")(_same_value)


_POOL_PARAMETERS = {   # the positional order of the functional pools' parameters
    F.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    F.avg_pool2d: ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}


@register_lowering(F.max_pool2d, F.avg_pool2d)
def _pool_function(low: Lowering, node: torch.fx.Node) -> None:
    given = {**dict(zip(_POOL_PARAMETERS[node.target], node.args)), **node.kwargs}   # positional or keyword alike
    if given.get("divisor_override") is not None or given.get("return_indices"):
        raise DassError(f"{node.name}: pooling with divisor_override or return_indices is not supported by the runtime")
    k = given["kernel_size"]
    kind = _pool_kind(node.target is F.max_pool2d, given.get("count_include_pad", True))
    _emit_pool(low, node, low.arg(given["input"]), k, given.get("stride") or k, given.get("padding", 0), kind,
               given.get("ceil_mode", False), given.get("dilation", 1))


@register_lowering(operator.add, torch.add, "add")
def _add(low: Lowering, node: torch.fx.Node) -> None:
    a, b = node.args[0], node.args[1]
    for const, other in ((a, b), (b, a)):
        if isinstance(const, (int, float)) and const == 0 and isinstance(other, torch.fx.Node):
            low.alias(node, low.arg(other))  # `0 + h`: the sum's start value
            return
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
        raise DassError(f"{node.name}: the runtime adds two tensors only")
    if _shape(a) != _shape(b):
        raise DassError(f"{node.name}: the runtime does not broadcast in additions")
    low.emit("add", node, [low.arg(a), low.arg(b)])


@register_lowering(torch.cat)
def _concat(low: Lowering, node: torch.fx.Node) -> None:
    args = node.args
    dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
    if dim not in (1, -3):
        raise DassError(f"{node.name}: the runtime concatenates along channels only")
    low.emit("concat", node, [low.arg(a) for a in args[0]])


@register_lowering(F.pad)
def _zero_pad(low: Lowering, node: torch.fx.Node) -> None:
    args, kw = node.args, node.kwargs
    pads = args[1] if len(args) > 1 else kw["pad"]
    mode = args[2] if len(args) > 2 else kw.get("mode", "constant")
    value = args[3] if len(args) > 3 else kw.get("value", None)
    if mode != "constant" or value not in (None, 0, 0.0) or len(pads) != 4 or min(pads) < 0:
        raise DassError(f"{node.name}: the runtime supports zero padding of height and width only")
    low.emit("shift", node, [low.arg(args[0])], dy=-int(pads[2]), dx=-int(pads[0]))


@register_lowering(operator.getitem)
def _crop(low: Lowering, node: torch.fx.Node) -> None:
    x, index = node.args
    index = index if isinstance(index, tuple) else (index,)
    starts = []
    for i, sl in enumerate(index):
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise DassError(f"{node.name}: the runtime supports unit-step slices only")
        if i < 2 and (sl.start, sl.stop) != (None, None):
            raise DassError(f"{node.name}: the runtime slices height and width only")
        starts.append(sl.start or 0)
    starts += [0] * (4 - len(starts))
    low.emit("shift", node, [low.arg(x)], dy=int(starts[2]), dx=int(starts[3]))


def _unless_same_shape(lower: Callable[[Lowering, torch.fx.Node, int], None]) -> FunctionLowering:
    """Shape-dependent leaf functions (pad_to_even, pool_if_possible): nothing to do when the shape stays."""
    def lower_or_alias(low: Lowering, node: torch.fx.Node) -> None:
        x = node.args[0]
        if _shape(x) == _shape(node):
            low.alias(node, low.arg(x))
        else:
            lower(low, node, low.arg(x))
    return lower_or_alias


register_lowering("pad_to_even")(_unless_same_shape(lambda low, node, x: low.emit("shift", node, [x], dy=0, dx=0)))
register_lowering("pool_if_possible")(_unless_same_shape(
    lambda low, node, x: _emit_pool(low, node, x, 2, 2, 0, PoolKind.MAX)))


@register_lowering("mul")
def _times_zero(low: Lowering, node: torch.fx.Node) -> None:
    """``x * 0.0``: the DARTS "none" op."""
    if len(node.args) != 2 or node.args[1] != 0.0:
        raise _unsupported(node)
    low.emit("zero", node, [low.arg(node.args[0])])


# ---- fusion passes ---------------------------------------------------------------------------------------

def _merge_duplicate_activations(g: _Graph) -> None:
    """One op per activation of a value: DARTS gives every op on an edge its own ReLU of the same node."""
    seen: dict[tuple[Act, int], int] = {}
    rename: dict[int, int] = {}
    for op in g.ops:
        op.inputs = [rename.get(i, i) for i in op.inputs]
        if op.kind == "act":
            key = (op.act, op.inputs[0])
            if key in seen:
                rename[op.output] = seen[key]
                op.alive = False
            else:
                seen[key] = op.output
    g.output_id = rename.get(g.output_id, g.output_id)
    g.drop_dead()


def _composable_pair(g: _Graph, dw: IROp) -> IROp | None:
    """The pointwise conv that is the only reader of depthwise conv ``dw``'s output, with nothing between them
    (no activation, no residual), or None."""
    p = dw.params
    if (dw.kind != "conv" or p.get("linear") or p["groups"] == 1 or p["weight"].shape[1] != 1
            or p["groups"] != p["weight"].shape[0] or dw.act is not Act.NONE or "residual" in p
            or dw.output == g.output_id):
        return None
    users = g.users(dw.output)
    if len(users) != 1:
        return None
    pw = users[0]
    q = pw.params
    if (pw.kind != "conv" or q.get("linear") or pw.inputs != [dw.output] or q["weight"].shape[-2:] != (1, 1)
            or q["stride"] != 1 or q["pad"] != 0 or q["groups"] != 1 or pw.in_act is not Act.NONE):
        return None
    return pw


def _compose_separable_convs(g: _Graph, options: CompileOptions) -> None:
    """A depthwise conv read only by a pointwise conv (the halves of DARTS' separable and dilated convs)
    becomes one sparse KxK conv: weight[o, c, y, x] = pointwise[o, c] * depthwise[c, y, x], bias = the pointwise
    bias + pointwise @ depthwise bias. Each pair then costs one instruction, no intermediate plane and no
    per-channel copies (the depthwise half cost 7 us per instruction at batch 1 for ~2 taps per channel). The
    composed conv has one nonzero per (nonzero pointwise weight, depthwise tap of its channel): fewer than the
    pair at high sparsity (a channel without taps drops its pointwise column), up to 2x more for 5x5 at 90%;
    pairs are composed when that stays within ``options.compose_separable`` percent."""
    if options.compose_separable <= 0:
        return
    for dw in g.ops:
        pw = _composable_pair(g, dw) if dw.alive else None
        if pw is None:
            continue
        wd, wp = dw.params["weight"][:, 0], pw.params["weight"][:, :, 0, 0]   # (C, k, k), (CO, C)
        weight = (wp[:, :, None, None] * wd[None]).astype(np.float32)
        pair = np.count_nonzero(wd) + np.count_nonzero(wp)
        if np.count_nonzero(weight) * 100 > options.compose_separable * max(pair, 1):
            continue
        bias = pw.params["bias"]
        if dw.params["bias"] is not None:
            extra = wp.astype(np.float64) @ dw.params["bias"].astype(np.float64)
            bias = (extra if bias is None else bias + extra).astype(np.float32)
        pw.params = dict(dw.params, weight=weight, bias=bias, groups=1, separable=True)
        pw.inputs, pw.in_act = list(dw.inputs), dw.in_act
        dw.alive = False
    g.drop_dead()


def _fuse_additions_into_convs(g: _Graph) -> None:
    """``conv(x) + other`` in the conv's store (residual blocks): no addition op, no pass over its output.
    The conv computing the later operand takes it, so that the other operand exists when the conv runs."""
    producer = g.producers()
    position = {op.output: k for k, op in enumerate(g.ops)}
    for op in g.ops:
        if op.kind != "add" or not op.alive or op.act is not Act.NONE:
            continue
        a, b = op.inputs
        for mine, other in ((b, a), (a, b)):
            src = producer.get(mine)
            if (src is not None and src.alive and src.kind == "conv" and "residual" not in src.params
                    and src.act is Act.NONE and len(g.users(mine)) == 1 and mine != other
                    and position.get(other, -1) < position[mine] and mine != g.output_id):
                src.params["residual"] = other
                src.inputs = src.inputs + [other]
                g.redirect(op.output, src.output)
                op.alive = False
                break
    g.drop_dead()


def _fuse_activations_into_producers(g: _Graph) -> None:
    """An activation into the store of the conv / add / affine / pool computing its input, when it is that
    value's only reader: no op and no pass over the value."""
    producer = g.producers()
    for op in g.ops:
        if op.kind != "act" or not op.alive:
            continue
        src = producer.get(op.inputs[0])
        if (src is not None and src.alive and src.kind in ("conv", "add", "affine", "pool") and src.act is Act.NONE
                and len(g.users(src.output)) == 1 and src.output != g.output_id):
            src.act = op.act
            g.redirect(op.output, src.output)
            op.alive = False
    g.drop_dead()


def _fuse_activations_into_input_copies(g: _Graph) -> None:
    """An activation whose readers all make a padded copy of their input (DARTS' ReLU -> conv) is applied on
    the way into those copies: no op and no pass over the value."""
    for op in g.ops:
        if op.kind != "act" or not op.alive or op.output == g.output_id:
            continue
        users = g.users(op.output)
        if users and all(_copies_input(u, op.output) for u in users):
            for u in users:
                u.in_act = op.act
                u.inputs = [op.inputs[0]] + u.inputs[1:]
            op.alive = False
    g.drop_dead()


def _copies_input(op: IROp, value: int) -> bool:
    """Whether ``op`` is a conv making a padded copy of its input ``value`` (read once, no input activation)."""
    return (op.kind == "conv" and (op.params["stride"] > 1 or op.params["pad"] > 0) and op.in_act is Act.NONE
            and op.inputs.count(value) == 1 and op.inputs[0] == value)


# ---- layout passes ---------------------------------------------------------------------------------------

def _place_concat_inputs(g: _Graph) -> None:
    """Let each concatenation input be written straight into its channel slice of the output; a concat
    remains only for the inputs that cannot (it then copies those)."""
    produced = {op.output for op in g.ops}
    placed: set[int] = set()
    kept = []
    for op in g.ops:
        if op.kind != "concat":
            kept.append(op)
            continue
        out = g.values[op.output]
        copies, at = [], 0
        for v in op.inputs:
            val = g.values[v]
            if v in produced and v not in placed and v != g.output_id and val.stride == 0:
                val.buffer, val.at, val.stride = out.buffer, at * out.shape[1] * out.shape[2], out.size
                placed.add(v)
            else:   # the program input, a value used twice, or one already placed elsewhere: copy it
                copies.append((v, at))
            at += val.shape[0]
        if copies:
            op.params["copies"] = copies
            kept.append(op)
    g.ops = kept


def _unfolds(op: IROp, x: Value, out: Value, options: CompileOptions) -> bool:
    """Whether the runtime unfolds this conv's input (small output planes: one contiguous row per tap)."""
    p, k = op.params, op.params["weight"].shape[-1]
    _, h, wd = x.shape
    return ((k > 1 or p["stride"] > 1) and out.shape[1] * out.shape[2] <= options.unfold_max_pixels
            and (h + 2 * p["pad"]) * (wd + 2 * p["pad"]) <= IM2COL_MAX_PADDED)


def _shifted_copy(op: IROp, x: Value, out: Value, options: CompileOptions) -> bool:
    """Whether this conv (stride 1 or 2) copies its input as K*s column-shifted planes (``Layout.SHIFTED``) rather
    than one padded (phase-split) plane: every tap then reads the output plane's pixels as one run of aligned
    vectors, and the runtime blocks the taps for L1. Only where the copy pays: about co*k*density multiply-adds per
    copied float. (Depthwise convs copy one channel at a time into L1 instead, see ``_per_channel_copy``.)"""
    if op.kind != "conv":
        return False
    p, (co, _, k, _) = op.params, op.params["weight"].shape
    return (options.shifted_copies and not p.get("linear") and p["stride"] <= 2 and k > 1
            and p["groups"] == 1 and out.shape[1] * out.shape[2] % 16 == 0 and not _unfolds(op, x, out, options)
            and co * k * _density(op) >= SHIFTED_MIN_REUSE)


def _chunked_pointwise(op: IROp, x: Value, out: Value, options: CompileOptions) -> bool:
    """Whether this pointwise conv runs chunk by chunk like a shifted one, on its input read in place (its planes
    are the output's): a tile of pixels outside the output channels, so that they all read the tile's input rows
    from L1 (in output-channel order each one reads the whole input again)."""
    if op.kind != "conv":
        return False
    p, (_, _, k, _) = op.params, op.params["weight"].shape
    return (options.chunked_pointwise and not p.get("linear") and k == 1 and p["stride"] == 1 and p["pad"] == 0
            and p["groups"] == 1 and not x.pad and op.in_act is Act.NONE and out.shape[1] * out.shape[2] % 16 == 0)


def _flat_planes(op: IROp, x: Value, out: Value, options: CompileOptions) -> bool:
    """Whether this conv's output and residual are flat planes (not stored padded): its taps are chunked."""
    return _shifted_copy(op, x, out, options) or _chunked_pointwise(op, x, out, options)


SHIFTED_MIN_REUSE = 8        # multiply-adds per float of a shifted copy (about co * k * density) worth the copy
                             # (below a thread per image every thread copies the whole image: 4 lost at 99%)
L1_CHUNK_BYTES = 32 * 1024   # the input rows of one chunk of a chunked conv's taps (see _taps_chunk)
TAPS_PER_SEGMENT = 8         # ... and at least this many taps per output channel and chunk, on average


def _taps_chunk(op: IROp, out: Value) -> int:
    """Input channels per chunk of a chunked conv's taps (run_conv_chunked): as many as keep the rows that one
    tile of output pixels reads from them within L1, but enough that an output channel holds several taps in each
    chunk (every chunk costs a load and a store of the tile's partial sums)."""
    p, (_, cin, k, _) = op.params, op.params["weight"].shape
    _, ho, wo = out.shape
    pix = ho * wo
    tile = next(v * 16 for v in (16, 8, 4, 2, 1) if pix % (v * 16) == 0)   # as the runtime picks it
    s = p["stride"]
    rows = -(-tile // wo) + (k - 1) * p["dil"] // s
    per_channel = k * s * rows * min(tile, wo) * 4
    density = max(_density(op), 1e-9)
    want = max(L1_CHUNK_BYTES // per_channel, -(-TAPS_PER_SEGMENT // (k * k * density)))
    return int(min(cin, max(1, want)))


def _store_outputs_padded(g: _Graph, options: CompileOptions) -> None:
    """Store a conv's output zero-padded when every reader can take it so: stride-1 convs with that padding
    read it in place of their padded copy (no copy, no barrier after it), residual additions through a row
    stride. (Measured: 5% faster ResNet-18 at 90% sparsity, batch 1, A/B in one process.)"""
    keep = g.kept_buffers()
    for src in g.ops:
        x, val = g.io(src)
        if (src.kind != "conv" or src.params.get("linear") or val.buffer in keep or val.stride or val.at
                or _unfolds(src, x, val, options) or _flat_planes(src, x, val, options)):
            continue
        pads = _paddings_read_in_place(g, src.output, options)
        if pads is not None and len(pads) == 1:
            val.pad = pads.pop()


def _paddings_read_in_place(g: _Graph, value: int, options: CompileOptions) -> set[int] | None:
    """The paddings with which the readers of ``value`` would read it stored padded; None when a reader
    cannot read it so (not a conv, unfolding, strided, no padding, or an input activation)."""
    pads = set()
    for u in g.users(value):
        if u.kind != "conv" or u.params.get("linear") or _unfolds(u, *g.io(u), options):
            return None
        if _flat_planes(u, *g.io(u), options):   # (its input and its residual: flat planes)
            return None
        if u.inputs[0] == value:   # (else the residual, read through a row stride)
            if u.params["stride"] != 1 or u.params["pad"] < 1 or u.in_act is not Act.NONE:
                return None
            pads.add(u.params["pad"])
    return pads


def _copy_geometry(op: IROp, x: Value, out: Value, options: CompileOptions) -> tuple[int, int] | None:
    """(hq, wq) of each phase plane of the padded, phase-split copy this conv makes of its input; None when it
    reads its input in place or unfolds it."""
    p, k = op.params, op.params["weight"].shape[-1]
    s, pad, d = p["stride"], p["pad"], p["dil"]
    if (x.pad or _unfolds(op, x, out, options) or _shifted_copy(op, x, out, options)
            or not (s > 1 or pad > 0 or op.in_act is not Act.NONE)):
        return None
    _, h, wd = x.shape
    if s == 1:
        return h + 2 * pad, wd + 2 * pad
    reach = ((k - 1) * d) // s
    return max(-(-(h + 2 * pad) // s), out.shape[1] + reach), max(-(-(wd + 2 * pad) // s), out.shape[2] + reach)


def _per_channel_copy(op: IROp, x: Value, out: Value, options: CompileOptions) -> bool:
    """A depthwise conv that makes a padded copy makes it channel by channel, in each thread's own scratch, right
    before the channel's taps read it (no copy phase and no barrier after it; the plane is still in L1)."""
    return (options.private_depthwise and op.params["groups"] == x.shape[0] == out.shape[0] > 1
            and not op.params.get("linear") and _copy_geometry(op, x, out, options) is not None)


def _rider_taps(maker: IROp, op: IROp, g: _Graph, options: CompileOptions) -> np.ndarray | None:
    """Where ``op``'s taps (k, k) lie in the column-shifted copy ``maker`` makes of the same input: plane (kx, a)
    of the maker holds padded pixel (q*s + a, r*s + kx*d), so a tap of ``op`` (padding p') reads plane
    ((kx'*d' + shift) / d, (ky'*d' + shift) % s) from row (ky'*d' + shift) // s, shift = p - p'. None when a tap
    falls between the maker's planes or below its rows, or the convs differ in input, stride or output size."""
    if maker.kind != "conv" or op.kind != "conv":
        return None
    (mx, mout), (x, out) = g.io(maker), g.io(op)
    pa, pb = maker.params, op.params
    if (pb.get("linear") or pb["groups"] != 1 or op.inputs[0] != maker.inputs[0]
            or pb["stride"] != pa["stride"] or out.shape[1:] != mout.shape[1:] or _shifted_copy(op, x, out, options)
            or not _shifted_copy(maker, mx, mout, options)):
        return None
    s, ka, da, kb, db = pa["stride"], pa["weight"].shape[-1], pa["dil"], pb["weight"].shape[-1], pb["dil"]
    _, ho, wo = out.shape
    hq, shift = ho + (ka - 1) * da // s, pa["pad"] - pb["pad"]
    sub = shifted_plane(hq, wo)
    taps = np.zeros((kb, kb), np.int64)
    for ky in range(kb):
        for kx in range(kb):
            col, row = kx * db + shift, ky * db + shift
            if col < 0 or col % da or col // da >= ka or row < 0 or row // s + ho > hq:
                return None
            taps[ky, kx] = (col // da * s + row % s) * sub + row // s * wo
    return taps


def _schedule_riders(g: _Graph, options: CompileOptions) -> None:
    """Move each conv whose taps fall in the column-shifted copy an earlier conv makes of the same input right
    after that conv, as its rider: the runtime computes it from the same copy, image by image (a ResNet
    downsampling block's 1x1 shortcut rides its 3x3 conv: one pass over the block's input instead of two). Runs
    before the additions are fused, so that the residual goes into the block's second conv."""
    ops, k = g.ops, 0
    while k < len(ops):
        maker, at = ops[k], k + 1
        for j in range(k + 1, len(ops)):
            if len(ops[j].inputs) == 1 and _rider_taps(maker, ops[j], g, options) is not None:
                ops[j].params["rides"] = maker
                ops.insert(at, ops.pop(j))
                at += 1
        k = at


def _attach_riders(g: _Graph, options: CompileOptions) -> None:
    """Keep a rider where it still reads what its conv copies (right after it, the same input activation), with
    the channels it reads added to that copy; else it makes a copy of its own."""
    prev = None
    for op in g.ops:
        maker = op.params.get("rides")
        if maker is not None:
            after = prev is maker or (prev is not None and prev.params.get("rides") is maker)
            taps = _rider_taps(maker, op, g, options)
            if not after or op.in_act != maker.in_act or taps is None:
                del op.params["rides"]
            else:
                op.params["rider_taps"] = taps
                maker.params.setdefault("riders", []).append(op)
        prev = op


def _share_padded_copies(g: _Graph, options: CompileOptions) -> None:
    """Let a conv read the padded copy that the previous copying conv made of the same input, when its taps
    fall inside it: a ResNet downsampling block's 1x1 shortcut reads the copy of its 3x3 conv (a copy with
    more padding serves one with less, shifted). The runtime then skips that copy and the barrier after it."""
    last = None   # the latest conv that writes the shared copy buffer, and its geometry
    for op in g.ops:
        if op.kind != "conv":
            continue
        x, out = g.io(op)
        if "rides" in op.params:
            continue
        if _shifted_copy(op, x, out, options):   # its copy goes after the earlier one, which stays readable
            if last is not None:
                maker, (hq, wq) = last
                op.params["scratch_at"] = g.values[maker.inputs[0]].shape[0] * maker.params["stride"] ** 2 * hq * wq
            continue
        geometry = _copy_geometry(op, x, out, options)
        if geometry is None or _per_channel_copy(op, x, out, options):
            if geometry is not None or _unfolds(op, x, out, options):
                last = None   # its copy (unfolded, or per channel) overwrites the buffer
            continue
        shift = _shift_into_copy(last, op, out) if last is not None else None
        if shift is None:
            last = (op, geometry)
            continue
        maker, (hq, wq) = last
        op.params["copy_of"] = (hq, wq, shift)
        maker.params.setdefault("copy_for", []).append(op)


def _shift_into_copy(last: tuple[IROp, tuple[int, int]], op: IROp, out: Value) -> int | None:
    """How many rows and columns ``op``'s taps are shifted into the copy ``last`` = (maker, (hq, wq)) made
    (its extra padding); None when that copy does not serve ``op``."""
    maker, (hq, wq) = last
    pa, pb = maker.params, op.params
    k, d, s, shift = pb["weight"].shape[-1], pb["dil"], pb["stride"], pa["pad"] - pb["pad"]
    reach = ((k - 1) * d + shift) // s
    if (maker.inputs[0] == op.inputs[0] and pa["stride"] == s and maker.in_act == op.in_act
            and shift >= 0 and out.shape[1] + reach <= hq and out.shape[2] + reach <= wq):
        return shift
    return None


# ---- emission --------------------------------------------------------------------------------------------

def _plan_arena(g: _Graph) -> tuple[dict[int, int], int]:
    """Per-image arena offsets of the buffers, and the arena's size: a buffer's memory is reused once its
    last reader has run (best fit in a coalesced free list)."""
    size: dict[int, int] = {}
    for v in g.values:   # whole cache lines: buffers start 64-byte aligned (with an aligned arena)
        size[v.buffer] = max(size.get(v.buffer, 0), -(-v.image_stride // ALIGN) * ALIGN)
    first, last = _live_ranges(g)
    offsets: dict[int, int] = {}
    free: list[tuple[int, int]] = []    # (offset, size), sorted and coalesced
    active: list[int] = []
    top = 0
    for b in sorted(first, key=lambda b: first[b]):
        for a in [a for a in active if last.get(a, first[a]) < first[b]]:
            active.remove(a)
            free = _coalesce(sorted(free + [(offsets[a], size[a])]))
        offsets[b], top = _allocate(free, size[b], top)
        active.append(b)
    return offsets, top


def _live_ranges(g: _Graph) -> tuple[dict[int, int], dict[int, int]]:
    """Per buffer: the op that first writes it (-1: the program input) and the last op that touches it."""
    first: dict[int, int] = {g.values[g.input_id].buffer: -1}
    last: dict[int, int] = {}
    for k, op in enumerate(g.ops):
        b = g.values[op.output].buffer
        first.setdefault(b, k)
        last[b] = max(last.get(b, k), k)
        for v in op.inputs:
            last[g.values[v].buffer] = max(last.get(g.values[v].buffer, k), k)
    for b in g.kept_buffers():
        last[b] = len(g.ops)
    return first, last


def _coalesce(free: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for off, sz in free:
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + sz)
        else:
            merged.append((off, sz))
    return merged


def _allocate(free: list[tuple[int, int]], need: int, top: int) -> tuple[int, int]:
    """The offset for ``need`` floats: the best-fitting free block (``free`` shrinks in place), else the top of
    the arena. Returns it and the new top."""
    fits = [j for j, (_, sz) in enumerate(free) if sz >= need]
    if not fits:
        return top, top + need
    j = min(fits, key=lambda j: free[j][1])
    off, sz = free[j]
    free[j:j + 1] = [(off + need, sz - need)] if sz > need else []
    return off, top


class _Pools:
    """The float and int pools the instructions address by offset."""

    def __init__(self) -> None:
        self.floats: list[np.ndarray] = [np.zeros(1, np.float32)]
        self.ints: list[np.ndarray] = [np.zeros(1, np.int32)]
        self.nf = 1
        self.ni = 1

    def f(self, a: np.ndarray) -> int:
        at = self.nf
        self.floats.append(np.ascontiguousarray(a, dtype=np.float32).ravel())
        self.nf += self.floats[-1].size
        return at

    def i(self, a: np.ndarray) -> int:
        at = self.ni
        a = np.ascontiguousarray(a).ravel()
        if a.size and (a.max() >= 2**31 or a.min() < -(2**31)):
            raise DassError("a layer is too large for the runtime's 32-bit offsets")
        self.ints.append(a.astype(np.int32))
        self.ni += a.size
        return at


@dataclass
class _InputLayout:
    """What a conv's taps read: its input in place, its own padded (phase-split) or unfolded copy, or the
    copy an earlier conv made."""

    scratch: Scratch
    layout: Layout
    hq: int
    wq: int
    plane: int          # floats per input channel of what the taps read
    taps: np.ndarray    # (k, k): offset of each tap inside a channel's plane
    chunk: int = 0      # chunked taps (run_conv_chunked): input channels per chunk
    at: int = 0         # ... and where its copy starts in the scratch (floats per image)


def _input_layout(op: IROp, x: Value, out: Value, options: CompileOptions) -> _InputLayout:
    p, k = op.params, op.params["weight"].shape[-1]
    s, d = p["stride"], p["dil"]
    _, ho, wo = out.shape
    ky, kx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    if _unfolds(op, x, out, options):   # small output planes: one contiguous row per tap
        per_thread = options.private_unfold and s == 1 and k > 1
        return _InputLayout(Scratch.PER_THREAD if per_thread else Scratch.OWN_COPY, Layout.UNFOLDED, ho, wo,
                            k * k * ho * wo, (ky * k + kx) * ho * wo)
    if "rides" in p:   # the copy of the shifted conv before it
        maker = p["rides"]
        hq = ho + (maker.params["weight"].shape[-1] - 1) * maker.params["dil"] // s
        plane = maker.params["weight"].shape[-1] * s * shifted_plane(hq, wo)
        return _InputLayout(Scratch.EARLIER_COPY, Layout.SHIFTED, hq, wo, plane, p["rider_taps"],
                            _taps_chunk(op, out), maker.params.get("scratch_at", 0))
    if _shifted_copy(op, x, out, options):   # plane (kx, ky*d % s) from row ky*d // s: ho * wo floats per tap
        hq = ho + (k - 1) * d // s
        sub = shifted_plane(hq, wo)
        return _InputLayout(Scratch.OWN_COPY, Layout.SHIFTED, hq, wo, k * s * sub,
                            (kx * s + ky * d % s) * sub + ky * d // s * wo, _taps_chunk(op, out),
                            p.get("scratch_at", 0))
    geometry = _copy_geometry(op, x, out, options)
    if "copy_of" in p:
        (hq, wq, shift), scratch = p["copy_of"], Scratch.EARLIER_COPY
    elif geometry is not None:
        (hq, wq), shift = geometry, 0
        scratch = Scratch.PER_CHANNEL if _per_channel_copy(op, x, out, options) else Scratch.OWN_COPY
    else:   # already padded by its producer, or no padding
        hq, wq, shift, scratch = x.shape[1] + 2 * x.pad, x.shape[2] + 2 * x.pad, 0, Scratch.IN_PLACE
    ky, kx = ky * d + shift, kx * d + shift   # padded rows and columns, in the copy's padding
    taps = ((ky % s) * s + kx % s) * hq * wq + (ky // s) * wq + kx // s
    chunked = scratch is Scratch.IN_PLACE and _chunked_pointwise(op, x, out, options)
    chunk = _taps_chunk(op, out) if chunked else 0
    return _InputLayout(scratch, Layout.PADDED, hq, wq, s * s * hq * wq, taps, chunk)


def _density(op: IROp) -> float:
    w = op.params["weight"]
    return np.count_nonzero(w) / max(1, w.size)


def _weight_fields(op: IROp, table: np.ndarray, layout: _InputLayout, out: Value, pools: _Pools,
                   options: CompileOptions) -> dict[str, int]:
    """Dense weights with the group's shared tap table, or the nonzeros with a tap offset each (CSR rows)."""
    w, groups = op.params["weight"], op.params["groups"]
    co, cin_g = w.shape[:2]
    flat = w.reshape(co, -1)
    if layout.chunk:   # CSR segments per (chunk of input channels, output channel)
        rows, cols, rowptr, _ = segments_by_chunk(flat, w.shape[2] * w.shape[3], layout.chunk)
        return dict(ROWS16=0, DENSE=0, KTAPS=0, WEIGHT=pools.f(flat[rows, cols]), TAPS=pools.i(table[cols]),
                    ROWPTR=pools.i(rowptr), AUX=layout.chunk)
    if _density(op) >= options.dense_threshold:
        return dict(DENSE=1, KTAPS=table.size, WEIGHT=pools.f(flat), TAPS=pools.i(table), ROWPTR=0)
    rows, cols = np.nonzero(flat)
    # (a per-channel copy holds the group's one plane: its taps start there)
    group_base = 0 if layout.scratch is Scratch.PER_CHANNEL else (rows // (co // groups)) * cin_g * layout.plane
    rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=co))])
    offsets = table[cols] + group_base
    rows16 = (options.rows16 and layout.layout is Layout.UNFOLDED and out.shape[1] * out.shape[2] == 16
              and offsets.size > 0 and offsets.max() // 16 < 2**16)
    if rows16:   # 16-bit row numbers, two per int32 word of the pool
        packed = (offsets // 16).astype(np.uint16)
        offsets = np.concatenate([packed, np.zeros(packed.size % 2, np.uint16)]).view(np.int32)
    return dict(ROWS16=int(rows16), DENSE=0, KTAPS=0, WEIGHT=pools.f(flat[rows, cols]), TAPS=pools.i(offsets),
                ROWPTR=pools.i(rowptr))


def _used_channels(op: IROp, dense: bool, cin: int) -> np.ndarray:
    """Input channels some tap reads: only those get a padded copy (at 99% most channels of a depthwise layer
    have no weight left; the dense layout reads every tap, zeros included, so it copies every channel)."""
    w, groups = op.params["weight"], op.params["groups"]
    co, cin_g, k, _ = w.shape
    if dense:
        return np.arange(cin)
    return np.flatnonzero(np.abs(w).reshape(groups, co // groups, cin_g, k * k).sum(axis=(1, 3)).reshape(-1))


def _phases(op: IROp, shift: int = 0) -> int:
    """Bit (a*s + b): some tap reads phase plane (a, b) of the copy."""
    p, k = op.params, op.params["weight"].shape[-1]
    s, d = p["stride"], p["dil"]
    offsets = {(y * d + shift) % s for y in range(k)}
    return sum(1 << int(a * s + b) for a in offsets for b in offsets)


def _copied_channels(op: IROp, dense: bool, cin: int, options: CompileOptions) -> tuple[np.ndarray, int]:
    """The channels and phase planes the copy must hold: those this conv reads, and those of the later convs
    that read its copy."""
    used, phases = _used_channels(op, dense, cin), _phases(op)
    for other in op.params.get("riders", []):
        used = np.union1d(used, _used_channels(other, False, cin))
    for other in op.params.get("copy_for", []):
        used = np.union1d(used, _used_channels(other, _density(other) >= options.dense_threshold, cin))
        phases |= _phases(other, other.params["copy_of"][2])
    return used, phases


def _shape_fields(x: Value, out: Value, act: Act) -> dict[str, int]:
    return dict(C=x.shape[0], H=x.shape[1], W=x.shape[2], CO=out.shape[0], HO=out.shape[1], WO=out.shape[2], ACT=act)


def _conv_fields(op: IROp, x: Value, y: Value | None, out: Value, pools: _Pools,
                 options: CompileOptions) -> tuple[dict[str, int], int, int]:
    """A conv's instruction fields, the scratch floats per image its copy needs, and its nonzero multiply-adds
    per image."""
    p, w = op.params, op.params["weight"]
    co, cin_g, k, k2 = w.shape
    if k != k2:
        raise DassError("the runtime supports square kernels only")
    if x.pad and (x.pad != p["pad"] or p["stride"] != 1 or op.in_act is not Act.NONE):
        raise DassError("internal: a padded value read by a conv that cannot read it in place")
    layout = _input_layout(op, x, out, options)
    # each tap of each input channel of a group, from the group's channel 0
    table = (np.arange(cin_g)[:, None] * layout.plane + layout.taps.ravel()[None, :]).ravel()
    fields = _shape_fields(x, out, op.act)
    fields.update(K=k, STRIDE=p["stride"], PAD=p["pad"], DIL=p["dil"], GROUPS=p["groups"], IN_ACT=op.in_act,
                  HQ=layout.hq, WQ=layout.wq, SCRATCH=layout.scratch, IM2COL=layout.layout, OUT_PAD=out.pad,
                  Y_PAD=y.pad if y is not None else 0, BIAS=pools.f(p["bias"]) if p["bias"] is not None else -1)
    fields.update(_weight_fields(op, table, layout, out, pools, options))
    used, phases = _copied_channels(op, bool(fields["DENSE"]), x.shape[0], options)
    fields.update(CHANNELS=pools.i(used), NCHANNELS=used.size, PHASES=phases)
    planes = 1 if layout.scratch is Scratch.PER_CHANNEL else x.shape[0]
    scratch = planes * layout.plane if layout.scratch is not Scratch.IN_PLACE else 0
    if layout.chunk:
        fields["AUX2"] = layout.at
        scratch += layout.at
    return fields, scratch, int(np.count_nonzero(w)) * out.shape[1] * out.shape[2]


# fields of the other ops, besides their shapes and output activation
_OP_FIELDS: dict[str, Callable[[IROp, _Pools], dict[str, int]]] = {
    "affine": lambda op, pools: dict(WEIGHT=pools.f(op.params["scale"]), BIAS=pools.f(op.params["shift"])),
    "pool": lambda op, pools: dict(K=op.params["k"], STRIDE=op.params["stride"], PAD=op.params["pad"],
                                   AUX=op.params["pool_kind"]),
    "shift": lambda op, pools: dict(AUX=op.params["dy"], AUX2=op.params["dx"]),
}


def _label(op: IROp, x: Value) -> str:
    if op.kind != "conv":
        return op.kind
    p = op.params
    k = p["weight"].shape[-1]
    if p.get("linear"):
        return "linear"
    if p["groups"] > 1 and p["groups"] == x.shape[0]:
        return f"depthwise {k}x{k}" + (" dilated" if p["dil"] > 1 else "")
    if p.get("separable"):
        return f"separable {k}x{k}" + (" dilated" if p["dil"] > 1 else "")
    if k == 1:
        return "pointwise"
    return f"conv {k}x{k}" + (" dilated" if p["dil"] > 1 else "")


class _Emitter:
    """The instruction table, weight pools, arena plan and scratch sizes of a laid-out graph."""

    def __init__(self, g: _Graph, options: CompileOptions, pools: _Pools):
        self.g, self.options = g, options
        self.offsets, self.arena_size = _plan_arena(g)
        self.pools = pools
        self.rows: list[np.ndarray] = []
        self.labels: list[str] = []
        self.macs: list[int] = []
        self.scratch = self.private = 0

    def row(self, kind: Op, x: Value, y: Value | None, out: Value, label: str, macs: int, fields: dict) -> None:
        row = np.zeros(N_FIELDS, np.int64)
        row[Field.OP] = kind
        for name, v in (("X", x), ("Y", y), ("OUT", out)):
            if v is None:
                row[Field[name]] = -1
            else:
                row[Field[name]], row[Field[name + "_AT"]] = self.offsets[v.buffer], v.at
                row[Field[name + "_IMG"]] = v.image_stride
        for name, value in fields.items():
            row[Field[name]] = value
        self.rows.append(row)
        self.labels.append(label)
        self.macs.append(macs)

    def op(self, op: IROp) -> None:
        values = self.g.values
        out = values[op.output]
        if op.kind == "concat":   # the inputs that could not be placed in their slice
            for v, at in op.params["copies"]:
                c, h, w = values[v].shape
                self.row(Op.COPY_CHANNELS, values[v], None, out, "concat", 0, dict(C=c, H=h, W=w, AUX=at))
            return
        x, y = values[op.inputs[0]], values[op.inputs[1]] if len(op.inputs) > 1 else None
        if op.kind == "conv":
            fields, need, macs = _conv_fields(op, x, y, out, self.pools, self.options)
            if fields["SCRATCH"] in (Scratch.PER_THREAD, Scratch.PER_CHANNEL) or fields.get("AUX", 0) > 0:
                self.private = max(self.private, need)   # (chunked: a copy per thread below a thread per image)
            if fields["SCRATCH"] not in (Scratch.PER_THREAD, Scratch.PER_CHANNEL):
                self.scratch = max(self.scratch, need)
        else:
            fields, macs = _shape_fields(x, out, op.act), 0
            if op.kind in _OP_FIELDS:
                fields.update(_OP_FIELDS[op.kind](op, self.pools))
        self.row(Op[op.kind.upper()], x, y, out, _label(op, x), macs, fields)

    def program(self, batched: Batched | None) -> Program:
        for op in self.g.ops:
            self.op(op)
        inp, outv = self.g.values[self.g.input_id], self.g.values[self.g.output_id]
        return Program(
            instructions=np.stack(self.rows) if self.rows else np.zeros((0, N_FIELDS), np.int64),
            fpool=np.concatenate(self.pools.floats), ipool=np.concatenate(self.pools.ints),
            arena_size=self.arena_size, scratch_size=self.scratch, input_offset=self.offsets[inp.buffer],
            input_shape=inp.shape, output_offset=self.offsets[outv.buffer], output_shape=outv.shape,
            labels=self.labels, macs=self.macs, output_dims=self.g.output_dims, private_scratch_size=self.private,
            batched=batched)


def compile_model(model: nn.Module, input_shape: tuple[int, int, int],
                  options: CompileOptions | None = None) -> Program:
    """Compile ``model`` (sparse layers, eval mode) for inputs of per-image shape ``input_shape``."""
    options = options or CompileOptions()
    folded = fold_batchnorm(model)
    ShapeProp(folded).propagate(torch.zeros(1, *input_shape))
    graph = Lowering(folded).run()
    _merge_duplicate_activations(graph)
    _compose_separable_convs(graph, options)
    if options.share_copies:
        _schedule_riders(graph, options)
    _fuse_additions_into_convs(graph)
    _fuse_activations_into_producers(graph)
    pools = _Pools()
    batched = lower_batched(graph, pools, _plan_arena, _label) if options.batched else None
    _fuse_activations_into_input_copies(graph)
    _place_concat_inputs(graph)
    if options.pad_values:
        _store_outputs_padded(graph, options)
    if options.share_copies:
        _attach_riders(graph, options)
        _share_padded_copies(graph, options)
    return _Emitter(graph, options, pools).program(batched)
