"""The packed runtime's compiled kernels (``kernels/sparse_runtime.cpp``), with argument types declared and
their instruction codes checked against :mod:`dass.deploy.program`."""

from __future__ import annotations

import ctypes
from functools import lru_cache

from ..errors import DassError
from ..native import RUNTIME, library_path, load
from .program import signature_mismatch

_REBUILD = "rebuild it (pip install -e . in the source tree, or reinstall dass)"


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The runtime library, refused when it was compiled from other instruction codes than this dass writes
    (a stale build would misread every program)."""
    lib = load(RUNTIME)
    if not hasattr(lib, "dass_signature"):
        raise DassError(f"the packed runtime at {library_path(RUNTIME)} predates this version of dass; {_REBUILD}")
    lib.dass_signature.restype = ctypes.c_char_p
    differ = signature_mismatch(lib.dass_signature().decode())
    if differ:
        raise DassError(f"the packed runtime at {library_path(RUNTIME)} was built with other {', '.join(differ)} "
                        f"codes than this version of dass uses; {_REBUILD}")
    return bind(lib)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the runtime's entry points on a loaded build of it."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.dass_run.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, ctypes.c_int, ptr]
    lib.dass_run.restype = ctypes.c_int
    if hasattr(lib, "dass_run_batched"):   # (builds of older sources, for bench/kernel_ab.py, lack it)
        lib.dass_run_batched.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, ctypes.c_int, ptr]
        lib.dass_run_batched.restype = ctypes.c_int
        lib.dass_batched_vectorized.restype = ctypes.c_int
    if hasattr(lib, "dass_batched_handoffs"):
        lib.dass_batched_handoffs.restype = ctypes.c_int64
    lib.dass_max_threads.restype = ctypes.c_int
    return lib
