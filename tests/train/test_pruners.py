"""Pruners as classes: the registry, HYDRA's start, GMP's cubic schedule, a user's own pruner."""

import pytest
import torch

from dass.errors import DassError
from dass.models import build_model
from dass.sparse import Phase, overall_density
from dass.sparse.layers import sparse_layers
from dass.train import make_train_config
from dass.train.pruners import (PRUNERS, GradualMagnitude, Hydra, Pruner, available_pruners, get_pruner,
                                register_pruner)


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", width=0.125)


def test_registry_and_phases():
    assert available_pruners() == ["gmp", "hydra"]
    assert get_pruner("hydra") is Hydra and Hydra.phase is Phase.PRUNE
    assert get_pruner("gmp") is GradualMagnitude and GradualMagnitude.phase is Phase.GRADUAL
    with pytest.raises(DassError, match="unknown pruner 'obd'"):
        get_pruner("obd")
    with pytest.raises(DassError, match="train.pruner must be one of gmp, hydra"):
        make_train_config(sets=["train.pruner=obd"])


def test_hydra_starts_from_scaled_magnitudes_at_the_target():
    model = _model()
    Hydra(model, 0.9).start(fresh=True, total_steps=10)
    for _, layer in sparse_layers(model):
        w = layer.weight.detach()
        expected = (6.0 / layer.fan_in) ** 0.5 * w / w.abs().max()
        torch.testing.assert_close(layer.scores.detach(), expected)
    assert abs(overall_density(model) - 0.1) < 0.01


def test_gmp_follows_the_cubic_ramp_in_stairs():
    model = _model()
    gmp = GradualMagnitude(model, 0.9, updates=4)
    gmp.start(fresh=True, total_steps=100)
    ramp = [gmp.sparsity_at(step) for step in (0, 24, 25, 50, 75, 99)]
    expected = [0.9 * (1 - (1 - p) ** 3) for p in (0.25, 0.25, 0.5, 0.75, 1.0, 1.0)]
    assert ramp == pytest.approx(expected)
    assert abs((1 - overall_density(model)) - expected[0]) < 0.01   # the first stair is set at the start
    gmp.before_step(25)
    assert abs((1 - overall_density(model)) - expected[2]) < 0.01


def test_a_registered_pruner_trains_end_to_end(tmp_path):
    @register_pruner
    class OneShotMagnitude(Pruner):   # prune once by magnitude, weights keep training
        name = "oneshot-test"
        phase = Phase.GRADUAL

        def start(self, fresh: bool, total_steps: int) -> None:
            if fresh:
                for _, layer in sparse_layers(self.model):
                    layer.init_scores_from_weights()
            from dass.sparse import set_sparsity
            set_sparsity(self.model, self.sparsity, self.scope)

    try:
        from dass.train import train

        config = make_train_config(sets=["train.pruner=oneshot-test", "train.epochs.pretrain=1",
                                         "train.epochs.prune=1", "train.epochs.finetune=0", "data.subset=64",
                                         "model.init_channels=4"])
        result = train(config, str(tmp_path / "run"), progress=False)
        assert abs(overall_density(result.model) - 0.1) < 0.02
    finally:
        PRUNERS.unregister("oneshot-test")
