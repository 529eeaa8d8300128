"""sharpDARTS: Max-W mixed-op weighting, cosine power annealing, the SharpSepConv ops."""

import math

import pytest
import torch

from dass.errors import DassError
from dass.loop import cosine_lr, cosine_power_lr
from dass.runner import PhaseSpec
from dass.search import make_config
from dass.search.config import SearchConfig
from dass.search.lower import LowerOptimizers
from dass.search.methods import MaxWMixedOp, SharpDarts, get_method
from dass.search.methods.sharp_darts import max_w
from dass.search.searcher import DassSearch
from dass.space import Supernet, SupernetConfig
from dass.space.genotype import Genotype
from dass.space.network import Network, NetworkConfig
from dass.space.ops import OPS, SHARP_PRIMITIVES, SepConv, SharpSepConv, build_op
from dass.sparse import Phase


# -- Max-W ----------------------------------------------------------------------------------------
def test_max_w_lifts_the_strongest_op_to_one_and_keeps_the_differences():
    w = torch.tensor([0.5, 0.3, 0.2])
    torch.testing.assert_close(max_w(w), torch.tensor([1.0, 0.8, 0.7]))
    alpha = torch.randn(5, 8)
    weights = torch.softmax(alpha, dim=-1)
    for row in weights:
        shifted = max_w(row)
        assert float(shifted.max()) == pytest.approx(1.0)
        torch.testing.assert_close(shifted - row, torch.full_like(row, 1.0 - float(row.max())))


def test_the_max_w_mixed_op_sums_its_ops_with_the_shifted_weights_and_passes_gradients():
    torch.manual_seed(0)
    ops = ["none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"]
    edge = MaxWMixedOp(4, 1, ops)
    x = torch.randn(2, 4, 6, 6)
    alpha = torch.randn(len(ops), requires_grad=True)
    w = torch.softmax(alpha, 0)
    out = edge(x, w)
    shifted = 1.0 - w.max() + w
    expected = sum(shifted[k] * edge.ops[k](x) for k in (1, 2, 3))   # none adds zeros
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    (g,) = torch.autograd.grad((out * upstream).sum(), alpha, retain_graph=True)
    (g_ref,) = torch.autograd.grad((expected * upstream).sum(), alpha)
    torch.testing.assert_close(g, g_ref)
    assert float(g.abs().min()) > 0   # the gradient reaches every alpha, the leading one through the max


def test_sharp_darts_builds_its_supernet_of_max_w_edges_and_searches(tmp_path):
    assert get_method("sharp-darts") is SharpDarts and SharpDarts.mixed_op is MaxWMixedOp
    sets = ["search.method=sharp-darts", "search.epochs.warmup=1", "search.epochs.prune=1", "search.epochs.finetune=1",
            "data.subset=64", "model.init_channels=4", "model.layers=2", "search.lr_schedule=cosine_power",
            "search.lr_power=10", "search.eval_val=false"]
    run = DassSearch.create(make_config("default", sets=sets), str(tmp_path / "run"), progress=False)
    assert all(isinstance(e, MaxWMixedOp) for cell in run.model.cells for e in cell.edges)
    result = run.run()
    result.genotype.validate()
    assert result.genotype.meta["method"] == "sharp-darts"


# -- cosine power annealing ------------------------------------------------------------------------
def test_cosine_power_annealing_matches_its_formula():
    # by hand, base 0.1, minimum 0, 4 epochs, power 2: c = (1 + cos(pi k / 4)) / 2, lr = 0.1 (2^c - 1)
    expected = [0.1, 0.08069459977753364, 0.04142135623730952, 0.010683994013232634]
    for k, lr in enumerate(expected):
        assert cosine_power_lr(0.1, 0.0, k, 4, 2.0) == pytest.approx(lr, rel=1e-12)
    # the authors' form (p^(c+1) - p) / (p^2 - p), rescaled between minimum and base, at any power
    for p in (1.5, 2.0, 10.0):
        for k in range(7):
            c = (1 + math.cos(math.pi * k / 7)) / 2
            share = (p ** (c + 1) - p) / (p ** 2 - p)
            assert cosine_power_lr(0.025, 1e-4, k, 7, p) == pytest.approx(1e-4 + (0.025 - 1e-4) * share, rel=1e-12)
    # power 1 is cosine annealing; a larger power decays faster; epoch 0 is the base rate
    for k in range(10):
        assert cosine_power_lr(0.05, 0.001, k, 10, 1.0) == pytest.approx(cosine_lr(0.05, 0.001, k, 10), rel=1e-12)
        assert cosine_power_lr(0.05, 0.001, k, 10, 10.0) <= cosine_power_lr(0.05, 0.001, k, 10, 2.0) + 1e-15
    assert cosine_power_lr(0.05, 0.001, 0, 10, 10.0) == pytest.approx(0.05)
    assert cosine_power_lr(0.05, 0.001, 5, 10, 10.0) == pytest.approx(0.001 + 0.049 * (10 ** 0.5 - 1) / 9)
    assert cosine_power_lr(0.05, 0.001, 0, 0, 10.0) == 0.05
    with pytest.raises(ValueError, match="power >= 1"):
        cosine_power_lr(0.05, 0.0, 1, 10, 0.5)


