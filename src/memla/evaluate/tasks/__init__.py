"""Offline downstream tasks on local files, and the built-in ones written for memla.

Formats (detected from each row's fields; templates follow lm-evaluation-harness):

- PIQA ``{goal, sol1, sol2, label}`` -> context ``"Question: {goal}\nAnswer:"``, choices ``sol1``, ``sol2``.
- ANLI ``{premise, hypothesis, label}`` -> ``"{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:"``,
  choices ``True`` / ``Neither`` / ``False`` (label 0 entailment, 1 neutral, 2 contradiction).
- XNLI ``{premise, hypothesis, label, lang}`` -> ``"{premise}, right?"`` and the choices
  ``"Yes, {hypothesis}"`` / ``"Also, ..."`` / ``"No, ..."`` in the item's language, always joined
  by a space: lm-eval's ``xnli_*`` text ``"{premise}, right? Yes, {hypothesis}"``.  lm-eval
  scores the whole sentence; the premise is shared by the choices, so the argmax (``acc``) is
  the same.  No ``acc_norm`` (lm-eval reports none for XNLI).
- generic ``{context, choices, label[, lang]}``.

Labels are integers, digit strings or, for ANLI / XNLI, ``entailment`` / ``neutral`` /
``contradiction``; rows labelled ``-1`` (no gold label, as in SNLI / MNLI exports) are skipped
with a warning.  A file is JSONL (one object a line) or a JSON list.  Built-in tasks (`builtin_tasks`),
shipped beside this module:

- ``piqa-mini``: 200 PIQA-style physical-commonsense items, English, balanced labels (items 0-39, the
  whole set before 2026-12-07, stay as they were: ``--limit 40`` scores that set).
- ``nli-mini``: 40 ANLI-style items, English.
- ``xnli-mini``: 54 XNLI-style items, the same 9 premise/hypothesis pairs in en, zh, fr, de, es, ru.

They are small sanity sets for measuring what edits cost a model, not benchmarks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from memla.errors import DataError
from memla.langs import sep

log = logging.getLogger(__name__)

TASKS_PACKAGE = __name__
FORMATS: tuple[str, ...] = ("auto", "piqa", "anli", "xnli", "choices")
ANLI_CHOICES: tuple[str, ...] = ("True", "Neither", "False")
NLI_LABELS: dict[str, int] = {"entailment": 0, "neutral": 1, "contradiction": 2}
# (question word, entailment, neutral, contradiction); en/zh/fr/de/es/ru/th as in lm-eval's xnli tasks
XNLI_WORDS: dict[str, tuple[str, str, str, str]] = {
    "en": ("right", "Yes", "Also", "No"),
    "zh": ("正确", "是的", "所以", "不是的"),
    "fr": ("correct", "Oui", "Aussi", "Non"),
    "de": ("richtig", "Ja", "Auch", "Nein"),
    "es": ("correcto", "Sí", "Asi que", "No"),
    "ru": ("правильно", "Да", "Так", "Нет"),
    "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"),
    "ja": ("正しい", "はい", "また", "いいえ"),
    "ko": ("맞죠", "네", "또한", "아니요"),
    "pt": ("certo", "Sim", "Também", "Não"),
    "it": ("giusto", "Sì", "Inoltre", "No"),
    "pl": ("prawda", "Tak", "Również", "Nie"),
}


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice item, ready to score.

    Attributes:
        context: the text before the choice (the prompt).
        choices: the candidate continuations.
        label: index of the correct choice.
        lang: language of the item (picks the join separator).
        item_id: the item's id in its file, if any.
        delimiter: text between context and choice; None: the DESIGN.md join rule for ``lang``.
        length_norm: whether ``acc_norm`` (likelihood per character of the choice) applies.
    """

    context: str
    choices: tuple[str, ...]
    label: int
    lang: str = "en"
    item_id: Any = None
    delimiter: str | None = None
    length_norm: bool = True

    @property
    def joiner(self) -> str:
        """The text between context and choice."""
        return sep(self.lang) if self.delimiter is None else self.delimiter


@dataclass(frozen=True)
class LocalTask:
    """A task defined on a local file.

    Attributes:
        name: task name (the built-in name or the file stem).
        format: "piqa", "anli", "xnli" or "choices".
        items: the items.
        source: the file it came from.
    """

    name: str
    format: str
    items: tuple[ChoiceItem, ...]
    source: str


def builtin_tasks() -> list[str]:
    """Names of the tasks shipped with memla (``load_task(name)`` loads them)."""
    root = resources.files(TASKS_PACKAGE)
    return sorted(e.name[: -len(".jsonl")] for e in root.iterdir() if e.is_file() and e.name.endswith(".jsonl"))


def is_local_task(spec: str) -> bool:
    """Whether ``spec`` names a built-in task or an existing local file."""
    return spec in builtin_tasks() or Path(spec).is_file()


