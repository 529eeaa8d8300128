"""Search spaces as plug-ins: the registry, and the DARTS space's supernet, derivation and network."""

import pytest
import torch

from dass.errors import DassError
from dass.search.config import ModelConfig
from dass.space import DartsSpace, Genotype, SearchSpace, Supernet, available_spaces, get_space, register_space
from dass.space.spaces import SPACES
from dass.train.config import NetConfig


def test_darts_space_builds_derives_and_trains_its_genotype():
    space = get_space("darts")
    assert isinstance(space, DartsSpace) and space.genotype_type is Genotype
    torch.manual_seed(0)
    supernet = space.build_supernet(ModelConfig(init_channels=4, layers=3), in_channels=1, num_classes=10)
    assert isinstance(supernet, Supernet)
    assert supernet(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    genotype = space.derive(supernet)
    assert genotype == supernet.genotype()
    net = space.build_network(genotype, NetConfig(init_channels=4, layers=3), in_channels=1, num_classes=10)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_space_and_bad_ops_are_clear_errors():
    with pytest.raises(DassError, match="unknown search space 'nb999'.*darts"):
        get_space("nb999")
    with pytest.raises(DassError, match="unknown op"):
        get_space("darts").check(ModelConfig(ops=["sep_conv_3x3", "conv_9x9"]))


def test_a_registered_space_is_selectable_by_name():
    class Tiny(SearchSpace):
        name = "tiny-test"

    try:
        register_space(Tiny())
        assert "tiny-test" in available_spaces()
        assert isinstance(get_space("tiny-test"), Tiny)
    finally:
        SPACES.unregister("tiny-test")
