import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dass.sparse import (GlobalMaskGroup, SparseConv2d, SparseLinear, configure_phase, density_report, init_scores,
                         set_sparsity, sparse_layers)
from dass.sparse.layers import get_kept_rule, kept_count, set_kept_rule, using_kept_rule


def _random_scores(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, layer in sparse_layers(model):
        with torch.no_grad():
            layer.scores.copy_(torch.randn(layer.scores.shape, generator=g))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95, 0.99])
def test_layer_density_is_exact(sparsity):
    torch.manual_seed(0)
    model = nn.Sequential(SparseConv2d(3, 16, 3), SparseConv2d(16, 16, 3, groups=16), SparseConv2d(16, 33, 1),
                          nn.Flatten(), SparseLinear(33 * 4 * 4, 10))
    _random_scores(model)
    set_sparsity(model, sparsity)
    for row in density_report(model):
        assert row.nonzero == kept_count(row.total, 1 - sparsity)
        # the mask really zeroes the effective weight there
        layer = dict(sparse_layers(model))[row.name]
        assert int((layer.effective_weight() != 0).sum()) <= row.nonzero
        assert int(layer.mask().sum()) == row.nonzero


def test_ties_still_give_exact_count():
    layer = SparseLinear(10, 10)
    with torch.no_grad():
        layer.scores.fill_(1.0)
    layer.keep_ratio = 0.37
    assert int(layer.mask().sum()) == 37


@pytest.mark.parametrize("sparsity", [0.8, 0.99])
def test_global_density_is_exact_and_uneven_across_layers(sparsity):
    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear(50, 40), SparseLinear(40, 30), SparseLinear(30, 10))
    g = torch.Generator().manual_seed(1)
    scales = [1.0, 3.0, 0.3]  # very different score scales: a global threshold must favour layer 2
    for (_, layer), scale in zip(sparse_layers(model), scales):
        with torch.no_grad():
            layer.scores.copy_(scale * torch.randn(layer.scores.shape, generator=g))
    group = set_sparsity(model, sparsity, scope="global")
    assert isinstance(group, GlobalMaskGroup)
    report = density_report(model)
    total = sum(r.total for r in report)
    assert sum(r.nonzero for r in report) == kept_count(total, 1 - sparsity)
    assert report[1].density >= report[0].density >= report[2].density
    assert report[1].density > report[2].density
    # threshold semantics: every kept score is at least as large as every dropped one, across layers
    kept, dropped = [], []
    for _, layer in sparse_layers(model):
        m = layer.mask().bool()
        kept.append(layer.scores.abs()[m])
        dropped.append(layer.scores.abs()[~m])
    assert torch.cat(kept).min() >= torch.cat(dropped).max()


def test_keep_ratio_one_is_exactly_dense():
    torch.manual_seed(0)
    conv = SparseConv2d(4, 6, 3, padding=1, bias=True)
    lin = SparseLinear(12, 5)
    _random_scores(nn.Sequential(conv, lin))
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    z = torch.randn(3, 12)
    assert torch.equal(lin(z), F.linear(z, lin.weight, lin.bias))
    # and equals the nn modules with the same parameters
    ref = nn.Conv2d(4, 6, 3, padding=1)
    ref.load_state_dict({"weight": conv.weight, "bias": conv.bias})
    assert torch.equal(conv(x), ref(x))


def test_bias_is_never_masked():
    lin = SparseLinear(20, 4, bias=True)
    _random_scores(lin)
    lin.keep_ratio = 0.01
    z = torch.zeros(1, 20)
    assert torch.equal(lin(z)[0], lin.bias.detach())


def test_straight_through_score_gradient_formula():
    torch.manual_seed(0)
    conv = SparseConv2d(3, 5, 3, bias=False)
    _random_scores(conv)
    conv.keep_ratio = 0.3
    configure_phase(conv, "prune")
    x = torch.randn(2, 3, 6, 6)
    upstream = torch.randn(2, 5, 4, 4)
    (conv(x) * upstream).sum().backward()
    # dL/d(W*M) from an ordinary conv with the masked weight
    w_eff = (conv.weight * conv.mask()).detach().requires_grad_(True)
    (F.conv2d(x, w_eff) * upstream).sum().backward()
    expected = torch.sign(conv.scores.detach()) * conv.weight.detach() * w_eff.grad
    torch.testing.assert_close(conv.scores.grad, expected, rtol=1e-5, atol=1e-7)
    assert conv.weight.grad is None  # frozen while pruning


