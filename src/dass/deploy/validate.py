"""Refuses a packed program that would make the runtime read or write outside its buffers.

The runtime (``kernels/sparse_runtime.cpp``, ``dass_run``) trusts every number of a program: offsets into the
arena, the scratch buffer and the two pools, plane sizes, tap offsets. :func:`validate_program` checks before
anything runs that every access of every instruction stays inside its buffer at any batch size and thread
count, with bounds derived op by op from the kernels (each check names the C++ it follows), and that codes and
shapes are ones the kernels handle. It raises :class:`~dass.errors.DassError` with a one-line message naming
the instruction, the field and what is wrong. Everything is checked for all instructions at once with NumPy:
the instruction table per op kind, then the index arrays of the int pool (row pointers, tap offsets, channel
lists) in one pass over each kind for all convolutions. (ResNet-18: about 0.3-0.5 ms, once per load.)

The layout the bounds rest on: an operand (``X``, ``Y``, ``OUT``) of an instruction lives in the buffer at
per-image arena offset ``b`` (its field), whose image ``i`` starts at ``arena[b * batch + i * IMG]`` (``IMG``: its
``*_IMG`` field); the arena holds ``arena_size * batch`` floats. So it is enough that ``b + IMG <= arena_size``
and that what the op touches inside an image, shifted by the operand's ``*_AT``, lies in ``[0, IMG)``. Copies of
conv inputs go to the scratch buffer of ``max(scratch_size, threads * private_scratch_size) * batch`` floats
(:class:`~.packed.PackedModel`): a shared copy takes ``C * plane`` floats per image, a per-thread copy (batch 1)
as many per thread. Every field an op uses lies within +-``MAX_FIELD``, so the bounds (computed in float64)
are exact and the kernels' 32-bit casts cannot overflow.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np

from ..errors import DassError
from .program import IM2COL_MAX_PADDED, N_FIELDS, Act, Field, Layout, Op, PoolKind, Program, Scratch, shifted_plane

REEXPORT = "re-export the model with `dass export RUN_DIR`"
MAX_FIELD = 2**30 - 1      # |value| of any field an instruction uses
MAX_FLOATS = 2**30         # floats (4 GiB) of a per-image arena, scratch, or anything an op covers in one image
MAX_POOL_TEMP = 2**26      # floats (256 MiB) of the padded planes a pool allocates per thread (run_pool's buf)
MAX_INSTRUCTIONS = 2**20
MAX_THREADS = 1024
MAX_THREAD_BYTES = 2**30   # what one call of the runtime allocates for its threads (see thread_bytes)


_IN_PLACE, _OWN_COPY, _EARLIER_COPY, _PER_THREAD, _PER_CHANNEL = (int(m) for m in (
    Scratch.IN_PLACE, Scratch.OWN_COPY, Scratch.EARLIER_COPY, Scratch.PER_THREAD, Scratch.PER_CHANNEL))
_ADD, _AFFINE = int(Op.ADD), int(Op.AFFINE)
_FIELD = {f.name: int(f) for f in Field}


def _nonzero(mask: np.ndarray) -> np.ndarray:
    return mask.nonzero()[0]


def _fail(what: str) -> DassError:
    return DassError(f"packed model: {what}; {REEXPORT}")


# ---- arrays and meta -------------------------------------------------------------------------------------

def _check_array(name: str, a, dtype: type, ndim: int) -> None:
    if not isinstance(a, np.ndarray):
        raise _fail(f"{name} is a {type(a).__name__}, not an array")
    if a.dtype != np.dtype(dtype) or a.ndim != ndim:
        raise _fail(f"{name} is a {a.ndim}-d {a.dtype} array, the runtime reads a {ndim}-d {np.dtype(dtype)} one")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _meta_int(name: str, v, lo: int, hi: int) -> int:
    if not _is_int(v):
        raise _fail(f"{name} is {v!r}, not an integer")
    if not lo <= int(v) <= hi:
        raise _fail(f"{name} is {int(v)}, outside [{lo}, {hi}]")
    return int(v)


def _meta_shape(name: str, v, length: int | None) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not v or (length is not None and len(v) != length):
        raise _fail(f"{name} is {v!r}, not a list of {length or 'one or more'} positive integers")
    shape = tuple(_meta_int(f"{name}[{j}]", d, 1, MAX_FLOATS) for j, d in enumerate(v))
    if math.prod(shape) > MAX_FLOATS:
        raise _fail(f"{name} {shape} has more than {MAX_FLOATS} elements")
    return shape


def _check_meta(p: Program, count: int) -> None:
    arena = _meta_int("arena_size", p.arena_size, 1, MAX_FLOATS)
    _meta_int("scratch_size", p.scratch_size, 0, MAX_FLOATS)
    _meta_int("private_scratch_size", p.private_scratch_size, 0, MAX_FLOATS)
    for which in ("input", "output"):   # (PackedModel copies them in and out as one buffer of these floats)
        size = math.prod(_meta_shape(f"{which}_shape", getattr(p, f"{which}_shape"), 3))
        offset = _meta_int(f"{which}_offset", getattr(p, f"{which}_offset"), 0, MAX_FLOATS)
        if offset + size > arena:
            raise _fail(f"the {which} ({size} floats per image at offset {offset}) ends past the arena of {arena} "
                        f"floats per image")
    dims = _meta_shape("output_dims", p.output_dims, None)
    if math.prod(dims) != math.prod(p.output_shape):
        raise _fail(f"output_dims {dims} do not hold the {math.prod(p.output_shape)} floats of output_shape "
                    f"{tuple(p.output_shape)}")
    for name, items, ok in (("labels", p.labels, lambda v: isinstance(v, str)),
                            ("macs", p.macs, lambda v: _is_int(v) and v >= 0)):
        if not isinstance(items, (list, tuple)) or len(items) != count:
            have = f"{len(items)} entries" if isinstance(items, (list, tuple)) else f"a {type(items).__name__}"
            raise _fail(f"{name} has {have} for {count} instructions")
        types = {type(v) for v in items}
        if (types <= {str}) if name == "labels" else (types <= {int} and (not items or min(items) >= 0)):
            continue   # (the common case, fast)
        bad = next((j for j, v in enumerate(items) if not ok(v)), None)
        if bad is not None:
            raise _fail(f"{name}[{bad}] is {items[bad]!r}")


# ---- the fields each op reads ------------------------------------------------------------------------------

ANY = -MAX_FIELD   # (a least value: the field may be negative)


def _operand(name: str) -> dict[str, int]:
    """An arena operand: buffer offset, offset inside each image, per-image stride."""
    return {name: 0, f"{name}_AT": ANY, f"{name}_IMG": 1}


_CHW = {"C": 1, "H": 1, "W": 1}
# per op: the fields its kernel reads or computes with, and the least value of each (all at most MAX_FIELD)
_READS: dict[Op, dict[str, int]] = {
    Op.ACT: {**_CHW, "ACT": ANY, **_operand("X"), **_operand("OUT")},
    Op.ADD: {**_CHW, "ACT": ANY, **_operand("X"), **_operand("Y"), **_operand("OUT")},
    Op.AFFINE: {**_CHW, "ACT": ANY, "WEIGHT": 0, "BIAS": 0, **_operand("X"), **_operand("OUT")},
    Op.POOL: {**_CHW, "HO": 1, "WO": 1, "K": 1, "STRIDE": 1, "PAD": 0, "AUX": ANY, "ACT": ANY,
              **_operand("X"), **_operand("OUT")},
    Op.GAP: {**_CHW, **_operand("X"), **_operand("OUT")},
    Op.COPY_CHANNELS: {**_CHW, "AUX": 0, **_operand("X"), **_operand("OUT")},
    Op.SHIFT: {**_CHW, "HO": 1, "WO": 1, "AUX": ANY, "AUX2": ANY, **_operand("X"), **_operand("OUT")},
    Op.ZERO: {"CO": 1, "HO": 1, "WO": 1, **_operand("OUT")},
    # (IM2COL, DENSE, ROWS16: flags; Y, BIAS: < 0 none. run_conv computes x's address, the residual's padded
    # plane and the pool addresses of every conv, used or not: those fields stay in range, for no overflow)
    Op.CONV: {**_CHW, "CO": 1, "HO": 1, "WO": 1, "K": 1, "STRIDE": 1, "DIL": 1, "GROUPS": 1, "OUT_PAD": 0,
              "ACT": ANY, "SCRATCH": ANY, **_operand("OUT"), "X": ANY, "X_AT": ANY, "Y_PAD": ANY, "AUX": 0,
              "WEIGHT": ANY, "ROWPTR": ANY, "TAPS": ANY, "CHANNELS": ANY},
}
# a conv's fields read only in some of its variants (see run_conv)
_CONV_READS: dict[str, dict[str, int]] = {
    "planes": {"HQ": 1, "WQ": 1},                                           # not unfolded
    "residual": {**_operand("Y"), "Y_PAD": 0},                              # Y >= 0
    "bias": {"BIAS": 0},
    "copy": {"PAD": 0, "IN_ACT": ANY, "CHANNELS": 0, "NCHANNELS": 0, **_operand("X")},   # OWN_COPY, PER_THREAD
    "in_place": _operand("X"),                                              # IN_PLACE (EARLIER_COPY: no x)
    "dense": {"KTAPS": 0, "TAPS": 0, "WEIGHT": 0},
    "sparse": {"ROWPTR": 0, "TAPS": 0, "WEIGHT": 0},
    "shifted": {"AUX": 1, "AUX2": 0},                                       # chunk, place of the copy
}


def _mask(reads: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    used, least = np.zeros(N_FIELDS, bool), np.zeros(N_FIELDS, np.int64)
    for name, lo in reads.items():
        used[Field[name]], least[Field[name]] = True, lo
    return used, least


_STATIC = np.zeros((max(Op) + 1, N_FIELDS), bool), np.zeros((max(Op) + 1, N_FIELDS), np.int64)
for _op, _reads in _READS.items():
    _STATIC[0][_op], _STATIC[1][_op] = _mask(_reads)
# the conditional reads as matrices (variant x field); a field has one least value in all variants
_VARIANT_USED = np.array([_mask(reads)[0] for reads in _CONV_READS.values()], np.uint8)
_VARIANT_LEAST = np.zeros(N_FIELDS, np.int64)
for _reads in _CONV_READS.values():
    for _name, _lo in _reads.items():
        _VARIANT_LEAST[Field[_name]] = _lo


class _Table:
    """The instruction table with the sizes of the buffers it addresses; `need` raises for the first bad row."""

    def __init__(self, p: Program):
        self.ins = p.instructions
        self.ipool = p.ipool
        self.nf, self.ni = p.fpool.size, p.ipool.size
        self.arena, self.scratch, self.private = int(p.arena_size), int(p.scratch_size), int(p.private_scratch_size)
        self.f = self.ins.astype(np.float64)   # (exact once the ranges are checked)
        self.pending: list[tuple] = []
        self._rows, self._sub = None, None

    def fail(self, k: int, name: str, why: str) -> DassError:
        op = int(self.ins[k, Field.OP])
        kind = Op(op).name.lower() if op in Op._value2member_map_ else f"op {op}"
        return _fail(f"instruction #{k} ({kind}), field {name}={self.ins[k, _FIELD[name]]}: {why}")

    def need(self, rows: np.ndarray, ok: np.ndarray, name: str, why: str | Callable[[int], str],
             where: np.ndarray | None = None) -> None:
        """Rows `rows` (those of them `where`) must be `ok`; checked at the next :meth:`flush` (one test for
        all the checks of a stage), which raises for the first failing check and row."""
        self.pending.append((rows, ok if where is None else ok | ~where, name, why))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending or np.concatenate([ok for _, ok, _, _ in pending]).all():
            return
        for rows, ok, name, why in pending:
            if not ok.all():
                j = int(_nonzero(~ok)[0])
                raise self.fail(int(rows[j]), name, why(j) if callable(why) else why)

    def col(self, rows: np.ndarray, *names: str) -> list[np.ndarray]:
        """Fields of `rows` (float64): views of one copy of those rows, kept for the next call with them."""
        if self._rows is not rows:
            self._rows, self._sub = rows, self.f[rows]
        return [self._sub[:, _FIELD[n]] for n in names]

    def code(self, rows: np.ndarray, name: str, enum) -> None:
        v = self.ins[rows, _FIELD[name]]
        lo, hi = int(min(enum)), int(max(enum))   # (each enum's codes are a range)
        if v.size and (v.min() < lo or v.max() > hi):
            self.need(rows, (v >= lo) & (v <= hi), name, f"unknown {enum.__name__} code (known: "
                      + ", ".join(f"{m.value}={m.name}" for m in enum) + ")")
            self.flush()

    def extent(self, rows: np.ndarray, size: np.ndarray, name: str, what: str, where=None) -> None:
        self.need(rows, size <= MAX_FLOATS, name, lambda j: f"{what} covers {size[j]:.0f} floats per image "
                  f"(more than {MAX_FLOATS})", where)

    def operand(self, rows: np.ndarray, name: str, lo, hi, what: str, where=None) -> None:
        """Arena operand `name` (X, Y or OUT) of `rows` (those `where`) touches floats [lo, hi) (after its _AT)
        of each image."""
        if not rows.size:
            return
        base, at, img = self.col(rows, name, f"{name}_AT", f"{name}_IMG")
        self.need(rows, base + img <= self.arena, name, lambda j: f"its buffer ({img[j]:.0f} floats per image at "
                  f"offset {base[j]:.0f}) ends past the arena of {self.arena} floats per image", where)
        first, end = at + lo, at + hi
        self.need(rows, (first >= 0) & (end <= img), f"{name}_AT", lambda j: f"{what} floats [{first[j]:.0f}, "
                  f"{end[j]:.0f}) of each image, outside its {img[j]:.0f} floats ({name}_IMG)", where)

    def pool_range(self, rows: np.ndarray, name: str, length: np.ndarray, pool: str, where=None) -> None:
        """Offset field `name` of `rows` (those `where`) addresses `length` entries of the float or int pool."""
        (start,) = self.col(rows, name)
        size = self.nf if pool == "fpool" else self.ni
        self.need(rows, start + length <= size, name, lambda j: f"reads {pool}[{start[j]:.0f}:"
                  f"{start[j] + length[j]:.0f}] but {pool} has {size} entries", where)


def _check_ranges(t: _Table, ops: np.ndarray, convs: "_Convs") -> None:
    """Every field an instruction reads lies in [least, MAX_FIELD]."""
    used, least = _STATIC[0][ops], _STATIC[1][ops]
    if convs.rows.size:
        extra = (convs.variants.astype(np.uint8) @ _VARIANT_USED) > 0
        used[convs.rows] |= extra
        least[convs.rows] = np.where(extra, _VARIANT_LEAST, least[convs.rows])
    bad = used & ((t.ins < least) | (t.ins > MAX_FIELD))
    if bad.any():
        k, field = (int(i) for i in np.argwhere(bad)[0])
        lo = int(least[k, field])
        what = "a size" if lo == 1 else "an offset" if lo == 0 else "a value"
        raise t.fail(k, Field(field).name, f"{what} must lie in [{lo}, {MAX_FIELD}]")


# ---- the ops ---------------------------------------------------------------------------------------------

def _rows(ops: np.ndarray, *codes: Op) -> np.ndarray:
    mask = ops == int(codes[0])   # (plain ints: NumPy compares with an IntEnum 5x slower)
    for c in codes[1:]:
        mask |= ops == int(c)
    return mask.nonzero()[0]


def _elementwise(t: _Table, ops: np.ndarray) -> None:
    """run_elementwise: C planes of H*W floats from x (and y), into out; AFFINE reads C scales and shifts."""
    rows = _rows(ops, Op.ACT, Op.ADD, Op.AFFINE)
    if not rows.size:
        return
    c, h, w = t.col(rows, "C", "H", "W")
    size = c * h * w
    t.extent(rows, size, "C", "the tensor")
    t.operand(rows, "X", 0, size, "reads")
    t.operand(rows, "OUT", 0, size, "writes")
    add, affine = ops[rows] == _ADD, ops[rows] == _AFFINE
    t.operand(rows[add], "Y", 0, size[add], "reads")
    t.pool_range(rows[affine], "WEIGHT", c[affine], "fpool")
    t.pool_range(rows[affine], "BIAS", c[affine], "fpool")


def _pool(t: _Table, ops: np.ndarray) -> None:
    """run_pool / pool_plane: each plane goes into a padded copy (buf); windows start at yo * s, xo * s."""
    rows = _rows(ops, Op.POOL)
    if not rows.size:
        return
    c, h, w, ho, wo, k, s, p = t.col(rows, "C", "H", "W", "HO", "WO", "K", "STRIDE", "PAD")
    # every window keeps pixels of the plane (the averages divide by their count), as PyTorch requires
    t.need(rows, 2 * p <= k, "PAD", "a pool's padding must be at most half its window")
    hp, wp = h + 2 * p, w + 2 * p
    t.need(rows, (ho - 1) * s + k <= hp, "HO", "the windows of the output rows end past the padded input")
    t.need(rows, (wo - 1) * s + k <= wp, "WO", "the windows of the output columns end past the padded input")
    temp = 2 * hp * wp + wp + wo
    t.need(rows, temp <= MAX_POOL_TEMP, "H", lambda j: f"the pool's padded planes need {temp[j]:.0f} floats per "
           f"thread (more than {MAX_POOL_TEMP})")
    t.extent(rows, c * h * w, "C", "the input")
    t.extent(rows, c * ho * wo, "C", "the output")
    t.operand(rows, "X", 0, c * h * w, "reads")
    t.operand(rows, "OUT", 0, c * ho * wo, "writes")


def _gap(t: _Table, ops: np.ndarray) -> None:
    """run_gap: C planes of H*W floats into C floats."""
    rows = _rows(ops, Op.GAP)
    if not rows.size:
        return
    c, h, w = t.col(rows, "C", "H", "W")
    t.extent(rows, c * h * w, "C", "the input")
    t.operand(rows, "X", 0, c * h * w, "reads")
    t.operand(rows, "OUT", 0, c, "writes")


def _copy_channels(t: _Table, ops: np.ndarray) -> None:
    """run_copy_channels: C*H*W floats of x to out, AUX*H*W floats into its image (one memcpy per image)."""
    rows = _rows(ops, Op.COPY_CHANNELS)
    if not rows.size:
        return
    c, h, w, at, x, x_at, x_img, out, out_at, out_img = t.col(
        rows, "C", "H", "W", "AUX", "X", "X_AT", "X_IMG", "OUT", "OUT_AT", "OUT_IMG")
    size, at = c * h * w, at * h * w
    t.extent(rows, at + size, "AUX", "the copy")
    t.operand(rows, "X", 0, size, "reads")
    t.operand(rows, "OUT", at, at + size, "writes")
    # memcpy: source and destination must not overlap at any batch size: other buffers, or slices of one
    apart = (x + x_img <= out) | (out + out_img <= x) | ((x == out) & (x_img == out_img) & (
        (x_at + size <= out_at + at) | (out_at + at + size <= x_at)))
    t.need(rows, apart, "OUT", "the copy's source and destination overlap")


def _shift(t: _Table, ops: np.ndarray) -> None:
    """run_shift: out[c, y, x] = x[c, y + AUX, x + AUX2] where that lies inside the H x W input plane."""
    rows = _rows(ops, Op.SHIFT)
    if not rows.size:
        return
    c, h, w, ho, wo = t.col(rows, "C", "H", "W", "HO", "WO")
    t.extent(rows, c * h * w, "C", "the input")
    t.extent(rows, c * ho * wo, "C", "the output")
    t.operand(rows, "X", 0, c * h * w, "reads")
    t.operand(rows, "OUT", 0, c * ho * wo, "writes")


def _zero(t: _Table, ops: np.ndarray) -> None:
    """run_zero: CO*HO*WO zeros into each image of out."""
    rows = _rows(ops, Op.ZERO)
    if not rows.size:
        return
    co, ho, wo = t.col(rows, "CO", "HO", "WO")
    t.extent(rows, co * ho * wo, "CO", "the output")
    t.operand(rows, "OUT", 0, co * ho * wo, "writes")


class _Convs:
    """The convolutions (run_conv): their variants, the reads of each, and what their taps read."""

    def __init__(self, t: _Table, ops: np.ndarray):
        self.rows = rows = _rows(ops, Op.CONV)
        raw = lambda name: t.ins[rows, Field[name]]   # noqa: E731
        self.mode = raw("SCRATCH")
        self.layout = raw("IM2COL")
        self.im2col, self.shifted = self.layout == Layout.UNFOLDED, self.layout == Layout.SHIFTED
        self.dense = raw("DENSE") != 0
        self.rows16 = (raw("ROWS16") != 0) & ~self.dense   # (the dense layout comes first)
        self.has_y, self.has_bias = raw("Y") >= 0, raw("BIAS") >= 0
        self.copying = (self.mode == _OWN_COPY) | (self.mode == _PER_THREAD) | (self.mode == _PER_CHANNEL)
        # riders (EARLIER_COPY with chunked taps): run by the conv before them, on its column-shifted copy;
        # maker[j]: the conv whose copy conv j reads (j itself when it is not a rider, or follows no conv)
        self.rider = (self.mode == _EARLIER_COPY) & (raw("AUX") > 0)
        self.maker = np.arange(rows.size)
        for j in _nonzero(self.rider):
            if j > 0 and rows[j - 1] == rows[j] - 1:
                self.maker[j] = self.maker[j - 1]
        variants = {"planes": ~self.im2col, "residual": self.has_y, "bias": self.has_bias, "copy": self.copying,
                    "in_place": self.mode == _IN_PLACE, "dense": self.dense, "sparse": ~self.dense,
                    "shifted": self.shifted}
        self.variants = np.stack([variants[key] for key in _CONV_READS], axis=1).reshape(rows.size, len(_CONV_READS))

    def check_codes(self, t: _Table) -> None:
        t.code(self.rows, "SCRATCH", Scratch)
        t.code(self.rows, "IM2COL", Layout)
        t.code(self.rows[self.copying], "IN_ACT", Act)

    def check(self, t: _Table) -> None:
        """The checks of the table, over all convs at once (a check of a variant holds where a conv is not of
        it); :meth:`check_pools` then reads the int pool."""
        rows, mode, im2col, shifted, dense, copying = (self.rows, self.mode, self.im2col, self.shifted, self.dense,
                                                       self.copying)
        if not rows.size:
            return
        c, h, w, co, ho, wo, k, s, dil, groups, opad, hq, wq, pad, yp, ktaps = t.col(
            rows, "C", "H", "W", "CO", "HO", "WO", "K", "STRIDE", "DIL", "GROUPS", "OUT_PAD", "HQ", "WQ", "PAD",
            "Y_PAD", "KTAPS")
        flat, y, in_place = ~im2col, self.has_y, mode == _IN_PLACE
        # cout_g = co / groups (every conv: 0 would divide by zero); group g reads from plane g * (cin / groups)
        t.need(rows, (c % groups == 0) & (co % groups == 0), "GROUPS", "must divide C and CO")
        # what the taps read, per input channel: an unfolded copy (im2col: K*K rows of HO*WO floats), or
        # hq x wq planes (a copy: s*s phase planes; shifted: K planes on whole cache lines); a tap reads HO rows
        # of WO floats, WQ apart (im2col: one row)
        pix = ho * wo
        plane = np.where(im2col, k * k * pix,
                         np.where(shifted, k * s * shifted_plane(hq, wq), np.where(in_place, 1, s * s) * hq * wq))
        plane = np.where(self.rider, plane[self.maker], plane)   # (a rider reads its conv's copy)
        ext = np.where(im2col, pix, (ho - 1) * wq + wo)
        # floats per image the taps may read (PER_CHANNEL: depthwise, each channel's copy is its own one plane)
        per_channel = mode == _PER_CHANNEL
        t.need(rows, ~per_channel | ((groups == c) & (co == c) & flat), "SCRATCH", "a per-channel copy needs a "
               "depthwise conv (GROUPS = C = CO) on padded planes")
        src = np.where(per_channel, 1, c) * plane
        t.extent(rows, c * plane, "C", "the input the taps read")
        # an unfolded output (and its residual) is one row of HO*WO floats per channel: never stored padded
        t.need(rows, flat | (opad == 0), "OUT_PAD", "an unfolded conv's output cannot be stored padded")
        t.need(rows, ~y | flat | (yp == 0), "Y_PAD", "an unfolded conv's residual cannot be stored padded")
        # conv_rows16: one tile of 16 floats per output channel
        t.need(rows, ~self.rows16 | (im2col & (pix == 16)), "ROWS16", "16-bit tap rows need an unfolded 4x4 "
               "output plane")
        out_plane = (ho + 2 * opad) * (wo + 2 * opad)   # zero_border writes the whole padded plane
        t.extent(rows, co * out_plane, "CO", "the output")
        t.operand(rows, "OUT", 0, co * out_plane, "writes")
        res = co * (ho + 2 * yp) * (wo + 2 * yp)
        t.extent(rows, res, "Y_PAD", "the residual", y)
        t.operand(rows, "Y", 0, res, "reads", y)
        t.pool_range(rows, "BIAS", co, "fpool", self.has_bias)
        t.operand(rows, "X", 0, src, "reads", in_place)
        # the copy of the input: the listed channels of x into the scratch (build_im2col / build_phases)
        cp = copying
        t.pool_range(rows, "CHANNELS", t.col(rows, "NCHANNELS")[0], "ipool", cp)
        t.extent(rows, c * h * w, "C", "the input", cp)
        t.operand(rows, "X", 0, c * h * w, "reads", cp)
        hp, wp = h + 2 * pad, w + 2 * pad
        # build_im2col pads the plane on the stack (IM2COL_MAX_PADDED floats) and reads the windows there
        unfold = cp & im2col
        t.need(rows, ~unfold | (hp * wp <= IM2COL_MAX_PADDED), "PAD",
               f"an unfolded conv's padded plane must fit in {IM2COL_MAX_PADDED} floats")
        reach = (k - 1) * dil + 1
        t.need(rows, ~unfold | ((ho - 1) * s + reach <= hp), "HO",
               "the unfolded windows of the output rows end past the padded input")
        t.need(rows, ~unfold | ((wo - 1) * s + reach <= wp), "WO",
               "the unfolded windows of the output columns end past the padded input")
        # build_phases: PHASES is a 64-bit mask of the s*s phase planes; each plane has hq rows of wq floats,
        # and the input rows and columns land in them up to PAD + H and PAD + W (at stride 1 the rows of the
        # plane are written that long: a shorter plane would be overrun)
        phases = cp & flat & ~shifted
        t.need(rows, s <= 8, "STRIDE", "a padded copy holds at most 8 x 8 phase planes", phases)
        t.need(rows, h + pad <= hq * s, "HQ", "the padded copy has fewer rows than PAD + H", phases)
        t.need(rows, w + pad <= wq * s, "WQ", "the padded copy has fewer columns than PAD + W", phases)
        # run_conv_chunked: a conv, not grouped, copies its input as K*STRIDE planes of HQ rows of WQ (= WO)
        # floats at AUX2 floats per image into the scratch and computes tiles of 16*V of the HO*WO output pixels
        # (flat planes: output and residual not stored padded) over CSR segments of chunks of AUX input channels
        aux, at = t.col(rows, "AUX", "AUX2")
        rider, m = self.rider, self.maker
        t.need(rows, ~rider | ((m != np.arange(rows.size)) & shifted[m] & (mode[m] == _OWN_COPY) & ~rider[m]),
               "SCRATCH", "a rider (EARLIER_COPY, AUX > 0) follows a conv that makes a column-shifted copy, or "
               "another rider of it")
        t.need(rows, ~rider | (shifted & (c == c[m]) & (ho == ho[m]) & (wo == wo[m]) & (hq == hq[m]) & (wq == wq[m])),
               "C", "a rider reads its conv's copy: the same C, HO, WO, HQ, WQ, and IM2COL = SHIFTED")
        t.need(rows, ~shifted | (((mode == _OWN_COPY) | rider) & (s <= 8) & (groups == 1) & ~dense), "IM2COL",
               "a column-shifted copy is made by a conv of stride 8 or less, not grouped, with sparse taps, into its "
               "own copy (SCRATCH = OWN_COPY), or read by its riders")
        t.need(rows, ~shifted | ((wq == wo) & (pix % 16 == 0) & (opad == 0) & (yp == 0)), "WQ", "a column-shifted "
               "copy's rows are the output's (WQ = WO), of whole 16-pixel tiles, neither stored padded")
        reach = dil * (k - 1)
        geometry = ((ho == (h + 2 * pad - reach - 1) // s + 1) & (wo == (w + 2 * pad - reach - 1) // s + 1)
                    & (rider | (hq == ho + reach // s)))
        t.need(rows, ~shifted | geometry, "PAD", "a column-shifted copy needs HO, WO (the conv's output for H, W, PAD, "
               "K, DIL, STRIDE) and HQ = HO + DIL * (K - 1) / STRIDE")
        # chunked taps (AUX > 0, run_conv_chunked): on a column-shifted copy, or on the input read in place (a
        # pointwise conv: flat planes as long as the output's)
        chunked = aux > 0
        flat_in_place = chunked & in_place & (self.layout == Layout.PADDED)
        t.need(rows, ~chunked | shifted | flat_in_place, "AUX", "chunked taps (AUX > 0) need a column-shifted copy "
               "or an input read in place")
        t.need(rows, ~flat_in_place | ((groups == 1) & ~dense & ~self.rows16 & (pix % 16 == 0) & (opad == 0)
                                       & (yp == 0) & (wq == wo) & (hq == ho)), "HQ",
               "chunked taps on an input read in place need sparse 32-bit taps, no groups, flat planes of the "
               "output's size (HQ = HO, WQ = WO) in whole 16-pixel tiles, neither stored padded")
        t.need(rows, ~chunked | (aux <= c), "AUX", "a chunk holds 1 to C input channels")
        t.need(rows, ~shifted | ((at + src <= t.scratch) & (at + src <= t.private)), "AUX2", lambda j: f"the copy "
               f"needs {at[j] + src[j]:.0f} floats per image (and thread), scratch_size is {t.scratch}, "
               f"private_scratch_size {t.private}")
        self.segments = np.where(chunked, -(-c // np.maximum(aux, 1)) * co, co) + 1
        # the scratch: one shared copy of C planes per image, or one per thread (PER_THREAD at batch 1: C planes;
        # PER_CHANNEL: one plane)
        private = (mode == _PER_THREAD) | per_channel
        t.need(rows, ~private | (src <= t.private), "SCRATCH", lambda j: f"the per-thread "
               f"copy needs {src[j]:.0f} floats per image, private_scratch_size is {t.private}")
        t.need(rows, in_place | private | (src <= t.scratch), "SCRATCH", lambda j: f"the "
               f"copy needs {src[j]:.0f} floats per image, scratch_size is {t.scratch}")
        # weights and taps: dense (KTAPS shared taps, CO x KTAPS weights) or CSR rows
        t.pool_range(rows, "TAPS", ktaps, "ipool", dense)
        t.pool_range(rows, "WEIGHT", co * ktaps, "fpool", dense)
        t.pool_range(rows, "ROWPTR", self.segments, "ipool", ~dense)
        # the largest tap each conv may hold: its tile (ext) and, dense, its last group's planes stay in src
        self.top = src - ext - np.where(dense & ~per_channel, (groups - 1) * (c / groups) * plane, 0.0)
        self.src, self.c, self.co = src, c, co


    def check_pools(self, t: _Table) -> None:
        """The index arrays of the int pool (after :meth:`check`): CSR row pointers start at >= 0 and never
        decrease, and every tap (offset, or 16-bit row of 16 floats) and listed channel lies inside what it
        indexes. One NumPy pass over each kind of array for all convs."""
        t.flush()   # (the offsets and lengths of the arrays are inside the pool)
        rows = self.rows
        if not rows.size:
            return
        ins, ip = t.ins[rows], t.ipool
        taps_at, count = ins[:, _FIELD["TAPS"]], ins[:, _FIELD["KTAPS"]].copy()
        sparse = _nonzero(~self.dense)
        if sparse.size:   # CSR rows: taps[rowptr[o] .. rowptr[o + 1]) and as many weights (conv_channel)
            start, length = ins[sparse, _FIELD["ROWPTR"]], self.segments[sparse].astype(np.int64)
            begin = np.concatenate([[0], np.cumsum(length)[:-1]])
            rowptr = ip[np.repeat(start - begin, length) + np.arange(length.sum())].astype(np.int64)
            first, last = rowptr[begin], rowptr[begin + length - 1]
            t.need(rows[sparse], first >= 0, "ROWPTR", "the first row pointer must be 0 or more")
            down = rowptr[1:] < rowptr[:-1]
            down[begin[1:] - 1] = False   # (from one conv's row pointers to the next)
            if down.any():
                j = int(np.searchsorted(begin, np.argmax(down), "right")) - 1
                raise t.fail(int(rows[sparse[j]]), "ROWPTR", "the row pointers must never decrease")
            t.need(rows[sparse], ins[sparse, _FIELD["WEIGHT"]] + last <= t.nf, "WEIGHT", lambda j: f"its {last[j]} "
                   f"weights end past fpool ({t.nf} floats)")
            r16 = self.rows16[sparse]   # (16-bit taps: offsets in uint16 units)
            taps_at[sparse] = np.where(r16, 2 * taps_at[sparse], taps_at[sparse]) + first
            count[sparse] = last - first
            unit = np.where(r16, 2 * t.ni, t.ni)
            t.need(rows[sparse], taps_at[sparse] + count[sparse] <= unit, "TAPS", lambda j: f"its {last[j]} "
                   f"{'16-bit ' if r16[j] else ''}taps end past ipool ({t.ni} entries)")
        t.flush()
        # largest allowed value per array: taps (offsets; 16-bit rows of 16 floats), channels < C
        wide = ~self.rows16
        chan = _nonzero(self.copying)
        values = ip.view(np.uint32)   # (a negative int32 is above every bound here)
        at = np.concatenate([taps_at[wide], ins[chan, _FIELD["CHANNELS"]]])
        n = np.concatenate([count[wide], ins[chan, _FIELD["NCHANNELS"]]])
        limit = np.concatenate([self.top[wide], self.c[chan] - 1])
        which = np.concatenate([_nonzero(wide), chan])
        self._bounded(t, values, at, n, limit, which, np.arange(which.size) >= wide.sum())
        r16 = _nonzero(self.rows16)
        self._bounded(t, ip.view(np.uint16), taps_at[r16], count[r16], (self.src[r16] - 16) // 16, r16, None)

    def _bounded(self, t: _Table, values, at, n, limit, which, channels) -> None:
        """values[at[i] : at[i] + n[i]] <= limit[i] for each i (of conv which[i]; channel lists where
        `channels`, 16-bit tap rows where None)."""
        keep = n > 0
        top = _segment_max(values, at[keep], at[keep] + n[keep]).astype(np.float64)
        bad = _nonzero(top > limit[keep])
        if not bad.size:
            return
        j = int(_nonzero(keep)[bad[0]])
        k, v = int(self.rows[which[j]]), int(top[bad[0]])
        if channels is not None and channels[j]:
            raise t.fail(k, "CHANNELS", f"lists input channel {v if v < 2**31 else v - 2**32} of a conv with "
                                        f"{self.c[which[j]]:.0f}")
        if channels is None:
            raise t.fail(k, "TAPS", f"a tap reads row {v} of an input of {self.src[which[j]]:.0f} floats")
        raise t.fail(k, "TAPS", f"a tap at {v} reads past the {self.src[which[j]]:.0f} floats per image of its "
                                f"input" if v < 2**31 else f"a tap at {v - 2**32} reads before its input")


def _segment_max(a: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """max(a[start[i]:end[i]]) for segments with 0 <= start < end <= a.size, in one reduceat (over the
    segments sorted by start: the gaps between them add at most one pass over a)."""
    if not start.size:
        return np.zeros(0, a.dtype)
    order = np.argsort(start, kind="stable")
    idx = np.empty(2 * start.size, np.intp)
    idx[0::2], idx[1::2] = start[order], np.minimum(end[order], a.size - 1)   # (reduceat's indices are < size)
    top = np.maximum.reduceat(a, idx)[0::2]
    tail = end[order] == a.size
    top[tail] = np.maximum(top[tail], a[-1])
    out = np.empty_like(top)
    out[order] = top
    return out


def thread_bytes(program: Program) -> int:
    """Bytes the runtime allocates per thread in one call of a validated program: dass_run's two work counters
    (64 bytes each) per instruction, the barrier's flags (a line per round, at most 11, and a count) and the
    largest pool's padded planes (run_pool's buf). An allocation that fails there would end the process:
    :class:`~.packed.PackedModel` keeps threads * this below ``MAX_THREAD_BYTES``."""
    ins = program.instructions
    pools = ins[ins[:, _FIELD["OP"]] == int(Op.POOL)]
    hp = pools[:, _FIELD["H"]] + 2 * pools[:, _FIELD["PAD"]]
    wp = pools[:, _FIELD["W"]] + 2 * pools[:, _FIELD["PAD"]]
    temp = int((2 * hp * wp + wp + pools[:, _FIELD["WO"]]).max()) if len(pools) else 0
    return 2 * 64 * len(ins) + 64 * 12 + 4 * temp


def validate_program(program: Program) -> None:
    """Raise :class:`DassError` unless every instruction of ``program`` stays inside the runtime's buffers."""
    _check_array("the instruction table", program.instructions, np.int64, 2)
    _check_array("fpool", program.fpool, np.float32, 1)
    _check_array("ipool", program.ipool, np.int32, 1)
    ins = program.instructions
    if ins.shape[1] != N_FIELDS:
        raise _fail(f"instructions have {ins.shape[1]} fields, the runtime reads {N_FIELDS}")
    if len(ins) > MAX_INSTRUCTIONS:
        raise _fail(f"{len(ins)} instructions (at most {MAX_INSTRUCTIONS})")
    _check_meta(program, len(ins))
    t = _Table(program)
    ops = ins[:, _FIELD["OP"]]
    t.code(np.arange(len(ins)), "OP", Op)
    t.code(_rows(ops, Op.ACT, Op.ADD, Op.AFFINE, Op.POOL, Op.CONV), "ACT", Act)
    t.code(_rows(ops, Op.POOL), "AUX", PoolKind)
    convs = _Convs(t, ops)
    convs.check_codes(t)
    _check_ranges(t, ops, convs)
    _elementwise(t, ops)
    _pool(t, ops)
    _gap(t, ops)
    _copy_channels(t, ops)
    _shift(t, ops)
    _zero(t, ops)
    convs.check(t)
    convs.check_pools(t)
