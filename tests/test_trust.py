"""Trust: a run directory never loses work, a diverging run stops, bad input is one clear line (issue 12)."""

import json
import signal

import numpy as np
import pytest
import torch

from dass.cli import main
from dass.errors import DassError
from dass.runtime.config import build
from dass.search import make_config
from dass.space import DARTS_V2
from dass.search.config import SearchRunConfig
from dass.search.searcher import DassSearch
from dass.train import make_train_config, train
from tests_helpers import run_cli

TINY = ["--dataset", "digits", "--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32",
        "--set", "model.nodes=2", "--set", "model.multiplier=2", "--threads", "1", "--quiet",
        "--set", "search.epochs.warmup=1", "--set", "search.epochs.prune=1", "--set", "search.epochs.finetune=1"]


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def _one_line_error(code, err, message):
    assert code == 2, err
    assert err.startswith("dass: error: ") and err.count("\n") == 1, err
    assert message in err, err


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--set", "search.weight_lr=.inf"], "search.weight_lr must be a finite number"),
    (["--set", "search.score_lr=.nan"], "search.score_lr must be a finite number"),
    (["--set", "search.arch_beta1=5"], "arch_beta1 and arch_beta2 must be in [0, 1)"),
    (["--set", "search.weight_momentum=-1"], "weight_momentum and score_momentum must be in [0, 1)"),
    (["--set", "model.stem_multiplier=0"], "model.stem_multiplier must be at least 1"),
    (["--seed", "-1"], "seed must be in 0.."),
    (["--seed", str(2**70)], "seed is out of range"),
    (["--seed", str(2**40)], "seed must be in 0.."),
    (["--threads", "0"], "threads must be at least 1"),
    (["--set", "search.unrolled_eps=0"], "unrolled_eps must be positive"),
    (["--set", "search.weight_decay=-1"], "weight decays must not be negative"),
])
def test_out_of_range_settings(capsys, argv, message):
    _one_line_error(*_cli(capsys, "search", "--quiet", *argv), message)


def test_binary_config_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    _one_line_error(*_cli(capsys, "search", "--config", path), "is not text")


def test_relative_dataset_path_is_stored_absolute(tmp_path, monkeypatch, cifar_subset):
    monkeypatch.chdir(cifar_subset.parent)
    config = make_config("default", {"data": {"dataset": cifar_subset.name}})
    assert config.data.dataset == str(cifar_subset.resolve())


# -- run directories ----------------------------------------------------------------------------------
def test_out_with_a_users_config_is_refused_and_force_keeps_it(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("my: notes\n")
    _one_line_error(*_cli(capsys, "search", *TINY, "--out", out), "is not empty")
    assert (out / "config.yaml").read_text() == "my: notes\n"
    code, err = _cli(capsys, "search", *TINY, "--out", out, "--force")
    assert code == 0, err
    moved = next(tmp_path.glob("out.replaced-*"))
    assert (moved / "config.yaml").read_text() == "my: notes\n"
    assert (out / "genotype.json").is_file() and (out / "run.json").is_file()


def test_a_failed_start_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 8, 8, 1), np.uint8))   # no labels, no test split
    out = tmp_path / "run"
    code, err = _cli(capsys, "search", *TINY, "--dataset", bad, "--out", out)
    assert code == 2 and "Traceback" not in err
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    code = main(["search", *TINY, "--out", str(out)])
    assert code == 0
    return out


