import pytest

from dass.errors import DassError
from dass.search import make_config


def test_preset_flags_and_set_layering():
    cfg = make_config("default", {"search": {"sparsity": 0.95}}, ["search.epochs.prune=7", "model.ops=[skip_connect, sep_conv_3x3]"])
    assert cfg.search.sparsity == 0.95
    assert cfg.search.epochs.prune == 7
    assert cfg.model.ops == ["skip_connect", "sep_conv_3x3"]
    assert cfg.data.dataset == "digits"


def test_paper_preset_has_the_paper_settings():
    cfg = make_config("paper")
    s = cfg.search
    assert (cfg.model.init_channels, cfg.model.layers, s.batch_size) == (16, 8, 64)
    assert (s.weight_lr, s.score_lr, s.arch_lr, s.arch_beta1, s.arch_beta2, s.arch_weight_decay, s.grad_clip) == \
        (0.025, 0.1, 3e-4, 0.5, 0.999, 1e-3, 5.0)


@pytest.mark.parametrize("sets, message", [
    (["search.sparsty=0.9"], "did you mean search.sparsity"),
    (["search.sparsity=1.5"], r"sparsity must be in \(0, 1\)"),
    (["search.sparsity=0"], r"sparsity must be in \(0, 1\)"),
    (["search.order=3"], "order must be 1 or 2"),
    (["search.batch_size=abc"], "must be an integer"),
    (["model.ops=[sep_conv_3x3, warp_drive]"], "unknown op"),
    (["nokey"], "key=value"),
])
def test_bad_values_are_clear_errors(sets, message):
    with pytest.raises(DassError, match=message):
        make_config("default", None, sets)


def test_unknown_preset():
    with pytest.raises(DassError, match="presets: "):
        make_config("no-such-preset")
