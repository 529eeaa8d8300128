"""Data-parallel search and training under torchrun (gloo, 2 CPU processes): identical ranks, one set of
outputs, the same run as one process with the same global batch, and resume after a killed rank."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from tests_helpers import ROOT, run_cli

# 2 steps per epoch of a global batch of 32 (16 per rank); 50% sparsity keeps every layer well conditioned,
# so one process and two ranks agree to float rounding (at 90%+ layers left with one or two weights amplify
# rounding differences through batch norm, as any change of summation order does, e.g. the thread count).
TINY = ["--dataset", "digits", "--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32",
        "--set", "model.nodes=2", "--set", "model.multiplier=2", "--epochs", "1", "--sparsity", "0.5", "--quiet",
        # batch-norm recalibration re-estimates running statistics from weights that differ by rounding: compared
        # on its own (bitwise across ranks) in test_recalibration_keeps_ranks_identical
        "--set", "search.bn_recalibrate=0",
        # HYDRA's prune phase (scores only); the default preset's prune_weights is compared on its own below
        "--set", "search.prune_weights=false"]
# Second order: the finite-difference Hessian-vector product divides rounding differences by 2r, and Adam turns
# alpha-gradient components near zero into steps of about +-arch_lr (3e-4) whatever their size, so rounding can flip
# a few such steps: agreement is within a few Adam steps, not to float precision as in first order.
TOLERANCE = {1: 1e-5, 2: 2e-3}


def torchrun(*args: str, env: dict | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dass.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=600, cwd=ROOT)


def _states(folder, rank):
    return {p.name.split("-", 1)[1]: torch.load(p, weights_only=True) for p in sorted(folder.glob(f"rank{rank}-*.pt"))}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module", params=[1, 2], ids=["order1", "order2"])
def two_ranks(request, tmp_path_factory):
    """A 2-rank search and the same search in one process, each rank's state saved at every epoch end."""
    base = tmp_path_factory.mktemp(f"ddp-order{request.param}")
    args = [*TINY, "--order", str(request.param)]
    for name in ("dumps2", "dumps1"):
        (base / name).mkdir()
    done = torchrun("search", *args, "--out", str(base / "two"), env={"_DASS_TEST_DUMP_STATE": str(base / "dumps2")})
    assert done.returncode == 0, done.stderr[-3000:]
    one = run_cli("search", *args, "--out", str(base / "one"), env={"_DASS_TEST_DUMP_STATE": str(base / "dumps1")})
    assert one.returncode == 0, one.stderr
    return base, args, done, request.param


def test_ranks_hold_identical_state_after_every_epoch_of_every_phase(two_ranks):
    base, _, _, order = two_ranks
    rank0, rank1 = _states(base / "dumps2", 0), _states(base / "dumps2", 1)
    assert sorted(rank0) == ["phase0-epoch0.pt", "phase1-epoch0.pt", "phase2-epoch0.pt"] == sorted(rank1)
    for key in rank0:
        for name, value in rank0[key].items():
            assert torch.equal(value, rank1[key][name]), (key, name)


def test_two_ranks_follow_one_process_with_the_same_global_batch(two_ranks):
    base, _, _, order = two_ranks
    one, two = _states(base / "dumps1", 0), _states(base / "dumps2", 0)
    for key in one:
        assert _max_diff(one[key], two[key]) < TOLERANCE[order], key


def test_one_set_of_outputs(two_ranks):
    base, _, done, _ = two_ranks
    assert sorted(p.name for p in (base / "two").iterdir()) == sorted(p.name for p in (base / "one").iterdir())
    assert done.stdout.count("Genotype(") == 1   # rank 0 speaks for the job


