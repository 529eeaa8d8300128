"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020) on sparse layers: genotype, supernet, network.

The cell is a complete DAG on 4 nodes: node 0 is the cell input, node ``i`` sums one op over every earlier
node, and node 3 is the output, so a cell has 6 edges, in the benchmark's order ``1<-0, 2<-0, 2<-1, 3<-0,
3<-1, 3<-2``, each choosing one of 5 ops (``none`` included: 5**6 = 15,625 cells). The macro skeleton is
fixed: a 3x3 stem conv to C channels, three stages of N cells at C, 2C and 4C channels joined by stride-2
residual blocks, then BN-ReLU, global pooling and a linear classifier. Every convolution is a
:class:`~dass.sparse.SparseConv2d` and the classifier a :class:`~dass.sparse.SparseLinear`, so DASS's
sparsity phases apply unchanged.

A genotype is written as the benchmark's architecture string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``
(node ``i``'s ``op~j`` is the op on edge ``i<-j``) and saved as JSON with ``"space": "nb201"``.

How ``model.*`` maps here: ``init_channels`` is C (16 in the benchmark), ``layers`` is N, the cells *per
stage* (5 in the benchmark: 3N + 2 = 17 blocks), ``nodes`` must be 4, ``ops`` is any subset of
:data:`NB201_OPS` (the alphas are 6 x len(ops)); ``multiplier``/``stem_multiplier`` are DARTS-only and
unused. ``partial_channels`` K > 1 runs each edge's ops on 1/K of the channels (PC-DARTS' channel
sampling); PC-DARTS' edge normalization is not used, since every edge of an NB-201 cell is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DassError
from ..kernels import AvgPool2d, BatchNorm2d
from ..params import param_roles
from ..sparse import SparseConv2d, SparseLinear
from .genotype import MAX_FILE_BYTES, _short
from .mixed import MixedOp, partial_channel_variant
from .ops import OPS, ReLUConvBN, build_op
from .spaces import SearchSpace

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4                                                        # the input, two inner nodes, the output
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, NODES) for j in range(i))   # (to, from)
MAX_ARCH_CHARS = 1_000        # a valid string is < 120 characters; longer input is refused before parsing

# The benchmark's ReLU-conv-BN ops, in the shared op registry so that any mixed-op class can build them
# (``conv_3x3`` is the same op under its DARTS name).
OPS.setdefault("nor_conv_1x1", lambda c, stride, affine: ReLUConvBN(c, c, 1, stride, 0, affine))
OPS.setdefault("nor_conv_3x3", lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 1, affine))


def edge_name(k: int) -> str:
    i, j = EDGES[k]
    return f"{i}<-{j}"


