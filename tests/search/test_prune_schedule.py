"""A search that keeps learning when pruning starts: ERK budgets, a sparsity ramp, batch-norm recalibration."""

import json

import pytest
import torch
from torch import nn

from dass.loop import recalibrate_batchnorm
from dass.search import make_config
from dass.search.searcher import DassSearch
from tests_helpers import run_cli

TINY = ["model.init_channels=4", "model.layers=3", "model.nodes=2", "model.multiplier=2", "data.subset=128",
        "search.batch_size=32", "search.epochs.warmup=1", "search.epochs.prune=2", "search.epochs.finetune=1",
        "threads=1"]


def test_the_ramp_is_cubic_over_its_fraction_of_the_prune_phase(tmp_path):
    config = make_config("default", sets=TINY + ["search.prune_ramp=0.5"])
    run = DassSearch(config, __import__("dass.runtime", fromlist=["RunDir"]).RunDir(tmp_path), progress=False)
    steps = run.steps_per_epoch
    total = 0.5 * 2 * steps          # half of the 2-epoch prune phase
    for done in range(0, 2 * steps):
        run.position = {"phase": 1, "epoch": done // steps, "step": done % steps}
        expected = 0.9 * (1 - (1 - min(done / total, 1.0)) ** 3)
        assert run._ramped(0.9) == pytest.approx(expected)
    run.position = {"phase": 1, "epoch": 1, "step": steps - 1}
    assert run._ramped(0.9) == pytest.approx(0.9)   # at the target for the second half


def test_recalibration_gives_the_batches_cumulative_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    batches = [(torch.randn(8, 1, 6, 6) * (i + 1), None) for i in range(3)]
    with torch.no_grad():
        features = torch.cat([model[0](x) for x, _ in batches])
    recalibrate_batchnorm(model, iter(batches), None, 3)
    bn = model[1]
    assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([model[0](x).detach().var((0, 2, 3), unbiased=True) for x, _ in batches])
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), atol=1e-4)   # momentum=None: cumulative average
    assert bn.momentum == 0.1 and model.training   # restored


def test_options_are_validated():
    from dass.errors import DassError

    for bad, message in (("search.budget=random", "search.budget must be one of"),
                         ("search.prune_ramp=2", r"search.prune_ramp must be in \[0, 1\]"),
                         ("search.bn_recalibrate=-1", "must not be negative")):
        with pytest.raises(DassError, match=message):
            make_config("default", sets=[bad])
    assert make_config("default", sets=["search.budget=erk", "search.mask_scope=global"]).search.budget == "erk"


def test_a_ramped_erk_search_resumes_exactly(tmp_path):
    args = ["search", "--dataset", "digits", "--quiet", "--order", "1"] + [a for t in TINY for a in ("--set", t)] + [
        "--set", "search.budget=erk", "--set", "search.prune_ramp=0.5", "--set", "search.bn_recalibrate=2"]
    done = run_cli(*args, "--out", str(tmp_path / "ref"))
    assert done.returncode == 0, done.stderr
    cut = run_cli(*args, "--out", str(tmp_path / "cut"), env={"_DASS_TEST_KILL_AFTER_STEPS": "4"})   # mid-prune
    assert cut.returncode != 0
    assert run_cli("search", "--resume", str(tmp_path / "cut"), "--quiet").returncode == 0
    ref = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    records = [json.loads(line) for line in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["warmup", "prune", "prune", "finetune"]
    assert 0.1 < records[1]["density"] < 0.3 and abs(records[2]["density"] - 0.1) < 0.005   # ramping, then at target
    assert all("val_acc" in r for r in records)


@pytest.mark.parametrize("prune_weights", [False, True])
def test_prune_weights_lets_the_weights_train_beside_the_scores(tmp_path, prune_weights):
    """HYDRA's prune phase (the default) freezes the sparse layers' weights while the scores learn the mask;
    ``search.prune_weights`` trains both, so the weights adapt while the ramp tightens the mask."""
    from dass.sparse.layers import sparse_layers

    config = make_config("default", sets=TINY + ["search.epochs.warmup=0", "search.epochs.finetune=0",
                                                 f"search.prune_weights={prune_weights}"])
    run = DassSearch.create(config, str(tmp_path / "run"), progress=False)
    layers = [layer for _, layer in sparse_layers(run.model)]
    before = [layer.weight.detach().clone() for layer in layers]
    run.run()
    moved = [not torch.equal(b, layer.weight) for b, layer in zip(before, layers)]
    assert all(moved) if prune_weights else not any(moved)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["prune", "prune"] and "scores" in records[0]["lr"]
    assert ("weights" in records[0]["lr"]) == prune_weights


def test_prune_weight_lr_scale_sets_the_weights_lr_of_the_prune_phase(tmp_path):
    config = make_config("default", sets=TINY + ["search.epochs.warmup=0", "search.epochs.prune=1",
                                                 "search.epochs.finetune=1", "search.prune_weights=true",
                                                 "search.prune_weight_lr_scale=0.5", "search.weight_lr=0.04"])
    run = DassSearch.create(config, str(tmp_path / "run"), progress=False)
    run.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["phase"] == "prune" and records[0]["lr"]["weights"] == pytest.approx(0.02)
    assert records[1]["phase"] == "finetune" and records[1]["lr"]["weights"] == pytest.approx(0.04)   # only there
    from dass.errors import DassError

    with pytest.raises(DassError, match="prune_weight_lr_scale must be > 0"):
        make_config("default", sets=["search.prune_weight_lr_scale=0"])