def _copy_run(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_resume_refuses_another_runs_checkpoint(tmp_path, finished_search, capsys):
    other = tmp_path / "other"
    assert main(["search", *TINY, "--seed", "1", "--out", str(other)]) == 0
    mixed = _copy_run(finished_search, tmp_path / "mixed")
    (mixed / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    capsys.readouterr()
    _one_line_error(*_cli(capsys, "search", "--resume", mixed), "checkpoint.pt belongs to run")


def test_resume_refuses_an_edited_config(tmp_path, finished_search, capsys):
    run = _copy_run(finished_search, tmp_path / "edited")
    text = (run / "config.yaml").read_text()
    assert "sparsity: 0.9\n" in text
    (run / "config.yaml").write_text(text.replace("sparsity: 0.9\n", "sparsity: 0.95\n"))
    _one_line_error(*_cli(capsys, "search", "--resume", run), "search.sparsity: 0.9 -> 0.95")


def test_resume_refuses_a_log_of_another_run(tmp_path, finished_search, capsys):
    run = _copy_run(finished_search, tmp_path / "log")
    records = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join(records[:1]) + "\n")
    _one_line_error(*_cli(capsys, "search", "--resume", run), "does not belong to the checkpoint")


def test_resume_survives_a_torn_log_line_and_a_stale_temporary(tmp_path, finished_search, capsys):
    run = _copy_run(finished_search, tmp_path / "torn")
    with open(run / "log.jsonl", "a") as fh:
        fh.write('{"phase": "fine')
    (run / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"")
    code, err = _cli(capsys, "search", "--resume", run, "--quiet", "--threads", "1")
    assert code == 0, err
    assert not list(run.glob(".*.tmp"))
    assert (run / "log.jsonl").read_text().endswith("}\n")


def test_resume_validates_threads(finished_search, capsys):
    _one_line_error(*_cli(capsys, "search", "--resume", finished_search, "--threads", "0"),
                    "threads must be at least 1")


# -- signals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, finished_search, sig):
    cut = tmp_path / "cut"
    stopped = run_cli("search", *TINY, "--out", str(cut),
                      env={"_DASS_TEST_KILL_AFTER_STEPS": "3", "_DASS_TEST_KILL_SIGNAL": sig})
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and f"--resume {cut}" in stopped.stderr
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"phase": 1, "epoch": 0, "step": 1}   # after step 3 of 2 + 2 + 2
    resumed = run_cli("search", "--resume", str(cut), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (cut / "genotype.json").read_text() == (finished_search / "genotype.json").read_text()
    ref = torch.load(finished_search / "checkpoint.pt", weights_only=True)["model"]
    got = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_kill_before_the_first_step_leaves_a_resumable_run(tmp_path):
    cut = tmp_path / "cut"
    killed = run_cli("search", *TINY, "--out", str(cut), env={"_DASS_TEST_KILL_AFTER_STEPS": "1"})
    assert killed.returncode == -signal.SIGKILL
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"phase": 0, "epoch": 0, "step": 0}   # written when the run started


# -- divergence ---------------------------------------------------------------------------------------
def test_a_diverging_search_stops_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    config = make_config("default", sets=["model.nodes=2", "model.multiplier=2", "search.epochs.warmup=1",
                                          "search.epochs.prune=1", "search.epochs.finetune=1", "data.subset=128",
                                          "model.init_channels=4", "model.layers=3", "search.batch_size=32",
                                          "threads=1"])
    run = DassSearch.create(config, str(tmp_path / "run"), progress=False)
    step = DassSearch.train_step

    def poisoned(self, batch):   # the first prune step ends with NaN weights, the second with a NaN loss
        step(self, batch)
        if self.position["phase"] == 1:
            with torch.no_grad():
                self.model.alphas_normal.fill_(float("nan"))

    monkeypatch.setattr(DassSearch, "train_step", poisoned)
    with pytest.raises(DassError, match="diverged in phase prune, epoch 1, step 1: alphas_normal holds NaN"):
        run.run()
    run = DassSearch.resume(tmp_path / "run", progress=False)
    monkeypatch.setattr(DassSearch, "accumulate", lambda self, **v: DassSearch._diverged(self, "train_loss is nan"))
    with pytest.raises(DassError, match="diverged in phase prune, epoch 1, step 1: train_loss is nan"):
        run.run()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"phase": 1, "epoch": 0, "step": 0}
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "genotype.json").exists()


def test_an_infinite_learning_rate_cannot_even_start(tmp_path):
    with pytest.raises(DassError, match="finite"):
        build(SearchRunConfig, {"search": {"arch_lr": float("inf")}})


# -- finished training runs: eval, export, bench, show ---------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    config = make_train_config("train-default", {
        "data": {"dataset": "digits", "subset": 64}, "threads": 1,
        "model": {"name": "resnet18", "width": 0.125},
        "train": {"batch_size": 32, "epochs": {"pretrain": 1, "prune": 1, "finetune": 1}}})
    train(config, str(out), progress=False)
    return out


@pytest.mark.parametrize("argv, message", [
    (["eval", "{run}", "--repeats", "0"], "--repeats must be at least 1"),
    (["bench", "{run}", "--rounds", "0"], "--rounds and --threads must be at least 1"),
    (["bench", "{run}", "--threads", "0"], "--rounds and --threads must be at least 1"),
    (["export", "{run}", "--threads", "0"], "--threads must be at least 1"),
])
def test_counts_out_of_range(trained, capsys, argv, message):
    _one_line_error(*_cli(capsys, *[a.format(run=trained) for a in argv]), message)


