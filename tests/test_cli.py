"""The command line: each bad input gives one clear message and a non-zero exit, never a traceback."""

import json

import pytest
import torch

from dass.cli import main
from dass.runtime import save_checkpoint
from tests_helpers import run_cli


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_missing_dataset_in_a_real_process():
    proc = run_cli("search", "--dataset", "no/such/file.npz", "--quiet")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "dataset file no/such/file.npz does not exist" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--set", "search.nonsense=1"], "unknown config key 'search.nonsense'"),
    (["--set", "search.batch_size=abc"], "search.batch_size must be an integer"),
    (["--sparsity", "1.5"], "sparsity must be in (0, 1)"),
    (["--sparsity", "0"], "sparsity must be in (0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must be in (0, 1)"),
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--dataset", "imagenet"], "dataset 'imagenet' not found"),
    (["--resume", "/nonexistent/run"], "not a directory"),
])
def test_bad_input_messages(capsys, argv, message):
    code, err = _run(capsys, "search", "--quiet", *argv)
    assert code == 2
    assert message in err
    assert err.startswith("dass: error: ") and err.count("\n") == 1


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    return run


def test_corrupt_checkpoint(tmp_path, capsys):
    run = _run_dir(tmp_path)
    (run / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    code, err = _run(capsys, "search", "--resume", str(run))
    assert code == 2 and "corrupt or not a dass checkpoint" in err


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    run = _run_dir(tmp_path)

    target = str(tmp_path / "pwned")

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({target!r}, 'w').write('x')",))

    torch.save({"format": "dass-search", "x": Payload()}, run / "checkpoint.pt")
    code, err = _run(capsys, "search", "--resume", str(run))
    assert code == 2 and "corrupt or not a dass checkpoint" in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("payload, message", [
    ({"state_dict": {}}, "not a dass checkpoint"),
    ({"format": "dass-train", "format_version": 1}, "is a 'dass-train' checkpoint"),
])
def test_foreign_checkpoint(tmp_path, capsys, payload, message):
    run = _run_dir(tmp_path)
    torch.save(payload, run / "checkpoint.pt")
    code, err = _run(capsys, "search", "--resume", str(run))
    assert code == 2 and message in err


def test_resume_refuses_new_settings(tmp_path, capsys):
    run = _run_dir(tmp_path)
    code, err = _run(capsys, "search", "--resume", str(run), "--sparsity", "0.5")
    assert code == 2 and "drop --sparsity" in err


def test_out_dir_with_a_run_is_not_overwritten(tmp_path, capsys):
    run = _run_dir(tmp_path)
    save_checkpoint(run / "checkpoint.pt", {"x": 1}, "search")
    code, err = _run(capsys, "search", "--out", str(run), "--quiet")
    assert code == 2 and "is not empty" in err and "--resume" in err


def test_show_prints_and_draws(tmp_path, capsys):
    png = tmp_path / "cells.png"
    assert main(["show", "DARTS_V2", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Genotype(normal=[('sep_conv_3x3', 0)")
    assert "node 3: skip_connect <- c_{k-2}, dil_conv_3x3 <- node 0" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["show", "DARTS_V2", "--format", "json", "--png", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["reduce"][0] == ["max_pool_3x3", 0]
    code, err = _run(capsys, "show", str(tmp_path / "missing.json"))
    assert code == 2 and "does not exist" in err
