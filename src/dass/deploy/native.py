"""The compiled kernels of the packed runtime, reached through ctypes.

`pip install` builds ``kernels/sparse_runtime.cpp`` as the extension ``dass.deploy._sparse_runtime``
(C++17, OpenMP, tuned for the installing machine). Where that build is missing (a source checkout run
without installing, or a failed build) the same file is compiled on first use with the system's C++
compiler into a cache directory keyed by the source's hash, so the runtime works either way.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sysconfig
from functools import lru_cache
from pathlib import Path

from ..errors import DassError

SOURCE = Path(__file__).parent / "kernels" / "sparse_runtime.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-fPIC", "-shared"]


def _installed() -> Path | None:
    """The extension built at install time, unless the source was edited after that build."""
    spec = importlib.util.find_spec("dass.deploy._sparse_runtime")
    if not spec or not spec.origin:
        return None
    built = Path(spec.origin)
    if SOURCE.is_file() and SOURCE.stat().st_mtime > built.stat().st_mtime:
        return None   # a development checkout with newer kernels: compile those on demand
    return built


def _cache_dir() -> Path:
    root = os.environ.get("DASS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "dass")
    return Path(root)


def _compile_on_demand() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"sparse_runtime-{digest}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise DassError("the packed runtime needs its compiled kernels: reinstall dass with a C++ compiler "
                        "available (pip install -e .), or install g++")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [compiler, *FLAGS, f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DassError(f"compiling the packed runtime failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded kernel library, with argument types declared."""
    path = _installed() or _compile_on_demand()
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.dass_run.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, ctypes.c_int, ptr]
    lib.dass_run.restype = ctypes.c_int
    lib.dass_fields.restype = ctypes.c_int
    lib.dass_max_threads.restype = ctypes.c_int
    return lib


def library_path() -> Path:
    """Where the kernels were loaded from (for ``dass bench`` reports)."""
    return _installed() or _compile_on_demand()
