"""dass's OpenMP defaults: a short spin unless the user chose a policy; threads shared by the local ranks."""

import os
import subprocess
import sys

import pytest

from dass.distributed import World
from dass.runner import default_threads
from dass.runtime.load import other_load


def _env_after_import(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import dass, os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_short_spin_by_default():
    assert _env_after_import() == "None 1000"


@pytest.mark.parametrize("env, expected", [({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE None"),
                                           ({"GOMP_SPINCOUNT": "50"}, "None 50")])
def test_a_users_policy_is_kept(env, expected):
    assert _env_after_import(**env) == expected


def test_threads_are_shared_by_the_local_ranks(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert default_threads(World()) == 8
    assert default_threads(World(rank=1, size=4, local_rank=1, local_size=4)) == 2
    assert default_threads(World(rank=0, size=16, local_rank=0, local_size=16)) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(World(rank=0, size=4, local_rank=0, local_size=4)) == 3


def test_other_load_is_measured():
    load = other_load(0.2)
    assert load is None or load >= 0.0
