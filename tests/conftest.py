"""Shared fixtures: where the real data lives, and a helper to run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR_SUBSET = SHARED_DATA / "cifar10_subset.npz"


@pytest.fixture(scope="session")
def cifar_subset() -> Path:
    if not CIFAR_SUBSET.is_file():
        pytest.skip(f"real data not found at {CIFAR_SUBSET}")
    return CIFAR_SUBSET


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m dass.cli ARGS`` with 1 thread (so runs are comparable bit for bit)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dass.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


# Let test modules import run_cli as `from tests_helpers import run_cli`.
sys.modules.setdefault("tests_helpers", sys.modules[__name__])
