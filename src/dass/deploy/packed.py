"""A packed model: a compiled program plus the runtime that executes it, saved as one ``.npz`` file.

Loading and running need NumPy and the compiled kernels only (no PyTorch), which is what an edge
device should carry.
"""

from __future__ import annotations

import ctypes
import json
import math
import numbers
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DassError
from ..runtime.files import atomic_write  # (dass.runtime imports torch lazily)
from .defaults import DEFAULT_THREADS
from .batched import BATCHED_MIN
from .program import Batched, Program
from .native import library
from .validate import MAX_THREAD_BYTES, MAX_THREADS, REEXPORT, thread_bytes, validate_program
from .validate_batched import validate_batched

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
    """Runs a :class:`Program` on NumPy batches with the compiled kernels: batches of ``BATCHED_MIN`` images and
    more with its batched program when it has one (``batched=False``: never)."""

    def __init__(self, program: Program, threads: int = DEFAULT_THREADS, batched: bool = True):
        self.threads = threads
        self.program = program
        # The runtime reads private copies of the arrays and sizes, checked by validate_program: a program
        # changed after this point cannot make it read or write outside its buffers.
        arrays = ("instructions", "fpool", "ipool")
        snapshot = Program(**{name: np.array(v, copy=True) if name in arrays and isinstance(v, np.ndarray) else v
                              for name, v in ((name, getattr(program, name)) for name in Program.__dataclass_fields__)})
        b = program.batched   # (its io is read into an array below, its labels and macs only for profiles)
        if isinstance(b, Batched) and isinstance(b.instructions, np.ndarray):
            snapshot.batched = replace(b, instructions=b.instructions.copy())
        validate_program(snapshot)
        validate_batched(snapshot)
        self._batched = snapshot.batched if batched else None
        if self._batched is not None:
            self._batched_ins = np.ascontiguousarray(self._batched.instructions)
            self._batched_io = np.array(self._batched.io, np.int64)
        self._instructions = np.ascontiguousarray(snapshot.instructions)
        self._fpool = np.ascontiguousarray(snapshot.fpool)
        self._ipool = np.ascontiguousarray(snapshot.ipool)
        self._sizes = tuple(int(getattr(snapshot, name)) for name in (
            "arena_size", "scratch_size", "private_scratch_size", "input_offset", "output_offset"))
        self._input_shape = tuple(int(d) for d in snapshot.input_shape)
        self._output_size = math.prod(int(d) for d in snapshot.output_shape)
        self._output_dims = tuple(int(d) for d in snapshot.output_dims)
        self._thread_bytes = thread_bytes(snapshot)
        self._lib = library()   # (refused when compiled from other instruction codes)
        self._shape = (0, 0)   # (batch, threads) the buffers are sized for
        self._arena = np.zeros(0, np.float32)
        self._scratch = np.zeros(1, np.float32)
        self._arenas = np.zeros(0, np.float32)   # the batched program's, one per thread

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, threads: int) -> None:
        if not isinstance(threads, numbers.Integral) or isinstance(threads, (bool, np.bool_)) \
                or not 1 <= int(threads) <= MAX_THREADS:
            raise DassError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
        self._threads = int(threads)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._input_shape

    def _buffers(self, batch: int) -> None:
        if (batch, self.threads) != self._shape:
            if self.threads * self._thread_bytes > MAX_THREAD_BYTES:   # (the runtime would abort on them)
                raise DassError(f"{self.threads} threads would need {self.threads * self._thread_bytes / 2**20:.0f} "
                                f"MiB of runtime buffers for this program; use fewer threads")
            arena, scratch, private = self._sizes[:3]
            try:
                self._arena = _aligned_zeros(arena * batch)
                self._scratch = _aligned_zeros(max(scratch, self.threads * private) * batch)
            except (MemoryError, ValueError):   # (NumPy: "array is too big")
                self._shape = (0, 0)
                raise DassError(f"not enough memory for a batch of {batch} (the packed model needs "
                                f"{4 * (arena + max(scratch, self.threads * private)) * batch / 2**20:.0f} MiB); "
                                "run smaller batches") from None
            self._shape = (batch, self.threads)

    def uses_batched(self, batch: int) -> bool:
        """Whether a batch of ``batch`` images runs the batched program."""
        return (self._batched is not None and batch >= BATCHED_MIN and hasattr(self._lib, "dass_batched_vectorized")
                and bool(self._lib.dass_batched_vectorized()))

    def _run_batched(self, x: np.ndarray, times: np.ndarray | None) -> np.ndarray:
        n, b = x.shape[0], self._batched
        need = b.arena_size * self.threads
        if self._arenas.size != need:
            try:
                self._arenas = _aligned_zeros(need)
            except (MemoryError, ValueError):
                self._arenas = np.zeros(0, np.float32)
                raise DassError(f"not enough memory for {self.threads} threads' batch buffers (the packed model "
                                f"needs {4 * need / 2**20:.0f} MiB); use fewer threads") from None
        x = np.ascontiguousarray(x)
        out = np.empty((n, self._output_size), np.float32)
        ins = self._batched_ins
        err = self._lib.dass_run_batched(_ptr(ins), len(ins), _ptr(self._arenas), b.arena_size, _ptr(self._fpool),
                                         _ptr(self._ipool), _ptr(self._batched_io), _ptr(x), _ptr(out), n,
                                         self.threads, _ptr(times) if times is not None else None)
        if err:   # (-1: a build without AVX-512; uses_batched keeps such builds away)
            why = "a build without AVX-512" if err < 0 else f"instruction #{err - 1}"
            raise DassError(f"the runtime cannot run this batched program ({why}); re-export the model")
        return out.reshape(n, *self._output_dims)

    def _run(self, x: np.ndarray, times: np.ndarray | None) -> np.ndarray:
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as exc:
            raise DassError(f"the input is not an array of numbers ({' '.join(str(exc).split())[:200]})") from None
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self._input_shape:
            raise DassError(f"input has per-image shape {tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape)}; "
                            f"this packed model was compiled for {self._input_shape} (re-export it for another size)")
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, *self._output_dims), np.float32)
        if self.uses_batched(n):
            return self._run_batched(x, times)
        self._buffers(n)
        input_offset, output_offset = self._sizes[3:]
        size_in = math.prod(self._input_shape)
        self._arena[input_offset * n: (input_offset + size_in) * n] = x.reshape(-1)
        err = self._lib.dass_run(_ptr(self._instructions), len(self._instructions), _ptr(self._arena),
                                 _ptr(self._scratch), _ptr(self._fpool), _ptr(self._ipool), n, self.threads,
                                 _ptr(times) if times is not None else None)
        if err:
            raise DassError(f"the runtime met an unknown instruction (#{err - 1}); re-export the model")
        out = self._arena[output_offset * n: (output_offset + self._output_size) * n]
        return out.reshape(n, *self._output_dims).copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch ``x`` of shape (N, C, H, W) (float32)."""
        return self._run(x, None)

    def profile(self, x: np.ndarray, repeats: int = 10) -> dict[str, dict[str, float]]:
        """Mean seconds per call and nonzero multiply-adds by op type, after one warm-up run."""
        n = np.asarray(x).shape[0] if np.asarray(x).ndim == 4 else 1
        program = self._batched if self.uses_batched(n) else self.program
        times = np.zeros(len(program.labels), np.float64)
        self._run(x, times)
        total = np.zeros_like(times)
        for _ in range(repeats):
            self._run(x, times)
            total += times
        total /= repeats
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "macs": 0, "count": 0})
        for label, t, mac in zip(program.labels, total, program.macs):
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
        arrays = dict(instructions=p.instructions, fpool=p.fpool, ipool=p.ipool)
        if p.batched is not None:
            b = p.batched
            meta["batched"] = dict(arena_size=b.arena_size, io=[int(v) for v in b.io], labels=b.labels, macs=b.macs)
            arrays["batched"] = b.instructions

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

        path = Path(path)
        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path, threads: int = DEFAULT_THREADS, batched: bool = True) -> "PackedModel":
        """The packed model saved at ``path``, refused with a :class:`DassError` when the file is not one or is
        damaged in any way (see :func:`dass.deploy.validate.validate_program`)."""
        path = Path(path)
        if not path.is_file():
            raise DassError(f"no packed model at {path}; make one with `dass export RUN_DIR`")
        broken = f"{path} is not a dass packed model, or is damaged"
        try:   # anything can go wrong reading an untrusted file: a bad zip, zlib errors, a cut stream, bad JSON
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                missing = sorted({"meta", "instructions", "fpool", "ipool"} - names)
                if missing:
                    raise DassError(f"{broken} (no {', '.join(missing)} array); {REEXPORT}")
                raw = z["meta"]
                if raw.dtype != np.uint8 or raw.ndim != 1:
                    raise DassError(f"{broken} (its meta is a {raw.ndim}-d {raw.dtype} array); {REEXPORT}")
                meta = json.loads(raw.tobytes().decode("utf-8"))
                arrays = {k: z[k] for k in ("instructions", "fpool", "ipool", "batched") if k in names}
        except DassError:
            raise
        except Exception as exc:   # noqa: BLE001 (BadZipFile, zlib.error, EOFError, UnicodeError, ValueError, ...)
            why = " ".join(str(exc).split())[:200]   # (one line)
            raise DassError(f"{broken} ({type(exc).__name__}: {why}); {REEXPORT}") from None
        if not isinstance(meta, dict):
            raise DassError(f"{broken} (its meta is a JSON {type(meta).__name__}, not an object); {REEXPORT}")
        if meta.get("format") != FORMAT:
            raise DassError(f"{path} is not a dass packed model (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise DassError(f"{path} was written by another version of dass (packed format {meta.get('version')!r}, "
                            f"this dass reads {VERSION}); export it again")
        missing = [k for k in ("arena_size", "scratch_size", "input_offset", "input_shape", "output_offset",
                               "output_shape", "output_dims", "labels", "macs") if k not in meta]
        if missing:
            raise DassError(f"{broken} (its meta lacks {', '.join(missing)}); {REEXPORT}")
        for k in ("input_shape", "output_shape", "output_dims"):
            if not isinstance(meta[k], list):
                raise DassError(f"{broken} (meta {k} is {meta[k]!r:.100}, not a list); {REEXPORT}")
        program = Program(arrays["instructions"], arrays["fpool"], arrays["ipool"], meta["arena_size"],
                          meta["scratch_size"], meta["input_offset"], tuple(meta["input_shape"]),
                          meta["output_offset"], tuple(meta["output_shape"]), meta["labels"], meta["macs"],
                          tuple(meta["output_dims"]), meta.get("private_scratch_size", 0))
        if "batched" in arrays or "batched" in meta:   # (files written before batched programs have neither)
            b = meta.get("batched")
            if not isinstance(b, dict) or "batched" not in arrays \
                    or any(k not in b for k in ("arena_size", "io", "labels", "macs")):
                raise DassError(f"{broken} (its batched program is incomplete); {REEXPORT}")
            program.batched = Batched(arrays["batched"], b["arena_size"], b["io"], b["labels"], b["macs"])
        return cls(program, threads, batched)
