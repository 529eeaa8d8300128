"""Refuses a batched program (:mod:`dass.deploy.batched`) that would make ``dass_run_batched`` read or write
outside its buffers.

The bounds follow the kernels in ``kernels/sparse_runtime.cpp`` (``il_conv``, ``il_elementwise``, ``il_gap``,
``il_load_input``, ``il_store_output``): every operand is a block of whole planes of 16-float vectors inside one
thread's arena of ``arena_size`` floats, at an offset on a cache line (the kernels load and store aligned
vectors); a conv's tap, read at every output pixel of its tiles, stays inside its input channel's stored plane;
row pointers, taps, weights and biases lie in the pools. A program has a few dozen to a few hundred
instructions: they are checked one by one, the taps of each conv at once with NumPy.
"""

from __future__ import annotations

import numpy as np

from .batched import LANES, STRIDES
from .program import N_FIELDS, Act, Batched, Field, Op, Program
from .validate import MAX_FIELD, MAX_FLOATS, MAX_INSTRUCTIONS, _check_array, _fail, _is_int, _meta_int

_KINDS = {int(Op.CONV): "conv", int(Op.ADD): "add", int(Op.ACT): "act", int(Op.GAP): "gap"}


class _Row:
    """One instruction's fields, with the failure naming it."""

    def __init__(self, k: int, row: np.ndarray):
        self.k, self.row = k, row

    def __getitem__(self, name: str) -> int:
        return int(self.row[Field[name]])

    def fail(self, name: str, why: str):
        kind = _KINDS.get(self["OP"], f"op {self['OP']}")
        return _fail(f"batched instruction #{self.k} ({kind}), field {name}={self[name]}: {why}")

    def need(self, ok: bool, name: str, why: str) -> None:
        if not ok:
            raise self.fail(name, why)


def _block(r: _Row, name: str, size: int, arena: int) -> None:
    """Operand `name` covers `size` floats of the arena from its offset, which starts a cache line."""
    at = r[name]
    r.need(at % LANES == 0, name, f"an operand must start on a cache line (a multiple of {LANES} floats)")
    r.need(at + size <= arena, name, f"its {size} floats end past the arena of {arena} floats per block")


def _planes(c: int, h: int, w: int, pad: int) -> int:
    return c * (h + 2 * pad) * (w + 2 * pad) * LANES


def _check_conv(r: _Row, program: Program) -> None:
    s, chunks, co = r["STRIDE"], r["AUX"], r["CO"]
    r.need(s in STRIDES, "STRIDE", f"the batched kernels take strides {STRIDES}")
    r.need(chunks >= 1, "AUX", "a conv has at least one chunk of taps")
    r.need(r["BIAS"] == -1 or (r["BIAS"] >= 0 and r["BIAS"] + co <= program.fpool.size), "BIAS",
           f"-1 (none) or the offset of {co} biases in fpool ({program.fpool.size} entries)")
    segments = chunks * co
    start = r["ROWPTR"]
    r.need(0 <= start and start + segments + 1 <= program.ipool.size, "ROWPTR",
           f"reads ipool[{start}:{start + segments + 1}] but ipool has {program.ipool.size} entries")
    rowptr = program.ipool[start: start + segments + 1].astype(np.int64)
    r.need(rowptr[0] >= 0 and bool((np.diff(rowptr) >= 0).all()), "ROWPTR", "row pointers must start at 0 or "
           "more and never decrease")
    first, end = int(rowptr[0]), int(rowptr[-1])
    for name, size, pool in (("TAPS", program.ipool.size, "ipool"), ("WEIGHT", program.fpool.size, "fpool")):
        r.need(0 <= r[name] and r[name] + end <= size, name, f"reads {pool}[{r[name]}:{r[name] + end}] but {pool} "
               f"has {size} entries")
    taps = program.ipool[r["TAPS"] + first: r["TAPS"] + end].astype(np.int64)
    if not taps.size:
        return
    hq, wq = r["HQ"], r["WQ"]
    pixel, lane = np.divmod(taps, LANES)
    channel, within = np.divmod(pixel, hq * wq)
    ry, rx = np.divmod(within, wq)
    ok = (taps >= 0) & (lane == 0) & (channel < r["C"]) & ((r["HO"] - 1) * s + ry < hq) & ((r["WO"] - 1) * s + rx < wq)
    if not ok.all():
        bad = int(taps[np.flatnonzero(~ok)[0]])
        raise r.fail("TAPS", f"tap offset {bad} reads outside its input channel's {hq} x {wq} plane at some "
                     "output pixel (or is not a whole vector)")
    reach = (r["K"] - 1) * r["DIL"] - r["PAD"] + (hq - r["H"]) // 2   # (the last stored row K, DIL, PAD name)
    if ry.max() > reach:
        raise r.fail("K", f"a tap reads stored row {int(ry.max())} of its window, past the {reach} that K, DIL and "
                     "PAD allow")