# -- genotype ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NB201Genotype:
    """The op on each of the 6 edges, in :data:`EDGES` order (``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``)."""

    ops: tuple[str, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    space = "nb201"

    def __post_init__(self) -> None:
        if not isinstance(self.ops, (list, tuple)):
            raise DassError(f"an nb201 genotype's ops must be a list of {len(EDGES)} op names, got {_short(self.ops)}")
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.meta is None:
            object.__setattr__(self, "meta", {})
        elif not isinstance(self.meta, dict):
            raise DassError(f"genotype meta must be a JSON object (a dict), got {_short(self.meta)}")
        self.validate()

    def validate(self, ops: Sequence[str] | None = None) -> None:
        """Raise :class:`DassError` naming the first thing wrong (``ops``: the allowed op names)."""
        known = tuple(ops) if ops is not None else NB201_OPS
        if len(self.ops) != len(EDGES):
            raise DassError(f"an nb201 genotype has one op per edge ({len(EDGES)}: "
                            f"{', '.join(edge_name(k) for k in range(len(EDGES)))}), got {len(self.ops)}")
        for k, op in enumerate(self.ops):
            if not isinstance(op, str) or op not in known:
                raise DassError(f"nb201 edge {edge_name(k)} uses unknown op {_short(op)}; known: {', '.join(known)}")

    @property
    def edges(self) -> list[tuple[int, int, str]]:
        """``(to, from, op)`` per edge."""
        return [(i, j, op) for (i, j), op in zip(EDGES, self.ops)]

    @property
    def connected(self) -> bool:
        """Whether the output depends on the input through ops other than ``none`` (the benchmark's check)."""
        live = {0}
        for i, j, op in self.edges:
            if op != "none" and j in live:
                live.add(i)
        return NODES - 1 in live

    # -- architecture strings -----------------------------------------------------------------
    def to_arch_string(self) -> str:
        nodes = []
        for i in range(1, NODES):
            nodes.append("|" + "|".join(f"{op}~{j}" for (t, j, op) in self.edges if t == i) + "|")
        return "+".join(nodes)

    def __str__(self) -> str:
        return self.to_arch_string()

    def describe(self) -> str:
        """The architecture string, then one line per node (what ``dass show`` prints)."""
        lines = [self.to_arch_string(), ""]
        for i in range(1, NODES):
            inputs = ", ".join(f"{op} <- {'input' if j == 0 else f'node {j}'}" for t, j, op in self.edges if t == i)
            lines.append(f"node {i}{' (output)' if i == NODES - 1 else ''}: {inputs}")
        if not self.connected:
            lines.append("(the output does not depend on the input: every path has a none edge)")
        return "\n".join(lines)

    @classmethod
    def from_arch_string(cls, text: Any, meta: dict | None = None) -> "NB201Genotype":
        """Parse ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``; any malformed input raises :class:`DassError`.

        Node ``i`` must name each earlier node ``0..i-1`` exactly once (in any order)."""
        example = "e.g. |nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
        if not isinstance(text, str):
            raise DassError(f"an nb201 architecture string must be text, got {type(text).__name__}")
        src = text.strip()
        if len(src) > MAX_ARCH_CHARS:
            raise DassError(f"the nb201 architecture string has {len(src)} characters (at most {MAX_ARCH_CHARS}); "
                            f"expected {NODES - 1} nodes such as {example}")
        parts = src.split("+")
        if len(parts) != NODES - 1:
            raise DassError(f"an nb201 architecture string has {NODES - 1} nodes separated by '+', got {len(parts)} "
                            f"in {_short(src)}; {example}")
        ops: dict[tuple[int, int], str] = {}
        for i, part in enumerate(parts, start=1):
            if len(part) < 2 or not part.startswith("|") or not part.endswith("|"):
                raise DassError(f"nb201 node {i} is {_short(part)}; each node is written |op~j|...| ({example})")
            if len(part) == 2:
                raise DassError(f"nb201 node {i} is {_short(part)}: it names no op~input; node {i} sums one op over "
                                f"each of nodes 0..{i - 1}")
            seen: set[int] = set()
            for entry in part[1:-1].split("|"):
                op, tilde, index = entry.partition("~")
                if not tilde or not op or not index:
                    raise DassError(f"nb201 node {i}: {_short(entry)} is not op~input (such as nor_conv_3x3~0)")
                if not (index.isascii() and index.isdigit()):
                    raise DassError(f"nb201 node {i}: the input of {_short(entry)} must be a node number 0..{i - 1}")
                j = int(index)
                if j >= i:
                    raise DassError(f"nb201 node {i} reads node {j}; node {i} may read only earlier nodes 0..{i - 1}")
                if j in seen:
                    raise DassError(f"nb201 node {i} names input {j} twice; each edge has exactly one op")
                if op not in NB201_OPS:
                    raise DassError(f"nb201 edge {i}<-{j} uses unknown op {_short(op)}; known: {', '.join(NB201_OPS)}")
                seen.add(j)
                ops[(i, j)] = op
            missing = sorted(set(range(i)) - seen)
            if missing:
                raise DassError(f"nb201 node {i} does not name input(s) {', '.join(map(str, missing))}; node {i} "
                                f"sums one op over each of nodes 0..{i - 1} (use none~j for no connection)")
        return cls(tuple(ops[e] for e in EDGES), dict(meta or {}))

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict = {"space": self.space, "arch": self.to_arch_string()}
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "NB201Genotype":
        if not isinstance(data, dict):
            raise DassError(f"an nb201 genotype must be a JSON object with \"space\": \"nb201\" and \"arch\"; "
                            f"got {_short(data)}")
        space = data.get("space", cls.space)
        if space != cls.space:
            raise DassError(f"this genotype is of search space {_short(space)}, not {cls.space}")
        if "arch" not in data:
            raise DassError("nb201 genotype is missing field \"arch\" (the architecture string |op~0|+...)")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DassError(f"genotype meta must be a JSON object, got {_short(meta)}")
        return cls.from_arch_string(data["arch"], meta)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        from ..runtime.files import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, source: str | Path) -> "NB201Genotype":
        """An architecture string itself, or a file: a genotype.json of this space, or text with one string."""
        if isinstance(source, str) and source.lstrip().startswith("|"):
            return cls.from_arch_string(source)
        p = Path(source)
        if not p.is_file():
            raise DassError(f"nb201 genotype {p} is not a file; pass a genotype.json or an architecture string "
                            "such as |nor_conv_3x3~0|+|...|")
        try:
            with open(p, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
            text = raw.decode("utf-8-sig")
        except OSError as exc:
            raise DassError(f"cannot read genotype file {p}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise DassError(f"{p} is not a text file; pass a genotype.json or an nb201 architecture string") from None
        if len(raw) > MAX_FILE_BYTES:
            raise DassError(f"{p} is larger than {MAX_FILE_BYTES // 1000} kB: not a genotype file")
        if text.lstrip().startswith(("{", "[")):
            try:
                data = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise DassError(f"{p} is not valid JSON: {' '.join(str(exc).split())}") from None
            return cls.from_dict(data)
        return cls.from_arch_string(text)


# -- building blocks -----------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """The benchmark's ResNet basic block between stages: ReLU-conv3x3(stride)-BN, ReLU-conv3x3-BN, plus a
    shortcut (stride 2: 2x2 average pool then 1x1 conv; a 1x1 ReLU-conv-BN for a channel change alone)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"a residual block's stride must be 1 or 2, got {stride}")
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        if stride == 2:
            self.downsample: nn.Module | None = nn.Sequential(AvgPool2d(2, stride=2, padding=0),
                                                              SparseConv2d(c_in, c_out, 1, bias=False))
        elif c_in != c_out:
            self.downsample = ReLUConvBN(c_in, c_out, 1, 1, 0)
        else:
            self.downsample = None
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))


