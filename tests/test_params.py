"""Parameter roles come from the modules that own the tensors, in named_parameters order."""

import torch
from torch import nn

from dass.models import build_model
from dass.params import Role, param_roles
from dass.space import Supernet, SupernetConfig
from dass.sparse import SparseConv2d


def test_supernet_roles_cover_every_parameter_once_in_order():
    model = Supernet(SupernetConfig(init_channels=4, layers=3, partial_channels=2))
    roles = param_roles(model)
    names = [n for n, _ in model.named_parameters()]
    assert [n for n, _, _ in roles.named] == names
    by_role = {role: [n for n, _, r in roles.named if r is role] for role in Role}
    assert by_role[Role.ARCH] == ["alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"]
    assert by_role[Role.SCORE] and all(n.endswith(".scores") for n in by_role[Role.SCORE])
    assert all(n.endswith(".weight") or n == "classifier.bias" for n in by_role[Role.SPARSE])
    assert [id(p) for p in roles.arch] == [id(p) for p in model.arch_parameters()]
    # the weight optimizer's list: everything but scores and architecture, same order as before
    assert [id(p) for p in roles.weights] == [id(p) for n, p in model.named_parameters()
                                              if not n.startswith(("alphas_", "betas_")) and not n.endswith("scores")]


def test_roles_do_not_depend_on_names():
    class Odd(nn.Module):   # a module whose names would fool a name filter
        def __init__(self):
            super().__init__()
            self.alphas_conv = SparseConv2d(3, 4, 3, bias=True)
            self.scores = nn.Parameter(torch.zeros(3))   # a plain parameter called "scores"
            self.gate = nn.Parameter(torch.zeros(2))

        def arch_parameters(self):
            return [self.gate]

    roles = param_roles(Odd())
    role_of = {n: r for n, _, r in roles.named}
    assert role_of == {"alphas_conv.weight": Role.SPARSE, "alphas_conv.bias": Role.SPARSE,
                       "alphas_conv.scores": Role.SCORE, "scores": Role.OTHER, "gate": Role.ARCH}


def test_deployable_parameters_of_a_baseline_are_its_weights():
    model = build_model("resnet18", width=0.125)
    roles = param_roles(model)
    assert not roles.arch
    deployable = dict(roles.deployable())
    assert sum(p.numel() for p in deployable.values()) == sum(
        p.numel() for n, p in model.named_parameters() if not n.endswith("scores"))
