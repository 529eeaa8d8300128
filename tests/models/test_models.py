"""Baselines and genotype networks: shapes, sizes, sparse layers everywhere, and that they learn."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dass.data import Normalization, load_dataset
from dass.metrics import count
from dass.models import build_model
from dass.sparse.layers import sparse_layers
from dass.space import DARTS_V2
from dass.space.network import Network, NetworkConfig


def _vgg16_params() -> int:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(9 * c_in * c for c_in, c in zip([3] + widths[:-1], widths))  # no conv bias (BN follows)
    return convs + sum(2 * c for c in widths) + 512 * 10 + 10


def _mobilenet_v2_params() -> int:
    total, c_in = 3 * 32 * 9 + 2 * 32, 32
    for t, c, n, _ in [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for _ in range(n):
            h = c_in * t
            total += c_in * h + 2 * h + 9 * h + 2 * h + h * c + 2 * c  # expand, depthwise, project (+ BNs)
            c_in = c
    return total + 320 * 1280 + 2 * 1280 + 1280 * 10 + 10


@pytest.mark.parametrize("name, params", [("resnet18", 11_173_962),  # the usual CIFAR ResNet-18 count
                                          ("mobilenet_v2", _mobilenet_v2_params()), ("vgg16", _vgg16_params())])
def test_baselines_have_the_known_sizes(name, params):
    model = build_model(name)
    assert count(model, (3, 32, 32)).params == params
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())  # all parametric layers sparse


def test_genotype_network_shape_aux_and_drop_path():
    net = Network(DARTS_V2, NetworkConfig(init_channels=8, layers=6, auxiliary=True, drop_path=0.2))
    net.train()
    logits, aux = net(torch.randn(4, 3, 32, 32))
    assert logits.shape == aux.shape == (4, 10)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    reductions = [i for i, c in enumerate(net.cells) if c.reduction]
    assert reductions == [2, 4]
    assert len(list(sparse_layers(net))) > 50


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "darts_v2"])
def test_a_few_steps_on_real_data_lower_the_loss(name, cifar_subset):
    ds = load_dataset(str(cifar_subset))
    x = Normalization.fit(ds.x_train)(ds.x_train[:64])
    y = torch.from_numpy(ds.y_train[:64])
    torch.manual_seed(0)
    model = build_model(name, width=0.25, init_channels=8, layers=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        out = model(x)
        loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-2:]) / 2 < losses[0] - 0.05, losses


def test_unknown_model_is_a_clear_error():
    from dass.errors import DassError

    with pytest.raises(DassError, match="unknown model 'resnet19'"):
        build_model("resnet19")
