"""The packed runtime's compiled kernels (``kernels/sparse_runtime.cpp``), with argument types declared."""

from __future__ import annotations

import ctypes
from functools import lru_cache

from ..native import RUNTIME, load


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    lib = load(RUNTIME)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.dass_run.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, ctypes.c_int, ptr]
    lib.dass_run.restype = ctypes.c_int
    lib.dass_fields.restype = ctypes.c_int
    lib.dass_max_threads.restype = ctypes.c_int
    return lib
