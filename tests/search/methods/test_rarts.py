"""RARTS: two weight copies (train split, val split) coupled by beta; the architecture from both losses."""

import copy
import signal

import pytest
import torch
import torch.nn.functional as F

from dass.errors import DassError
from dass.params import param_roles
from dass.runner import PhaseSpec
from dass.search import make_config
from dass.search.architect import Architect
from dass.search.config import SearchConfig
from dass.search.lower import LowerOptimizers
from dass.search.methods import Rarts, SearchBatch, StepPosition, get_method
from dass.space import Supernet, SupernetConfig
from dass.sparse import Phase, configure_phase
from tests_helpers import run_cli

LR, ARCH_LR = 0.05, 0.1


def _setup(**options):
    """A tiny supernet, plain SGD everywhere (no momentum, decay or clipping), and an attached RARTS."""
    torch.manual_seed(0)
    config = SearchConfig(order=1, weight_lr=LR, weight_momentum=0.0, weight_decay=0.0, grad_clip=1e9, **options)
    model = Supernet(SupernetConfig(init_channels=4, layers=3, nodes=2, multiplier=2, num_classes=3))
    configure_phase(model, Phase.DENSE)
    arch = param_roles(model).arch
    architect = Architect(model, arch, torch.optim.SGD(arch, lr=ARCH_LR), order=1)
    method = Rarts(config)
    method.attach(model, architect, None)
    lower = LowerOptimizers(model, PhaseSpec("warmup", Phase.DENSE, 1), config)
    g = torch.Generator().manual_seed(1)
    batch = SearchBatch(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g),
                        torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g))
    return model, method, lower, batch


def _grads(model, names, values, x, y, wrt):
    """d CE(model with ``names`` set to ``values``, x, y) / d ``wrt`` (parameter names), on a copy of ``model``."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, v in zip(names, values):
            params[n].copy_(v)
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, [params[n] for n in wrt], allow_unused=True)
    return [torch.zeros_like(params[n]) if g is None else g for n, g in zip(wrt, grads)]


def _state(model, method, lower):
    names = [method._names[id(p)] for p in method._lower_params(lower)]
    params = dict(model.named_parameters())
    return names, [params[n].detach().clone() for n in names], [method.y[n].clone() for n in names]


def test_without_coupling_the_two_copies_evolve_independently_on_their_splits():
    model, method, lower, batch = _setup(rarts_beta=0.0)
    method.split(lower, 0)
    with torch.no_grad():   # make the val network differ from the train network
        for y in method.y.values():
            y.add_(0.1 * torch.randn_like(y))
    names, w0, y0 = _state(model, method, lower)
    g_w = _grads(model, names, w0, batch.x_train, batch.y_train, names)
    g_y = _grads(model, names, y0, batch.x_val, batch.y_val, names)
    method.step(batch, lower, StepPosition(0, 0, 0, 0))
    _, w1, y1 = _state(model, method, lower)
    for w, w_next, g in zip(w0, w1, g_w):   # w saw only the training batch, and not y
        torch.testing.assert_close(w_next, w - LR * g)
    for y, y_next, g in zip(y0, y1, g_y):   # y saw only the validation batch, and not w
        torch.testing.assert_close(y_next, y - LR * g)


def test_one_step_is_the_relaxed_gauss_seidel_update():
    lam, beta = 0.5, 2.0
    model, method, lower, batch = _setup(rarts_lambda=lam, rarts_beta=beta)
    method.split(lower, 0)
    with torch.no_grad():
        for y in method.y.values():
            y.add_(0.1 * torch.randn_like(y))
    names, w0, y0 = _state(model, method, lower)
    arch_names = [n for n, p in model.named_parameters() if any(p is a for a in method.architect.arch_params)]
    alpha0 = [dict(model.named_parameters())[n].detach().clone() for n in arch_names]

    method.step(batch, lower, StepPosition(0, 0, 0, 0))
    _, w1, y1 = _state(model, method, lower)
    # w <- w - eta (grad L_train(w) + beta (w - y))
    g_w = _grads(model, names + arch_names, w0 + alpha0, batch.x_train, batch.y_train, names)
    for w, y, w_next, g in zip(w0, y0, w1, g_w):
        torch.testing.assert_close(w_next, w - LR * (g + beta * (w - y)))
    # y <- y - eta (grad L_val(y) + beta (y - w_new))
    g_y = _grads(model, names + arch_names, y0 + alpha0, batch.x_val, batch.y_val, names)
    for y, w_next, y_next, g in zip(y0, w1, y1, g_y):
        torch.testing.assert_close(y_next, y - LR * (g + beta * (y - w_next)))
    # a <- a - eta_a (grad_a L_val(y_new, a) + lambda grad_a L_train(w_new, a))
    g_val = _grads(model, names + arch_names, y1 + alpha0, batch.x_val, batch.y_val, arch_names)
    g_train = _grads(model, names + arch_names, w1 + alpha0, batch.x_train, batch.y_train, arch_names)
    params = dict(model.named_parameters())
    for n, a, gv, gt in zip(arch_names, alpha0, g_val, g_train):
        torch.testing.assert_close(params[n].detach(), a - ARCH_LR * (gv + lam * gt))
        assert float((params[n].detach() - a).abs().max()) > 0   # the architecture moved


def test_the_val_network_starts_each_phase_as_a_copy_and_its_state_round_trips():
    model, method, lower, batch = _setup()
    method.step(batch, lower, StepPosition(0, 0, 0, 0))
    state = copy.deepcopy(method.state_dict())
    assert state["phase"] == 0 and set(state["y"]) == {method._names[id(p)] for p in method._lower_params(lower)}
    other = Rarts(method.config)
    other.attach(model, method.architect, None)
    other.load_state_dict(state)
    other.split(lower, 0)   # same phase: kept
    assert all(torch.equal(other.y[n], v) for n, v in state["y"].items())
    other.split(lower, 1)   # a new phase: a fresh copy of the train network
    params = dict(model.named_parameters())
    assert all(torch.equal(other.y[n], params[n].detach()) for n in other.y) and other.momentum == {}


def test_rarts_is_registered_first_order_and_checks_its_options():
    assert get_method("rarts") is Rarts
    assert make_config("default", sets=["search.method=rarts"]).search.rarts_beta == 1.0
    with pytest.raises(DassError, match="first order"):
        make_config("default", sets=["search.method=rarts", "search.order=2"])
    with pytest.raises(DassError, match="rarts_beta"):
        make_config("default", sets=["search.method=rarts", "search.rarts_beta=-1"])


TINY = ["--dataset", "digits", "--subset", "128", "--init-channels", "4", "--layers", "3", "--batch-size", "32",
        "--set", "model.nodes=2", "--set", "model.multiplier=2", "--threads", "1", "--quiet",
        "--set", "search.epochs.warmup=2", "--set", "search.epochs.prune=1", "--set", "search.epochs.finetune=1",
        "--set", "checkpoint_minutes=0", "--order", "1"]


@pytest.mark.parametrize("method", ["rarts", "sd-darts"])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, method):
    """The method's own state (RARTS' val network, SD-DARTS' teachers) travels in the checkpoint."""
    args = [*TINY, "--method", method]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = run_cli("search", *args, "--out", str(ref))
    assert done.returncode == 0, done.stderr
    killed = run_cli("search", *args, "--out", str(cut), env={"_DASS_TEST_KILL_AFTER_STEPS": "3"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli("search", "--resume", str(cut), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(ref / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (ref / "genotype.json").read_text() == (cut / "genotype.json").read_text()
