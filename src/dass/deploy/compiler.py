"""Compile a pruned model into a packed program for the sparse runtime.

Steps: materialize masks and fold batch norm (``fold_batchnorm``), trace with torch.fx and propagate
shapes for one input size, lower each graph node to a runtime op, fuse activations (into the producing
convolution's store, or into the padded input copy of the consuming convolutions), pack each
convolution's weights (CSR-like tap lists, or dense with a shared tap table when density is high), and
plan one activation arena with buffer reuse by liveness. The result is a :class:`Program`: plain NumPy
arrays that run without PyTorch.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import DassError
from .fold import fold_batchnorm
from .program import ACTS, FIELDS, N_FIELDS, OPS, Program

DENSE_THRESHOLD = 0.5  # layers at or above this density use the dense weight layout
IM2COL_MAX_PIXELS = 16  # convs with at most this many output pixels unfold their input (measured: no gain at 8x8)
IM2COL_MAX_PADDED = 1024  # floats: the runtime unfolds through a padded copy of this size on the stack
ROWS16 = True           # unfolded 4x4 layers store taps as 16-bit row numbers
ALIGN = 16              # floats: arena buffers start on cache lines
PAD_VALUES = True       # conv outputs read only by convs are stored padded (no copy in the readers)
SHARE_COPIES = True     # a conv reads the padded copy the previous one made of the same input
PRIVATE_UNFOLD = True   # stride-1 convs on small planes unfold into per-thread copies


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
    kind: str
    inputs: list[int]            # value ids
    output: int                  # value id
    params: dict = field(default_factory=dict)
    label: str = ""
    alive: bool = True


def _scalar_pair(v, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise DassError(f"the runtime supports square {what} only, got {v}")
        v = v[0]
    return int(v)


class _Lowering:
    """Turns the traced graph into IR ops over values."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.values: list[Value] = []
        self.ops: list[IROp] = []
        self.env: dict[str, int] = {}
        self.n_buffers = 0
        self.input_id = -1
        self.output_id = -1

    def new_value(self, shape: tuple[int, ...]) -> int:
        self.values.append(Value(tuple(shape), self.n_buffers))
        self.n_buffers += 1
        return len(self.values) - 1

    def alias(self, node: torch.fx.Node, src: int) -> None:
        self.env[node.name] = src

    def emit(self, kind: str, node: torch.fx.Node, inputs: list[int], label: str = "", **params) -> int:
        out = self.new_value(_shape(node))
        self.ops.append(IROp(kind, inputs, out, params, label or kind))
        self.env[node.name] = out
        return out

    def arg(self, a) -> int:
        if not isinstance(a, torch.fx.Node):
            raise DassError(f"the runtime cannot use a constant tensor argument ({a!r})")
        return self.env[a.name]

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.input_id >= 0:
                    raise DassError("the runtime compiles models with one input")
                self.input_id = self.new_value(_shape(node))
                self.env[node.name] = self.input_id
            elif node.op == "output":
                out = node.args[0]
                if isinstance(out, (tuple, list)):
                    out = out[0]
                self.output_id = self.arg(out)
                self.output_dims = tuple(int(d) for d in out.meta["tensor_meta"].shape[1:])
            elif node.op == "call_module":
                self.module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            elif node.op == "get_attr":
                raise DassError(f"the runtime cannot use parameter {node.target!r} outside a layer")

    def module(self, node: torch.fx.Node, m: nn.Module) -> None:
        x = self.arg(node.args[0])
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise DassError(f"{node.target}: the runtime supports numeric zero padding only")
            self.emit("conv", node, [x], weight=m.weight.detach().float().numpy(),
                      bias=None if m.bias is None else m.bias.detach().float().numpy(),
                      stride=_scalar_pair(m.stride, "strides"), pad=_scalar_pair(m.padding, "padding"),
                      dil=_scalar_pair(m.dilation, "dilation"), groups=m.groups, act=None)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().float().numpy()[:, :, None, None]
            self.emit("conv", node, [x], weight=w, bias=None if m.bias is None else m.bias.detach().float().numpy(),
                      stride=1, pad=0, dil=1, groups=1, act=None, linear=True)
        elif isinstance(m, nn.BatchNorm2d):
            scale = (m.weight if m.affine else torch.ones_like(m.running_var)) / torch.sqrt(m.running_var + m.eps)
            shift = (m.bias if m.affine else torch.zeros_like(m.running_mean)) - m.running_mean * scale
            self.emit("affine", node, [x], scale=scale.detach().float().numpy(), shift=shift.detach().float().numpy(),
                      act=None)
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            self.emit("act", node, [x], act="relu" if isinstance(m, nn.ReLU) else "relu6")
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            self.pool(node, x, m.kernel_size, m.stride, m.padding, isinstance(m, nn.MaxPool2d),
                      getattr(m, "count_include_pad", True), m.ceil_mode, getattr(m, "dilation", 1))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            if _shape(node)[1:] != (1, 1):
                raise DassError(f"{node.target}: the runtime supports global average pooling only")
            self.emit("gap", node, [x])
        elif isinstance(m, (nn.Identity, nn.Dropout, nn.Flatten)):
            self.alias(node, x)
        else:
            raise DassError(f"the runtime does not support layer {node.target!r} ({type(m).__name__})")

    def pool(self, node, x, k, s, p, is_max, count_pad, ceil_mode, dilation=1) -> None:
        if ceil_mode or _scalar_pair(dilation, "dilation") != 1:
            raise DassError(f"{node.name}: pooling with ceil_mode or dilation is not supported by the runtime")
        s = k if s is None or s == [] else s
        kind = 0 if is_max else (2 if count_pad else 1)
        self.emit("pool", node, [x], label="pool", k=_scalar_pair(k, "pool windows"), stride=_scalar_pair(s, "strides"),
                  pad=_scalar_pair(p, "padding"), pool_kind=kind, act=None)

    def function(self, node: torch.fx.Node) -> None:
        t, args, kw = node.target, node.args, node.kwargs
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        if t in (operator.add, torch.add) or name == "add":
            a, b = args[0], args[1]
            for const, other in ((a, b), (b, a)):
                if isinstance(const, (int, float)) and const == 0 and isinstance(other, torch.fx.Node):
                    self.alias(node, self.arg(other))  # `0 + h`: the sum's start value
                    return
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
                raise DassError(f"{node.name}: the runtime adds two tensors only")
            if _shape(a) != _shape(b):
                raise DassError(f"{node.name}: the runtime does not broadcast in additions")
            self.emit("add", node, [self.arg(a), self.arg(b)], act=None)
        elif t in (F.relu, torch.relu) or name == "relu":
            self.emit("act", node, [self.arg(args[0])], act="relu")
        elif t is F.relu6 or name == "relu6":
            self.emit("act", node, [self.arg(args[0])], act="relu6")
        elif t is torch.cat:
            dim = args[1] if len(args) > 1 else kw.get("dim", 0)
            if dim not in (1, -3):
                raise DassError(f"{node.name}: the runtime concatenates along channels only")
            self.emit("concat", node, [self.arg(a) for a in args[0]])
        elif t is F.adaptive_avg_pool2d or (t is torch.mean and _shape(node)[1:] == (1, 1)):
            if _shape(node)[1:] != (1, 1):
                raise DassError(f"{node.name}: the runtime supports global average pooling only")
            self.emit("gap", node, [self.arg(args[0])])
        elif t is torch.flatten or name in ("flatten", "view", "reshape"):
            self.alias(node, self.arg(args[0]))
        elif t is F.max_pool2d or t is F.avg_pool2d:
            k = args[1] if len(args) > 1 else kw["kernel_size"]
            s = args[2] if len(args) > 2 else kw.get("stride")
            p = args[3] if len(args) > 3 else kw.get("padding", 0)
            self.pool(node, self.arg(args[0]), k, s or k, p, t is F.max_pool2d, kw.get("count_include_pad", True),
                      kw.get("ceil_mode", False))
        elif t is F.pad:
            pads = args[1] if len(args) > 1 else kw["pad"]
            mode = args[2] if len(args) > 2 else kw.get("mode", "constant")
            value = args[3] if len(args) > 3 else kw.get("value", None)
            if mode != "constant" or value not in (None, 0, 0.0) or len(pads) != 4 or min(pads) < 0:
                raise DassError(f"{node.name}: the runtime supports zero padding of height and width only")
            self.emit("shift", node, [self.arg(args[0])], dy=-int(pads[2]), dx=-int(pads[0]))
        elif name == "pad_to_even":
            x = args[0]
            if _shape(x) == _shape(node):
                self.alias(node, self.arg(x))
            else:
                self.emit("shift", node, [self.arg(x)], dy=0, dx=0)
        elif name == "pool_if_possible":
            x = args[0]
            if _shape(x) == _shape(node):
                self.alias(node, self.arg(x))
            else:
                self.pool(node, self.arg(x), 2, 2, 0, True, True, False)
        elif t is operator.getitem:
            self.crop(node)
        elif name == "mul" and len(args) == 2 and args[1] == 0.0:
            self.emit("zero", node, [self.arg(args[0])])
        else:
            raise DassError(f"the runtime does not support {node.op} {name!r} (node {node.name})")

    def crop(self, node: torch.fx.Node) -> None:
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
        self.emit("shift", node, [self.arg(x)], dy=int(starts[2]), dx=int(starts[3]))


