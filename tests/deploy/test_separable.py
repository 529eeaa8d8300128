"""Depthwise -> pointwise pairs composed into one sparse conv (compiler._compose_separable_convs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dass.deploy.compiler import CompileOptions, compile_model
from dass.deploy.export import synthetic_model
from dass.deploy.packed import PackedModel
from dass.deploy.speed import calibrate_batchnorm
from dass.sparse import SparseConv2d
from dass.space import DARTS_V1
from dass.space.ops import DilConv, SepConv

from .test_packed_runtime import TOL, _prune, images  # noqa: F401 (the fixture)

ALWAYS = CompileOptions(compose_separable=10**6)
NEVER = CompileOptions(compose_separable=0)


class Stem(nn.Module):
    """A 3 -> c conv, then ``body`` (so that the body's input is a computed value, as in a cell)."""

    def __init__(self, c: int, body: nn.Module):
        super().__init__()
        self.stem = SparseConv2d(3, c, 3, padding=1, bias=True)
        self.body = body

    def forward(self, x):
        return self.body(self.stem(x))


class WithBias(nn.Module):
    """ReLU, depthwise, BN (folds into a depthwise bias), pointwise with a bias."""

    def __init__(self, c: int, c_out: int):
        super().__init__()
        self.dw = SparseConv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.pw = SparseConv2d(c, c_out, 1, bias=True)

    def forward(self, x):
        return self.pw(self.bn(self.dw(torch.relu(x))))


def _prepared(model: nn.Module, sparsity: float, images: torch.Tensor) -> nn.Module:
    """Pruned, with batch-norm statistics from real images (so that folded biases are not zero)."""
    _prune(model, sparsity)
    with torch.no_grad():
        calibrate_batchnorm(model, images)
    return model.eval()


BODIES = {
    "dil3x3": lambda: DilConv(12, 16, 3, 1, 2, 2),
    "dil5x5_s2": lambda: DilConv(12, 16, 5, 2, 4, 2),
    "sep3x3": lambda: SepConv(12, 12, 3, 1, 1),
    "sep5x5_s2": lambda: SepConv(12, 16, 5, 2, 2),
    "bias": lambda: WithBias(12, 10),
}


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("name", sorted(BODIES))
def test_composed_pairs_match_pytorch(name, sparsity, images):
    model = _prepared(Stem(12, BODIES[name]()), sparsity, images)
    with torch.no_grad():
        ref = model(images[:3]).numpy()
    composed, kept = compile_model(model, (3, 32, 32), ALWAYS), compile_model(model, (3, 32, 32), NEVER)
    pairs = sum(label.startswith("depthwise") for label in kept.labels)
    assert pairs > 0 and not any(label.startswith("depthwise") for label in composed.labels)
    assert sum(label.startswith("separable") for label in composed.labels) == pairs
    assert len(composed.instructions) == len(kept.instructions) - pairs
    for prog in (composed, kept):
        for threads in (1, 2):
            out = PackedModel(prog, threads=threads)(images[:3].numpy())
            assert float(np.abs(out - ref).max()) < TOL


def _nonzeros(model: nn.Module) -> list[tuple[int, int]]:
    """(pair nonzeros, composed nonzeros) of each depthwise -> pointwise pair of a DARTS network."""
    counts = []
    for m in model.modules():
        if isinstance(m, DilConv):
            wd = (m[1].weight * m[1].mask()).detach()[:, 0]
            wp = (m[2].weight * m[2].mask()).detach()[:, :, 0, 0]
            composed = int(((wp != 0).float() @ (wd != 0).flatten(1).float().sum(1)).sum())
            counts.append((int((wd != 0).sum() + (wp != 0).sum()), composed))
    return counts


@pytest.mark.parametrize("threshold", [0, 100, 150])
def test_threshold_picks_pairs_by_nonzeros(threshold, images):
    """A pair is composed exactly when the composed conv keeps at most ``threshold`` percent of its nonzeros; the
    network's outputs do not change."""
    model = synthetic_model("genotype", 0.8, (3, 32, 32), genotype=DARTS_V1, init_channels=12, layers=5,
                            calibration=images)
    counts = _nonzeros(model)
    expected = sum(composed * 100 <= threshold * pair for pair, composed in counts) if threshold else 0
    for limit in (100, 150):   # each threshold composes some pairs and not others
        assert 0 < sum(composed * 100 <= limit * pair for pair, composed in counts) < len(counts)
    prog = compile_model(model, (3, 32, 32), CompileOptions(compose_separable=threshold))
    assert sum(label.startswith("separable") for label in prog.labels) == expected
    with torch.no_grad():
        ref = model(images[:2]).numpy()
    assert float(np.abs(PackedModel(prog, threads=2)(images[:2].numpy()) - ref).max()) < TOL


class Branches(nn.Module):
    """Depthwise outputs that must stay: read twice, activated before the pointwise, or the model's output."""

    def __init__(self, case: str):
        super().__init__()
        self.case = case
        self.dw = SparseConv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.pw = SparseConv2d(6, 6, 1, bias=False)

    def forward(self, x):
        y = self.dw(x)
        if self.case == "two_readers":
            return self.pw(y) + y
        if self.case == "activation_between":
            return self.pw(torch.relu(y))
        return y


@pytest.mark.parametrize("case", ["two_readers", "activation_between", "output"])
def test_pairs_that_cannot_compose(case, images):
    model = _prepared(Stem(6, Branches(case)), 0.5, images)
    prog = compile_model(model, (3, 32, 32), ALWAYS)
    assert not any(label.startswith("separable") for label in prog.labels)
    with torch.no_grad():
        ref = model(images[:2]).numpy()
    assert float(np.abs(PackedModel(prog, threads=2)(images[:2].numpy()) - ref).max()) < TOL
