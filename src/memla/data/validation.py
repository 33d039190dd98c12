"""Validation of MKEB records: `validate` returns a `ValidationReport` of `Problem` objects.

`validate` reports every problem it finds instead of stopping at the first one.
Errors make a dataset unusable: missing key, no ``{}`` or several ``{}`` in an
edit prompt (records with ``"templated": false`` are exempt), empty subject /
target / prompt, target_new equal to target_true, unknown language code,
neighbourhood prompts and answers of different lengths, multi-hop questions
without an answer, duplicate record id, wrong value type, a text longer than
`MAX_TEXT_CHARS`.  The missing keys and
wrong types are `memla.data.schema.RecordCheck`'s structural checks, which this
module's checker extends with the semantic ones.  (A non-UTF-8 file is reported
by the reader, `memla.data.files`.)  Warnings point at likely mistakes:
subject not found in a paraphrase, a language missing in some records or
fields, null target_true values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memla.data.schema import SLOT, Problem, Record, RecordCheck, record_label, valid_id
from memla.errors import DataError
from memla.langs import is_known, order_langs

_QUOTED_CHARS = 80

MAX_TEXT_CHARS = 2000
"""The most characters any text of a record may have (edit prompt, subject, targets,
paraphrase, neighbourhood and multi-hop prompts and answers); longer is a validation error.

