"""The methods' configs as the explore page shows them: one YAML mapping ``{method: {field: value}}``.

`configs_text` writes the configs of the chosen methods (keeping what the visitor already
changed for methods still chosen); `parse_configs` reads the text back into config
dataclasses with the library's checks (`memla.config.config_from_dict`: unknown keys and
value types), so a typo is an inline message, never a silent default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from memla.config import config_from_dict, config_to_dict
from memla.editors import editor_entry
from memla.errors import MemlaError


def default_config(method: str) -> Any:
    """The default config of a registered method (its config dataclass with no values given)."""
    return config_from_dict(editor_entry(method).config_cls, None)


def _read(text: str) -> dict[str, Any]:
    """The YAML mapping of the configs box ({} when empty)."""
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MemlaError(f"configs: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise MemlaError("configs: expected a mapping of method names to their settings, e.g. 'rome: {layers: [5]}'")
    return data


def parse_configs(text: str, methods: Sequence[str]) -> dict[str, Any]:
    """The config of every method in ``methods``, from the configs box.

    A method missing from the text gets its defaults; a method in the text but not chosen
    is ignored.

    Raises:
        MemlaError: bad YAML, an unknown method, or a key / value its config refuses.
    """
    data = _read(text)
    return {m: config_from_dict(editor_entry(m).config_cls, data.get(m), source=f"configs: {m}") for m in methods}


def configs_text(methods: Sequence[str], previous: str = "") -> str:
    """The configs box for ``methods``: the previous text's settings of methods still chosen, defaults for the others.

    An unreadable previous text is replaced by the defaults.
    """
    try:
        kept = _read(previous)
    except MemlaError:
        kept = {}
    out = {}
    for m in methods:
        try:
            out[m] = config_to_dict(config_from_dict(editor_entry(m).config_cls, kept.get(m)))
        except MemlaError:
            out[m] = config_to_dict(default_config(m))
    return yaml.safe_dump(out, sort_keys=False, allow_unicode=True, default_flow_style=None) if out else ""


def changed_settings(method: str, config: Any) -> dict[str, Any]:
    """The fields of ``config`` that differ from the method's defaults (what a ``--config`` file must hold)."""
    default = config_to_dict(default_config(method))
    return {k: v for k, v in config_to_dict(config).items() if default.get(k) != v}
