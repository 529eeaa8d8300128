"""Genotypes: the discrete cell a search ends with, as data (JSON, DARTS strings), never code.

The field layout is DARTS': ``normal`` and ``reduce`` list two ``(op, input)`` pairs per
intermediate node; input 0 and 1 are the cell's two inputs, input ``j >= 2`` is node ``j - 2``.
``*_concat`` name the states concatenated into the cell output.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import DassError
from .ops import OPS

Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "normal", tuple((str(o), int(i)) for o, i in self.normal))
        object.__setattr__(self, "reduce", tuple((str(o), int(i)) for o, i in self.reduce))
        object.__setattr__(self, "normal_concat", tuple(int(i) for i in self.normal_concat))
        object.__setattr__(self, "reduce_concat", tuple(int(i) for i in self.reduce_concat))
        self.validate()

    # -- checks -----------------------------------------------------------------------------
    @property
    def nodes(self) -> int:
        return len(self.normal) // 2

    def validate(self, ops: Iterable[str] | None = None) -> None:
        """Raise :class:`DassError` naming the first thing wrong with this genotype."""
        known = set(ops) if ops is not None else set(OPS)
        for cell in ("normal", "reduce"):
            edges = getattr(self, cell)
            concat = getattr(self, f"{cell}_concat")
            if not edges or len(edges) % 2:
                raise DassError(f"genotype {cell!r} must list two (op, input) pairs per node; got {len(edges)} pairs")
            nodes = len(edges) // 2
            for k, (op, j) in enumerate(edges):
                node = k // 2
                if op not in known:
                    raise DassError(f"genotype {cell!r} edge {k} uses unknown op {op!r}; known: {', '.join(sorted(known))}")
                if op == "none":
                    raise DassError(f"genotype {cell!r} edge {k} is 'none', which a derived cell cannot use")
                if not 0 <= j < node + 2:
                    raise DassError(
                        f"genotype {cell!r} edge {k} (node {node}) reads state {j}; a node may read only the two "
                        f"cell inputs and earlier nodes (0..{node + 1})")
            if not concat:
                raise DassError(f"genotype {cell!r}_concat is empty")
            for j in concat:
                if not 0 <= j < nodes + 2:
                    raise DassError(f"genotype {cell}_concat names state {j}, but the cell has states 0..{nodes + 1}")
        if len(self.normal) != len(self.reduce):
            raise DassError("genotype normal and reduce cells must have the same number of nodes")

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {
            "normal": [[o, i] for o, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[o, i] for o, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        if not isinstance(data, dict):
            raise DassError("a genotype must be a JSON object with normal, normal_concat, reduce, reduce_concat")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in data]
        if missing:
            raise DassError(f"genotype is missing field(s): {', '.join(missing)}")
        try:
            for cell in ("normal", "reduce"):
                for pair in data[cell]:
                    if len(pair) != 2:
                        raise ValueError(f"{pair!r} is not an [op, input] pair")
            return cls(data["normal"], data["normal_concat"], data["reduce"], data["reduce_concat"],
                       dict(data.get("meta") or {}))
        except (TypeError, ValueError) as exc:
            raise DassError(f"malformed genotype: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        from ..runtime.files import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        """Load a genotype JSON file, a text file with a DARTS ``Genotype(...)`` string, or a known name."""
        if str(path) in KNOWN_GENOTYPES:
            return KNOWN_GENOTYPES[str(path)]
        p = Path(path)
        if not p.is_file():
            raise DassError(f"genotype file {p} does not exist; pass a genotype.json from `dass search` "
                            f"or one of: {', '.join(KNOWN_GENOTYPES)}")
        text = p.read_text()
        if text.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise DassError(f"{p} is not valid JSON: {exc}") from None
        return cls.from_darts_string(text)

    # -- DARTS strings ----------------------------------------------------------------------
    def to_darts_string(self) -> str:
        def edges(cell: Sequence[Edge]) -> str:
            return "[" + ", ".join(f"('{o}', {i})" for o, i in cell) + "]"

        return (f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    @classmethod
    def from_darts_string(cls, text: str) -> "Genotype":
        """Parse ``[NAME =] Genotype(normal=[...], normal_concat=range(2, 6), ...)`` without eval."""
        src = text.strip()
        try:
            tree = ast.parse(src, mode="exec")
        except SyntaxError as exc:
            raise DassError(f"not a DARTS genotype string ({exc.msg}); expected Genotype(normal=[...], ...)") from None
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "Genotype"]
        if len(calls) != 1:
            raise DassError("expected exactly one Genotype(...) expression in the DARTS genotype string")
        call = calls[0]
        names = ["normal", "normal_concat", "reduce", "reduce_concat"]
        values: dict = {}
        for name, arg in zip(names, call.args):
            values[name] = _literal(arg)
        for kw in call.keywords:
            if kw.arg not in names:
                raise DassError(f"unknown Genotype field {kw.arg!r}; expected {', '.join(names)}")
            values[kw.arg] = _literal(kw.value)
        return cls.from_dict(values)


def _literal(node: ast.AST):
    """A Python literal, or ``range(a, b)`` which DARTS uses for concat lists."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return list(range(*[_literal(a) for a in node.args]))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise DassError(f"unsupported expression in genotype string: {ast.unparse(node)}") from None


def derive_genotype(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, ops: Sequence[str],
                    multiplier: int | None = None, edges_normal: torch.Tensor | None = None,
                    edges_reduce: torch.Tensor | None = None) -> Genotype:
    """The DARTS rule: per node, the two incoming edges whose strongest non-``none`` op weighs most.

    ``edges_*`` (PC-DARTS' normalized edge weights) scale each edge's op weights before the choice.
    """

    def parse(alpha: torch.Tensor, edge_w: torch.Tensor | None) -> list[Edge]:
        weights = torch.softmax(alpha.detach().float(), dim=-1)
        if edge_w is not None:
            weights = weights * edge_w.detach().float()[:, None]
        candidates = [k for k, name in enumerate(ops) if name != "none"]
        if not candidates:
            raise DassError("the op set has no op other than 'none'; nothing can be derived")
        edges: list[Edge] = []
        start, n_inputs = 0, 2
        while start < weights.shape[0]:
            w = weights[start:start + n_inputs]
            strength = [max(float(w[j, k]) for k in candidates) for j in range(n_inputs)]
            best_inputs = sorted(range(n_inputs), key=lambda j: -strength[j])[:2]
            for j in best_inputs:
                k_best = max(candidates, key=lambda k: float(w[j, k]))
                edges.append((ops[k_best], j))
            start += n_inputs
            n_inputs += 1
        return edges

    normal, reduce = parse(alphas_normal, edges_normal), parse(alphas_reduce, edges_reduce)
    nodes = len(normal) // 2
    multiplier = nodes if multiplier is None else multiplier
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    return Genotype(normal, concat, reduce, concat)


DARTS_V1 = Genotype.from_darts_string(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")
DARTS_V2 = Genotype.from_darts_string(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")

KNOWN_GENOTYPES: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2}
