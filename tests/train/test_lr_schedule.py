"""Final training's learning-rate schedule option: cosine (default) or sharpDARTS' cosine power annealing."""

import pytest

from dass.errors import DassError
from dass.loop import cosine_lr, cosine_power_lr
from dass.train import TrainRun, make_train_config


def test_cosine_power_annealing_sets_each_phase_epochs_rate(tmp_path):
    config = make_train_config("train-default", {
        "data": {"subset": 64}, "model": {"name": "resnet18", "width": 0.125},
        "train": {"batch_size": 32, "lr_schedule": "cosine_power", "lr_power": 10.0, "lr_min": 1e-4,
                  "epochs": {"pretrain": 3, "prune": 1, "finetune": 2}}})
    run = TrainRun.create(config, str(tmp_path / "run"), progress=False)
    run.run()
    records = run.run_dir.log_records()
    t = config.train
    expected = [cosine_power_lr(t.lr.pretrain, 1e-4, k, 3, 10.0) for k in range(3)] + \
        [cosine_power_lr(t.lr.prune, 1e-4, 0, 1, 10.0)] + \
        [cosine_power_lr(t.lr.finetune, 1e-4, k, 2, 10.0) for k in range(2)]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    assert records[1]["lr"] < cosine_lr(t.lr.pretrain, 1e-4, 1, 3)   # faster early decay than cosine


def test_the_schedule_options_are_checked():
    assert make_train_config("train-default").train.lr_schedule == "cosine"
    with pytest.raises(DassError, match="train.lr_schedule"):
        make_train_config("train-default", sets=["train.lr_schedule=linear"])
    with pytest.raises(DassError, match="train.lr_power"):
        make_train_config("train-default", sets=["train.lr_schedule=cosine_power", "train.lr_power=0.5"])
