"""Loading and writing the frozen config dataclasses of editors and runs.

Configs come from YAML (safe loader only) or JSON files, or from dicts; unknown
keys are rejected with the list of known ones, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
    for f in dataclasses.fields(cls):  # YAML/JSON give lists where configs hold tuples
        if isinstance(data.get(f.name), list) and "tuple" in str(f.type):
            data[f.name] = tuple(data[f.name])
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise MemlaError(f"{source}: invalid {cls.__name__}: {err}") from None


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
