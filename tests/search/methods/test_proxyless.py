"""ProxylessNAS mode: one or two sampled paths per edge, binary-gate gradients reach alpha, search runs."""

import torch

import pytest

from dass.errors import DassError
from dass.search import make_config
from dass.search.methods import Proxyless, get_method
from dass.search.methods.proxyless import SampledMixedOp, _BinaryGate, share_sampler
from dass.search.searcher import DassSearch
from dass.space import Supernet, SupernetConfig


def test_binary_gate_gradient_is_proxylessnas_estimator():
    torch.manual_seed(0)
    alpha = torch.randn(2, requires_grad=True)
    o_a, o_b = torch.randn(5), torch.randn(5)
    upstream = torch.randn(5)
    for chosen in (0, 1):
        probs = torch.softmax(alpha, 0)
        out = _BinaryGate.apply(probs, o_a, o_b, chosen)
        assert torch.equal(out, (o_a, o_b)[chosen])
        (grad,) = torch.autograd.grad((out * upstream).sum(), alpha)
        p = probs.detach()
        dg = torch.stack([(upstream * o_a).sum(), (upstream * o_b).sum()])
        expected = torch.stack([sum(dg[k] * p[k] * (float(i == k) - p[i]) for k in range(2)) for i in range(2)])
        torch.testing.assert_close(grad, expected)


def test_sampled_modes_run_one_or_two_paths_per_edge():
    torch.manual_seed(0)
    model = Supernet(SupernetConfig(init_channels=4, layers=3, nodes=2, multiplier=2), SampledMixedOp)
    sampler = share_sampler(model)
    calls = []
    for edge in (e for cell in model.cells for e in cell.edges):
        for op in edge.ops:
            op.register_forward_hook(lambda m, i, o, e=id(edge): calls.append(e))
    x = torch.randn(2, 3, 8, 8)
    edges = sum(len(c.edges) for c in model.cells)
    generator = torch.Generator().manual_seed(0)
    for mode, per_edge in (("weights", 1), ("argmax", 1), ("arch", 2), (None, 7)):
        calls.clear()
        with sampler.paths(mode, generator):
            model(x)
        assert len(calls) == per_edge * edges, mode
    assert sampler.mode is None   # each block restores the previous mode
    with sampler.paths("arch", generator):
        loss = model(x).logsumexp(1).mean()
    grads = torch.autograd.grad(loss, model.arch_parameters())
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_proxyless_is_a_registered_darts_variant_that_needs_first_order():
    assert get_method("proxyless") is Proxyless
    assert make_config("default", sets=["search.method=proxyless"]).search.method == "proxyless"
    # the old spelling still selects the method
    assert make_config("default", sets=["search.path_sampling=proxyless"]).search.method == "proxyless"
    with pytest.raises(DassError, match="first-order"):
        make_config("default", sets=["search.method=proxyless", "search.order=2"])


def test_proxyless_search_runs_all_phases_and_resumes_deterministically(tmp_path):
    sets = ["search.method=proxyless", "search.order=1", "search.epochs.warmup=1", "search.epochs.prune=1",
            "search.epochs.finetune=1", "data.subset=64"]
    a = DassSearch.create(make_config("default", sets=sets), str(tmp_path / "a"), progress=False).run()
    b = DassSearch.create(make_config("default", sets=sets), str(tmp_path / "b"), progress=False).run()
    a.genotype.validate()
    torch.testing.assert_close(a.model.alphas_normal, b.model.alphas_normal, rtol=0, atol=0)
    assert float(a.model.alphas_normal.detach().abs().max()) > 1e-3   # the alphas moved
