"""The ``memla edit`` command that reproduces an edit made in the explore page.

The command loads the same model the same way, builds the same `EditRequest` (a picked,
unchanged dataset record: ``--dataset D --record ID --lang L``; typed rows: ``--prompt``,
``--subject``, ``--new``, ``--old`` and one ``--translation`` per other language, or a small
dataset file when a text holds the ``|`` that ``--translation`` splits on), runs the method
with the settings that differ from its defaults (a ``--config`` file written by a heredoc)
and saves the edit.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml

from memla.editors import editor_entry
from memla.explore.configs import changed_settings
from memla.explore.fact import Fact
from memla.explore.session import Settings

FACT_FILE = "fact.json"


def _heredoc(path: str, text: str) -> str:
    return f"cat > {path} <<'EOF'\n{text.rstrip()}\nEOF"


def _model_args(settings: Settings) -> list[str]:
    """The model-loading options that differ from ``memla edit``'s defaults."""
    out = [] if settings.model is None else ["--model", settings.model]
    out += [] if settings.dtype == "float32" else ["--dtype", settings.dtype]
    out += [] if settings.device == "cpu" else ["--device", settings.device]
    return out + ([] if settings.device_map is None else ["--device-map", settings.device_map])


def _fact_args(fact: Fact) -> tuple[list[str], list[str]]:
    """``(files to write first, options naming the fact)``."""
    if fact.picked:
        return [], ["--dataset", fact.dataset, "--record", str(fact.record.example_id), "--lang", fact.source]
    if any("|" in text for row in fact.rows for text in row):
        record = fact.record_for_scoring().to_dict()
        text = json.dumps([record], ensure_ascii=False, indent=1)
        return [_heredoc(FACT_FILE, text)], ["--dataset", FACT_FILE, "--record", str(record["example_id"]),
                                             "--lang", fact.source]
    rows = {row[0]: row for row in fact.rows}
    _, prompt, subject, new, old = rows[fact.source]
    args = ["--prompt", prompt, "--subject", subject, "--new", new] + (["--old", old] if old else [])
    args += ["--lang", fact.source]
    for lang, p, s, n, o in (row for row in fact.rows if row[0] != fact.source):
        args += ["--translation", f"{lang}={p}|{s}|{n}" + (f"|{o}" if o else "")]
    return [], args


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")[:40] or "fact"


def reproduce_command(fact: Fact, method: str, config: Any, settings: Settings) -> str:
    """The shell lines that repeat ``method``'s edit of ``fact`` with ``memla edit`` and save it.

    Args:
        fact: the fact as edited.
        method: registry name.
        config: the config the method ran with.
        settings: how the page's model was loaded.

    Returns:
        The command (preceded by heredocs for the files it reads), ready to paste into a shell.
    """
    files, fact_args = _fact_args(fact)
    args = ["memla", "edit", *fact_args, "--method", method]
    changed = changed_settings(method, config)
    if changed:
        path = f"{method}.yaml"
        files.append(_heredoc(path, yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)))
        args += ["--config", path]
    if editor_entry(method).edits_weights:
        subject = next(row[2] for row in fact.rows if row[0] == fact.source)
        args += ["--save-adapter", f"runs/{method}-{_slug(subject)}"]
    args += _model_args(settings)
    return "\n".join([*files, " ".join(shlex.quote(a) for a in args)])
