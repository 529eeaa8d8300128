"""Search spaces as plug-ins: a space supplies its ops, its supernet, its genotype type and its derivation rule.

The DARTS cell space is the first (``darts``), NAS-Bench-201 the second (``nb201``, :mod:`dass.space.nb201`);
a space registered with :func:`register_space` becomes selectable by name (``model.space``, ``--space``) for
both search and final training. Genotype files name their space (``"space": "nb201"``; none: DARTS), and
:func:`load_genotype` reads any of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

from torch import nn

from ..errors import DassError
from ..registry import Registry
from .genotype import KNOWN_GENOTYPES, MAX_FILE_BYTES, Genotype
from .mixed import MixedOp
from .network import Network, NetworkConfig
from .ops import OPS, PRIMITIVES
from .supernet import Supernet, SupernetConfig


class SearchSpace:
    """What a space must supply. ``options`` are the config's ``model`` section (duck-typed)."""

    name: ClassVar[str] = ""
    genotype_type: ClassVar[type] = object
    known_ops: ClassVar[Sequence[str]] = ()   # the op names a genotype of this space may use
    default_ops: ClassVar[Sequence[str]] = ()  # model.ops when the user names the space but no ops

    def check(self, options: Any) -> None:
        """Raise :class:`DassError` naming what is wrong with ``options`` for this space."""

    def build_supernet(self, options: Any, in_channels: int, num_classes: int,
                       mixed_op: type[MixedOp] = MixedOp) -> nn.Module:
        raise NotImplementedError

    def derive(self, supernet: nn.Module) -> Any:
        """The discrete architecture the supernet's architecture parameters select."""
        raise NotImplementedError

    def build_network(self, genotype: Any, options: Any, in_channels: int, num_classes: int) -> nn.Module:
        """The discrete network of ``genotype`` for final training."""
        raise NotImplementedError


class DartsSpace(SearchSpace):
    """The DARTS cell space (Liu et al. 2019): 2 input and ``nodes`` intermediate nodes, normal and reduction
    cells, ops from :data:`~dass.space.ops.OPS` on sparse layers."""

    name = "darts"
    genotype_type = Genotype
    known_ops = tuple(OPS)
    default_ops = tuple(PRIMITIVES)

    def check(self, options: Any) -> None:
        unknown = [op for op in options.ops if op not in self.known_ops]
        if unknown or not options.ops:
            raise DassError(f"unknown op(s) {unknown or '[]'} in model.ops; known: {', '.join(self.known_ops)}")
        if all(op == "none" for op in options.ops):
            raise DassError("model.ops needs at least one op other than none")

    def build_supernet(self, options: Any, in_channels: int, num_classes: int,
                       mixed_op: type[MixedOp] = MixedOp) -> Supernet:
        o = options
        config = SupernetConfig(o.init_channels, o.layers, o.nodes, o.multiplier, o.stem_multiplier, list(o.ops),
                                in_channels, num_classes, o.partial_channels)
        return Supernet(config, mixed_op)

    def derive(self, supernet: nn.Module) -> Genotype:
        return supernet.genotype()

    def build_network(self, genotype: Genotype, options: Any, in_channels: int, num_classes: int) -> Network:
        o = options
        return Network(genotype, NetworkConfig(o.init_channels, o.layers, o.auxiliary, o.drop_path,
                                               in_channels=in_channels, num_classes=num_classes))


SPACES: Registry[SearchSpace] = Registry("search space")
register_space = SPACES.register       # selectable by ``name`` (``model.space``, ``--space``)
available_spaces = SPACES.names
get_space = SPACES.get

register_space(DartsSpace())


def space_of(genotype: Any) -> SearchSpace:
    """The registered space whose genotype type ``genotype`` is (DARTS for a :class:`Genotype`)."""
    for name in available_spaces():
        space = get_space(name)
        if isinstance(genotype, space.genotype_type) and space.genotype_type is not object:
            return space
    raise DassError(f"no registered search space has genotypes of type {type(genotype).__name__}")


def declared_space(source: str | Path) -> str:
    """The space a genotype source belongs to: a JSON file's ``"space"`` field (absent: ``darts``), ``nb201``
    for an architecture string ``|op~0|+...`` (given directly or as a file's text), else ``darts``."""
    text = str(source)
    if text.lstrip().startswith("|"):
        return "nb201"
    p = Path(source)
    if text in KNOWN_GENOTYPES or not p.is_file():
        return "darts"     # a known name, or a path that the DARTS loader will refuse with its own message
    try:
        with open(p, "rb") as fh:
            head = fh.read(MAX_FILE_BYTES + 1).decode("utf-8-sig").lstrip()
    except (OSError, UnicodeDecodeError):
        return "darts"
    if head.startswith("|"):
        return "nb201"
    if head.startswith("{"):
        try:
            data = json.loads(head)
        except (ValueError, RecursionError):
            return "darts"
        if isinstance(data, dict) and isinstance(data.get("space"), str):
            return data["space"]
    return "darts"


def load_genotype(source: str | Path) -> Any:
    """A genotype of any registered space from a genotype.json, a DARTS string file, a known name (DARTS_V2)
    or an NB-201 architecture string (itself or in a file): dispatched by :func:`declared_space`."""
    return get_space(declared_space(source)).genotype_type.load(source)


from .nb201 import NB201Space  # noqa: E402 - a space module subclasses SearchSpace from this one

register_space(NB201Space())