def _check_row(r: _Row, batched: Batched, program: Program) -> None:
    op, arena = r["OP"], batched.arena_size
    r.need(op in _KINDS, "OP", f"the batched runtime runs {', '.join(f'{v}={k}' for k, v in _KINDS.items())}")
    names = ["X", "OUT", "C", "H", "W", "CO", "HO", "WO", "HQ", "WQ", "OUT_PAD", "Y_PAD", "ACT"]
    if op == Op.CONV:   # (K, DIL and PAD only order a wavefront's bands: il_run_group)
        names += ["STRIDE", "AUX", "ROWPTR", "TAPS", "WEIGHT", "K", "DIL", "PAD"]
    for name in names:
        least = 1 if name in ("C", "H", "W", "CO", "HO", "WO", "HQ", "WQ", "STRIDE", "AUX", "K", "DIL") else 0
        r.need(least <= r[name] <= MAX_FIELD, name, f"must lie in [{least}, {MAX_FIELD}]")
    r.need(r["ACT"] in Act._value2member_map_, "ACT", "unknown activation code")
    r.need(r["Y"] >= -1, "Y", "-1 (none) or an arena offset")
    c, h, w, co, ho, wo = (r[n] for n in ("C", "H", "W", "CO", "HO", "WO"))
    hq, wq = r["HQ"], r["WQ"]
    # (x is stored with padding (HQ - H) / 2 on every side: the elementwise ops and pools read it there, and a
    # wavefront waits for the rows of x up to (K - 1) * DIL - PAD past a band's first one, see _check_conv)
    r.need(hq >= h and (hq - h) % 2 == 0 and wq - w == hq - h, "HQ", f"the input plane of {h} x {w} stored "
           "with the same padding on every side")
    if op != Op.CONV:
        if op == Op.GAP:
            r.need((co, ho, wo) == (c, 1, 1), "CO", "a global average pool makes C x 1 x 1")
        else:
            r.need((co, ho, wo) == (c, h, w), "CO", "an elementwise op keeps its input's shape")
        r.need(op != Op.ADD or r["Y"] >= 0, "Y", "an addition reads Y")
    for size in (c * hq * wq * LANES, _planes(co, ho, wo, r["OUT_PAD"]), _planes(co, ho, wo, r["Y_PAD"])):
        r.need(size <= MAX_FLOATS, "C", f"an operand of {size} floats (more than {MAX_FLOATS})")
    _block(r, "X", c * hq * wq * LANES, arena)
    _block(r, "OUT", _planes(co, ho, wo, r["OUT_PAD"]), arena)
    if r["Y"] >= 0:
        _block(r, "Y", _planes(co, ho, wo, r["Y_PAD"]), arena)
    if op == Op.CONV:
        _check_conv(r, program)


def _check_io(batched: Batched, program: Program) -> None:
    io = batched.io
    if not isinstance(io, (tuple, list)) or len(io) != 10 or not all(_is_int(v) for v in io):
        raise _fail(f"the batched program's io is {io!r:.100}, not 10 integers")
    for which, part, shape in (("input", io[:5], program.input_shape), ("output", io[5:], program.output_shape)):
        at, c, h, w, pad = (int(v) for v in part)
        if (c, h, w) != tuple(shape) or not 0 <= pad <= MAX_FIELD:
            raise _fail(f"the batched program's {which} is {c} x {h} x {w} padded by {pad}, the program's is "
                        f"{tuple(shape)}")
        size = _planes(c, h, w, pad)
        if at < 0 or at % LANES or at + size > batched.arena_size:
            raise _fail(f"the batched program's {which} ({size} floats at {at}) is not a block of the arena of "
                        f"{batched.arena_size} floats on a cache line")


def validate_batched(program: Program) -> None:
    """Raise :class:`DassError` unless the batched program of ``program`` (if any) stays inside its buffers."""
    batched = program.batched
    if batched is None:
        return
    if not isinstance(batched, Batched):
        raise _fail(f"the batched program is a {type(batched).__name__}")
    _check_array("the batched instruction table", batched.instructions, np.int64, 2)
    ins = batched.instructions
    if ins.shape[1] != N_FIELDS or len(ins) > MAX_INSTRUCTIONS:
        raise _fail(f"the batched instruction table is {ins.shape[0]} x {ins.shape[1]}; the runtime reads up to "
                    f"{MAX_INSTRUCTIONS} rows of {N_FIELDS} fields")
    _meta_int("the batched arena_size", batched.arena_size, 1, MAX_FLOATS)
    for name in ("labels", "macs"):
        items = getattr(batched, name)
        if not isinstance(items, (list, tuple)) or len(items) != len(ins):
            raise _fail(f"the batched program's {name} do not match its {len(ins)} instructions")
    if not all(isinstance(v, str) for v in batched.labels) or not all(_is_int(v) and v >= 0 for v in batched.macs):
        raise _fail("the batched program's labels must be strings and its macs counts")
    _check_io(batched, program)
    for k, row in enumerate(ins):
        _check_row(_Row(k, row), batched, program)
