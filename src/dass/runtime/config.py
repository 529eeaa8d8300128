"""Typed configuration from dataclasses: YAML presets, ``--set key=value`` overrides, clear errors.

A config is a tree of dataclasses. :func:`build` turns a nested dict into that tree, checking every
key (with a "did you mean" hint) and every value's type, so a typo fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from ..errors import DassError

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except DassError as exc:
                errors.append(str(exc))
        raise DassError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DassError(f"{where} must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return build(tp, value, where)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise DassError(f"{where} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise DassError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise DassError(f"{where} is out of range: {value}")
            return value
        raise DassError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise DassError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        raise DassError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise DassError(f"{where} must be a string, got {value!r}")
    raise DassError(f"{where}: unsupported config type {_type_name(tp)}")


def build(cls: type[T], data: dict, where: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``data``; unknown keys and ill-typed values raise DassError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
            raise DassError(f"unknown config key {path!r}{hint} (known here: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DassError(f"invalid config{' at ' + where if where else ''}: {exc}") from None


PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_preset(name_or_path: str) -> Path:
    """A YAML file path, or the path of a bundled preset by name (``default``, ``paper``, ...)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise DassError(f"no config file or preset named {name_or_path!r}; presets: {', '.join(known)}")


def check_all(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`DassError` with the message of the first failed ``(ok, message)`` check."""
    for ok, message in checks:
        if not ok:
            raise DassError(message)


def layered(cls: type[T], preset: Path | None = None, overrides: dict | None = None,
            sets: list[str] | None = None) -> T:
    """Defaults, then the preset/YAML file, then flag overrides, then ``--set`` items; validated."""
    data = to_dict(cls())
    if preset is not None:
        data = deep_merge(data, load_yaml(preset))
    if overrides:
        data = deep_merge(data, overrides)
    for item in sets or []:
        data = deep_merge(data, parse_override(item))
    config = build(cls, data)
    return config.validate() if hasattr(config, "validate") else config


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise DassError(f"--set expects key=value (e.g. search.sparsity=0.95), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise DassError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DassError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise DassError(f"config file {path} is not text (a binary file?); give a YAML config") from None
    except yaml.YAMLError as exc:
        raise DassError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DassError(f"config file {path} must hold a mapping at the top level")
    return data


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
