"""Validation of MKEB records: `validate` returns a `ValidationReport` of `Problem` objects.

`validate` reports every problem it finds instead of stopping at the first one.
Errors make a dataset unusable: missing key, no ``{}`` or several ``{}`` in an
edit prompt (records with ``"templated": false`` are exempt), empty subject /
target / prompt, target_new equal to target_true, unknown language code,
neighbourhood prompts and answers of different lengths, multi-hop questions
without an answer, duplicate record id, wrong value type.  (A non-UTF-8 file is
reported by the reader, `memla.data.io`.)  Warnings point at likely mistakes:
subject not found in a paraphrase, a language missing in some records or
fields, null target_true values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memla.data.schema import FACT_KEYS, LIST_FIELDS, REQUIRED_KEYS, SLOT, Record
from memla.errors import DataError
from memla.langs import is_known, order_langs

# Problems after which a record cannot be built into a `Record` at all.
STRUCTURAL: frozenset[str] = frozenset({"missing-key", "bad-type"})
_ERRORS_SHOWN = 5


@dataclass(frozen=True)
class Problem:
    """One validation finding.

    Attributes:
        severity: "error" or "warning".
        source: file (or dataset name) the record came from; None when unknown.
        record_id: the record's ``example_id``, ``"#N"`` (1-based position) when it
            has none, None for dataset-wide findings.
        lang: language code concerned, or None.
        field: field path ("edit.prompt", "paraphrase_prompts[1]"), or None.
        message: what is wrong, in words.
        code: short machine-readable kind ("no-slot", "missing-key", ...).
    """

    severity: str
    source: str | None
    record_id: int | str | None
    lang: str | None
    field: str | None
    message: str
    code: str = ""

    def __str__(self) -> str:
        where = [self.source] if self.source else []
        if self.record_id is not None:
            where.append(f"record {self.record_id}")
        if self.lang:
            where.append(f"[{self.lang}]")
        if self.field:
            where.append(self.field)
        head = " ".join(where)
        return f"{self.severity}: {head}: {self.message}" if head else f"{self.severity}: {self.message}"


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
        """Raise a `DataError` listing the first errors, if there are any.

        Args:
            source: file name for the summary line.

        Raises:
            DataError: when ``errors`` is not empty.
        """
        if not self.errors:
            return
        where = f" in {source}" if source else ""
        lines = [f"{len(self.errors)} error(s){where}:"]
        lines += [f"  {p}" for p in self.errors[:_ERRORS_SHOWN]]
        hidden = len(self.errors) - _ERRORS_SHOWN
        if hidden > 0:
            check = f"`memla data check {source}`" if source else "`memla data check`"
            lines.append(f"  ... and {hidden} more; run {check} to list them all")
        raise DataError("\n".join(lines))

    def __str__(self) -> str:
        if not self.problems:
            return "no problems"
        return "\n".join(str(p) for p in self.problems)


class _Checker:
    """Collects problems for one dataset; one method per check."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.report = ValidationReport()
        self.unknown_true: list[int | str] = []  # one id per edit with a null target_true

    def add(self, severity: str, rid, lang, fld, message: str, code: str) -> None:
        problem = Problem(severity, self.source, rid, lang, fld, message, code)
        (self.report.errors if severity == "error" else self.report.warnings).append(problem)

    def error(self, rid, lang, fld, message: str, code: str) -> None:
        self.add("error", rid, lang, fld, message, code)

    def warn(self, rid, lang, fld, message: str, code: str) -> None:
        self.add("warning", rid, lang, fld, message, code)

    # -- record level -------------------------------------------------------------

    def record(self, raw: Any, rid: int | str) -> None:
        if not isinstance(raw, Mapping):
            self.error(rid, None, None, f"a record must be a JSON object, got {_kind(raw)}", "bad-type")
            return
        for key in REQUIRED_KEYS:
            if key not in raw:
                self.error(rid, None, key, "missing key", "missing-key")
        self.scalars(raw, rid)
        templated = raw.get("templated", True) if isinstance(raw.get("templated", True), bool) else True
        edit = raw.get("edit")
        if "edit" in raw:
            self.edit(edit, rid, templated)
        for key in LIST_FIELDS:
            if raw.get(key) is not None or (key in REQUIRED_KEYS and key in raw):
                self.prompt_lists(raw.get(key), rid, key)
        self.neighbourhood(raw, rid)
        self.multi_hop(raw, rid)
        if isinstance(edit, Mapping):
            self.paraphrase_subjects(raw, edit, rid)
            self.field_languages(raw, edit, rid)

    def scalars(self, raw: Mapping, rid) -> None:
        eid = raw.get("example_id")
        if "example_id" in raw and not _valid_id(eid):
            self.error(rid, None, "example_id", f"must be an integer or a non-empty string, got {eid!r}", "bad-type")
        for key in ("relation", "relation_description"):
            if key in raw and not isinstance(raw[key], str):
                self.error(rid, None, key, f"must be a string, got {_kind(raw[key])}", "bad-type")
        split = raw.get("split")
        if split is not None and not (isinstance(split, str) and split.strip()):
            self.error(rid, None, "split", f"must be a non-empty string or null, got {split!r}", "bad-type")
        if not isinstance(raw.get("templated", True), bool):
            self.error(rid, None, "templated", f"must be true or false, got {raw['templated']!r}", "bad-type")

    def edit(self, edit: Any, rid, templated: bool) -> None:
        if not isinstance(edit, Mapping):
            self.error(rid, None, "edit", f"must be an object language -> fact, got {_kind(edit)}", "bad-type")
            return
        if not edit:
            self.error(rid, None, "edit", "no language: the edit is empty", "empty")
        for lang, fact in edit.items():
            self.lang_code(lang, rid, "edit")
            if not isinstance(fact, Mapping):
                self.error(rid, lang, "edit", f"must be an object with {', '.join(FACT_KEYS)}, got {_kind(fact)}", "bad-type")
                continue
            self.fact(fact, rid, lang, templated)

    def fact(self, fact: Mapping, rid, lang: str, templated: bool) -> None:
        for key in FACT_KEYS:
            if key not in fact:
                self.error(rid, lang, f"edit.{key}", "missing key", "missing-key")
        nullable = {"target_true"} if templated else {"target_true", "subject"}
        for key in FACT_KEYS:
            value = fact.get(key)
            if key not in fact or (value is None and key in nullable):
                continue
            if value is None and key == "subject":
                self.error(rid, lang, "edit.subject", 'is null; only question-form records ("templated": false) may omit the subject', "empty")
            elif not isinstance(value, str):
                self.error(rid, lang, f"edit.{key}", f"must be a string, got {_kind(value)}", "bad-type")
            elif not value.strip():
                self.error(rid, lang, f"edit.{key}", "is empty", "empty")
        prompt = fact.get("prompt")
        if isinstance(prompt, str) and prompt.strip() and templated:
            self.slots(prompt, rid, lang)
        self.targets(fact, rid, lang)

    def slots(self, prompt: str, rid, lang: str) -> None:
        count = prompt.count(SLOT)
        if count == 0:
            self.error(
                rid, lang, "edit.prompt",
                f"no {SLOT} subject slot in {prompt!r} (question-form records need \"templated\": false)",
                "no-slot",
            )
        elif count > 1:
            self.error(rid, lang, "edit.prompt", f"{count} {SLOT} slots in {prompt!r}; exactly one is allowed", "many-slots")

    def targets(self, fact: Mapping, rid, lang: str) -> None:
        new, true = fact.get("target_new"), fact.get("target_true")
        if "target_true" in fact and true is None:
            self.unknown_true.append(rid)
        if isinstance(new, str) and isinstance(true, str) and new.strip() and new.strip().casefold() == true.strip().casefold():
            self.error(rid, lang, "edit.target_new", f"equals target_true ({true!r}): the edit changes nothing", "same-targets")

    def lang_code(self, lang: Any, rid, fld: str) -> None:
        if not is_known(lang):
            self.error(rid, str(lang), fld, f"unknown language code {lang!r} (expected an ISO 639-1 code such as en, zh)", "unknown-lang")

    def prompt_lists(self, value: Any, rid, key: str) -> None:
        if not isinstance(value, Mapping):
            self.error(rid, None, key, f"must be an object language -> list of strings, got {_kind(value)}", "bad-type")
            return
        for lang, items in value.items():
            self.lang_code(lang, rid, key)
            if not isinstance(items, list):
                self.error(rid, lang, key, f"must be a list of strings, got {_kind(items)}", "bad-type")
                continue
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    self.error(rid, lang, f"{key}[{i}]", f"must be a string, got {_kind(item)}", "bad-type")
                elif not item.strip():
                    self.error(rid, lang, f"{key}[{i}]", "is empty", "empty")

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

    def multi_hop(self, raw: Mapping, rid) -> None:
        answers = raw.get("multi_hop_new_answer")
        if answers is None:
            answers = {}
        if not isinstance(answers, Mapping):
            self.error(rid, None, "multi_hop_new_answer", f"must be an object language -> string, got {_kind(answers)}", "bad-type")
            return
        for lang, answer in answers.items():
            self.lang_code(lang, rid, "multi_hop_new_answer")
            if not isinstance(answer, str):
                self.error(rid, lang, "multi_hop_new_answer", f"must be a string, got {_kind(answer)}", "bad-type")
            elif not answer.strip():
                self.error(rid, lang, "multi_hop_new_answer", "is empty", "empty")
        questions = raw.get("multi_hop_questions")
        if isinstance(questions, Mapping):
            for lang, items in questions.items():
                if items and lang not in answers:
                    self.error(rid, lang, "multi_hop_new_answer", "missing key: multi-hop questions have no answer", "missing-key")

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
                    self.warn(rid, lang, f"paraphrase_prompts[{i}]", f"subject {subject!r} not found in {text!r}", "subject-not-in-paraphrase")

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
            if not _valid_id(eid):
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


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(value.strip()))


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def record_label(raw: Any, index: int) -> int | str:
    """How problems name a record: its ``example_id``, else ``"#N"`` (1-based position).

    Args:
        raw: the record object.
        index: its 0-based position in the dataset.

    Returns:
        The label.
    """
    eid = raw.get("example_id") if isinstance(raw, Mapping) else None
    return eid if _valid_id(eid) else f"#{index + 1}"


def validate(data: Iterable[Mapping[str, Any] | Record], *, source: str | None = None) -> ValidationReport:
    """Check records against the MKEB schema and report every problem found.

    Args:
        data: raw record objects (as parsed from JSON) or `Record` objects.
        source: file or dataset name to put into each problem.

    Returns:
        The report; ``report.errors`` empty means the data is usable.
    """
    checker = _Checker(source)
    labelled: list[tuple[int | str, Any]] = []
    for index, item in enumerate(data):
        raw = item.to_dict() if isinstance(item, Record) else item
        rid = record_label(raw, index)
        labelled.append((rid, raw))
        checker.record(raw, rid)
    checker.duplicates([(rid, raw.get("example_id")) for rid, raw in labelled if isinstance(raw, Mapping)])
    checker.unknown_targets()
    checker.coverage(labelled)
    return checker.report
