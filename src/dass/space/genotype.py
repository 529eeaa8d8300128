"""Genotypes: the discrete cell a search ends with, as data (JSON, DARTS strings), never code.

The field layout is DARTS': ``normal`` and ``reduce`` list two ``(op, input)`` pairs per
intermediate node; input 0 and 1 are the cell's two inputs, input ``j >= 2`` is node ``j - 2``.
``*_concat`` name the states concatenated into the cell output.
"""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import DassError
from .ops import OPS

Edge = tuple[str, int]

MAX_STATES = 64               # a cell's states (2 inputs + nodes); also the longest concat list or range()
MAX_NODES = MAX_STATES - 2
MAX_DARTS_CHARS = 100_000     # a DARTS string of MAX_NODES nodes is ~6,000 characters
MAX_FILE_BYTES = 1_000_000    # a genotype file (JSON with its meta, or a DARTS string)
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, on one line (error messages quote user input)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_index(value: Any) -> bool:
    """A Python or NumPy integer; ``bool`` is not an index here (``True`` would silently mean 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _sequence(value: Any, what: str, limit: int) -> Sequence:
    """``value`` if it is a list, tuple or range of at most ``limit`` items."""
    if isinstance(value, (list, tuple, range)):
        try:
            n = len(value)
        except OverflowError:   # a range longer than sys.maxsize
            n = limit + 1
        if n > limit:
            raise DassError(f"{what} lists {'more than ' + str(limit) if n == limit + 1 else n} items; at most "
                            f"{limit} are supported ({MAX_NODES} nodes, {MAX_STATES} states)")
        return value
    raise DassError(f"{what} must be a list, got {_short(value)} ({type(value).__name__})")


def _edges(cell: str, value: Any) -> tuple[Edge, ...]:
    """``value`` as ``((op, input), ...)``; raises DassError naming the first malformed entry."""
    pairs = _sequence(value, f"genotype {cell!r}", 2 * MAX_NODES)
    out = []
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DassError(f"genotype {cell!r} edge {k} is {_short(pair)}; each edge must be an [op, input] pair, "
                            "e.g. [\"sep_conv_3x3\", 0]")
        op, j = pair
        if not isinstance(op, str):
            raise DassError(f"genotype {cell!r} edge {k}: the op must be a name (a string) such as \"sep_conv_3x3\", "
                            f"got {_short(op)} ({type(op).__name__})")
        if not _is_index(j):
            raise DassError(f"genotype {cell!r} edge {k}: the input must be an integer state index, got {_short(j)} "
                            f"({type(j).__name__})")
        out.append((op, int(j)))
    return tuple(out)


def _concat(cell: str, value: Any) -> tuple[int, ...]:
    states = _sequence(value, f"genotype {cell}_concat", MAX_STATES)
    out = []
    for j in states:
        if not _is_index(j):
            raise DassError(f"genotype {cell}_concat must list integer state indices, got {_short(j)} "
                            f"({type(j).__name__})")
        out.append(int(j))
    return tuple(out)


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        """Normalize to tuples of exact types (an index of 1.9 or True is an error, not 1) and validate."""
        for cell in ("normal", "reduce"):
            object.__setattr__(self, cell, _edges(cell, getattr(self, cell)))
            object.__setattr__(self, f"{cell}_concat", _concat(cell, getattr(self, f"{cell}_concat")))
        if self.meta is None:
            object.__setattr__(self, "meta", {})
        elif not isinstance(self.meta, dict):
            raise DassError(f"genotype meta must be a JSON object (a dict), got {_short(self.meta)}")
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
                    raise DassError(f"genotype {cell!r} edge {k} uses unknown op {_short(op)}; "
                                    f"known: {', '.join(sorted(known))}")
                if op == "none":
                    raise DassError(f"genotype {cell!r} edge {k} is 'none', which a derived cell cannot use")
                if not 0 <= j < node + 2:
                    raise DassError(
                        f"genotype {cell!r} edge {k} (node {node}) reads state {_short(j)}; a node may read only "
                        f"the two cell inputs and earlier nodes (0..{node + 1})")
            if not concat:
                raise DassError(f"genotype {cell}_concat is empty; list the states the cell outputs, e.g. [2, 3, 4, 5]")
            # a reduction cell's inputs keep their resolution while its nodes are halved: they cannot be concatenated
            first = 2 if cell == "reduce" else 0
            for j in concat:
                if not first <= j < nodes + 2:
                    where = (f"the cell has states 0..{nodes + 1}" if not 0 <= j < nodes + 2 else
                             "a reduction cell may concatenate only its nodes (the inputs have twice their size)")
                    raise DassError(f"genotype {cell}_concat names state {_short(j)}, but {where}; "
                                    f"use states {first}..{nodes + 1}")
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
    def from_dict(cls, data: Any) -> "Genotype":
        """A genotype from its JSON object; any malformed input raises :class:`DassError`."""
        if not isinstance(data, dict):
            raise DassError(f"a genotype must be a JSON object with {', '.join(FIELDS)}; got {_short(data)}")
        missing = [k for k in FIELDS if k not in data]
        if missing:
            raise DassError(f"genotype is missing field(s): {', '.join(missing)}")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DassError(f"genotype meta must be a JSON object, got {_short(meta)}")
        return cls(data["normal"], data["normal_concat"], data["reduce"], data["reduce_concat"], dict(meta or {}))

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
        if p.is_dir():
            raise DassError(f"genotype {p} is a folder; pass the genotype.json inside a search run folder")
        if not p.is_file():
            raise DassError(f"genotype file {p} does not exist; pass a genotype.json from `dass search` "
                            f"or one of: {', '.join(KNOWN_GENOTYPES)}")
        try:
            with open(p, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise DassError(f"cannot read genotype file {p}: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise DassError(f"{p} is larger than {MAX_FILE_BYTES // 1000} kB: not a genotype file; pass a "
                            "genotype.json from `dass search` or a text file with one DARTS Genotype(...) string")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DassError(f"{p} is not a text file (binary data?); pass a genotype.json from `dass search` "
                            "or a text file with a DARTS Genotype(...) string") from None
        if text.lstrip().startswith(("{", "[")):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise DassError(f"{p} is not valid JSON: {' '.join(str(exc).split())}") from None
            except RecursionError:
                raise DassError(f"{p} is not a genotype: its JSON is nested too deeply") from None
            return cls.from_dict(data)
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
        if not isinstance(text, str):
            raise DassError(f"a DARTS genotype string must be text, got {type(text).__name__}")
        src = text.strip()
        if len(src) > MAX_DARTS_CHARS:
            raise DassError(f"the DARTS genotype string has {len(src)} characters (at most {MAX_DARTS_CHARS}); "
                            "expected one Genotype(normal=[...], ...) expression")
        try:
            tree = ast.parse(src, mode="exec")
        except SyntaxError as exc:
            raise DassError(f"not a DARTS genotype string ({' '.join(str(exc.msg).split())}); "
                            "expected Genotype(normal=[...], ...)") from None
        except (ValueError, MemoryError, RecursionError):
            raise DassError("not a DARTS genotype string (nested too deeply or not text); "
                            "expected Genotype(normal=[...], ...)") from None
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "Genotype"]
        if len(calls) != 1:
            raise DassError("expected exactly one Genotype(...) expression in the DARTS genotype string")
        call = calls[0]
        if len(call.args) > len(FIELDS):
            raise DassError(f"Genotype(...) takes at most {len(FIELDS)} fields ({', '.join(FIELDS)}), "
                            f"got {len(call.args)} positional arguments")
        values: dict = {}
        for name, arg in zip(FIELDS, call.args):
            values[name] = _literal(arg)
        for kw in call.keywords:
            if kw.arg is None:
                raise DassError("Genotype(**...) is not supported; write the fields out: "
                                f"Genotype({', '.join(f'{n}=...' for n in FIELDS)})")
            if kw.arg not in FIELDS:
                raise DassError(f"unknown Genotype field {_short(kw.arg)}; expected {', '.join(FIELDS)}")
            if kw.arg in values:
                raise DassError(f"Genotype field {kw.arg!r} is given twice")
            values[kw.arg] = _literal(kw.value)
        return cls.from_dict(values)


def _source(node: ast.AST) -> str:
    try:
        return _short(ast.unparse(node)).strip("'\"")
    except Exception:  # noqa: BLE001 - e.g. RecursionError on a deep tree: name the node type instead
        return f"<{type(node).__name__}>"


def _literal(node: ast.AST):
    """A Python literal, or ``range(...)`` of at most :data:`MAX_STATES` integers, which DARTS uses for concat lists."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        if node.keywords or not 1 <= len(node.args) <= 3:
            raise DassError(f"unsupported range in genotype string: {_source(node)}; write range(start, stop) "
                            "or a list such as [2, 3, 4, 5]")
        bounds = [_literal(a) for a in node.args]
        if not all(_is_index(b) for b in bounds):
            raise DassError(f"range() in a genotype string takes integers, got {_source(node)}")
        if len(bounds) == 3 and bounds[2] == 0:
            raise DassError(f"range() step must not be zero: {_source(node)}")
        states = range(*bounds)
        try:
            size = str(len(states))
        except OverflowError:   # longer than sys.maxsize: never materialised
            size = "too many"
        if size == "too many" or len(states) > MAX_STATES:
            raise DassError(f"{_source(node)} has {size} states; a concat list has at most {MAX_STATES}")
        return list(states)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise DassError(f"unsupported expression in genotype string: {_source(node)}; only literals "
                        "(strings, integers, lists, tuples) and range(start, stop) are allowed") from None


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


def random_genotype(seed: int, ops: Sequence[str], nodes: int = 4, multiplier: int | None = None) -> Genotype:
    """A cell drawn uniformly from what the DARTS rule can derive: per node two distinct earlier states, each with
    an op other than ``none`` (the random baseline of DARTS and of "Random Search and Reproducibility for NAS").
    The same ``seed`` gives the same cell."""
    candidates = [op for op in ops if op != "none"]
    if not candidates:
        raise DassError("the op set has no op other than 'none'; no cell can be drawn")
    rng = random.Random(seed)

    def cell() -> list[Edge]:
        return [(rng.choice(candidates), j) for node in range(nodes) for j in sorted(rng.sample(range(node + 2), 2))]

    normal, reduce = cell(), cell()
    multiplier = nodes if multiplier is None else multiplier
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    return Genotype(normal, concat, reduce, concat, meta={"source": f"random_genotype(seed={seed})"})


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
