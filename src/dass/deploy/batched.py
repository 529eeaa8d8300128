"""The batch-interleaved program: how the packed runtime runs batches of 16 images and more.

At batch 1 the runtime vectorizes over a plane's pixels (``dass_run``); that needs copies of the input so that
every tap reads whole aligned vectors, and tiny planes (4x4, 8x8) fill few vectors. At large batches the
runtime instead runs a second program (``dass_run_batched``, compiled here from the same IR) whose values are
stored as ``[channel][row][column][16 images]``, each plane zero-padded by the most any of its reading convs
pads: one vector is one pixel of 16 images, so every tap of every conv - any shift, stride, kernel size or
plane size - is one weight times aligned vectors, with no copy. Each thread runs the whole program on its own
blocks of 16 images, without a barrier.

It covers convolutions (grouped, strided by 1 or 2, dilated, linear layers), residual additions, activations
and global average pooling: ResNets and MobileNets. A network with any other op (pools, concatenations: VGG,
DARTS cells) has no batched program and runs ``dass_run`` at every batch size.
"""

from __future__ import annotations

import copy

import numpy as np

from .program import N_FIELDS, Act, Batched, Field, Op

LANES = 16             # images per vector (and per block)
BATCHED_MIN = 16       # the smallest batch that runs the batched program
CHUNK = 24             # input channels per chunk of taps (ResNet-18 at 90%: 1.02-1.07x over 16, 32 and 64 slower)
TAPS_PER_SEGMENT = 8   # ... but fewer chunks where a chunk's taps of an output channel would be fewer than this
STRIDES = (1, 2)       # strides the batched kernels handle


_KINDS = {"conv": Op.CONV, "add": Op.ADD, "act": Op.ACT, "gap": Op.GAP}


def supported(g) -> bool:
    """Whether the batched kernels run every op of the IR graph ``g``."""
    for op in g.ops:
        if op.kind not in _KINDS or (op.kind == "act" and op.act is Act.NONE):
            return False
        if op.kind == "conv":
            p = op.params
            square = p["weight"].shape[-1] == p["weight"].shape[-2]
            if p["stride"] not in STRIDES or not square or op.in_act is not Act.NONE:
                return False
    return True


def _pads(g) -> dict[int, int]:
    """Per value: the padding it is stored with, the most any conv reading it pads."""
    pads = {v: 0 for v in range(len(g.values))}
    for op in g.ops:
        if op.kind == "conv":
            x = op.inputs[0]
            pads[x] = max(pads[x], op.params["pad"])
    return pads


def _conv_fields(op, x, hq: int, wq: int, xpad: int, out, pools) -> tuple[dict[str, int], int]:
    """A conv's taps (offsets of the pixel each reads for output pixel (0, 0)) in CSR segments per (chunk of
    input channels, output channel), and its nonzero multiply-adds per image."""
    p, w = op.params, op.params["weight"]
    co, cin_g, k, _ = w.shape
    s, d, pad, groups = p["stride"], p["dil"], p["pad"], p["groups"]
    ky, kx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    pixel = (ky * d + xpad - pad) * wq + (kx * d + xpad - pad)          # (k, k) inside a channel's plane
    flat = w.reshape(co, -1)
    # (each segment loads and stores its tile's partial sums: 16 vectors each way)
    chunks = max(1, min(-(-cin_g // CHUNK), np.count_nonzero(flat) // max(1, co * TAPS_PER_SEGMENT)))
    rows, cols, rowptr, chunks = segments_by_chunk(flat, k * k, -(-cin_g // chunks))
    channel = cols // (k * k) + rows // (co // groups) * cin_g          # input channel of each nonzero
    taps = (channel * hq * wq + pixel.ravel()[cols % (k * k)]) * LANES
    fields = dict(K=k, STRIDE=s, PAD=pad, DIL=d, GROUPS=groups, AUX=chunks,
                  WEIGHT=pools.f(flat[rows, cols]), TAPS=pools.i(taps), ROWPTR=pools.i(rowptr),
                  BIAS=pools.f(p["bias"]) if p["bias"] is not None else -1)
    return fields, int(rows.size) * out.shape[1] * out.shape[2]


def segments_by_chunk(flat: np.ndarray, taps_per_channel: int,
                      size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The nonzeros (rows, cols) of a (CO, C * K * K) weight matrix in CSR segments per (chunk of ``size`` input
    channels, output channel), the segments' row pointers and the number of chunks (both runtimes' chunked taps)."""
    co, cin = flat.shape[0], flat.shape[1] // taps_per_channel
    rows, cols = np.nonzero(flat)
    chunk = cols // taps_per_channel // size
    order = np.lexsort((cols, rows, chunk))
    rows, cols, chunk = rows[order], cols[order], chunk[order]
    chunks = -(-cin // size)
    rowptr = np.concatenate([[0], np.cumsum(np.bincount(chunk * co + rows, minlength=chunks * co))])
    return rows, cols, rowptr, chunks


def lower_batched(graph, pools, plan_arena, label) -> Batched | None:
    """The batched program of the IR graph (after the passes that fuse additions and activations, before the
    per-image layout passes), its weights appended to ``pools``; None when an op is not supported."""
    if not supported(graph):
        return None
    g = copy.deepcopy(graph)
    pads = _pads(g)
    for v, value in enumerate(g.values):
        value.pad = pads[v]
    offsets, arena = plan_arena(g)   # (per-image floats of padded planes; a block holds 16 of each)
    rows: list[np.ndarray] = []
    labels: list[str] = []
    macs: list[int] = []

    def place(value) -> tuple[int, int, int, int, int]:
        c, h, w = value.shape
        return offsets[value.buffer] * LANES, c, h, w, value.pad

    for op in g.ops:
        x, out = g.values[op.inputs[0]], g.values[op.output]
        y = g.values[op.inputs[1]] if len(op.inputs) > 1 else None
        row = np.zeros(N_FIELDS, np.int64)
        row[Field.OP] = _KINDS[op.kind]
        row[Field.X], row[Field.OUT] = place(x)[0], place(out)[0]
        row[Field.Y] = place(y)[0] if y is not None else -1
        row[Field.C], row[Field.H], row[Field.W] = x.shape
        row[Field.CO], row[Field.HO], row[Field.WO] = out.shape
        row[Field.HQ], row[Field.WQ] = x.shape[1] + 2 * x.pad, x.shape[2] + 2 * x.pad
        row[Field.OUT_PAD], row[Field.Y_PAD] = out.pad, y.pad if y is not None else 0
        row[Field.ACT] = op.act
        mac = 0
        if op.kind == "conv":
            fields, mac = _conv_fields(op, x, int(row[Field.HQ]), int(row[Field.WQ]), x.pad, out, pools)
            for name, value in fields.items():
                row[Field[name]] = value
        rows.append(row)
        labels.append(label(op, x))
        macs.append(mac)
    inp, outv = g.values[g.input_id], g.values[g.output_id]
    return Batched(instructions=np.stack(rows) if rows else np.zeros((0, N_FIELDS), np.int64),
                   arena_size=arena * LANES, io=(*place(inp), *place(outv)), labels=labels, macs=macs)

