"""dass's search step computes what a straightforward DARTS implementation computes.

The reference is bench/reference_supernet.py: written from scratch, plain nn.Conv2d layers, every op on
every edge, full backward passes. With the same initial parameters and batches, a few first-order search
steps (architecture step, then weight step) of dass's supernet in its dense phase leave the same alphas and
weights. Any faster implementation of the search must keep this test passing; dass's compiled CPU kernels
(depthwise / pointwise convolution, pooling, batch norm, fused ReLUs) run inside it.
"""

import sys
from pathlib import Path

import torch

from dass.loop import sgd_step
from dass.search.architect import Architect
from dass.space import Supernet, SupernetConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from reference_supernet import PRIMITIVES, ReferenceSearch, ReferenceSupernet  # noqa: E402


def _grad_fn_names(out: torch.Tensor) -> set[str]:
    names, todo, seen = set(), [out.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    return names


def test_dass_steps_equal_the_reference_implementation():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # compare the algorithms, not float32 summation orders
    try:
        torch.manual_seed(0)
        ref = ReferenceSupernet(c=4, layers=3)
        ours = Supernet(SupernetConfig(init_channels=4, layers=3, ops=list(PRIMITIVES)))
        ours_weights = ours.weight_parameters()
        ref_weights = [p for n, p in ref.named_parameters() if not n.startswith("alphas")]
        assert [p.shape for p in ours_weights] == [p.shape for p in ref_weights]   # same layers, same order
        with torch.no_grad():
            for a, b in zip(ours_weights, ref_weights):
                b.copy_(a)
            ref.alphas_normal.copy_(ours.alphas_normal)
            ref.alphas_reduce.copy_(ours.alphas_reduce)
        start = ours.alphas_normal.detach().clone(), [p.detach().clone() for p in ours_weights]
        # dass runs its compiled CPU kernels here: this test checks them inside the whole search step
        used = _grad_fn_names(ours(torch.randn(2, 3, 8, 8)).sum())
        assert {"_DepthwiseBackward", "_PointwiseBackward", "_MaxPoolBackward", "_AvgPoolBackward",
                "_BatchNormBackward", "_WeightedSumBackward", "_DepthwiseGroupBackward"} <= used
        reference = ReferenceSearch(ref, lr=0.025)
        arch_opt = torch.optim.Adam(ours.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        architect = Architect(ours, ours.arch_parameters(), arch_opt, order=1)
        weight_opt = torch.optim.SGD(ours_weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            xt, xv = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
            yt, yv = torch.randint(0, 10, (6,), generator=g), torch.randint(0, 10, (6,), generator=g)
            reference.step(xt, yt, xv, yv)
            architect.step(xt, yt, xv, yv, None)
            sgd_step(ours, ours_weights, weight_opt, xt, yt, 5.0)
        torch.testing.assert_close(ours.alphas_normal, ref.alphas_normal, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ours.alphas_reduce, ref.alphas_reduce, rtol=1e-9, atol=1e-12)
        for a, b in zip(ours_weights, ref_weights):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        # and the steps did something
        assert float((ours.alphas_normal - start[0]).abs().max()) > 1e-5
        assert sum(float((p - q).abs().max()) > 1e-4 for p, q in zip(ours_weights, start[1])) > len(start[1]) // 2
    finally:
        torch.set_default_dtype(previous)
