"""Helpers shared by the dataset converters of `memla.data.formats`.

Reading source files strictly as UTF-8 JSON, templating a subject into ``{}``,
normalising language tags, and `Draft`, which collects one record's languages
before deciding whether all of them can be templated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memla.data.files import read_utf8
from memla.data.schema import SLOT, EditFact, Record
from memla.errors import DataError
from memla.langs import is_known, normalize, order_langs

PathLike = str | os.PathLike[str]

# Wikidata property ids that the public datasets use, for relation_description.
RELATION_NAMES: dict[str, str] = {
    "P6": "head of government",
    "P17": "country",
    "P19": "place of birth",
    "P20": "place of death",
    "P26": "spouse",
    "P27": "country of citizenship",
    "P30": "continent",
    "P35": "head of state",
    "P36": "capital",
    "P37": "official language",
    "P38": "currency",
    "P39": "position held",
    "P40": "child",
    "P50": "author",
    "P54": "member of sports team",
    "P69": "educated at",
    "P101": "field of work",
    "P103": "native language",
    "P106": "occupation",
    "P108": "employer",
    "P112": "founded by",
    "P127": "owned by",
    "P131": "located in the administrative territorial entity",
    "P136": "genre",
    "P138": "named after",
    "P140": "religion or worldview",
    "P159": "headquarters location",
    "P166": "award received",
    "P170": "creator",
    "P176": "manufacturer",
    "P178": "developer",
    "P190": "twinned administrative body",
    "P264": "record label",
    "P276": "location",
    "P286": "head coach",
    "P364": "original language of film or TV show",
    "P407": "language of work or name",
    "P413": "position played on team",
    "P449": "original broadcaster",
    "P463": "member of",
    "P495": "country of origin",
    "P641": "sport",
    "P740": "location of formation",
    "P937": "work location",
    "P1303": "instrument",
    "P1412": "languages spoken, written or signed",
}



def read_json(path: PathLike) -> Any:
    """Read one JSON file strictly as UTF-8.

    Args:
        path: the file.

    Returns:
        The parsed JSON value.

    Raises:
        DataError: naming the file when it is missing, not UTF-8 or not valid JSON.
    """
    path = Path(path)
    text = read_utf8(path, source=str(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def read_list(path: PathLike) -> list[Any]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    return data


def template(text: str, subject: str | None) -> str | None:
    """Replace the first occurrence of ``subject`` in ``text`` by ``{}``.

    Args:
        text: a prompt with the subject written in.
        subject: the subject string.

    Returns:
        The templated prompt, or None when the subject does not occur (or ``text``
        already holds a ``{}``).
    """
    if not subject or SLOT in text or subject not in text:
        return None
    return text.replace(subject, SLOT, 1)


def texts(value: Any) -> list[str]:
    """A string or a list of strings as a list of non-empty strings."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items if isinstance(item, str) and item.strip()]


def first_text(value: Any) -> str | None:
    items = texts(value)
    return items[0] if items else None


def target_text(value: Any) -> str | None:
    """A target given as a string or as CounterFact's ``{"str": ..., "id": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("str")
    return value if isinstance(value, str) and value.strip() else None


def source_lang(code: Any, where: str) -> str:
    lang = normalize(str(code))
    if not is_known(lang):
        raise DataError(f"{where}: unknown language code {code!r}")
    return lang


def require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    """``entry[key]``, which must be present and not empty."""
    value = entry.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing key {key!r}")
    return value


def require_str(entry: Mapping[str, Any], key: str, where: str) -> str:
    """``entry[key]``, which must be a non-empty string."""
    value = require(entry, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


_LOC_PREFIX = re.compile(r"^\s*nq question:\s*", re.IGNORECASE)


def strip_loc(text: str) -> str:
    """zsRE neighbourhood prompts start with "nq question: "; drop it."""
    return _LOC_PREFIX.sub("", text)


@dataclass
class Draft:
    """Per-language pieces of one record before templating."""

    key: Any
    sources: dict[str, str] = field(default_factory=dict)  # lang -> file the language came from
    src: dict[str, str] = field(default_factory=dict)
    subject: dict[str, str | None] = field(default_factory=dict)
    target_new: dict[str, str] = field(default_factory=dict)
    target_true: dict[str, str | None] = field(default_factory=dict)
    fact_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: Record = field(init=False)

    def __post_init__(self) -> None:
        self.record = Record(example_id=self.key)

    def finish(self) -> Record:
        """Template the prompts (all languages or none) and fill ``record.edit``."""
        templated = {lang: template(text, self.subject.get(lang)) for lang, text in self.src.items()}
        all_ok = all(t is not None for t in templated.values())
        for lang in order_langs(self.src):
            prompt = templated[lang] if all_ok else self.src[lang]
            self.record.edit[lang] = EditFact(
                prompt, self.subject.get(lang), self.target_new[lang], self.target_true.get(lang), self.fact_extra.get(lang, {})
            )
        self.record.templated = all_ok
        reorder_langs(self.record)
        return self.record


def reorder_langs(record: Record) -> None:
    """Order every per-language mapping by `order_langs` (benchmark languages first)."""
    for name in ("paraphrase_prompts", "neighborhood_prompts", "neighborhood_answers", "multi_hop_questions", "multi_hop_new_answer"):
        value = getattr(record, name)
        setattr(record, name, {lang: value[lang] for lang in order_langs(value)})
