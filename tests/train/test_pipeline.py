"""Final training end to end: search -> train -> eval -> compare, densities, pruners, resume."""

import json
import signal

import pytest
import torch

from dass.sparse import density_report
from dass.sparse.layers import kept_count
from dass.train import TrainRun, make_train_config
from dass.trained import load_trained
from tests_helpers import run_cli

TINY_TRAIN = ["--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32", "--threads", "1",
              "--quiet", "--set", "train.epochs.pretrain=2", "--set", "train.epochs.prune=1",
              "--set", "train.epochs.finetune=1"]


def test_search_genotype_trains_evaluates_and_compares(tmp_path, cifar_subset):
    search = run_cli("search", "--dataset", str(cifar_subset), "--subset", "64", "--init-channels", "4", "--layers",
                     "3", "--batch-size", "32", "--epochs", "1", "--order", "1", "--quiet", "--threads", "2",
                     "--out", str(tmp_path / "search"))
    assert search.returncode == 0, search.stderr
    genotype = tmp_path / "search" / "genotype.json"
    runs = []
    for name, extra in (("cell", ["--genotype", str(genotype)]), ("mbv2", ["--model", "mobilenet_v2",
                                                                           "--set", "model.width=0.25"])):
        out = tmp_path / name
        train = run_cli("train", "--dataset", str(cifar_subset), "--sparsity", "0.9", *extra, *TINY_TRAIN,
                        "--out", str(out))
        assert train.returncode == 0, train.stderr
        model = load_trained(out).model
        for row in density_report(model):  # the packed checkpoint keeps exactly the target density
            assert row.nonzero == kept_count(row.total, 0.1), row.name
        ev = run_cli("eval", str(out), "--repeats", "2")
        assert ev.returncode == 0, ev.stderr
        result = json.loads((out / "eval.json").read_text())
        assert 0.0 <= result["top1"] <= 1.0
        assert result["nonzero_params"] < 0.3 * result["params"]
        assert result["sparse_macs"] < 0.2 * result["macs"]
        assert result["latency_b1_ms"] > 0 and result["checkpoint_bytes"] > 0
        if name == "cell":  # deployment: packed runtime and ONNX, both checked against PyTorch
            exp = run_cli("export", str(out), "--onnx")
            assert exp.returncode == 0, exp.stderr
            exported = json.loads((out / "export.json").read_text())
            assert exported["max_abs_diff"] < 1e-4 and exported["onnx_max_abs_diff"] < 1e-4
            assert (out / "model_packed.npz").is_file() and (out / "model.onnx").is_file()
            bench = run_cli("bench", str(out), "--batch", "1,3", "--rounds", "2")
            assert bench.returncode == 0, bench.stderr
            speeds = json.loads((out / "bench.json").read_text())["results"]
            assert [r["batch"] for r in speeds] == [1, 3] and all(r["max_abs_diff"] < 1e-4 for r in speeds)
        runs.append(str(out))
    (tmp_path / "search").joinpath("unused").write_text("")
    table = run_cli("compare", *runs)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].startswith("| run | model |") and len(lines) == 4
    assert "genotype:genotype.json" in lines[2] and "mobilenet_v2" in lines[3]


def test_gradual_magnitude_pruning_reaches_target(tmp_path):
    config = make_train_config("train-default", {
        "data": {"subset": 128}, "model": {"name": "resnet18", "width": 0.125},
        "train": {"pruner": "gmp", "sparsity": 0.95, "batch_size": 32, "gmp_updates": 4,
                  "epochs": {"pretrain": 1, "prune": 2, "finetune": 1}}})
    run = TrainRun.create(config, str(tmp_path / "gmp"), progress=False)
    run.pruner.start(fresh=False, total_steps=2 * run.steps_per_epoch)   # the schedule only, no mask update
    schedule = [run.pruner.sparsity_at(step) for step in range(2 * run.steps_per_epoch)]
    stairs = sorted(set(schedule))
    assert schedule == sorted(schedule) and len(stairs) == 4 and stairs[-1] == pytest.approx(0.95)
    steps = [b - a for a, b in zip([0.0] + stairs, stairs)]
    assert steps == sorted(steps, reverse=True)  # cubic: prune fast first, then slow down
    run.run()
    for row in density_report(run.model):
        assert row.nonzero == kept_count(row.total, 0.05), row.name
    records = [json.loads(l) for l in (tmp_path / "gmp" / "log.jsonl").read_text().splitlines()]
    assert records[0]["density"] == 1.0 and records[1]["density"] > records[2]["density"]


def test_training_resumes_after_sigkill(tmp_path):
    args = ["--model", "darts_v2", "--set", "model.auxiliary=true", "--set", "model.drop_path=0.2", *TINY_TRAIN]
    ref = run_cli("train", *args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    killed = run_cli("train", *args, "--out", str(tmp_path / "cut"), env={"_DASS_TEST_KILL_AFTER_STEPS": "9"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli("train", "--resume", str(tmp_path / "cut"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_an_nb201_genotype_trains_with_nesterov_and_the_authors_kept_rule(tmp_path):
    """Training is space-agnostic: an NB-201 architecture string builds the benchmark's network."""
    from dass.sparse.layers import set_kept_rule

    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    config = make_train_config("train-default", {
        "data": {"dataset": "digits", "subset": 64}, "threads": 1,
        "model": {"name": "genotype", "genotype": arch, "init_channels": 4, "layers": 1},
        "train": {"batch_size": 32, "nesterov": True, "kept_rule": "authors", "sparsity": 0.9,
                  "epochs": {"pretrain": 1, "prune": 1, "finetune": 1}}})
    try:
        run = TrainRun.create(config, str(tmp_path / "run"), progress=False)
        assert type(run.model).__name__ == "NB201Network"
        assert run.optimizer is None or run.optimizer.defaults["nesterov"]
        run.run()
        model = load_trained(tmp_path / "run").model
        for row in density_report(model):   # the authors' rule at keep ratio 0.1: n - int(0.9 * n) weights
            assert row.nonzero == kept_count(row.total, 0.1, rule="authors"), row.name
    finally:
        set_kept_rule("round")
