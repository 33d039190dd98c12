"""Counts over a dataset for ``memla data check``: records, languages, prompts, relations, splits.

`summarize` works on raw record objects and skips what it cannot read, so it can
describe a file that does not pass validation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from memla.data.schema import Record
from memla.langs import order_langs

# Fields counted per language, in display order ("edit" counts edit prompts).
COUNTED_FIELDS: tuple[str, ...] = (
    "edit",
    "paraphrase_prompts",
    "neighborhood_prompts",
    "multi_hop_questions",
)


@dataclass
class DatasetSummary:
    """What a dataset holds.

    Attributes:
        records: number of records.
        langs: languages of any edit, benchmark languages first.
        prompts: field -> language -> number of prompts.
        relations: (relation id, description) -> number of records.
        splits: split name ("-" when unset) -> number of records.
        question_form: records with ``templated: false``.
        unknown_true: edits whose ``target_true`` is null.
    """

    records: int = 0
    langs: tuple[str, ...] = ()
    prompts: dict[str, Counter] = field(default_factory=dict)
    relations: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    question_form: int = 0
    unknown_true: int = 0


def summarize(data: Iterable[Mapping[str, Any] | Record]) -> DatasetSummary:
    """Count records, languages, prompts per field and language, relations and splits.

    Args:
        data: raw record objects or `Record` objects (malformed parts are skipped).

    Returns:
        The summary.
    """
    summary = DatasetSummary(prompts={name: Counter() for name in COUNTED_FIELDS})
    for item in data:
        raw = item.to_dict() if isinstance(item, Record) else item
        summary.records += 1
        if isinstance(raw, Mapping):
            _count_record(summary, raw)
    langs = set().union(*(counter.keys() for counter in summary.prompts.values()))
    summary.langs = order_langs(langs)
    return summary


def _count_record(summary: DatasetSummary, raw: Mapping[str, Any]) -> None:
    edit = raw.get("edit")
    if isinstance(edit, Mapping):
        for lang, fact in edit.items():
            summary.prompts["edit"][str(lang)] += 1
            if isinstance(fact, Mapping) and "target_true" in fact and fact["target_true"] is None:
                summary.unknown_true += 1
    for name in COUNTED_FIELDS[1:]:
        value = raw.get(name)
        if isinstance(value, Mapping):
            for lang, items in value.items():
                summary.prompts[name][str(lang)] += len(items) if isinstance(items, list) else 0
    relation = raw.get("relation") or ""
    description = raw.get("relation_description") or ""
    summary.relations[(str(relation), str(description))] += 1
    summary.splits[str(raw.get("split") or "-")] += 1
    if raw.get("templated", True) is False:
        summary.question_form += 1