def _fuse(low: _Lowering) -> None:
    """Deduplicate activations and fold them into their producer or their consumers."""
    ops = low.ops
    producer = {op.output: op for op in ops}
    # 1. identical activations of the same value (DARTS gives every op on an edge its own ReLU)
    seen: dict[tuple, int] = {}
    rename: dict[int, int] = {}
    for op in ops:
        op.inputs = [rename.get(i, i) for i in op.inputs]
        if op.kind == "act":
            key = (op.params["act"], op.inputs[0])
            if key in seen:
                rename[op.output] = seen[key]
                op.alive = False
            else:
                seen[key] = op.output
    low.output_id = rename.get(low.output_id, low.output_id)
    ops = [op for op in ops if op.alive]

    def users_of(value: int) -> list[IROp]:
        return [op for op in ops if op.alive and value in op.inputs]

    # 2a. an addition into the store of the conv computing one of its operands (the later of the two, so
    #     that the other operand exists when the conv runs): out = conv(x) + other
    position = {op.output: k for k, op in enumerate(ops)}
    for op in ops:
        if op.kind != "add" or not op.alive or op.params.get("act") is not None:
            continue
        a, b = op.inputs
        for mine, other in ((b, a), (a, b)):
            src = producer.get(mine)
            if (src is not None and src.alive and src.kind == "conv" and "residual" not in src.params
                    and src.params.get("act") is None and len(users_of(mine)) == 1 and mine != other
                    and position.get(other, -1) < position[mine] and mine != low.output_id):
                src.params["residual"] = other
                src.inputs = src.inputs + [other]
                _replace(ops, op.output, src.output)
                if low.output_id == op.output:
                    low.output_id = src.output
                op.alive = False
                break
    ops = [op for op in ops if op.alive]

    # 2. activation into the producing conv / add / affine / pool when it is the producer's only user
    for op in ops:
        if op.kind != "act" or not op.alive:
            continue
        src = producer.get(op.inputs[0])
        if (src is not None and src.alive and src.kind in ("conv", "add", "affine", "pool")
                and src.params.get("act") is None
                and len(users_of(src.output)) == 1 and src.output != low.output_id):
            src.params["act"] = op.params["act"]
            _replace(ops, op.output, src.output)
            if low.output_id == op.output:
                low.output_id = src.output
            op.alive = False
    ops = [op for op in ops if op.alive]

    # 3. activation into the padded input copy of every consuming conv that makes such a copy
    for op in ops:
        if op.kind != "act" or not op.alive or op.output == low.output_id:
            continue
        users = users_of(op.output)
        if users and all(u.kind == "conv" and _needs_copy(u) and u.params.get("in_act") is None
                         and u.inputs.count(op.output) == 1 and u.inputs[0] == op.output for u in users):
            for u in users:
                u.params["in_act"] = op.params["act"]
                u.inputs = [op.inputs[0]] + u.inputs[1:]
            op.alive = False
    low.ops = [op for op in ops if op.alive]


