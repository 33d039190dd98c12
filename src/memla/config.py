"""Loading and writing the frozen config dataclasses of editors and runs.

Configs come from YAML (safe loader only) or JSON files, or from dicts; unknown
keys are rejected with the list of known ones, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from memla.errors import MemlaError

C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any] | None, *, source: str = "config") -> C:
    """Build a config dataclass from a dict, rejecting unknown keys.

    Args:
        cls: a dataclass type.
        data: field values (``None`` = all defaults).
        source: where the values came from, for error messages.

    Returns:
        ``cls(**data)`` (its ``__post_init__`` validates the values).
    """
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MemlaError(
            f"{source}: unknown {cls.__name__} key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        value = data[name] = _yaml_float(value, hints[name])
        problem = type_problem(value, hints[name])
        if problem:
            raise MemlaError(f"{source}: {cls.__name__}.{name} {problem}, got {value!r}")
        data[name] = _as_declared(value, hints[name])
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise MemlaError(f"{source}: invalid {cls.__name__}: {err}") from None


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` (as YAML/JSON give it) does not fit the type ``hint``, or None when it does.

    Understands the types config dataclasses use: bool, int, float (an int is a number),
    str, ``X | None``, ``tuple[X, ...]``, fixed-length tuples and ``Mapping[K, V]``; lists
    stand for tuples.  Returns e.g. ``"must be a number"``.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [type_problem(value, a) for a in options]
        return None if None in problems else " or ".join(problems) + (" or null" if len(options) < len(args) else "")
    if hint in _NAMES:
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        ok = ok or (hint is float and isinstance(value, int) and not isinstance(value, bool))
        return None if ok else f"must be {_NAMES[hint]}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(value):
            return f"must be a list of {len(inner)} items"
        bad = next((p for p in map(type_problem, value, inner) if p), None)
        return None if bad is None else f"must be a list ({bad.replace('must be', 'each item', 1)})"
    if origin is collections.abc.Mapping:
        if not isinstance(value, dict):
            return "must be a mapping"
        bad = next((p for k, v in value.items() for p in (type_problem(k, args[0]), type_problem(v, args[1])) if p), None)
        return None if bad is None else f"must be a mapping ({bad.replace('must be', 'each key / value', 1)})"
    return None


def _yaml_float(value: Any, hint: Any) -> Any:
    """``value`` as a float when the field takes one and YAML gave a string such as ``"5e-3"``.

    YAML 1.1 (PyYAML) reads exponent notation without a dot as a string; the user meant a number.
    """
    if isinstance(value, str) and float in (hint, *typing.get_args(hint)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _as_declared(value: Any, hint: Any) -> Any:
    """``value`` with lists turned into the tuples the field declares (recursively)."""
    if isinstance(value, list):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        tuple_hint = next((a for a in [hint, *args] if typing.get_origin(a) is tuple), None)
        if tuple_hint is not None:
            inner = typing.get_args(tuple_hint)
            inner = [inner[0]] * len(value) if len(inner) == 2 and inner[1] is Ellipsis else inner
            return tuple(_as_declared(v, h) for v, h in zip(value, inner))
    return value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (safe loader) or JSON file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise MemlaError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise MemlaError(f"{path}: cannot parse config: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MemlaError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def read_method_configs(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """``{method: {field: value}}`` from a ``--config`` file (``memla bench``, benchmarks/edit_speed.py); {} without one."""
    if path is None:
        return {}
    data = read_config_file(path)
    for name, value in data.items():
        if value is not None and not isinstance(value, dict):
            raise MemlaError(f"{path}: the config of {name!r} must be a mapping, got {type(value).__name__}")
    return {name: value or {} for name, value in data.items()}


def load_config(cls: type[C], source: str | os.PathLike | dict[str, Any] | C | None) -> C:
    """A config of type ``cls`` from an instance, a dict, a YAML/JSON path or ``None`` (defaults)."""
    if isinstance(source, cls):
        return source
    if source is None or isinstance(source, dict):
        return config_from_dict(cls, source)
    return config_from_dict(cls, read_config_file(source), source=str(source))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def dump_config(config: Any, path: str | os.PathLike) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON."""
    path = Path(path)
    data = config_to_dict(config)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
    path.write_text(text, encoding="utf-8")
