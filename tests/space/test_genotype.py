import json

import pytest
import torch

from dass.errors import DassError
from dass.space import DARTS_V2, KNOWN_GENOTYPES, PRIMITIVES, Genotype, derive_genotype, num_edges

DARTS_V2_TEXT = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=range(2, 6), "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")


def test_json_round_trip_uses_darts_layout(tmp_path):
    path = tmp_path / "g.json"
    DARTS_V2.save(path)
    data = json.loads(path.read_text())
    assert list(data) == ["normal", "normal_concat", "reduce", "reduce_concat"]
    assert data["normal"][0] == ["sep_conv_3x3", 0]
    assert Genotype.load(path) == DARTS_V2


def test_darts_string_import_and_export():
    parsed = Genotype.from_darts_string(DARTS_V2_TEXT)  # with "NAME =" and range(2, 6)
    assert parsed == DARTS_V2
    assert Genotype.from_darts_string(parsed.to_darts_string()) == parsed
    assert KNOWN_GENOTYPES["DARTS_V2"].normal[7] == ("dil_conv_3x3", 2)


def test_darts_string_file_and_known_names(tmp_path):
    path = tmp_path / "darts.txt"
    path.write_text(DARTS_V2_TEXT + "\n")
    assert Genotype.load(path) == DARTS_V2
    assert Genotype.load("DARTS_V1") == KNOWN_GENOTYPES["DARTS_V1"]


def test_darts_string_never_evaluates_code():
    with pytest.raises(DassError):
        Genotype.from_darts_string("Genotype(normal=__import__('os').system('true'), normal_concat=[2], "
                                   "reduce=[], reduce_concat=[2])")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["normal"].__setitem__(0, ["conv_9x9", 0]), "unknown op"),
    (lambda d: d["normal"].__setitem__(2, ["sep_conv_3x3", 3]), "reads state 3"),
    (lambda d: d["normal"].pop(), r"two \(op, input\) pairs"),
    (lambda d: d.__setitem__("reduce_concat", [2, 9]), "names state 9"),
    (lambda d: d.pop("reduce"), "missing field"),
    (lambda d: d["reduce"].__setitem__(1, ["none", 1]), "'none'"),
])
def test_validation_messages(mutate, message):
    data = DARTS_V2.to_dict()
    mutate(data)
    with pytest.raises(DassError, match=message):
        Genotype.from_dict(data)


def test_derivation_follows_the_darts_rule():
    ops = list(PRIMITIVES)
    k = num_edges(4)
    alphas = torch.zeros(k, len(ops))
    # node 0 (edges 0, 1): edge 1 strongest with sep_conv_5x5; 'none' is huge on edge 0 but ignored
    alphas[0, ops.index("none")] = 10.0
    alphas[0, ops.index("max_pool_3x3")] = 1.0
    alphas[1, ops.index("sep_conv_5x5")] = 3.0
    # node 1 (edges 2, 3, 4): inputs 2 (node 0) and 0 win
    alphas[4, ops.index("dil_conv_3x3")] = 4.0
    alphas[2, ops.index("skip_connect")] = 2.0
    alphas[3, ops.index("avg_pool_3x3")] = 1.0
    g = derive_genotype(alphas, alphas, ops)
    assert g.normal[:2] == (("sep_conv_5x5", 1), ("max_pool_3x3", 0))
    assert g.normal[2:4] == (("dil_conv_3x3", 2), ("skip_connect", 0))
    assert g.normal_concat == (2, 3, 4, 5)
    assert len(g.normal) == 8


def test_random_genotype_is_seeded_and_derivable():
    """The random-cell baseline: two distinct earlier states per node, no ``none``, the same cell for a seed."""
    from collections import Counter

    from dass.space import PRIMITIVES, random_genotype

    cells = [random_genotype(seed, PRIMITIVES) for seed in range(200)]
    assert cells[0] == random_genotype(0, PRIMITIVES) and len(set(cells)) == 200
    for g in cells:
        g.validate(PRIMITIVES)
        for cell in (g.normal, g.reduce):
            assert all(op != "none" for op, _ in cell)
            for node in range(4):
                a, b = cell[2 * node][1], cell[2 * node + 1][1]
                assert a != b and max(a, b) < node + 2
    ops = Counter(op for g in cells for op, _ in g.normal + g.reduce)
    assert set(ops) == set(PRIMITIVES) - {"none"} and min(ops.values()) > 0.7 * max(ops.values())   # ~uniform
    assert random_genotype(3, ["none", "skip_connect"], nodes=2, multiplier=2).normal_concat == (2, 3)