def _replace(ops: list[IROp], old: int, new: int) -> None:
    for op in ops:
        op.inputs = [new if i == old else i for i in op.inputs]


def _needs_copy(op: IROp) -> bool:
    p = op.params
    return p["stride"] > 1 or p["pad"] > 0


class _Pools:
    def __init__(self) -> None:
        self.floats: list[np.ndarray] = []
        self.ints: list[np.ndarray] = []
        self.nf = 0
        self.ni = 0

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


def _place_concats(low: _Lowering) -> None:
    """Let each concatenation input be written straight into its channel slice of the output."""
    produced = {op.output for op in low.ops}
    placed: set[int] = set()
    kept = []
    for op in low.ops:
        if op.kind != "concat":
            kept.append(op)
            continue
        out = low.values[op.output]
        copies, at = [], 0
        for v in op.inputs:
            val = low.values[v]
            if v in produced and v not in placed and v != low.output_id and val.stride == 0:
                val.buffer, val.at, val.stride = out.buffer, at * out.shape[1] * out.shape[2], out.size
                placed.add(v)
            else:   # the program input, a value used twice, or one already placed elsewhere: copy it
                copies.append((v, at))
            at += val.shape[0]
        if copies:
            op.params["copies"] = copies
            kept.append(op)
    low.ops = kept


