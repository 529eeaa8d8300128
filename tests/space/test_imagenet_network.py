"""DARTS's ImageNet network (``NetworkConfig(stem="imagenet")``) on the sparse layers: size, shapes, config."""

from __future__ import annotations

import pytest
import torch

from dass.errors import DassError
from dass.params import param_roles
from dass.space.genotype import DARTS_V2
from dass.space.network import IMAGENET_SIZE, AuxiliaryHeadImageNet, Network, NetworkConfig


def _counts(net: Network) -> tuple[int, int]:
    """(network, auxiliary head) weights, as DARTS counts them: no pruning scores, no auxiliary head in the first."""
    weights = {id(p) for p in param_roles(net).weights}
    main = aux = 0
    for name, p in net.named_parameters():
        if id(p) in weights:
            if name.startswith("auxiliary."):
                aux += p.numel()
            else:
                main += p.numel()
    return main, aux


def _imagenet(c=8, layers=5, classes=10, **kw) -> Network:
    return Network(DARTS_V2, NetworkConfig(c, layers, num_classes=classes, stem="imagenet", **kw))


def test_darts_v2_imagenet_parameter_count_matches_the_reference():
    # The reference: NetworkImageNet in Scripts/model_imagenet.py of
    # github.com/HERO-MDH/DASS-Differentiable-Architecture-Search-for-Sparse-Neural-Networks (DARTS's
    # cnn/model.py), instantiated with nn.Conv2d/nn.Linear, DARTS_V2 from Scripts/genotypes.py, C=48, 14 cells,
    # 1000 classes, auxiliary=True, counted as DARTS's count_parameters_in_MB (names without "auxiliary"):
    # 4,718,752 (the DARTS paper's 4.7M for DARTS second order on ImageNet); its auxiliary head holds 1,260,776.
    assert IMAGENET_SIZE == (48, 14)
    net = Network(DARTS_V2, NetworkConfig(*IMAGENET_SIZE, auxiliary=True, num_classes=1000, stem="imagenet"))
    assert _counts(net) == (4_718_752, 1_260_776)
    assert isinstance(net.auxiliary, AuxiliaryHeadImageNet)


def test_the_cifar_network_is_unchanged():
    # The same reference repository's Scripts/model.py NetworkCIFAR, DARTS_V2, C=36, 20 cells, 10 classes:
    # 3,349,342 (the DARTS paper's 3.3M).
    net = Network(DARTS_V2, NetworkConfig(36, 20, auxiliary=True))
    assert net.config.stem == "cifar" and not net.imagenet
    assert _counts(net)[0] == 3_349_342


def test_forward_at_224_with_resolutions_of_the_reference():
    torch.manual_seed(0)
    net = _imagenet(c=8, layers=5, classes=1000, auxiliary=True).eval()
    sizes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for cell in net.cells]
    with torch.no_grad():
        logits = net(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    # stems: 224 -> 56 (stem0) -> 28 (stem1); reductions at cells 1 and 3 of 5: 14, then 7 (the 7x7 pooled map)
    assert sizes == [(28, 28), (14, 14), (14, 14), (7, 7), (7, 7)]


def test_training_forward_with_the_auxiliary_head_at_224_and_64():
    torch.manual_seed(0)
    net = _imagenet(c=8, layers=5, classes=200, auxiliary=True, drop_path=0.2).train()
    for side in (224, 64):           # 64 x 64: Tiny-ImageNet (2 x 2 maps at the head, pooled adaptively)
        logits, aux = net(torch.randn(2, 3, side, side))
        assert logits.shape == (2, 200) and aux.shape == (2, 200)
        (logits.sum() + aux.sum()).backward()
    assert net.stem0[0].weight.grad is not None
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 200)
        assert _imagenet(in_channels=1).eval()(torch.randn(1, 1, 8, 8)).shape == (1, 10)   # tiny inputs too


def test_bad_imagenet_settings_are_clear_errors():
    with pytest.raises(DassError, match="even number"):
        _imagenet(c=7)
    with pytest.raises(DassError, match="model.stem must be one of cifar, imagenet"):
        Network(DARTS_V2, NetworkConfig(8, 5, stem="mobile"))


def test_train_config_accepts_the_imagenet_stem():
    from dass.train.config import make_train_config

    config = make_train_config(sets=["model.stem=imagenet", "model.init_channels=48", "model.layers=14"])
    assert config.model.stem == "imagenet"
    assert make_train_config().model.stem == "cifar"
    with pytest.raises(DassError, match="model.stem must be one of"):
        make_train_config(sets=["model.stem=huge"])
    with pytest.raises(DassError, match="cell"):
        make_train_config(sets=["model.stem=imagenet", "model.name=resnet18"])
    with pytest.raises(DassError, match="even"):
        make_train_config(sets=["model.stem=imagenet", "model.init_channels=9"])


def test_build_network_uses_the_stem():
    from dass.train.config import make_train_config
    from dass.train.pipeline import build_network

    config = make_train_config(sets=["model.init_channels=8", "model.layers=5", "model.auxiliary=true"])
    assert not build_network(config, 3, 10).imagenet
    config = make_train_config(sets=["model.stem=imagenet", "model.init_channels=8", "model.layers=5",
                                     "model.auxiliary=true"])
    net = build_network(config, 3, 200)
    assert net.imagenet and isinstance(net.auxiliary, AuxiliaryHeadImageNet)
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 200)