def test_export_into_a_folder_and_stale_packed_models(trained, tmp_path, capsys):
    code, err = _cli(capsys, "export", trained, "--out", tmp_path)
    assert code == 0, err
    assert (tmp_path / "model_packed.npz").is_file()
    # a packed model that export.json does not tie to this model_sparse.pt is refused by bench
    (trained / "model_packed.npz").write_bytes((tmp_path / "model_packed.npz").read_bytes())
    _one_line_error(*_cli(capsys, "bench", trained, "--batch", "1", "--rounds", "1"), "was not exported from")
    code, err = _cli(capsys, "export", trained)
    assert code == 0, err
    code, err = _cli(capsys, "bench", trained, "--batch", "1", "--rounds", "1")
    assert code == 0, err
    (trained / "export.json").write_text(json.dumps({**json.loads((trained / "export.json").read_text()),
                                                     "model_sha256": "0" * 16}))
    _one_line_error(*_cli(capsys, "bench", trained, "--batch", "1", "--rounds", "1"), "was not exported from")


def test_eval_is_refused_on_a_read_only_run_before_computing(trained, monkeypatch, capsys):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(trained) else real(p, mode))
    _one_line_error(*_cli(capsys, "eval", trained, "--no-latency"), "read-only file system")


def test_stale_eval_json_is_measured_again(trained, capsys):
    from dass.evaluation import compare_runs

    (trained / "eval.json").write_text(json.dumps({"model_sha256": "stale", "top1": 2.0}))
    table = compare_runs([trained])
    assert "200.00" not in table
    assert json.loads((trained / "eval.json").read_text())["top1"] <= 1.0


def _damage(state, how):
    layers = state["packed"]["sparse_layers"]
    name = next(iter(layers))
    if how == "values_short":
        layers[name]["values"] = layers[name]["values"][:-1]
    elif how == "shape":
        layers[name]["shape"] = [s + 1 for s in layers[name]["shape"]]
    elif how == "mask_bits_short":
        layers[name]["mask_bits"] = layers[name]["mask_bits"][:1]
    elif how == "keep_ratio":
        layers[name]["keep_ratio"] = "lots"
    elif how == "nan_weights":
        layers[name]["values"] = torch.full_like(layers[name]["values"], float("nan"))
    elif how == "meta":
        state["meta"]["input_shape"] = [3, -1]
    elif how == "dense_missing":
        state["packed"]["dense"].popitem()
    return state


@pytest.mark.parametrize("how", ["values_short", "shape", "mask_bits_short", "keep_ratio", "nan_weights", "meta",
                                 "dense_missing"])
def test_damaged_model_file(trained, tmp_path, capsys, how):
    run = _copy_run(trained, tmp_path / how)
    state = torch.load(run / "model_sparse.pt", weights_only=True)
    torch.save(_damage(state, how), run / "model_sparse.pt")
    code, err = _cli(capsys, "eval", run, "--no-latency")
    assert code == 2 and err.startswith("dass: error: ") and err.count("\n") == 1, err


def test_show_never_draws_over_its_input(tmp_path, capsys):
    genotype = tmp_path / "cell.png"   # a DARTS string in a file with a .png name
    text = DARTS_V2.to_darts_string()
    genotype.write_text(text)
    code, err = _cli(capsys, "show", genotype)
    assert code == 0, err
    assert genotype.read_text() == text and (tmp_path / "cell.png.cells.png").is_file()
    _one_line_error(*_cli(capsys, "show", "DARTS_V2", "--png", tmp_path), "")


def test_same_seed_and_threads_give_identical_runs(tmp_path):
    """What docs/usage.md promises: bit-identical runs at the same thread count (here 2, as the default)."""
    args = [a if a != "1" or TINY[i - 1] != "--threads" else "2" for i, a in enumerate(TINY)]
    for name in ("a", "b"):
        assert main(["search", *args, "--out", str(tmp_path / name)]) == 0
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["model"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "genotype.json").read_text() == (tmp_path / "b" / "genotype.json").read_text()


def test_batch_of_one_on_tiny_images_is_a_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 255, (8, 2, 2, 1), dtype=np.uint8), y_train=np.arange(8) % 2,
             x_test=rng.integers(0, 255, (4, 2, 2, 1), dtype=np.uint8), y_test=np.arange(4) % 2)
    code, err = _cli(capsys, "search", "--dataset", data, "--batch-size", "1", "--epochs", "1", "--init-channels", "4",
                     "--layers", "3", "--quiet", "--threads", "1", "--out", tmp_path / "run")
    assert code == 2 and "batch size of at least 2" in err and "Traceback" not in err
