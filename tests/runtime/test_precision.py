"""Mixed precision: loss scaling skips overflowing fp16 steps, and reduced-precision runs work end to end."""

import pytest
import torch
from torch import nn

from dass.loop import sgd_step
from dass.runtime.precision import GROWTH_INTERVAL, INITIAL_SCALE, Precision, current_precision, set_precision
from tests_helpers import run_cli


@pytest.fixture
def fp16():
    previous = current_precision()
    precision = set_precision(Precision("fp16", "cpu"))
    yield precision
    set_precision(previous)


def test_scale_halves_on_overflow_and_grows_after_a_good_stretch():
    p = Precision("fp16")
    assert p.scale == INITIAL_SCALE
    p.update(False)
    assert p.scale == INITIAL_SCALE / 2 and p.skipped == 1
    for _ in range(GROWTH_INTERVAL):
        p.update(True)
    assert p.scale == INITIAL_SCALE
    q = Precision("fp16")
    q.load_state_dict(p.state_dict())
    assert q.state_dict() == p.state_dict()
    assert Precision("bf16").scale == 1.0 and Precision("fp32").scale == 1.0


def test_an_overflowing_fp16_step_is_skipped(fp16):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    fp16.scale = 1e38   # scaled gradients overflow float32
    sgd_step(model, list(model.parameters()), opt, x, y, grad_clip=None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert fp16.scale == 5e37 and fp16.skipped == 1
    fp16.scale = 1024.0
    sgd_step(model, list(model.parameters()), opt, x, y, grad_clip=None)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_scaled_gradients_equal_fp32_gradients(fp16):
    """Scaling is exact in float32 for a power of two: the step equals the unscaled one."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    results = []
    for precision in (Precision("fp32"), Precision("fp16")):
        set_precision(precision)
        precision.dtype = None   # loss scaling only, no autocast: isolates the scaling arithmetic
        torch.manual_seed(1)
        model = nn.Linear(4, 3)
        sgd_step(model, list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), x, y, grad_clip=None)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_search_runs_and_resumes(tmp_path, precision):
    args = ["search", "--dataset", "digits", "--subset", "128", "--init-channels", "4", "--layers", "3",
            "--batch-size", "32", "--set", "model.nodes=2", "--set", "model.multiplier=2", "--epochs", "1",
            "--quiet", "--set", f"precision={precision}"]
    done = run_cli(*args, "--out", str(tmp_path / "ref"))
    assert done.returncode == 0, done.stderr
    cut = run_cli(*args, "--out", str(tmp_path / "cut"), env={"_DASS_TEST_KILL_AFTER_STEPS": "3"})
    assert cut.returncode != 0
    resumed = run_cli("search", "--resume", str(tmp_path / "cut"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    ref = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    got = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ref["precision"]["name"] == precision and ref["precision"] == got["precision"]
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])


def test_channels_last_is_refused_on_cpu(capsys):
    from dass.cli import main

    assert main(["search", "--set", "channels_last=true", "--quiet"]) == 2
    assert "channels_last helps GPU convolutions" in capsys.readouterr().err