def _unfolds(op: IROp, x: Value, out: Value) -> bool:
    """Whether the runtime unfolds this conv's input (small output planes: one contiguous row per tap)."""
    p, k = op.params, op.params["weight"].shape[-1]
    _, h, wd = x.shape
    return ((k > 1 or p["stride"] > 1) and out.shape[1] * out.shape[2] <= IM2COL_MAX_PIXELS
            and (h + 2 * p["pad"]) * (wd + 2 * p["pad"]) <= IM2COL_MAX_PADDED)


def _pad_values(low: _Lowering, keep: set[int]) -> None:
    """Store a conv's output zero-padded when every reader can take it so: stride-1 convs with that padding
    read it in place of their padded copy (no copy, no barrier after it), residual additions through a row
    stride. (Measured: 5% faster ResNet-18 at 90% sparsity, batch 1, A/B in one process.)"""
    producer = {op.output: op for op in low.ops}
    for v, src in producer.items():
        val = low.values[v]
        if (src.kind != "conv" or src.params.get("linear") or val.buffer in keep or val.stride or val.at
                or _unfolds(src, low.values[src.inputs[0]], val)):
            continue
        users = [op for op in low.ops if v in op.inputs]
        pads = set()
        for u in users:
            if u.kind != "conv" or u.params.get("linear") or _unfolds(u, val, low.values[u.output]):
                break
            if u.inputs[0] == v:
                if u.params["stride"] != 1 or u.params["pad"] < 1 or u.params.get("in_act") is not None:
                    break
                pads.add(u.params["pad"])
        else:
            if len(pads) == 1:
                val.pad = pads.pop()


