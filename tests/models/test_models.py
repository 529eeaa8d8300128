"""Baselines and genotype networks: shapes, sizes, sparse layers everywhere, and that they learn."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dass.data import Normalization, load_dataset
from dass.metrics import count
from dass.models import BASELINES, build_model, model_names
from dass.models.mobilenet import InvertedResidual
from dass.sparse import SparseConv2d, set_sparsity
from dass.sparse.layers import kept_count, sparse_layers
from dass.space import DARTS_V2
from dass.space.network import Network, NetworkConfig


# Reference figures at width 1 for CIFAR-10 (10 classes, 3x32x32): parameters, and multiply-adds (convolutions
# and linear layers, one image, as dass.metrics.count counts them). Each was computed by instantiating the
# reference architecture named in the comment with plain nn.Conv2d / nn.Linear and counting its parameters and,
# with forward hooks, its multiply-adds. "DASS repo" is github.com/HERO-MDH/DASS-Differentiable-Architecture-
# Search-for-Sparse-Neural-Networks; "kuangliu" is github.com/kuangliu/pytorch-cifar.
REFERENCE = {
    # DASS repo Hydra/models/resnet_cifar.py resnet18 (after kuangliu models/resnet.py)
    "resnet18": (11_173_962, 555_422_720),
    # kuangliu models/mobilenetv2.py = DASS repo Hydra/models/mobileNet.py (and Scripts/mobilenet.py); the 1x1
    # conv + BN shortcuts of the four stride-1 blocks that change channels are 59,152 params, 2,129,920 MACs
    "mobilenet_v2": (2_296_922, 91_154_944),
    # kuangliu models/vgg.py VGG('VGG16'): conv biases on (4,224 params); the DASS repo's Hydra vgg16_bn is a
    # different network (2x2 avg-pool, 2048-256-256-10 classifier, no conv bias: 15,311,818 params)
    "vgg16": (14_728_266, 313_201_664),
    # DASS repo Scripts/effenetv2.py EfficientNetV2(..., num_classes=10) (= Hydra/models/effnetv2.py)
    "efficientnet_v2_s": (20_328_762, 62_169_024),
    # DASS repo Hydra/models/wrn_cifar.py: the network that runs. The reference's parameters() also hold an unused
    # `sub_block1` (never called in forward), which we leave out: with it the totals are 38,119,866 (28-10),
    # 6,118,266 (28-4), 388,186 (28-1), 48,262,586 (34-10) and 2,350,778 (40-2).
    "wrn_28_10": (36_479_194, 5_243_328_768),
    "wrn_28_4": (5_849_050, 845_597_184),
    "wrn_28_1": (369_498, 54_968_960),
    "wrn_34_10": (46_160_474, 6_658_906_368),
    "wrn_40_2": (2_243_546, 327_599_360),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_baselines_have_the_reference_sizes(name):
    model = build_model(name)
    counts = count(model, (3, 32, 32))
    assert (counts.params, counts.macs) == REFERENCE[name]
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())  # all parametric layers sparse


def test_every_baseline_has_a_reference_size_and_is_listed():
    assert set(BASELINES) == set(REFERENCE)
    assert set(BASELINES) <= set(model_names())


def test_darts_v2_size_is_unchanged():
    assert count(build_model("darts_v2", init_channels=36, layers=20), (3, 32, 32)).params == 3_349_342


def test_mobilenet_v2_shortcuts_are_sparse_and_pruned():
    model = build_model("mobilenet_v2")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    projected = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    # stride-1 blocks that change channels: 32->16, 16->24, 64->96, 160->320
    assert [(b.shortcut[0].in_channels, b.shortcut[0].out_channels) for b in projected] == \
        [(32, 16), (16, 24), (64, 96), (160, 320)]
    assert all(isinstance(b.shortcut[0], SparseConv2d) for b in projected)
    assert [b.use_residual for b in blocks] == [b.block[3].stride == (1, 1) for b in blocks]
    set_sparsity(model, 0.9)
    for b in projected:
        assert b.shortcut[0].nonzero_count() == kept_count(b.shortcut[0].weight.numel(), 0.1)
    # and the shortcut is on the forward path: block output = main branch + projected input
    model.eval()
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(projected[0](x), projected[0].block(x) + projected[0].shortcut(x))
        assert projected[0].shortcut(x).abs().sum() > 0


@pytest.mark.parametrize("name", ["efficientnet_v2_s", "wrn_28_10", "vgg16", "mobilenet_v2"])
def test_width_multiplier_shrinks_the_new_baselines(name):
    full = count(build_model(name), (3, 32, 32)).params
    half = build_model(name, num_classes=100, in_channels=1, width=0.5)
    assert half(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    assert count(half, (1, 32, 32)).params < 0.4 * full


def test_vgg16_conv_biases_fold_into_the_deployed_graph():
    from dass.deploy.fold import fold_batchnorm

    torch.manual_seed(0)
    model = build_model("vgg16", width=0.125)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, SparseConv2d))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
        if isinstance(m, SparseConv2d):
            m.bias.data.uniform_(-1, 1)
    set_sparsity(model, 0.8)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-4, atol=1e-4)


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


@pytest.mark.parametrize("name, images", [("resnet18", 64), ("mobilenet_v2", 64), ("vgg16", 64), ("darts_v2", 64),
                                           ("wrn_28_4", 64), ("efficientnet_v2_s", 16)])  # 41 blocks: kept cheap
def test_a_few_steps_on_real_data_lower_the_loss(name, images, cifar_subset):
    ds = load_dataset(str(cifar_subset))
    x = Normalization.fit(ds.x_train)(ds.x_train[:images])
    y = torch.from_numpy(ds.y_train[:images])
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
