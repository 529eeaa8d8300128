"""SD-DARTS: the weight step distils from the voted predictions of the supernets of the last K steps."""

import copy

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
from dass.search.methods import Darts, SdDarts, SearchBatch, StepPosition, get_method
from dass.space import Supernet, SupernetConfig
from dass.sparse import Phase, configure_phase

LR = 0.05


def _setup(method_cls, **options):
    torch.manual_seed(0)
    config = SearchConfig(order=1, weight_lr=LR, weight_momentum=0.0, weight_decay=0.0, grad_clip=1e9, **options)
    model = Supernet(SupernetConfig(init_channels=4, layers=3, nodes=2, multiplier=2, num_classes=3))
    configure_phase(model, Phase.DENSE)
    arch = param_roles(model).arch
    architect = Architect(model, arch, torch.optim.Adam(arch, lr=0.01), order=1)
    method = method_cls(config)
    method.attach(model, architect, None)
    lower = LowerOptimizers(model, PhaseSpec("warmup", Phase.DENSE, 1), config)
    return model, method, lower


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return SearchBatch(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g),
                       torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g))


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_with_lambda_zero_it_is_darts_step_for_step():
    (m_a, darts, low_a), (m_b, sd, low_b) = _setup(Darts), _setup(SdDarts, sd_lambda=0.0, sd_teachers=2)
    for step in range(3):
        batch = _batch(step)
        position = StepPosition(0, 0, 0, step)
        assert darts.step(batch, low_a, position) == sd.step(batch, low_b, position)
    for (name, a), b in zip(m_a.state_dict().items(), m_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(sd.snapshots) == 2   # it kept its teachers all along


def test_the_weight_loss_adds_the_kl_to_the_teachers_average_by_hand():
    lam, temp = 0.7, 2.0
    model, method, lower = _setup(SdDarts, sd_lambda=lam, sd_teachers=2, sd_temperature=temp)
    method.remember(lower, 0)            # state A: pushed out by the third snapshot (K = 2)
    _perturb(model, 1)
    teacher_b = copy.deepcopy(model)
    method.remember(lower, 0)            # state B
    _perturb(model, 2)
    teacher_c = copy.deepcopy(model)
    method.remember(lower, 0)            # state C
    _perturb(model, 3)                   # the student: state D
    assert len(method.snapshots) == 2
    batch = _batch(7)
    x, y = batch.x_train, batch.y_train
    before = copy.deepcopy(model.state_dict())

    teacher = method.teacher_probs(x)
    p_b, p_c = (F.softmax(t(x) / temp, dim=1) for t in (teacher_b, teacher_c))
    expected_teacher = (p_b + p_c) / 2
    torch.testing.assert_close(teacher, expected_teacher)
    for name, value in model.state_dict().items():   # the teachers' passes changed nothing (BN statistics)
        assert torch.equal(value, before[name]), name

    total, ce, logits = method.weight_loss(x, y, teacher)
    student = copy.deepcopy(model)
    z = student(x)
    q = F.softmax(z / temp, dim=1)
    kl = (expected_teacher * (expected_teacher.log() - q.log())).sum(1).mean()
    expected = F.cross_entropy(z, y) + lam * temp ** 2 * kl
    torch.testing.assert_close(ce, F.cross_entropy(z, y))
    torch.testing.assert_close(total, expected)
    assert float(kl.detach()) > 1e-6

    # the weight step descends that loss: w <- w - lr * grad (plain SGD here)
    trained = param_roles(model).weights
    weights = [n for n, p in model.named_parameters() if any(p is w for w in trained)]
    params = dict(student.named_parameters())
    grads = torch.autograd.grad(expected, [params[n] for n in weights], allow_unused=True)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.weight_step(batch, lower)
    now = dict(model.named_parameters())
    for n, g in zip(weights, grads):
        if g is not None:
            torch.testing.assert_close(now[n].detach(), w0[n] - LR * g)


def test_snapshots_stay_within_a_phase_and_round_trip():
    model, method, lower = _setup(SdDarts, sd_teachers=3)
    for step in range(4):
        method.step(_batch(step), lower, StepPosition(0, 0, 0, step))
    assert [phase for phase, _ in method.snapshots] == [0, 0, 0]
    state = copy.deepcopy(method.state_dict())
    other = SdDarts(method.config)
    other.attach(model, method.architect, None)
    other.load_state_dict(state)
    assert len(other.snapshots) == 3 and other.snapshots.maxlen == 3
    for (pa, va), (pb, vb) in zip(method.snapshots, other.snapshots):
        assert pa == pb and all(torch.equal(va[n], vb[n]) for n in va)
    other.remember(lower, 1)   # a new phase: the earlier phase's teachers go
    assert [phase for phase, _ in other.snapshots] == [1]


def test_sd_darts_is_registered_and_checks_its_options():
    assert get_method("sd-darts") is SdDarts
    assert make_config("default", sets=["search.method=sd-darts", "search.order=2"]).search.order == 2
    with pytest.raises(DassError, match="sd_teachers"):
        make_config("default", sets=["search.method=sd-darts", "search.sd_teachers=0"])