def detect_format(row: Mapping[str, Any]) -> str:
    """The format of one task row, from its fields ("piqa", "xnli", "anli" or "choices").

    Raises:
        DataError: when the fields match no format.
    """
    if {"goal", "sol1", "sol2"} <= row.keys():
        return "piqa"
    if {"premise", "hypothesis"} <= row.keys():
        return "xnli" if "lang" in row else "anli"
    if {"context", "choices"} <= row.keys():
        return "choices"
    raise DataError(f"fields {sorted(row)} match no task format (piqa: goal/sol1/sol2/label; "
                    "anli/xnli: premise/hypothesis/label[/lang]; generic: context/choices/label)")


def to_item(row: Mapping[str, Any], fmt: str) -> ChoiceItem:
    """Turn one row of a task file into a `ChoiceItem` (templates: see the module docstring).

    Args:
        row: the parsed JSON object.
        fmt: "piqa", "anli", "xnli" or "choices".

    Returns:
        The item.

    Raises:
        DataError: on a missing field, a bad label or an unknown XNLI language.
    """
    def need(key: str) -> Any:
        if key not in row or row[key] in (None, ""):
            raise DataError(f"missing field {key!r}")
        return row[key]

    lang = str(row.get("lang", "en"))
    if fmt == "piqa":
        context, choices = f"Question: {need('goal')}\nAnswer:", (str(need("sol1")), str(need("sol2")))
    elif fmt == "anli":
        context, choices = f"{need('premise')}\nQuestion: {need('hypothesis')} True, False, or Neither?\nAnswer:", ANLI_CHOICES
    elif fmt == "xnli":
        if lang not in XNLI_WORDS:
            raise DataError(f"no XNLI wording for language {lang!r} (known: {', '.join(XNLI_WORDS)})")
        question, *labels = XNLI_WORDS[lang]
        context = f"{need('premise')}, {question}?"
        choices = tuple(f"{word}, {need('hypothesis')}" for word in labels)
        label = _label(need("label"), len(choices), names=NLI_LABELS)
        return ChoiceItem(context, choices, label, lang, row.get("id"), delimiter=" ", length_norm=False)
    elif fmt == "choices":
        context, choices = str(need("context")), tuple(str(c) for c in need("choices"))
    else:
        raise DataError(f"unknown task format {fmt!r}; use one of {', '.join(FORMATS)}")
    label = _label(need("label"), len(choices), names=NLI_LABELS if fmt == "anli" else {})
    return ChoiceItem(context, choices, label, lang, row.get("id"))


def _label(value: Any, n_choices: int, *, names: Mapping[str, int]) -> int:
    """A row's label as a choice index (an int, a digit string or one of ``names``)."""
    if isinstance(value, str):
        key = value.strip().lower()
        value = names[key] if key in names else int(key) if key.lstrip("-").isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_choices:
        known = f" or one of {', '.join(names)}" if names else ""
        raise DataError(f"label must be an integer in [0, {n_choices - 1}]{known}, got {value!r}")
    return value


def _unlabelled(row: Mapping[str, Any]) -> bool:
    """Rows without a gold label (``-1`` in SNLI / MNLI / XNLI exports)."""
    return str(row.get("label", "")).strip() == "-1"


def load_task(name_or_path: str, *, format: str = "auto") -> LocalTask:
    """Load a local task: a built-in name (`builtin_tasks`) or a JSONL / JSON-list file.

    Args:
        name_or_path: e.g. ``"piqa-mini"`` or ``"data/my_task.jsonl"``.
        format: "auto" (from each row's fields) or one of "piqa", "anli", "xnli", "choices".

    Returns:
        The `LocalTask`.

    Raises:
        DataError: naming the file, line and problem.
    """
    if format not in FORMATS:
        raise DataError(f"unknown task format {format!r}; use one of {', '.join(FORMATS)}")
    path = Path(name_or_path)
    if path.is_file():
        source, name, text = str(path), path.stem, path.read_bytes().decode("utf-8-sig", errors="strict")
    elif name_or_path in builtin_tasks():
        entry = resources.files(TASKS_PACKAGE) / f"{name_or_path}.jsonl"
        source, name, text = f"builtin:{name_or_path}", name_or_path, entry.read_text(encoding="utf-8")
    else:
        raise DataError(f"no task file or built-in task named {name_or_path!r} (built-in: {', '.join(builtin_tasks())})")
    stripped = text.lstrip()
    try:
        rows = json.loads(text) if stripped.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{source}: not valid JSON / JSONL ({err})") from None
    items, fmt_seen, unlabelled = [], set(), 0
    for i, row in enumerate(rows, 1):
        where = f"{source}: item {i}" + (f" (id {row['id']})" if isinstance(row, dict) and "id" in row else "")
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        if _unlabelled(row):
            unlabelled += 1
            continue
        try:
            fmt = detect_format(row) if format == "auto" else format
            items.append(to_item(row, fmt))
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        fmt_seen.add(fmt)
    if unlabelled:
        log.warning("%s: skipped %d item(s) labelled -1 (no gold label)", source, unlabelled)
    if not items:
        raise DataError(f"{source}: the task has no items")
    return LocalTask(name, fmt_seen.pop() if len(fmt_seen) == 1 else "mixed", tuple(items), source)