def stage_plan(channels: int, cells: int) -> list[tuple[int, bool]]:
    """``(channels, is_residual_block)`` of the 3N + 2 blocks after the stem."""
    c = channels
    return [(c, False)] * cells + [(2 * c, True)] + [(2 * c, False)] * cells + [(4 * c, True)] + [(4 * c, False)] * cells


class _Skeleton(nn.Module):
    """Stem, cells and residual blocks (``make_cell(channels)``), then BN-ReLU, global pooling, classifier."""

    def _build(self, c: int, n: int, in_channels: int, num_classes: int, make_cell) -> None:
        self.stem = nn.Sequential(SparseConv2d(in_channels, c, 3, padding=1, bias=False), BatchNorm2d(c))
        self.cells = nn.ModuleList()
        c_prev = c
        for c_curr, residual in stage_plan(c, n):
            self.cells.append(ResidualBlock(c_prev, c_curr, 2) if residual else make_cell(c_curr))
            c_prev = c_curr
        self.lastact = nn.Sequential(BatchNorm2d(c_prev), nn.ReLU(inplace=False))
        self.classifier = SparseLinear(c_prev, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.lastact(x), 1).flatten(1))


# -- the discrete network ------------------------------------------------------------------------
class NB201Cell(nn.Module):
    """One cell of a genotype; ``none`` edges are left out (they add exact zeros)."""

    def __init__(self, genotype: NB201Genotype, channels: int):
        super().__init__()
        self.links = [(i, j) for i, j, op in genotype.edges if op != "none"]
        self.ops = nn.ModuleList(build_op(op, channels, 1, affine=True) for _, _, op in genotype.edges if op != "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NODES):
            terms = [op(nodes[j]) for (t, j), op in zip(self.links, self.ops) if t == i]
            nodes.append(sum(terms[1:], terms[0]) if terms else x.mul(0.0))   # only none edges: zeros
        return nodes[-1]


class NB201Network(_Skeleton):
    """The benchmark's network of ``genotype`` (TinyNetwork): C channels, N cells per stage."""

    def __init__(self, genotype: NB201Genotype, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        genotype.validate()
        self.genotype = genotype
        self._build(C, N, in_channels, num_classes, lambda c: NB201Cell(genotype, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.head(x)


# -- the search supernet -------------------------------------------------------------------------
@dataclass
class NB201SupernetConfig:
    init_channels: int = 16
    cells: int = 5                # N, per stage
    ops: Sequence[str] = NB201_OPS
    in_channels: int = 3
    num_classes: int = 10
    partial_channels: int = 1


class NB201SearchCell(nn.Module):
    """Every edge a mixed op over the candidate ops; node ``i`` sums the edges from nodes ``0..i-1``."""

    def __init__(self, channels: int, ops: Sequence[str], mixed_op=MixedOp):
        super().__init__()
        self.edges = nn.ModuleList(mixed_op(channels, 1, ops) for _ in EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for i in range(1, NODES):
            s = self.edges[k](nodes[0], weights[k])
            for j in range(1, i):
                s = s + self.edges[k + j](nodes[j], weights[k + j])
            k += i
            nodes.append(s)
        return nodes[-1]


class NB201Supernet(_Skeleton):
    """The NB-201 search supernet: one alpha matrix (6 edges x ops) shared by all cells, as in the benchmark's
    DARTS. ``mixed_op``: the search method's choice module (partial channels wrap it for K > 1)."""

    def __init__(self, config: NB201SupernetConfig, mixed_op: type[MixedOp] = MixedOp):
        super().__init__()
        self.config = config
        edge_op = partial_channel_variant(mixed_op, config.partial_channels)
        ops = list(config.ops)
        self._build(config.init_channels, config.cells, config.in_channels, config.num_classes,
                    lambda c: NB201SearchCell(c, ops, edge_op))
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(ops)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything but the architecture weights and the pruning scores."""
        return param_roles(self).weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.alphas, dim=-1)
        x = self.stem(x.contiguous())
        for cell in self.cells:
            x = cell(x, weights) if isinstance(cell, NB201SearchCell) else cell(x)
        return self.head(x)

    def genotype(self) -> NB201Genotype:
        """The argmax op of every edge (``none`` included: NB-201 allows it)."""
        ops = list(self.config.ops)
        with torch.no_grad():
            return NB201Genotype(tuple(ops[int(k)] for k in self.alphas.detach().argmax(dim=-1)))

    def alpha_softmax(self) -> dict[str, list[list[float]]]:
        return {"normal": F.softmax(self.alphas.detach(), dim=-1).tolist()}


# -- the space -----------------------------------------------------------------------------------
class NB201Space(SearchSpace):
    """NAS-Bench-201: ``model.init_channels`` = C, ``model.layers`` = N cells per stage, ``model.nodes`` = 4,
    ``model.ops`` a subset of :data:`NB201_OPS`."""

    name = "nb201"
    genotype_type = NB201Genotype
    known_ops = NB201_OPS
    default_ops = NB201_OPS

    def check(self, options: Any) -> None:
        ops = list(options.ops)
        set_ops = "--set \"model.ops=[" + ", ".join(NB201_OPS) + "]\""
        if options.nodes != NODES:
            raise DassError(f"model.nodes must be {NODES} for the nb201 space (its cell: the input, 2 inner nodes "
                            f"and the output), got {options.nodes}")
        unknown = [op for op in ops if op not in NB201_OPS]
        if unknown or not ops:
            raise DassError(f"model.ops {unknown or '[]'} are not nb201 ops; the nb201 space's ops are "
                            f"{', '.join(NB201_OPS)} (for example {set_ops})")
        if len(set(ops)) != len(ops):
            raise DassError(f"model.ops lists an op twice: {ops}")
        if all(op == "none" for op in ops):
            raise DassError("model.ops needs at least one op other than none")
        if options.init_channels < 1 or options.layers < 1:
            raise DassError("model.init_channels (C) and model.layers (N, cells per stage) must be positive")
        k = options.partial_channels
        if k < 1 or options.init_channels % k:
            raise DassError(f"model.partial_channels must be >= 1 and divide model.init_channels "
                            f"({options.init_channels}), got {k}")

    def build_supernet(self, options: Any, in_channels: int, num_classes: int,
                       mixed_op: type[MixedOp] = MixedOp) -> NB201Supernet:
        o = options
        return NB201Supernet(NB201SupernetConfig(o.init_channels, o.layers, list(o.ops), in_channels, num_classes,
                                                 o.partial_channels), mixed_op)

    def derive(self, supernet: nn.Module) -> NB201Genotype:
        return supernet.genotype()

    def build_network(self, genotype: NB201Genotype, options: Any, in_channels: int, num_classes: int) -> NB201Network:
        """``options.init_channels`` = C, ``options.layers`` = N (the benchmark: 16 and 5). The DARTS network's
        extras (auxiliary head, drop path, ImageNet stem) do not exist here and are refused if asked for."""
        extras = [name for name, on in (("auxiliary", getattr(options, "auxiliary", False)),
                                        ("drop_path", getattr(options, "drop_path", 0.0) > 0),
                                        ("stem", getattr(options, "stem", "cifar") != "cifar")) if on]
        if extras:
            raise DassError(f"the nb201 network has no {', '.join(extras)} option (DARTS networks only); "
                            "leave model.auxiliary=false, model.drop_path=0, model.stem=cifar")
        return NB201Network(genotype, options.init_channels, options.layers, num_classes, in_channels)
