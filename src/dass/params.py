"""Parameter roles, registered once: what every optimizer, counter and checkpoint asks of a model.

A model's parameters play one of four roles:

* ``sparse``  weights and biases of sparse layers (what the mask applies to, and what is pruned);
* ``score``   the pruning scores of sparse layers (trained only while pruning; never deployed);
* ``arch``    architecture parameters, declared by any module that has an ``arch_parameters()`` method
              (the search supernet's alphas and edge weights; Archai's ``ArchModule`` idea);
* ``other``   everything else (batch-norm affine parameters, plain layers).

Roles come from the modules that own the tensors, never from parameter names, and every list keeps
``named_parameters()`` order, so optimizers built from them step exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

from .sparse.layers import sparse_layers


class Role(str, Enum):
    SPARSE = "sparse"
    SCORE = "score"
    ARCH = "arch"
    OTHER = "other"


@dataclass(frozen=True)
class ParamRoles:
    """A model's parameters by role, each list in ``named_parameters()`` order."""

    named: tuple[tuple[str, nn.Parameter, Role], ...]

    def of(self, *roles: Role) -> list[nn.Parameter]:
        return [p for _, p, role in self.named if role in roles]

    sparse = property(lambda self: self.of(Role.SPARSE))
    scores = property(lambda self: self.of(Role.SCORE))
    arch = property(lambda self: self.of(Role.ARCH))
    other = property(lambda self: self.of(Role.OTHER))
    # what the weight optimizer trains: everything but scores and architecture parameters
    weights = property(lambda self: self.of(Role.SPARSE, Role.OTHER))

    def deployable(self) -> list[tuple[str, nn.Parameter]]:
        """What a deployed model needs: the weights, with their names."""
        return [(name, p) for name, p, role in self.named if role in (Role.SPARSE, Role.OTHER)]


def param_roles(model: nn.Module) -> ParamRoles:
    """Every parameter of ``model`` with its role (see the module docstring)."""
    roles: dict[int, Role] = {}
    for module in model.modules():
        declared = getattr(module, "arch_parameters", None)
        if callable(declared):
            roles.update((id(p), Role.ARCH) for p in declared())
    for _, layer in sparse_layers(model):
        roles[id(layer.scores)] = Role.SCORE
        for p in (layer.weight, layer.bias):
            if p is not None:
                roles[id(p)] = Role.SPARSE
    return ParamRoles(tuple((name, p, roles.get(id(p), Role.OTHER)) for name, p in model.named_parameters()))