def test_the_search_schedule_option_drives_every_lower_group():
    model = Supernet(SupernetConfig(init_channels=4, layers=2, nodes=2, multiplier=2))
    config = SearchConfig(lr_schedule="cosine_power", lr_power=3.0, mode="single_loop")
    lower = LowerOptimizers(model, PhaseSpec("single_loop", Phase.JOINT, 6), config)
    lrs = lower.set_epoch(2)
    assert lrs == {"weights": pytest.approx(cosine_power_lr(config.weight_lr, config.weight_lr_min, 2, 6, 3.0)),
                   "scores": pytest.approx(cosine_power_lr(config.score_lr, config.score_lr_min, 2, 6, 3.0))}
    assert lower.groups["weights"][1].param_groups[0]["lr"] == lrs["weights"]
    cosine = LowerOptimizers(model, PhaseSpec("single_loop", Phase.JOINT, 6), SearchConfig(mode="single_loop"))
    assert cosine.set_epoch(2)["weights"] == cosine_lr(0.025, 0.001, 2, 6)
    for bad in (SearchConfig(lr_schedule="step"), SearchConfig(lr_schedule="cosine_power", lr_power=0.5)):
        with pytest.raises(DassError, match="lr_schedule"):
            LowerOptimizers(model, PhaseSpec("warmup", Phase.DENSE, 1), bad)


# -- SharpSepConv ops ------------------------------------------------------------------------------
def _params(module):
    return sum(p.numel() for n, p in module.named_parameters() if not n.endswith("scores"))


def test_sharp_sep_conv_ops_have_the_authors_shapes():
    c = 8
    # two depthwise-separable blocks through c_mid channels: dw k*k*c + pw c*c_mid, then dw k*k*c_mid + pw c_mid*c
    sizes = {"sharp_dil_conv_3x3": (3, c), "sharp_dil_conv_5x5": (5, c), "flood_conv_3x3": (3, 4 * c),
             "flood_conv_5x5": (5, 4 * c), "dil_flood_conv_3x3": (3, 4 * c), "choke_conv_3x3": (3, 32),
             "dil_choke_conv_3x3": (3, 32)}
    x = torch.randn(2, c, 8, 8)
    for name, (k, mid) in sizes.items():
        for stride in (1, 2):
            op = build_op(name, c, stride, affine=False)
            assert isinstance(op, SharpSepConv)
            assert _params(op) == k * k * c + c * mid + k * k * mid + mid * c, name
            assert op(x).shape == (2, c, 8 // stride, 8 // stride), (name, stride)
    # without a bottleneck or dilation it is DARTS' SepConv, layer for layer
    sharp, darts = SharpSepConv(c, c, 3, 2, 1), SepConv(c, c, 3, 2, 1)
    assert [tuple(p.shape) for p in sharp.parameters()] == [tuple(p.shape) for p in darts.parameters()]
    sharp.load_state_dict(darts.state_dict())
    torch.testing.assert_close(sharp(x), darts(x))
    assert set(SHARP_PRIMITIVES) <= set(OPS)


def test_the_sharp_op_set_searches_and_its_cells_train():
    torch.manual_seed(0)
    ops = list(SHARP_PRIMITIVES)
    net = Supernet(SupernetConfig(init_channels=4, layers=3, nodes=2, multiplier=2, ops=ops), MaxWMixedOp)
    out = net(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all())
    genotype = Genotype(normal=[("flood_conv_3x3", 0), ("sharp_dil_conv_3x3", 1), ("dil_flood_conv_3x3", 2),
                                ("sep_conv_7x7", 0)], normal_concat=[2, 3],
                        reduce=[("sharp_dil_conv_5x5", 0), ("max_pool_3x3", 1), ("flood_conv_5x5", 2),
                                ("skip_connect", 1)], reduce_concat=[2, 3])
    model = Network(genotype, NetworkConfig(init_channels=4, layers=3))
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert make_config("default", sets=[f"model.ops=[{', '.join(ops)}]"]).model.ops == ops
    with pytest.raises(DassError, match="unknown op"):
        make_config("default", sets=["model.ops=[none, dil_flood_conv_5x5]"])   # not offered: broken in the original
