"""Helpers shared by the dataset converters of `memla.data.formats`.

Reading source files strictly as UTF-8 JSON, templating a subject into ``{}``,
normalising language tags, and `Draft`, which collects one record's languages
before deciding whether all of them can be templated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memla.data.files import loads, read_utf8
from memla.data.schema import SLOT, EditFact, Record, json_kind
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
        DataError: naming the file when it is missing, empty, not UTF-8, not valid
            JSON or nested too deeply.
    """
    path = Path(path)
    text = read_utf8(path, source=str(path))
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a JSON list of records")
    try:
        return loads(text, source=str(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def read_list(path: PathLike, fmt: str) -> list[Any]:
    """Read a source file holding a JSON list of records in the layout of converter ``fmt``.

    Args:
        path: the file.
        fmt: the converter reading it (a key of `LAYOUTS`).

    Returns:
        The items, at least one.

    Raises:
        DataError: when the file cannot be read, is not a non-empty list, or its
            first item is not in ``fmt``'s layout (`check_layout`).
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {json_kind(data)}")
    if not data:
        raise DataError(f"{path}: no records (the list is empty)")
    check_layout(path, fmt, data[0])
    return data


# ----------------------------------------------------------------------------- telling layouts apart


def _is_pair(item: Any) -> bool:
    """A BMIKE-53 / MzsRE item: an object language -> entry object."""
    return isinstance(item, Mapping) and bool(item) and all(isinstance(v, Mapping) for v in item.values())


def _is_mkeb(item: Any) -> bool:
    return isinstance(item, Mapping) and "edit" in item


def _is_counterfact(item: Any) -> bool:
    return isinstance(item, Mapping) and isinstance(item.get("requested_rewrite"), Mapping)


def _is_mquake(item: Any) -> bool:
    return isinstance(item, Mapping) and isinstance(item.get("requested_rewrite"), list)


def _is_mlake(item: Any) -> bool:
    return isinstance(item, Mapping) and "question" in item and "e_answer" in item


@dataclass(frozen=True)
class Layout:
    """What the items of one source layout look like, to name a file given to the wrong converter.

    Attributes:
        title: the dataset's name in messages.
        expected: its items in words, after "expected a list of".
        matches: whether an item is in this layout (a quick look at its keys).
        hint: what to do with a file in this layout, after "this looks like".
    """

    title: str
    expected: str
    matches: Callable[[Any], bool]
    hint: str


_PAIR_ENTRY = "objects language -> entry, each entry with keys subject, src, alt, rephrase, loc, loc_ans"
LAYOUTS: dict[str, Layout] = {
    "mkeb": Layout("MKEB", "records with keys example_id, edit, ...", _is_mkeb, "the MKEB layout: read it without --from"),
    "counterfact": Layout(
        "CounterFact",
        "objects with keys case_id, requested_rewrite {prompt, subject, target_new, target_true}, paraphrase_prompts, neighborhood_prompts",
        _is_counterfact,
        "CounterFact: use --from counterfact",
    ),
    "mquake": Layout(
        "MQuAKE",
        "objects with keys case_id, requested_rewrite [{prompt, subject, target_new, target_true, question}], questions, new_answer",
        _is_mquake,
        "MQuAKE: use --from mquake",
    ),
    "mlake": Layout(
        "MLaKE", "objects with keys question, o_prompt, o_answer, e_prompt, e_answer", _is_mlake, "MLaKE: use --from mlake"
    ),
    "bmike53": Layout("BMIKE-53", f"{_PAIR_ENTRY}, port, port_ans", _is_pair, "BMIKE-53 or MzsRE: use --from bmike53 or --from mzsre"),
    "mzsre": Layout("MzsRE", f"{_PAIR_ENTRY}, portability", _is_pair, "BMIKE-53 or MzsRE: use --from bmike53 or --from mzsre"),
}
_KEYS_SHOWN = 6


def check_layout(path: PathLike, fmt: str, item: Any) -> None:
    """Check that a file's first item is in converter ``fmt``'s layout.

    Args:
        path: the file, for the message.
        fmt: the converter (a key of `LAYOUTS`).
        item: the file's first item.

    Raises:
        DataError: naming the expected layout, the keys found and, when the item is in
            another known layout, which one.
    """
    layout = LAYOUTS[fmt]
    if layout.matches(item):
        return
    if isinstance(item, Mapping):
        keys = [str(k)[:40] for k in item]
        found = "keys " + ", ".join(keys[:_KEYS_SHOWN]) + (", ..." if len(keys) > _KEYS_SHOWN else "")
    else:
        found = json_kind(item)
    guess = next((other.hint for other in LAYOUTS.values() if other.matches(item)), None)
    tail = f" (this looks like {guess})" if guess else ""
    raise DataError(f"{path} does not look like {layout.title}: expected a list of {layout.expected}; found {found}{tail}")


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
