"""Property tests: any genotype input gives a valid Genotype (that round-trips) or a DassError, nothing else."""

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dass.errors import DassError
from dass.space import DARTS_V1, DARTS_V2, PRIMITIVES, Genotype

FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
OPS = [op for op in PRIMITIVES if op != "none"]
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(OPS + ["none", "conv_9x9"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


def check(make, *args) -> Genotype | None:
    """``make(*args)`` is a valid genotype that round-trips, or raises DassError; anything else fails the test."""
    try:
        genotype = make(*args)
    except DassError as exc:
        assert str(exc) and "\n" not in str(exc)
        event("DassError")
        return None
    event("valid")
    assert isinstance(genotype, Genotype)
    genotype.validate()
    assert all(isinstance(op, str) and type(j) is int for op, j in genotype.normal + genotype.reduce)
    assert all(type(j) is int for j in genotype.normal_concat + genotype.reduce_concat)
    assert Genotype.from_dict(json.loads(genotype.to_json())) == genotype
    assert Genotype.from_darts_string(genotype.to_darts_string()) == genotype
    return genotype


@st.composite
def valid_genotypes(draw):
    nodes = draw(st.integers(1, 6))

    def cell():
        return [(draw(st.sampled_from(OPS)), draw(st.integers(0, k // 2 + 1))) for k in range(2 * nodes)]

    def concat(first):
        return draw(st.lists(st.integers(first, nodes + 1), min_size=1, max_size=nodes + 2))

    return Genotype(cell(), concat(0), cell(), concat(2))


@PROPERTY
@given(valid_genotypes())
def test_valid_genotypes_round_trip(genotype):
    assert check(Genotype.from_dict, genotype.to_dict()) == genotype


@PROPERTY
@given(JSON)
def test_from_dict_on_arbitrary_json(value):
    check(Genotype.from_dict, value)


@PROPERTY
@given(st.fixed_dictionaries({name: JSON for name in FIELDS}, optional={"meta": JSON}))
def test_from_dict_on_arbitrary_field_values(value):
    check(Genotype.from_dict, value)


def _paths(value, prefix=()):
    """Every position inside a JSON value: the container paths to each element."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


@st.composite
def near_valid(draw):
    """A valid genotype's JSON with a few positions replaced, deleted or duplicated."""
    base = draw(st.sampled_from([DARTS_V1, DARTS_V2]) | valid_genotypes())
    data = json.loads(base.to_json())
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "nudge", "delete", "duplicate"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON | st.integers(-3, 8) | st.sampled_from(OPS))
        elif action == "nudge" and isinstance(parent[path[-1]], int):
            parent[path[-1]] += draw(st.sampled_from([-1, 1, 0.5, -0.1]))
        elif action == "delete":
            del parent[path[-1]]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(path[-1], parent[path[-1]])
    return data


@PROPERTY
@given(near_valid())
def test_from_dict_on_perturbed_genotypes(data):
    check(Genotype.from_dict, data)


@PROPERTY
@given(st.text(max_size=300))
def test_from_darts_string_on_arbitrary_text(text):
    check(Genotype.from_darts_string, text)


@PROPERTY
@given(st.text(alphabet="Genotype()[]{}'\",=-+*.:0123456789 _abcdeglmnoprstuvxz", max_size=300))
def test_from_darts_string_on_python_like_text(text):
    check(Genotype.from_darts_string, text)


@st.composite
def mutated_darts_strings(draw):
    text = draw(st.sampled_from([DARTS_V1, DARTS_V2]) | valid_genotypes()).to_darts_string()
    if draw(st.booleans()):
        text = text.replace("[2, 3, 4, 5]", draw(st.sampled_from(
            ["range(2, 6)", "range(2, 10**12)", "range(2, 1000000000000)", "range('a')", "range()",
             "range(1, 2, 3, 4)", "range(2, 6, 0)", "range(6, 2, -1)", "range(2.0, 6)"])))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        piece = draw(st.text(alphabet="()[],'0123456789.-_ xeTrunag", max_size=3))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            text = text[:i] + piece + text[i:]
        elif action == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 5)):]
        else:
            text = text[:i] + piece + text[i + len(piece):]
    return text


@PROPERTY
@given(mutated_darts_strings())
def test_from_darts_string_on_mutated_strings(text):
    check(Genotype.from_darts_string, text)


@settings(PROPERTY, max_examples=60)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_load_on_arbitrary_files(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("g") / "genotype.txt"
    path.write_bytes(content)
    check(Genotype.load, path)