def _copy_geometry(op: IROp, x: Value, out: Value) -> tuple[int, int] | None:
    """(hq, wq) of each phase plane of the padded, phase-split copy this conv makes of its input; None when it
    reads its input in place or unfolds it."""
    p, k = op.params, op.params["weight"].shape[-1]
    s, pad, d = p["stride"], p["pad"], p["dil"]
    if x.pad or _unfolds(op, x, out) or not (s > 1 or pad > 0 or p.get("in_act") is not None):
        return None
    _, h, wd = x.shape
    if s == 1:
        return h + 2 * pad, wd + 2 * pad
    reach = ((k - 1) * d) // s
    return max(-(-(h + 2 * pad) // s), out.shape[1] + reach), max(-(-(wd + 2 * pad) // s), out.shape[2] + reach)


def _share_copies(low: _Lowering) -> None:
    """Let a conv read the padded copy that the previous copying conv made of the same input, when its taps
    fall inside it: a ResNet downsampling block's 1x1 shortcut reads the copy of its 3x3 conv (a copy with
    more padding serves one with less, shifted). The runtime then skips that copy and the barrier after it."""
    last = None   # the latest conv that writes the shared copy buffer, and its geometry
    for op in low.ops:
        if op.kind != "conv":
            continue
        x, out = low.values[op.inputs[0]], low.values[op.output]
        geometry = _copy_geometry(op, x, out)
        if geometry is None:
            if _unfolds(op, x, out):
                last = None   # its unfolded copy overwrites the buffer
            continue
        if last is not None:
            a, (hq, wq) = last
            pa, pb = a.params, op.params
            k, d, s, shift = pb["weight"].shape[-1], pb["dil"], pb["stride"], pa["pad"] - pb["pad"]
            reach = ((k - 1) * d + shift) // s
            if (a.inputs[0] == op.inputs[0] and pa["stride"] == s and pa.get("in_act") == pb.get("in_act")
                    and shift >= 0 and out.shape[1] + reach <= hq and out.shape[2] + reach <= wq):
                pb["copy_of"] = (hq, wq, shift)
                pa.setdefault("copy_for", []).append(op)
                continue
        last = (op, geometry)


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


def _plan_arena(low: _Lowering, keep: set[int]) -> tuple[dict[int, int], int]:
    """Per-image arena offsets of the buffers: a buffer's memory is reused once its last reader has run."""
    size: dict[int, int] = {}
    for v in low.values:   # whole cache lines: buffers start 64-byte aligned (with an aligned arena)
        size[v.buffer] = max(size.get(v.buffer, 0), -(-v.image_stride // ALIGN) * ALIGN)
    first: dict[int, int] = {low.values[low.input_id].buffer: -1}
    last: dict[int, int] = {}
    for k, op in enumerate(low.ops):
        b = low.values[op.output].buffer
        first.setdefault(b, k)
        last[b] = max(last.get(b, k), k)
        for v in op.inputs:
            last[low.values[v].buffer] = max(last.get(low.values[v].buffer, k), k)
    for b in keep:
        last[b] = len(low.ops)
    offsets: dict[int, int] = {}
    free: list[tuple[int, int]] = []    # (offset, size), sorted and coalesced
    active: list[int] = []
    top = 0
    for b in sorted(first, key=lambda b: first[b]):
        for a in [a for a in active if last.get(a, first[a]) < first[b]]:
            active.remove(a)
            free.append((offsets[a], size[a]))
            free.sort()
            merged: list[tuple[int, int]] = []
            for off, sz in free:
                if merged and merged[-1][0] + merged[-1][1] == off:
                    merged[-1] = (merged[-1][0], merged[-1][1] + sz)
                else:
                    merged.append((off, sz))
            free = merged
        need = size[b]
        fits = [j for j, (_, sz) in enumerate(free) if sz >= need]
        if fits:
            j = min(fits, key=lambda j: free[j][1])     # best fit
            off, sz = free[j]
            free[j:j + 1] = [(off + need, sz - need)] if sz > need else []
        else:
            off = top
            top += need
        offsets[b] = off
        active.append(b)
    return offsets, top


def _conv_fields(op: IROp, x: Value, out: Value, y: Value | None, pools: _Pools,
                 dense_threshold: float) -> tuple[dict, int, int]:
    p = op.params
    w: np.ndarray = p["weight"]
    co, cin_g, k, k2 = w.shape
    if k != k2:
        raise DassError("the runtime supports square kernels only")
    s, pad, d, groups = p["stride"], p["pad"], p["dil"], p["groups"]
    cin, h, wd = x.shape
    _, ho, wo = out.shape
    geometry = _copy_geometry(op, x, out)   # None: no padded copy of its own
    shared = p.get("copy_of")   # (hq, wq, shift): read the copy an earlier conv made
    if x.pad and (x.pad != pad or s != 1 or p.get("in_act") is not None):
        raise DassError("internal: a padded value read by a conv that cannot read it in place")
    # small output planes: unfold the input (one contiguous row per tap) instead of padded 2-D tiles
    im2col = _unfolds(op, x, out)
    copy = im2col or geometry is not None
    if im2col:
        hq, wq = ho, wo
        plane = k * k * ho * wo
        ky, kx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        tap_yx = (ky * k + kx) * ho * wo
    else:
        shift = 0
        if shared:
            hq, wq, shift = shared
        elif geometry:
            hq, wq = geometry
        else:   # read in place (already padded by its producer, or no padding)
            hq, wq = h + 2 * x.pad, wd + 2 * x.pad
        plane = s * s * hq * wq
        ky, kx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        ky, kx = ky * d + shift, kx * d + shift   # padded rows and columns, in the copy's padding
        tap_yx = ((ky % s) * s + kx % s) * hq * wq + (ky // s) * wq + kx // s
    table = (np.arange(cin_g)[:, None] * plane + tap_yx.ravel()[None, :]).ravel()  # relative to the group's channel 0
    flat = w.reshape(co, -1)
    nnz = int(np.count_nonzero(flat))
    density = nnz / max(1, flat.size)
    fields = dict(C=cin, H=h, W=wd, CO=co, HO=ho, WO=wo, K=k, STRIDE=s, PAD=pad, DIL=d, GROUPS=groups,
                  ACT=ACTS[p.get("act")], IN_ACT=ACTS[p.get("in_act")], HQ=hq, WQ=wq,
                  SCRATCH=2 if shared else (3 if copy and _private_unfold(op, im2col) else int(copy)),
                  IM2COL=int(im2col), OUT_PAD=out.pad, Y_PAD=y.pad if y is not None else 0,
                  BIAS=pools.f(p["bias"]) if p["bias"] is not None else -1)
    if density >= dense_threshold:
        fields.update(DENSE=1, KTAPS=table.size, WEIGHT=pools.f(flat), TAPS=pools.i(table), ROWPTR=0)
    else:
        rows, cols = np.nonzero(flat)
        group_base = (rows // (co // groups)) * cin_g * plane
        rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=co))])
        offsets = table[cols] + group_base
        rows16 = ROWS16 and im2col and ho * wo == 16 and offsets.size > 0 and offsets.max() // 16 < 2**16
        if rows16:   # 16-bit row numbers, two per int32 word of the pool
            packed = (offsets // 16).astype(np.uint16)
            offsets = np.concatenate([packed, np.zeros(packed.size % 2, np.uint16)]).view(np.int32)
        fields.update(ROWS16=int(rows16), DENSE=0, KTAPS=0, WEIGHT=pools.f(flat[rows, cols]), TAPS=pools.i(offsets),
                      ROWPTR=pools.i(rowptr))
    used, phases = _used_channels(op, bool(fields["DENSE"]), cin), _phases(op)
    for other in p.get("copy_for", []):   # the copy also serves these later convs
        used = np.union1d(used, _used_channels(other, _density(other) >= dense_threshold, cin))
        phases |= _phases(other, other.params["copy_of"][2])
    fields.update(CHANNELS=pools.i(used), NCHANNELS=used.size, PHASES=phases)
    scratch = cin * plane if copy or shared else 0
    return fields, scratch, nnz * ho * wo


def _private_unfold(op: IROp, im2col: bool) -> bool:
    """Stride-1 k x k convs on small planes unfold their input into a copy of each thread's own."""
    return PRIVATE_UNFOLD and im2col and op.params["stride"] == 1 and op.params["weight"].shape[-1] > 1


def _density(op: IROp) -> float:
    w = op.params["weight"]
    return np.count_nonzero(w) / max(1, w.size)


def _label(op: IROp, x: Value) -> str:
    if op.kind != "conv":
        return op.kind
    p = op.params
    k = p["weight"].shape[-1]
    if p.get("linear"):
        return "linear"
    if p["groups"] > 1 and p["groups"] == x.shape[0]:
        return f"depthwise {k}x{k}" + (" dilated" if p["dil"] > 1 else "")
    if k == 1:
        return "pointwise"
    return f"conv {k}x{k}" + (" dilated" if p["dil"] > 1 else "")


def compile_model(model: nn.Module, input_shape: tuple[int, int, int],
                  dense_threshold: float = DENSE_THRESHOLD) -> Program:
    """Compile ``model`` (sparse layers, eval mode) for inputs of per-image shape ``input_shape``."""
    folded = fold_batchnorm(model)
    ShapeProp(folded).propagate(torch.zeros(1, *input_shape))
    low = _Lowering(folded)
    low.run()
    _fuse(low)
    _place_concats(low)
    keep = {low.values[low.output_id].buffer, low.values[low.input_id].buffer}
    if PAD_VALUES:
        _pad_values(low, keep)
    if SHARE_COPIES:
        _share_copies(low)
    offsets, top = _plan_arena(low, keep)
    pools = _Pools()
    pools.f(np.zeros(1, np.float32))
    pools.i(np.zeros(1, np.int32))
    rows, labels, macs = [], [], []
    scratch = private = 0
    for op in low.ops:
        ins = [low.values[v] for v in op.inputs]
        out = low.values[op.output]
        if op.kind == "concat":
            for v, at in op.params["copies"]:
                v = low.values[v]
                rows.append(_row("copy_channels", v, None, out, offsets, C=v.shape[0], H=v.shape[1], W=v.shape[2],
                                 AUX=at))
                labels.append("concat")
                macs.append(0)
            continue
        x = ins[0]
        fields: dict = dict(C=x.shape[0], H=x.shape[1], W=x.shape[2], CO=out.shape[0], HO=out.shape[1],
                            WO=out.shape[2], ACT=ACTS[op.params.get("act")])
        mac = 0
        if op.kind == "conv":
            fields, need, mac = _conv_fields(op, x, out, ins[1] if len(ins) > 1 else None, pools, dense_threshold)
            if fields["SCRATCH"] == 3:
                private = max(private, need)
            else:
                scratch = max(scratch, need)
        elif op.kind == "act":
            fields["ACT"] = ACTS[op.params["act"]]
        elif op.kind == "affine":
            fields.update(WEIGHT=pools.f(op.params["scale"]), BIAS=pools.f(op.params["shift"]))
        elif op.kind == "pool":
            fields.update(K=op.params["k"], STRIDE=op.params["stride"], PAD=op.params["pad"], AUX=op.params["pool_kind"])
        elif op.kind == "shift":
            fields.update(AUX=op.params["dy"], AUX2=op.params["dx"])
        rows.append(_row(op.kind, x, ins[1] if len(ins) > 1 else None, out, offsets, **fields))
        labels.append(_label(op, x))
        macs.append(mac)
    inp, outv = low.values[low.input_id], low.values[low.output_id]
    return Program(
        instructions=np.stack(rows) if rows else np.zeros((0, N_FIELDS), np.int64),
        fpool=np.concatenate(pools.floats), ipool=np.concatenate(pools.ints), arena_size=top,
        scratch_size=scratch, input_offset=offsets[inp.buffer], input_shape=inp.shape,
        output_offset=offsets[outv.buffer], output_shape=outv.shape, labels=labels, macs=macs,
        output_dims=low.output_dims, private_scratch_size=private)


def _row(kind: str, x: Value, y: Value | None, out: Value, offsets: dict[int, int], **fields) -> np.ndarray:
    row = np.zeros(N_FIELDS, np.int64)
    row[FIELDS["OP"]] = OPS[kind]
    for name, v in (("X", x), ("Y", y), ("OUT", out)):
        if v is None:
            row[FIELDS[name]] = -1
        else:
            row[FIELDS[name]], row[FIELDS[name + "_AT"]], row[FIELDS[name + "_IMG"]] = offsets[v.buffer], v.at, \
                v.image_stride
    for name, value in fields.items():
        row[FIELDS[name]] = value
    return row
