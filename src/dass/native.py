"""dass's compiled C++ kernels, reached through ctypes.

Two libraries: the packed inference runtime (``deploy/kernels/sparse_runtime.cpp``) and the CPU
training kernels (``kernels/cpu_ops.cpp``). `pip install` builds each as an extension module (C++17,
OpenMP, tuned for the installing machine). Where that build is missing (a source checkout run without
installing, or a failed build) the same file is compiled on first use with the system's C++ compiler
into a cache directory keyed by the source's hash, so the kernels work either way.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import DassError

FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-fPIC", "-shared"]
_PACKAGE = Path(__file__).parent


@dataclass(frozen=True)
class Kernels:
    """One C++ source and the extension module that pip builds from it."""

    name: str
    source: Path
    module: str
    purpose: str


RUNTIME = Kernels("sparse_runtime", _PACKAGE / "deploy" / "kernels" / "sparse_runtime.cpp",
                  "dass.deploy._sparse_runtime", "the packed runtime")
CPU_OPS = Kernels("cpu_ops", _PACKAGE / "kernels" / "cpu_ops.cpp", "dass.kernels._cpu_ops", "the CPU training kernels")


def _installed(k: Kernels) -> Path | None:
    """The extension built at install time, unless the source was edited after that build."""
    spec = importlib.util.find_spec(k.module)
    if not spec or not spec.origin:
        return None
    built = Path(spec.origin)
    if k.source.is_file() and k.source.stat().st_mtime > built.stat().st_mtime:
        return None   # a development checkout with newer kernels: compile those on demand
    return built


def _cache_dir() -> Path:
    root = os.environ.get("DASS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "dass")
    return Path(root)


def _compile_on_demand(k: Kernels) -> Path:
    digest = hashlib.sha256(k.source.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{k.name}-{digest}.so"
    if not target.is_file():
        compile_source(k.source, target, purpose=k.purpose)
    return target


def compile_source(source: Path, target: Path, extra_flags: tuple[str, ...] = (), purpose: str = "the kernels") -> Path:
    """Compile one kernel source into the shared library ``target`` (written atomically) with the build's flags
    plus ``extra_flags`` (``bench/kernel_ab.py`` builds variants this way)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise DassError(f"{purpose} need compiled kernels: reinstall dass with a C++ compiler available "
                        "(pip install -e .), or install g++")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [compiler, *FLAGS, *extra_flags, f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise DassError(f"compiling {purpose} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


def library_path(k: Kernels) -> Path:
    """Where the kernels are loaded from (for reports)."""
    return _installed(k) or _compile_on_demand(k)


@lru_cache(maxsize=None)
def load(k: Kernels) -> ctypes.CDLL:
    """The loaded library (argument types are declared by its user)."""
    return ctypes.CDLL(str(library_path(k)))