def test_a_killed_rank_ends_the_job_and_resume_continues(two_ranks):
    base, args, _, order = two_ranks
    cut = base / "cut"
    killed = torchrun("search", *args, "--out", str(cut),
                      env={"_DASS_TEST_KILL_AFTER_STEPS": "3", "_DASS_TEST_KILL_RANK": "1"})
    assert killed.returncode != 0
    # the surviving rank says what happened in one line (torchrun then prints its own failure summary)
    assert "dass: error: rank 0 of 2 lost its peers" in killed.stderr or "dass: interrupted" in killed.stderr
    assert "src/dass/" not in killed.stderr   # no traceback through dass's code
    assert not (cut / "genotype.json").exists()
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"phase": 1, "epoch": 0, "step": 0}   # the warm-up epoch's checkpoint
    resumed = torchrun("search", "--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = torch.load(base / "two" / "checkpoint.pt", weights_only=True)["model"]
    got = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert (cut / "genotype.json").read_text() == (base / "two" / "genotype.json").read_text()


def test_resume_with_another_world_size(two_ranks, tmp_path):
    base, args, _, order = two_ranks
    cut = tmp_path / "cut"
    killed = torchrun("search", *args, "--out", str(cut),
                      env={"_DASS_TEST_KILL_AFTER_STEPS": "3", "_DASS_TEST_KILL_SIGNAL": "SIGTERM"})
    assert killed.returncode != 0
    resumed = run_cli("search", "--resume", str(cut), "--quiet")   # one process continues a 2-rank run
    assert resumed.returncode == 0, resumed.stderr
    ref = torch.load(base / "two" / "checkpoint.pt", weights_only=True)["model"]
    got = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert _max_diff(ref, got) < TOLERANCE[order]


def test_training_under_torchrun(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    done = torchrun("train", "--dataset", "digits", "--subset", "128", "--model", "resnet18", "--set",
                    "model.width=0.125", "--batch-size", "32", "--sparsity", "0.5", "--epochs", "1", "--quiet",
                    "--out", str(tmp_path / "run"), env={"_DASS_TEST_DUMP_STATE": str(dumps)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test top-1") == 1 and (tmp_path / "run" / "model_sparse.pt").is_file()
    rank0, rank1 = _states(dumps, 0), _states(dumps, 1)
    assert len(rank0) == 3
    for key in rank0:
        assert all(torch.equal(v, rank1[key][n]) for n, v in rank0[key].items()), key


def test_recalibration_keeps_ranks_identical(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    args = [a if a != "search.bn_recalibrate=0" else "search.bn_recalibrate=3" for a in TINY]
    done = torchrun("search", *args, "--order", "1", "--out", str(tmp_path / "run"),
                    env={"_DASS_TEST_DUMP_STATE": str(dumps)})
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _states(dumps, 0), _states(dumps, 1)
    assert len(rank0) == 3
    for key in rank0:
        assert all(torch.equal(v, rank1[key][n]) for n, v in rank0[key].items()), key


def test_prune_weights_under_two_ranks(tmp_path):
    """With the weights training beside the scores in the prune phase, the ranks stay bitwise identical; one process
    with the same global batch agrees to 1e-3, not to float rounding: measured 1.1e-4 after the prune epoch, against
    < 1e-5 with HYDRA's phase. Not yet explained; the likely cause is a rounding difference that moves a score
    across the top-k threshold, switching a weight in or out of the mask, which with prune_weights then trains."""
    args = [*TINY[:-2], "--set", "search.prune_weights=true", "--order", "1"]
    (tmp_path / "dumps2").mkdir()
    (tmp_path / "dumps1").mkdir()
    done = torchrun("search", *args, "--out", str(tmp_path / "two"),
                    env={"_DASS_TEST_DUMP_STATE": str(tmp_path / "dumps2")})
    assert done.returncode == 0, done.stderr[-3000:]
    one = run_cli("search", *args, "--out", str(tmp_path / "one"),
                  env={"_DASS_TEST_DUMP_STATE": str(tmp_path / "dumps1")})
    assert one.returncode == 0, one.stderr
    rank0, rank1, single = (_states(tmp_path / "dumps2", 0), _states(tmp_path / "dumps2", 1),
                            _states(tmp_path / "dumps1", 0))
    assert sorted(rank0) == sorted(rank1) == sorted(single) and len(rank0) == 3
    for key in rank0:
        assert all(torch.equal(v, rank1[key][name]) for name, v in rank0[key].items()), key
        assert _max_diff(rank0[key], single[key]) < 1e-3, key
