"""The packed program format shared by the compiler and the runtime (NumPy only, no PyTorch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Instruction layout: must match the Field enum of kernels/sparse_runtime.cpp.
N_FIELDS = 41
FIELDS = dict(OP=0, X=1, Y=2, OUT=3, C=4, H=5, W=6, CO=7, HO=8, WO=9, K=10, STRIDE=11, PAD=12, DIL=13, GROUPS=14,
         ACT=15, IN_ACT=16, WEIGHT=17, BIAS=18, ROWPTR=19, TAPS=20, DENSE=21, KTAPS=22, HQ=23, WQ=24, SCRATCH=25,
         AUX=26, AUX2=27, X_IMG=28, Y_IMG=29, OUT_IMG=30, OUT_PAD=31, X_AT=32, Y_AT=33, OUT_AT=34, CHANNELS=35, NCHANNELS=36, PHASES=37, IM2COL=38, ROWS16=39,
         Y_PAD=40)
OPS = dict(conv=1, act=2, add=3, affine=4, pool=5, gap=6, copy_channels=7, shift=8, zero=9)
ACTS = {None: 0, "relu": 1, "relu6": 2}


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

    @property
    def output_size(self) -> int:
        return math.prod(self.output_shape)
