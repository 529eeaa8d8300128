"""Per-layer budgets: ERK gives small layers more of the kept weights, at the same overall sparsity."""

import pytest
import torch
from torch import nn

from dass.models import build_model
from dass.sparse import set_sparsity
from dass.sparse.layers import SparseConv2d, SparseLinear, sparse_layers
from dass.sparse.phases import erk_keep_ratios


def _kept(model):
    return {name: int(layer.mask().sum()) for name, layer in sparse_layers(model)}


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_erk_keeps_the_overall_budget(sparsity):
    model = build_model("resnet18", width=0.25)
    set_sparsity(model, sparsity, budget="erk")
    total = sum(layer.weight.numel() for _, layer in sparse_layers(model))
    kept = sum(_kept(model).values())
    assert abs(kept - (1 - sparsity) * total) <= len(_kept(model))   # one rounding per layer at most


def test_erk_density_follows_the_formula_and_caps_at_one():
    torch.manual_seed(0)
    model = nn.Sequential(SparseConv2d(3, 8, 3), SparseConv2d(8, 64, 3), SparseConv2d(64, 64, 3), SparseLinear(64, 10))
    layers = [layer for _, layer in sparse_layers(model)]
    ratios = erk_keep_ratios(layers, 0.1)
    score = [sum(l.weight.shape) / l.weight.numel() for l in layers]
    uncapped = [i for i, r in enumerate(ratios) if r < 1.0]
    assert len(uncapped) >= 2
    # uncapped layers: density proportional to sum(shape) / prod(shape)
    i, j = uncapped[:2]
    assert ratios[i] / ratios[j] == pytest.approx(score[i] / score[j])
    assert all(r <= 1.0 for r in ratios) and ratios[0] == 1.0          # the 3-channel stem is small: kept whole
    kept = sum(r * l.weight.numel() for r, l in zip(ratios, layers))
    assert kept == pytest.approx(0.1 * sum(l.weight.numel() for l in layers))


def test_uniform_is_the_default_and_unknown_budgets_are_refused():
    model = build_model("resnet18", width=0.25)
    set_sparsity(model, 0.9)
    assert {round(layer.keep_ratio, 6) for _, layer in sparse_layers(model)} == {0.1}
    with pytest.raises(ValueError, match="budget must be one of"):
        set_sparsity(model, 0.9, budget="random")
