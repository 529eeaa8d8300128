"""Property tests: any config input gives a validated config or a DassError, never another exception."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dass.errors import DassError
from dass.runtime.config import build, parse_override, to_dict
from dass.search.config import SearchRunConfig
from dass.train.config import TrainRunConfig

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def _paths(config_cls) -> list[str]:
    """Every leaf key of a config as a dotted path."""
    out = []

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out.append(f"{prefix}{key}")

    walk(to_dict(config_cls()), "")
    return out


def _nest(path: str, value) -> dict:
    out: dict = {}
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def _check(config_cls, data) -> None:
    try:
        config = build(config_cls, data).validate()
    except DassError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    for key, value in _leaves(to_dict(config)):   # what validates is finite and typed
        if isinstance(value, float):
            assert math.isfinite(value), key


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("config_cls", [SearchRunConfig, TrainRunConfig])
def test_any_value_at_any_key(config_cls):
    paths = _paths(config_cls)

    @SETTINGS
    @given(st.lists(st.tuples(st.sampled_from(paths), values), min_size=1, max_size=3))
    def check(items):
        data: dict = {}
        for path, value in items:
            data = {**data, **_nest(path, value)} if "." not in path else _merge(data, _nest(path, value))
        _check(config_cls, data)

    check()


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@SETTINGS
@given(values)
def test_any_document(data):
    if not isinstance(data, dict):
        data = {"search": data}
    _check(SearchRunConfig, data)


@SETTINGS
@given(st.text(max_size=40))
def test_any_override_text(text):
    text = text.replace("@", "a" * 300)   # also names too long for the file system
    try:
        data = parse_override(text)
    except DassError:
        return
    _check(SearchRunConfig, data)