Why: editing, attribution and scoring run the model over the whole prompt (integrated
gradients over many steps, LoRA optimisation, batches of paraphrases), so memory grows
with the text's length: a 100,000-character prompt passed validation and then made one edit
use 23 GB.  Benchmark texts are short (the longest in mkeb-mini is a 132-character
multi-hop question), so 2000 leaves ample room.  Because `memla.data.load_dataset` refuses
data with errors, every command refuses such a dataset before it loads a model.
``memla data check --max-chars N`` and ``validate(..., max_chars=N)`` check against another limit.
"""


@dataclass
class ValidationReport:
    """Result of `validate`.

    Attributes:
        errors: problems that make the data unusable.
        warnings: likely mistakes that do not stop loading.
    """

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors

    @property
    def problems(self) -> list[Problem]:
        """Errors, then warnings."""
        return self.errors + self.warnings

    def raise_for_errors(self, *, source: str | None = None) -> None:
        """Raise a one-line `DataError` naming the first error and the count, if there are any.

        Args:
            source: file name, for the pointer to ``memla data check``.

        Raises:
            DataError: when ``errors`` is not empty.
        """
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise DataError(self.errors[0].located)
        check = f"`memla data check {source}`" if source else "`memla data check`"
        raise DataError(f"{self.errors[0].located} (and {len(self.errors) - 1} more error(s); {check} lists them all)")

    def __str__(self) -> str:
        if not self.problems:
            return "no problems"
        return "\n".join(str(p) for p in self.problems)


class _Checker(RecordCheck):
    """`RecordCheck` plus the semantic checks, per record and dataset-wide."""

    def __init__(self, source: str | None, max_chars: int) -> None:
        super().__init__(source)
        self.max_chars = max_chars
        self.unknown_true: list[int | str] = []  # one id per edit with a null target_true

    # -- record level -------------------------------------------------------------

    def lang_code(self, lang: Any, rid, fld: str) -> None:
        if not is_known(lang):
            self.error(rid, str(lang), fld, f"unknown language code {lang!r} (expected an ISO 639-1 code such as en, zh)", "unknown-lang")

    def empty(self, rid, lang, fld: str, message: str) -> None:
        self.error(rid, lang, fld, message, "empty")

    def text(self, rid, lang, fld: str, value: str) -> None:
        if len(value) > self.max_chars:
            limit = "MAX_TEXT_CHARS" if self.max_chars == MAX_TEXT_CHARS else "set for this check"
            self.error(rid, lang, fld, f"{len(value)} characters, more than the limit of {self.max_chars} ({limit})", "too-long")

    def fact_semantics(self, fact: Mapping, rid, lang: str, templated: bool) -> None:
        prompt = fact.get("prompt")
        if isinstance(prompt, str) and prompt.strip() and templated:
            self.slots(prompt, rid, lang)
        self.targets(fact, rid, lang)

    def slots(self, prompt: str, rid, lang: str) -> None:
        count = prompt.count(SLOT)
        if count == 0:
            self.error(
                rid, lang, "edit.prompt",
                f"no {SLOT} subject slot in {_quote(prompt)} (question-form records need \"templated\": false)",
                "no-slot",
            )
        elif count > 1:
            self.error(rid, lang, "edit.prompt", f"{count} {SLOT} slots in {_quote(prompt)}; exactly one is allowed", "many-slots")

    def targets(self, fact: Mapping, rid, lang: str) -> None:
        new, true = fact.get("target_new"), fact.get("target_true")
        if "target_true" in fact and true is None:
            self.unknown_true.append(rid)
        if isinstance(new, str) and isinstance(true, str) and new.strip() and new.strip().casefold() == true.strip().casefold():
            self.error(rid, lang, "edit.target_new", f"equals target_true ({_quote(true)}): the edit changes nothing", "same-targets")

    def neighbourhood(self, raw: Mapping, rid) -> None:
        prompts, answers = raw.get("neighborhood_prompts"), raw.get("neighborhood_answers")
        if not (isinstance(prompts, Mapping) and isinstance(answers, Mapping)):
            return
        for lang in order_langs([*prompts, *answers]):
            n_p, n_a = _length(prompts.get(lang)), _length(answers.get(lang))
            if n_p != n_a:
                self.error(
                    rid, lang, "neighborhood_answers",
                    f"{n_a} answer(s) for {n_p} neighbourhood prompt(s); they must pair up",
                    "length-mismatch",
                )

    def record_warnings(self, raw: Mapping, edit: Mapping, rid) -> None:
        self.paraphrase_subjects(raw, edit, rid)
        self.field_languages(raw, edit, rid)

    # -- warnings ---------------------------------------------------------------

    def paraphrase_subjects(self, raw: Mapping, edit: Mapping, rid) -> None:
        paraphrases = raw.get("paraphrase_prompts")
        if not isinstance(paraphrases, Mapping):
            return
        for lang, fact in edit.items():
            subject = fact.get("subject") if isinstance(fact, Mapping) else None
            items = paraphrases.get(lang)
            if not (isinstance(subject, str) and subject.strip() and isinstance(items, list)):
                continue
            for i, text in enumerate(items):
                if isinstance(text, str) and subject.strip().casefold() not in text.casefold():
                    self.warn(rid, lang, f"paraphrase_prompts[{i}]", f"subject {_quote(subject)} not found in {_quote(text)}", "subject-not-in-paraphrase")

    def field_languages(self, raw: Mapping, edit: Mapping, rid) -> None:
        for key in ("paraphrase_prompts", "neighborhood_prompts"):
            value = raw.get(key)
            if not (isinstance(value, Mapping) and value):
                continue
            for lang in edit:
                if is_known(lang) and lang not in value:
                    self.warn(rid, lang, key, "language missing: the record has an edit in it but no prompts here", "missing-lang")
            for lang in value:
                if is_known(lang) and lang not in edit:
                    self.warn(rid, lang, key, "prompts in a language the record has no edit in", "missing-lang")

    # -- dataset level ------------------------------------------------------------

    def duplicates(self, ids: Sequence[tuple[int | str, Any]]) -> None:
        seen: set[str] = set()
        for rid, eid in ids:
            if not valid_id(eid):
                continue
            if str(eid) in seen:
                self.error(rid, None, "example_id", f"duplicate id {eid!r}", "duplicate-id")
            seen.add(str(eid))

    def unknown_targets(self) -> None:
        """One warning for all null target_true values (zsRE-style data has many)."""
        if not self.unknown_true:
            return
        ids = list(dict.fromkeys(self.unknown_true))
        shown = ", ".join(str(r) for r in ids[:10]) + (", ..." if len(ids) > 10 else "")
        self.warn(
            None, None, "edit.target_true",
            f"unknown (null) in {len(self.unknown_true)} edit(s) of {len(ids)} record(s) ({shown}): "
            "ES/PS cannot compare target_new with the true answer there",
            "unknown-true",
        )

    def coverage(self, records: Sequence[tuple[int | str, Any]]) -> None:
        langs_of = [
            (rid, {lang for lang in raw["edit"] if is_known(lang)})
            for rid, raw in records
            if isinstance(raw, Mapping) and isinstance(raw.get("edit"), Mapping)
        ]
        for lang in order_langs(set().union(*(langs for _, langs in langs_of))):
            lacking = [rid for rid, langs in langs_of if lang not in langs]
            if lacking:
                shown = ", ".join(str(r) for r in lacking[:10]) + (", ..." if len(lacking) > 10 else "")
                self.warn(None, lang, "edit", f"language missing in {len(lacking)} of {len(langs_of)} records ({shown})", "missing-lang")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _quote(text: str) -> str:
    """``repr(text)``, shortened for a one-line message."""
    return repr(text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "...")


def validate(
    data: Iterable[Mapping[str, Any] | Record], *, source: str | None = None, max_chars: int = MAX_TEXT_CHARS
) -> ValidationReport:
    """Check records against the MKEB schema and report every problem found.

    Args:
        data: raw record objects (as parsed from JSON) or `Record` objects.
        source: file or dataset name to put into each problem.
        max_chars: longest allowed text of any field (default `MAX_TEXT_CHARS`).

    Returns:
        The report; ``report.errors`` empty means the data is usable.

    Raises:
        DataError: when ``max_chars`` is not a positive integer.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise DataError(f"max_chars must be a positive integer, got {max_chars!r}")
    checker = _Checker(source, max_chars)
    labelled: list[tuple[int | str, Any]] = []
    for index, item in enumerate(data):
        raw = item.to_dict() if isinstance(item, Record) else item
        rid = record_label(raw, index)
        labelled.append((rid, raw))
        checker.record(raw, rid)
    checker.duplicates([(rid, raw.get("example_id")) for rid, raw in labelled if isinstance(raw, Mapping)])
    checker.unknown_targets()
    checker.coverage(labelled)
    return ValidationReport(checker.errors, checker.warnings)
