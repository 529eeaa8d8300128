"""The architect's hypergradients against exact autograd computations on a tiny float64 supernet."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dass.kernels import use_cpu_kernels
from dass.search import Architect, LowerLevel
from dass.sparse import configure_phase, init_scores, set_sparsity
from dass.space import Supernet, SupernetConfig


def _tiny(phase: str):
    torch.manual_seed(0)
    model = Supernet(SupernetConfig(init_channels=2, layers=3, nodes=2, multiplier=2, stem_multiplier=1,
                                    in_channels=1, num_classes=3)).double()
    with torch.no_grad():  # alphas far from uniform so every term matters
        for a in model.arch_parameters():
            a.copy_(torch.randn_like(a))
    if phase == "finetune":
        init_scores(model)
        set_sparsity(model, 0.5)
    configure_phase(model, phase)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = [torch.randint(0, 3, (6,), generator=g) for _ in range(2)]
    params = [p for p in model.weight_parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=3e-3)
    # one real step so that the momentum buffers are not empty
    F.cross_entropy(model(data[0]), labels[0]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for a in model.arch_parameters():
        a.grad = None
    return model, params, opt, data, labels


def _exact_hypergradient(model, params, opt, x_t, y_t, x_v, y_v):
    names = {id(p): n for n, p in model.named_parameters()}
    group = opt.param_groups[0]
    xi, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
    train_loss = F.cross_entropy(model(x_t), y_t)
    grads = torch.autograd.grad(train_loss, params, create_graph=True)
    unrolled = {}
    for p, g in zip(params, grads):
        buf = opt.state[p]["momentum_buffer"]
        unrolled[names[id(p)]] = p - xi * (mom * buf + g + wd * p)
    val_loss = F.cross_entropy(functional_call(model, unrolled, (x_v,)), y_v)
    return torch.autograd.grad(val_loss, model.arch_parameters())


def test_unused_alphas_get_zero_gradient():
    torch.manual_seed(0)
    model = Supernet(SupernetConfig(init_channels=2, layers=1, nodes=2, multiplier=2, in_channels=1, num_classes=3))
    arch = Architect(model, model.arch_parameters(), torch.optim.Adam(model.arch_parameters()), order=1)
    _, grads = arch.first_order_grads(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0]))
    assert torch.count_nonzero(grads[0]) == 0  # the single cell is a reduction cell
    assert torch.count_nonzero(grads[1]) > 0


@pytest.mark.parametrize("phase", ["dense", "finetune"])
def test_second_order_matches_exact_autograd(phase):
    model, params, opt, (x_t, x_v), (y_t, y_v) = _tiny(phase)
    # float64 and a small finite-difference step: this tests the formula, not DARTS' eps=0.01 (whose
    # truncation error is large in a 10k-parameter net with batch-norm over a few pixels).
    arch = Architect(model, model.arch_parameters(), torch.optim.Adam(model.arch_parameters()), order=2,
                     unrolled_eps=1e-6)
    before = [p.detach().clone() for p in params]
    _, approx = arch.second_order_grads(x_t, y_t, x_v, y_v, LowerLevel(params, opt))
    for p, b in zip(params, before):  # the unrolled step is virtual: weights are restored
        assert torch.equal(p, b)
    with use_cpu_kernels(False):   # the exact hypergradient differentiates twice: PyTorch's ops
        exact = _exact_hypergradient(model, params, opt, x_t, y_t, x_v, y_v)
    _, first = arch.first_order_grads(x_v, y_v)
    for a, e, f in zip(approx, exact, first):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-9)
        # the second-order term is not negligible here, so the comparison above has teeth
        assert (e - f).abs().max() > 1e-3 * e.abs().max()


def test_first_order_is_plain_validation_gradient():
    model, params, opt, (x_t, x_v), (y_t, y_v) = _tiny("dense")
    arch = Architect(model, model.arch_parameters(), torch.optim.Adam(model.arch_parameters()), order=1)
    _, grads = arch.first_order_grads(x_v, y_v)
    loss = F.cross_entropy(model(x_v), y_v)
    expected = torch.autograd.grad(loss, model.arch_parameters())
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    assert all(p.grad is None for p in params)  # no weight gradients were accumulated


def test_architect_step_keeps_bn_statistics_and_moves_alphas():
    model, params, opt, (x_t, x_v), (y_t, y_v) = _tiny("dense")
    arch = Architect(model, model.arch_parameters(), torch.optim.Adam(model.arch_parameters(), lr=0.01), order=2)
    buffers = [b.clone() for b in model.buffers()]
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    arch.step(x_t, y_t, x_v, y_v, LowerLevel(params, opt))
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))
    assert all(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas))