def test_score_init_is_scaled_magnitude_and_first_mask_is_magnitude_pruning():
    torch.manual_seed(0)
    conv = SparseConv2d(8, 16, 3)
    init_scores(conv)
    w = conv.weight.detach()
    expected = math.sqrt(6.0 / (8 * 9)) * w / w.abs().max()
    torch.testing.assert_close(conv.scores.detach(), expected)
    conv.keep_ratio = 0.2
    k = kept_count(w.numel(), 0.2)
    threshold = w.abs().flatten().kthvalue(w.numel() - k + 1).values
    assert torch.equal(conv.mask().bool(), w.abs() >= threshold)


def test_mask_is_cached_until_scores_change():
    lin = SparseLinear(30, 30)
    _random_scores(lin)
    lin.keep_ratio = 0.5
    first = lin.mask()
    assert lin.mask() is first  # no recomputation while scores are unchanged
    with torch.no_grad():
        lin.scores.mul_(-1).add_(torch.linspace(0, 5, 900).view(30, 30))
    second = lin.mask()
    assert second is not first
    assert not torch.equal(second, first)


def test_bad_keep_ratio_is_rejected():
    with pytest.raises(ValueError):
        SparseLinear(2, 2).keep_ratio = 0.0
    with pytest.raises(ValueError):
        set_sparsity(SparseLinear(2, 2), 1.0)


# (n, keep ratio, round rule, authors' rule n - int((1 - k) * n) as in the DASS/HYDRA code's GetSubnet)
KEPT_CASES = [(72, 0.1, 7, 8), (216, 0.25, 54, 54), (100, 0.37, 37, 37), (1000, 0.0105, 10, 11),
              (4608, 0.01, 46, 47), (864, 0.05, 43, 44), (10, 0.9, 9, 10),   # (1 - 0.9) * 10 = 0.999...: int 0
              (3, 0.01, 1, 1), (50, 0.99, 50, 50)]


@pytest.mark.parametrize("n, k, by_round, by_authors", KEPT_CASES)
def test_kept_count_rules(n, k, by_round, by_authors):
    assert kept_count(n, k, "round") == by_round
    assert kept_count(n, k, "authors") == by_authors == max(1, n - int((1 - k) * n))
    assert kept_count(n, k) == by_round  # the default rule
    with using_kept_rule("authors"):
        assert kept_count(n, k) == by_authors
        layer = SparseLinear(n, 1, bias=False)
        _random_scores(layer)
        layer.keep_ratio = k
        assert layer.nonzero_count() == by_authors
    assert get_kept_rule() == "round"
    assert layer.nonzero_count() == by_authors  # the count stays with the layer once set


def test_authors_rule_keeps_one_more_in_some_layers_and_masks_survive_saving():
    from dass.sparse.serialize import pack_model, unpack_into

    torch.manual_seed(0)
    shapes = [(3, 16, 3), (16, 16, 3), (16, 33, 1), (16, 24, 1), (24, 24, 3)]

    def make():
        return nn.Sequential(*[SparseConv2d(i, o, k) for i, o, k in shapes], nn.Flatten(), SparseLinear(10, 7))

    model = make()
    _random_scores(model)
    with using_kept_rule("authors"):
        set_sparsity(model, 0.9)
    rows = density_report(model)
    assert [r.nonzero for r in rows] == [kept_count(r.total, 0.1, "authors") for r in rows]
    more = [r.nonzero - kept_count(r.total, 0.1, "round") for r in rows]
    assert set(more) == {0, 1} and sum(more) >= 2
    # loaded under the default rule, the masks are the same: the rule acted when the sparsity was set
    masks = {name: layer.mask().clone() for name, layer in sparse_layers(model)}
    fresh = make()
    fresh.load_state_dict(model.state_dict())
    unpacked = make()
    unpack_into(unpacked, pack_model(model))
    for copy in (fresh, unpacked):
        for name, layer in sparse_layers(copy):
            assert torch.equal(layer.mask(), masks[name]), name


def test_global_group_uses_the_rule_it_was_made_under():
    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear(50, 40), SparseLinear(40, 30), SparseLinear(30, 12))  # 3,560 weights
    _random_scores(model)
    set_sparsity(model, 0.9955, scope="global")       # 0.0045 * 3560 = 16.02: round 16
    assert sum(r.nonzero for r in density_report(model)) == 16
    with using_kept_rule("authors"):
        group = set_sparsity(model, 0.9955, scope="global")  # authors: 3560 - int(3543.98) = 17
    assert sum(r.nonzero for r in density_report(model)) == 17
    with torch.no_grad():   # recomputed later, outside the block: still the authors' count
        model[0].scores.mul_(-1)
    assert group.kept_rule == "authors" and sum(r.nonzero for r in density_report(model)) == 17


def test_unknown_kept_rule_is_rejected():
    with pytest.raises(ValueError, match="kept-weight rule"):
        set_kept_rule("ceil")
    with pytest.raises(ValueError, match="kept-weight rule"):
        kept_count(10, 0.5, "floor")
    assert get_kept_rule() == "round"
