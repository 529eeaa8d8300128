"""A search killed with SIGKILL and resumed ends exactly like one never interrupted."""

import json
import signal

import pytest
import torch

from tests_helpers import run_cli  # registered by conftest.py

# 2 steps per epoch (64 train / 64 val images, batch 32), a 2-node cell: small, but every mechanism is there.
TINY = ["--dataset", "digits", "--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32",
        "--set", "model.nodes=2", "--set", "model.multiplier=2",
        "--threads", "1", "--quiet", "--set", "search.epochs.warmup=2", "--set", "search.epochs.prune=1",
        "--set", "search.epochs.finetune=1"]


def _final_state(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    records = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("seconds_per_step")
    return state, records, (run_dir / "genotype.json").read_text()


@pytest.mark.parametrize("extra, kill_after", [
    # second order, killed after step 1 of warm-up epoch 2, resumed from the epoch-end checkpoint
    (["--order", "2"], 3),
    # global mask, checkpoint after every step, killed after the first step of the prune phase
    (["--order", "2", "--set", "search.mask_scope=global", "--set", "checkpoint_minutes=0"], 5),
])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, extra, kill_after):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = run_cli("search", *TINY, *extra, "--out", str(ref))
    assert done.returncode == 0, done.stderr

    killed = run_cli("search", *TINY, *extra, "--out", str(cut), env={"_DASS_TEST_KILL_AFTER_STEPS": str(kill_after)})
    assert killed.returncode == -signal.SIGKILL
    assert not (cut / "genotype.json").exists()
    resumed = run_cli("search", "--resume", str(cut), "--quiet")
    assert resumed.returncode == 0, resumed.stderr

    (s_ref, log_ref, g_ref), (s_cut, log_cut, g_cut) = _final_state(ref), _final_state(cut)
    assert g_ref == g_cut
    for name in ("alphas_normal", "alphas_reduce"):
        assert torch.equal(s_ref["model"][name], s_cut["model"][name])
    for key, value in s_ref["model"].items():
        assert torch.equal(value, s_cut["model"][key]), key
    assert log_ref == log_cut
