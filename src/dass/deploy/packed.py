"""A packed model: a compiled program plus the runtime that executes it, saved as one ``.npz`` file.

Loading and running need NumPy and the compiled kernels only (no PyTorch), which is what an edge
device should carry.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import DassError
from ..runtime.files import atomic_write  # (dass.runtime imports torch lazily)
from .defaults import DEFAULT_THREADS
from .program import N_FIELDS, Program
from .native import library

FORMAT = "dass-packed-model"
VERSION = 2   # 2: instructions gained the padded-storage fields


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def _aligned_zeros(count: int) -> np.ndarray:
    """float32 zeros starting on a 64-byte cache line (NumPy guarantees 16): an unfolded input row of 16
    floats is then one cache line instead of two."""
    raw = np.zeros(max(1, count) + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip: skip + max(1, count)]


class PackedModel:
    """Runs a :class:`Program` on NumPy batches with the compiled kernels."""

    def __init__(self, program: Program, threads: int = DEFAULT_THREADS):
        if program.instructions.shape[1:] != (N_FIELDS,):
            raise DassError("packed model has a malformed instruction table")
        self.program = program
        self.threads = int(threads)
        self._lib = library()   # (refused when compiled from other instruction codes)
        self._instructions = np.ascontiguousarray(program.instructions, np.int64)
        self._fpool = np.ascontiguousarray(program.fpool, np.float32)
        self._ipool = np.ascontiguousarray(program.ipool, np.int32)
        self._shape = (0, 0)   # (batch, threads) the buffers are sized for
        self._arena = np.zeros(0, np.float32)
        self._scratch = np.zeros(1, np.float32)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.program.input_shape

    def _buffers(self, batch: int) -> None:
        if (batch, self.threads) != self._shape:
            p = self.program
            self._arena = _aligned_zeros(p.arena_size * batch)
            self._scratch = _aligned_zeros(max(p.scratch_size, max(1, self.threads) * p.private_scratch_size) * batch)
            self._shape = (batch, self.threads)

    def _run(self, x: np.ndarray, times: np.ndarray | None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DassError(f"input has per-image shape {tuple(x.shape[1:])}; this packed model was compiled for "
                            f"{tuple(self.input_shape)} (re-export it for another size)")
        n = x.shape[0]
        self._buffers(n)
        p = self.program
        size_in = math.prod(p.input_shape)
        self._arena[p.input_offset * n: (p.input_offset + size_in) * n] = x.reshape(-1)
        err = self._lib.dass_run(_ptr(self._instructions), len(self._instructions), _ptr(self._arena),
                                 _ptr(self._scratch), _ptr(self._fpool), _ptr(self._ipool), n, self.threads,
                                 _ptr(times) if times is not None else None)
        if err:
            raise DassError(f"the runtime met an unknown instruction (#{err - 1}); re-export the model")
        out = self._arena[p.output_offset * n: (p.output_offset + p.output_size) * n]
        return out.reshape(n, *p.output_dims).copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch ``x`` of shape (N, C, H, W) (float32)."""
        return self._run(x, None)

    def profile(self, x: np.ndarray, repeats: int = 10) -> dict[str, dict[str, float]]:
        """Mean seconds per call and nonzero multiply-adds by op type, after one warm-up run."""
        times = np.zeros(len(self._instructions), np.float64)
        self._run(x, times)
        total = np.zeros_like(times)
        for _ in range(repeats):
            self._run(x, times)
            total += times
        total /= repeats
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "macs": 0, "count": 0})
        n = np.asarray(x).shape[0] if np.asarray(x).ndim == 4 else 1
        for label, t, mac in zip(self.program.labels, total, self.program.macs):
            out[label]["seconds"] += float(t)
            out[label]["macs"] += int(mac) * n
            out[label]["count"] += 1
        return dict(out)

    @property
    def nonzero_macs(self) -> int:
        return int(sum(self.program.macs))

    # ---- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        p = self.program
        meta = dict(format=FORMAT, version=VERSION, arena_size=p.arena_size, scratch_size=p.scratch_size,
                    private_scratch_size=p.private_scratch_size,
                    input_offset=p.input_offset, input_shape=list(p.input_shape), output_offset=p.output_offset,
                    output_shape=list(p.output_shape), output_dims=list(p.output_dims), labels=p.labels, macs=p.macs)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, instructions=p.instructions, fpool=p.fpool, ipool=p.ipool,
                         meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

        path = Path(path)
        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path, threads: int = DEFAULT_THREADS) -> "PackedModel":
        path = Path(path)
        if not path.is_file():
            raise DassError(f"no packed model at {path}; make one with `dass export RUN_DIR`")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: z[k] for k in ("instructions", "fpool", "ipool")}
        except (ValueError, KeyError, OSError) as exc:
            raise DassError(f"{path} is not a dass packed model ({exc})") from None
        if meta.get("format") != FORMAT:
            raise DassError(f"{path} is not a dass packed model (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise DassError(f"{path} was written by another version of dass (packed format {meta.get('version')}, "
                            f"this dass reads {VERSION}); export it again")
        program = Program(arrays["instructions"], arrays["fpool"], arrays["ipool"], meta["arena_size"],
                          meta["scratch_size"], meta["input_offset"], tuple(meta["input_shape"]),
                          meta["output_offset"], tuple(meta["output_shape"]), meta["labels"], meta["macs"],
                          tuple(meta["output_dims"]), int(meta.get("private_scratch_size", 0)))
        return cls(program, threads)
