"""The packed program format shared by the compiler and the runtime (NumPy only, no PyTorch).

Every code of the format is an :class:`~enum.IntEnum` here and an enum made from one list in
``kernels/sparse_runtime.cpp``. The runtime exports a signature built from its lists; :func:`signature`
builds the same string from these enums, and loading the runtime compares the two, so that a library
compiled from other codes fails at load with a clear message instead of running wrong instructions.
Values never change once written to files (saved programs hold them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Op(IntEnum):
    """Instruction kinds."""

    CONV = 1
    ACT = 2
    ADD = 3
    AFFINE = 4
    POOL = 5
    GAP = 6
    COPY_CHANNELS = 7
    SHIFT = 8
    ZERO = 9


class Act(IntEnum):
    """Activations: of an output (``Field.ACT``) or of a conv's input copy (``Field.IN_ACT``)."""

    NONE = 0
    RELU = 1
    RELU6 = 2


class Scratch(IntEnum):
    """Where a conv reads its input (``Field.SCRATCH``)."""

    IN_PLACE = 0      # the input itself (no padding, or stored padded by its producer)
    OWN_COPY = 1      # a padded / unfolded copy it makes, shared by the threads
    EARLIER_COPY = 2  # the padded copy an earlier conv made of the same input
    PER_THREAD = 3    # an unfolded copy in each thread's own scratch (the runtime shares one at batch > 1)
    PER_CHANNEL = 4   # depthwise: each thread copies a channel's padded plane into its own scratch just before
                      # computing it (taps address one plane)


class Layout(IntEnum):
    """The layout of a conv's copy of its input (``Field.IM2COL``)."""

    PADDED = 0        # zero-padded planes of HQ x WQ (s*s phase planes when strided)
    UNFOLDED = 1      # one row of HO*WO floats per tap (small planes)
    SHIFTED = 2       # K*STRIDE planes of HQ x WQ (= WO) floats per channel, plane (kx, a) holding padded pixel
                      # (q*s + a, r*s + kx*DIL) at (q, r), each starting on a cache line: every tap reads one
                      # aligned run of HO*WO floats


class PoolKind(IntEnum):
    """Pooling kinds (``Field.AUX`` of a pool)."""

    MAX = 0
    AVG_INSIDE = 1    # average over the window's pixels inside the plane (count_include_pad=False)
    AVG_PADDED = 2    # average counting the padding


class Field(IntEnum):
    """Columns of the instruction table (int64 each); see the Field list of the runtime for their meaning."""

    OP = 0
    X = 1
    Y = 2
    OUT = 3
    C = 4
    H = 5
    W = 6
    CO = 7
    HO = 8
    WO = 9
    K = 10
    STRIDE = 11
    PAD = 12
    DIL = 13
    GROUPS = 14
    ACT = 15
    IN_ACT = 16
    WEIGHT = 17
    BIAS = 18
    ROWPTR = 19
    TAPS = 20
    DENSE = 21
    KTAPS = 22
    HQ = 23
    WQ = 24
    SCRATCH = 25
    AUX = 26
    AUX2 = 27
    X_IMG = 28
    Y_IMG = 29
    OUT_IMG = 30
    OUT_PAD = 31
    X_AT = 32
    Y_AT = 33
    OUT_AT = 34
    CHANNELS = 35
    NCHANNELS = 36
    PHASES = 37
    IM2COL = 38       # a Layout code (named when it was a flag for unfolded copies)
    ROWS16 = 39
    Y_PAD = 40


N_FIELDS = len(Field)
IM2COL_MAX_PADDED = 1024  # floats: the runtime unfolds through a padded copy of this size on the stack


def shifted_plane(hq: int, wq: int) -> int:
    """Floats between the column-shifted planes of a channel (``Layout.SHIFTED``): whole cache lines."""
    return -(-hq * wq // 16) * 16

# The enums by the names the runtime's signature gives them.
ENUMS: dict[str, type[IntEnum]] = {"op": Op, "act": Act, "scratch": Scratch, "layout": Layout, "pool": PoolKind,
                                   "field": Field}


def _sections() -> dict[str, str]:
    sections = {key: "".join(f"{m.name}={m.value}," for m in enum) for key, enum in ENUMS.items()}
    sections["limits"] = f"IM2COL_MAX_PADDED={IM2COL_MAX_PADDED},"
    return sections


def signature() -> str:
    """The codes of this format as the runtime's ``dass_signature()`` spells them."""
    return ";".join(f"{key}:{body}" for key, body in _sections().items())


def signature_mismatch(other: str) -> list[str]:
    """The sections (enum names) in which the runtime signature ``other`` differs from this format's."""
    theirs = dict(part.partition(":")[::2] for part in other.split(";"))
    mine = _sections()
    return [key for key in {**mine, **theirs} if mine.get(key) != theirs.get(key)]


@dataclass
class Batched:
    """A network's batch-interleaved program; it addresses the weight pools of the :class:`Program` it belongs to
    (:mod:`dass.deploy.batched`).

    ``arena_size`` is floats per block of 16 images (one arena per thread); ``io`` the input's arena offset,
    C, H, W and stored padding, then the output's."""

    instructions: np.ndarray     # (n, N_FIELDS) int64
    arena_size: int
    io: tuple[int, ...]
    labels: list[str]
    macs: list[int]              # nonzero multiply-adds per instruction and image


@dataclass
class Program:
    """A compiled network: instructions, weight pools and the arena plan (all NumPy, no PyTorch)."""

    instructions: np.ndarray     # (n, N_FIELDS) int64
    fpool: np.ndarray            # float32
    ipool: np.ndarray            # int32
    arena_size: int              # floats per image
    scratch_size: int            # floats per image
    input_offset: int
    input_shape: tuple[int, int, int]
    output_offset: int
    output_shape: tuple[int, int, int]
    labels: list[str]            # per instruction, for profiles
    macs: list[int]              # nonzero multiply-adds per instruction and image
    output_dims: tuple[int, ...]  # the model's per-image output shape, e.g. (classes,)
    private_scratch_size: int = 0  # floats per image and thread (convs that unfold into a copy of their own)
    batched: Batched | None = None  # the program for batches of 16 images and more, when the network has one

    @property
    def output_size(self) -> int:
        return math.prod(self.output_shape)
