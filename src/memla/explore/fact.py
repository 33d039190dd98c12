"""The fact the explore page edits: per-language rows, neighbourhood prompts, and checks.

A `Fact` is what the page's two tables hold: one row per language (prompt with ``{}``,
subject, new object, old object) and the neighbourhood prompts with their answers.  It
comes from a dataset record (`fact_from_record`) or from rows typed in the page
(`fact_from_rows`), becomes a `memla.data.Record` for scoring (`Fact.record`) and an
`EditRequest` exactly as ``memla edit`` would build it (`Fact.request`), and is checked
with the dataset's own validation (`check_fact`) so that bad input gets the same one-line
messages as the command line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memla.data import DataError, EditFact, Record, validate
from memla.editors import EditRequest
from memla.tokens import check_texts_fit

FACT_COLUMNS: tuple[str, ...] = ("lang", "prompt", "subject", "new", "old")
NEIGHBOUR_COLUMNS: tuple[str, ...] = ("lang", "prompt", "answer")
TYPED_ID = "typed"  # the example_id of a fact typed in the page (a record of no dataset)

Row = tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    """One fact as the page shows it.

    Attributes:
        source: the language the edit is made in (``ls``).
        rows: ``(lang, prompt, subject, new, old)`` per language; ``old`` may be "".
        neighbours: ``(lang, prompt, answer)`` of unrelated facts that should not change.
        dataset: the dataset the fact was picked from (name or path as given), or None.
        record: the record picked; it defines the edit while the rows are unchanged.
    """

    source: str
    rows: tuple[Row, ...]
    neighbours: tuple[Row, ...] = ()
    dataset: str | None = None
    record: Record | None = None

    @property
    def picked(self) -> bool:
        """Whether the rows are exactly those of the picked dataset record (so the record defines the edit)."""
        return self.record is not None and self.rows == record_rows(self.record)

    @property
    def langs(self) -> tuple[str, ...]:
        """The languages of the rows, in table order."""
        return tuple(row[0] for row in self.rows)

    def record_for_scoring(self) -> Record:
        """The fact as a `memla.data.Record` (edit rows and neighbourhood prompts; the picked record's
        paraphrases while its rows are unchanged)."""
        neighbours: dict[str, tuple[list[str], list[str]]] = {}
        for lang, prompt, answer in self.neighbours:
            prompts, answers = neighbours.setdefault(lang, ([], []))
            prompts.append(prompt)
            answers.append(answer)
        return Record(
            example_id=self.record.example_id if self.picked else TYPED_ID,
            relation=self.record.relation if self.picked else "",
            edit={lang: EditFact(prompt, subject, new, old or None) for lang, prompt, subject, new, old in self.rows},
            paraphrase_prompts=dict(self.record.paraphrase_prompts) if self.picked else {},
            neighborhood_prompts={k: p for k, (p, _) in neighbours.items()},
            neighborhood_answers={k: a for k, (_, a) in neighbours.items()},
        )

    def request(self) -> EditRequest:
        """The edit request, as ``memla edit`` builds it for the same fact.

        A picked record gives ``EditRequest.from_record`` (``--dataset D --record ID``); typed
        rows give the source row with the others as translations (``--prompt ... --translation ...``).

        Raises:
            EditError: a row the request refuses (no ``{}``, empty field, new equal to old, ...).
        """
        if self.picked:
            return EditRequest.from_record(self.record, self.source)
        requests = {lang: EditRequest(prompt=prompt, subject=subject, target_new=new, target_true=old or None, lang=lang)
                    for lang, prompt, subject, new, old in self.rows}
        return dataclasses.replace(requests[self.source],
                                   translations={k: v for k, v in requests.items() if k != self.source})


def record_rows(record: Record) -> tuple[Row, ...]:
    """The fact table of a dataset record: one row per language, in the record's language order."""
    return tuple((lang, f.prompt, f.subject or "", f.target_new, f.target_true or "")
                 for lang, f in ((k, record.edit[k]) for k in record.langs))


def fact_from_record(record: Record, source: str, *, dataset: str | None) -> Fact:
    """The page's fact for a dataset record edited in ``source``: its rows and all its neighbourhood prompts."""
    neighbours = tuple((lang, prompt, answer) for lang in record.langs
                       for prompt, answer in zip(record.neighborhood_prompts.get(lang, ()),
                                                 record.neighborhood_answers.get(lang, ())))
    return Fact(source, record_rows(record), neighbours, dataset, record)


def _cell(value: Any) -> str:
    """A table cell as text ("" for an empty cell, which a table may give as None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _clean(rows: Sequence[Sequence[Any]], width: int, table: str) -> tuple[Row, ...]:
    """The non-empty rows of a table, each ``width`` strings (the language code stripped)."""
    out = []
    for i, row in enumerate(rows or ()):
        cells = [_cell(v) for v in list(row)[:width]]
        cells += [""] * (width - len(cells))
        if not any(c.strip() for c in cells):
            continue
        cells[0] = cells[0].strip()
        if not cells[0]:
            raise DataError(f"{table}, row {i + 1}: no language code")
        out.append(tuple(cells))
    return tuple(out)


def fact_from_rows(source: str, rows: Sequence[Sequence[Any]], neighbours: Sequence[Sequence[Any]], *,
                   picked: Fact | None = None) -> Fact:
    """The fact the page's tables hold now; rows left empty are dropped.

    Args:
        source: the source language chosen in the page.
        rows: the fact table, ``(lang, prompt, subject, new, old)`` per row.
        neighbours: the neighbourhood table, ``(lang, prompt, answer)`` per row.
        picked: the fact last loaded from a dataset (its record still defines the edit if the
            rows were not changed).

    Raises:
        DataError: a row without a language code, a language twice, or a source language with no row.
    """
    fact_rows = _clean(rows, len(FACT_COLUMNS), "fact table")
    neighbour_rows = _clean(neighbours, len(NEIGHBOUR_COLUMNS), "neighbourhood table")
    langs = [row[0] for row in fact_rows]
    twice = sorted({k for k in langs if langs.count(k) > 1})
    if twice:
        raise DataError(f"fact table: language {', '.join(twice)} appears more than once")
    if source not in langs:
        raise DataError(f"the source language {source!r} has no row in the fact table")
    unknown = sorted({row[0] for row in neighbour_rows} - set(langs))
    if unknown:
        raise DataError(f"neighbourhood table: language {', '.join(unknown)} has no row in the fact table")
    return Fact(source, fact_rows, neighbour_rows,
                picked.dataset if picked else None, picked.record if picked else None)


def check_fact(fact: Fact, model, tokenizer, *, max_tokens: int) -> EditRequest:
    """Check a fact as ``memla edit`` checks its input, and return its edit request.

    The dataset validation (``{}`` slot, empty fields, new equal to old, unknown language,
    `memla.data.MAX_TEXT_CHARS`), then the request's own checks, then the token budget
    (`memla.tokens.check_texts_fit`).

    Raises:
        DataError: the first problem, on one line naming language and field.
        EditError: a problem the edit request finds.
    """
    record = fact.record_for_scoring()
    report = validate([record])
    if report.errors:
        first = report.errors[0]
        where = " ".join(x for x in (first.lang, first.field) if x)
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise DataError(f"{where}: {first.message}{more}" if where else first.message + more)
    request = fact.request()
    check_texts_fit(model, tokenizer, [(label.split(", ", 1)[-1], text) for label, text in record.texts()],
                    max_tokens=max_tokens, limit_name="the token limit")
    return request
