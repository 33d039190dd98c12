"""The MKEB record schema: `EditFact` (one edit in one language) and `Record`.

A dataset is a list of records in the official MKEB JSON layout (DESIGN.md,
"Data schema"); every per-language field is a mapping from a language code to
its value.  memla adds two optional record keys: ``split`` (``"dev"`` / ``"test"``)
and ``templated`` (``false`` for question-form records, e.g. zsRE, whose edit
prompt has no ``{}`` because the subject could not be located in it).  A
``null`` ``target_true`` means the source dataset does not say what the true
answer is (zsRE-style data); a ``null`` ``subject`` is allowed only in
question-form records.

The structural checks live here (`RecordCheck`: missing keys and wrong types, after
which a record cannot be built into a `Record`); `memla.data.validation` adds the
semantic ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memla.errors import DataError
from memla.langs import order_langs

SLOT = "{}"
FACT_KEYS: tuple[str, ...] = ("prompt", "subject", "target_new", "target_true")
REQUIRED_KEYS: tuple[str, ...] = (
    "example_id",
    "edit",
    "paraphrase_prompts",
    "neighborhood_prompts",
    "neighborhood_answers",
)
LIST_FIELDS: tuple[str, ...] = (
    "paraphrase_prompts",
    "neighborhood_prompts",
    "neighborhood_answers",
    "multi_hop_questions",
)
KNOWN_KEYS: frozenset[str] = frozenset(
    REQUIRED_KEYS
    + LIST_FIELDS
    + ("relation", "relation_description", "multi_hop_new_answer", "split", "templated")
)


@dataclass(frozen=True)
class EditFact:
    """One edit in one language.

    Attributes:
        prompt: cloze prompt with one ``{}`` subject slot ("The capital of {} is");
            in question-form records (``Record.templated`` false) the full question.
        subject: the subject as written in this language; None when unknown
            (question-form records only).
        target_new: the counterfactual answer the edit installs.
        target_true: the real-world answer; None when the source does not give it.
        extra: further keys of the source's fact object (e.g. answer aliases), kept on save.
    """

    prompt: str
    subject: str | None
    target_new: str
    target_true: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def filled(self) -> str:
        """The edit prompt with the subject written into its ``{}`` slot.

        Returns:
            The prompt text a model reads (question-form prompts unchanged).
        """
        if self.subject is None or SLOT not in self.prompt:
            return self.prompt
        return self.prompt.replace(SLOT, self.subject, 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EditFact:
        """Build from an MKEB fact object ``{"prompt", "subject", "target_new", "target_true"}``.

        Args:
            d: the fact object; keys beyond the four go to ``extra``.

        Returns:
            The fact.
        """
        extra = {k: v for k, v in d.items() if k not in FACT_KEYS}
        return cls(d["prompt"], d["subject"], d["target_new"], d["target_true"], extra)

    def to_dict(self) -> dict[str, Any]:
        """The MKEB fact object (the four keys, then ``extra``).

        Returns:
            A new dict.
        """
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
            "target_true": self.target_true,
        }
        out.update(self.extra)
        return out


@dataclass
class Record:
    """One benchmark record: an edit in several languages plus its test prompts.

    Attributes:
        example_id: record id, unique in its dataset (int or str).
        relation: Wikidata property id ("P36") or "" when unknown.
        relation_description: the relation in words ("capital").
        edit: language -> the edit in that language.
        paraphrase_prompts: language -> complete sentences meaning the edit prompt (PS).
        neighborhood_prompts: language -> prompts about other subjects (NS).
        neighborhood_answers: language -> their true answers, one per prompt.
        multi_hop_questions: language -> questions whose answer changes with the edit (QS).
        multi_hop_new_answer: language -> the answer after the edit.
        split: "dev", "test" (or another split name), None when the data has no split.
        templated: False for question-form records whose prompts carry no ``{}``;
            methods that need the subject position must report such records.
        extra: further top-level keys of the source record, kept on save.
    """

    example_id: int | str
    relation: str = ""
    relation_description: str = ""
    edit: dict[str, EditFact] = field(default_factory=dict)
    paraphrase_prompts: dict[str, list[str]] = field(default_factory=dict)
    neighborhood_prompts: dict[str, list[str]] = field(default_factory=dict)
    neighborhood_answers: dict[str, list[str]] = field(default_factory=dict)
    multi_hop_questions: dict[str, list[str]] = field(default_factory=dict)
    multi_hop_new_answer: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    templated: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def langs(self) -> tuple[str, ...]:
        """Languages of the edit, the 12 benchmark languages first in their fixed order."""
        return order_langs(self.edit)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None, checked: bool = False) -> Record:
        """Build a record from its MKEB JSON object.

        Args:
            d: the record object; unknown top-level keys go to ``extra``.
            source: file name used in error messages.
            checked: ``d`` passed `memla.data.validation.validate` already (as in
                `memla.data.load_dataset`), so the structural checks are skipped.

        Returns:
            The record (values copied, ``d`` is not kept).

        Raises:
            DataError: when a required key is missing or a value has the wrong type
                (semantic problems are left to `validate`).
        """
        if not checked:
            check = RecordCheck(source)
            check.record(d, record_label(d, 0))
            if check.errors:
                raise DataError(check.errors[0].located)
        return cls(
            example_id=d["example_id"],
            relation=d.get("relation", ""),
            relation_description=d.get("relation_description", ""),
            edit={lang: EditFact.from_dict(fact) for lang, fact in d["edit"].items()},
            paraphrase_prompts=_copy_lists(d.get("paraphrase_prompts")),
            neighborhood_prompts=_copy_lists(d.get("neighborhood_prompts")),
            neighborhood_answers=_copy_lists(d.get("neighborhood_answers")),
            multi_hop_questions=_copy_lists(d.get("multi_hop_questions")),
            multi_hop_new_answer=dict(d.get("multi_hop_new_answer") or {}),
            split=d.get("split"),
            templated=d.get("templated", True),
            extra={k: v for k, v in d.items() if k not in KNOWN_KEYS},
        )

    def texts(self) -> list[tuple[str, str]]:
        """Every text a model reads for this record, as ``(label, text)``; labels name record, language and field.

        Edit prompts appear with the subject filled in (``EditFact.filled``), since that is
        what is tokenised; targets, paraphrases, neighbourhood prompts and answers, and
        multi-hop questions and answers follow.
        """
        out = []
        for lang, fact in self.edit.items():
            label = f"record {self.example_id}, {lang}, edit"
            out += [(f"{label}.prompt", fact.filled()), (f"{label}.target_new", fact.target_new)]
            out += [(f"{label}.target_true", fact.target_true)] if fact.target_true else []
        for key in ("paraphrase_prompts", "neighborhood_prompts", "neighborhood_answers", "multi_hop_questions"):
            for lang, items in getattr(self, key).items():
                out += [(f"record {self.example_id}, {lang}, {key}[{i}]", text) for i, text in enumerate(items)]
        out += [(f"record {self.example_id}, {lang}, multi_hop_new_answer", text)
                for lang, text in self.multi_hop_new_answer.items()]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The record in the official MKEB JSON layout.

        ``multi_hop_*`` are written when non-empty, ``split`` when set,
        ``templated`` only when false; ``extra`` keys follow.

        Returns:
            A new dict (lists copied).
        """
        out: dict[str, Any] = {
            "example_id": self.example_id,
            "relation": self.relation,
            "relation_description": self.relation_description,
            "edit": {lang: fact.to_dict() for lang, fact in self.edit.items()},
            "paraphrase_prompts": _copy_lists(self.paraphrase_prompts),
            "neighborhood_prompts": _copy_lists(self.neighborhood_prompts),
            "neighborhood_answers": _copy_lists(self.neighborhood_answers),
        }
        if self.multi_hop_questions:
            out["multi_hop_questions"] = _copy_lists(self.multi_hop_questions)
        if self.multi_hop_new_answer:
            out["multi_hop_new_answer"] = dict(self.multi_hop_new_answer)
        if self.split is not None:
            out["split"] = self.split
        if not self.templated:
            out["templated"] = False
        out.update(self.extra)
        return out


def _copy_lists(value: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    return {lang: list(items) for lang, items in (value or {}).items()}


# --------------------------------------------------------------------------- structural checks


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

    @property
    def located(self) -> str:
        """``"FILE record ID [lang] field: message"`` (the parts that are known)."""
        where = [self.source] if self.source else []
        if self.record_id is not None:
            where.append(f"record {self.record_id}")
        if self.lang:
            where.append(f"[{self.lang}]")
        if self.field:
            where.append(self.field)
        head = " ".join(where)
        return f"{head}: {self.message}" if head else self.message

    def __str__(self) -> str:
        return f"{self.severity}: {self.located}"


class RecordCheck:
    """The structural checks of raw records: missing keys and wrong types (codes
    ``missing-key`` and ``bad-type``), after which a record cannot be built into a `Record`.

    `record` walks one record in a fixed order.  The semantic hooks (`lang_code`, `empty`, `text`,
    `fact_semantics`, `neighbourhood`, `record_warnings`) do nothing here;
    `memla.data.validation` overrides them, so that its report lists a record's
    structural and semantic problems in one walk, in field order.

    Attributes:
        source: file or dataset name put into each problem.
        errors: problems that make the data unusable, in the order found.
        warnings: likely mistakes, in the order found.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, severity: str, rid, lang, fld, message: str, code: str) -> None:
        problem = Problem(severity, self.source, rid, lang, fld, message, code)
        (self.errors if severity == "error" else self.warnings).append(problem)

    def error(self, rid, lang, fld, message: str, code: str) -> None:
        self.add("error", rid, lang, fld, message, code)

    def warn(self, rid, lang, fld, message: str, code: str) -> None:
        self.add("warning", rid, lang, fld, message, code)

    # -- the walk -----------------------------------------------------------------

    def record(self, raw: Any, rid: int | str) -> None:
        """Check one raw record.

        Args:
            raw: the record object as parsed from JSON.
            rid: how problems name the record (`record_label`).
        """
        if not isinstance(raw, Mapping):
            self.error(rid, None, None, f"a record must be a JSON object, got {json_kind(raw)}", "bad-type")
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
            self.record_warnings(raw, edit, rid)

    def scalars(self, raw: Mapping, rid) -> None:
        eid = raw.get("example_id")
        if "example_id" in raw and not valid_id(eid):
            self.error(rid, None, "example_id", f"must be an integer or a non-empty string, got {eid!r}", "bad-type")
        for key in ("relation", "relation_description"):
            if key in raw and not isinstance(raw[key], str):
                self.error(rid, None, key, f"must be a string, got {json_kind(raw[key])}", "bad-type")
        split = raw.get("split")
        if split is not None and not (isinstance(split, str) and split.strip()):
            self.error(rid, None, "split", f"must be a non-empty string or null, got {split!r}", "bad-type")
        if not isinstance(raw.get("templated", True), bool):
            self.error(rid, None, "templated", f"must be true or false, got {raw['templated']!r}", "bad-type")

    def edit(self, edit: Any, rid, templated: bool) -> None:
        if not isinstance(edit, Mapping):
            self.error(rid, None, "edit", f"must be an object language -> fact, got {json_kind(edit)}", "bad-type")
            return
        if not edit:
            self.empty(rid, None, "edit", "no language: the edit is empty")
        for lang, fact in edit.items():
            self.lang_code(lang, rid, "edit")
            if not isinstance(fact, Mapping):
                self.error(rid, lang, "edit", f"must be an object with {', '.join(FACT_KEYS)}, got {json_kind(fact)}", "bad-type")
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
                self.empty(rid, lang, "edit.subject", 'is null; only question-form records ("templated": false) may omit the subject')
            elif not isinstance(value, str):
                self.error(rid, lang, f"edit.{key}", f"must be a string, got {json_kind(value)}", "bad-type")
            elif not value.strip():
                self.empty(rid, lang, f"edit.{key}", "is empty")
            else:
                self.text(rid, lang, f"edit.{key}", value)
        self.fact_semantics(fact, rid, lang, templated)

    def prompt_lists(self, value: Any, rid, key: str) -> None:
        if not isinstance(value, Mapping):
            self.error(rid, None, key, f"must be an object language -> list of strings, got {json_kind(value)}", "bad-type")
            return
        for lang, items in value.items():
            self.lang_code(lang, rid, key)
            if not isinstance(items, list):
                self.error(rid, lang, key, f"must be a list of strings, got {json_kind(items)}", "bad-type")
                continue
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    self.error(rid, lang, f"{key}[{i}]", f"must be a string, got {json_kind(item)}", "bad-type")
                elif not item.strip():
                    self.empty(rid, lang, f"{key}[{i}]", "is empty")
                else:
                    self.text(rid, lang, f"{key}[{i}]", item)

    def multi_hop(self, raw: Mapping, rid) -> None:
        answers = raw.get("multi_hop_new_answer")
        if answers is None:
            answers = {}
        if not isinstance(answers, Mapping):
            self.error(rid, None, "multi_hop_new_answer", f"must be an object language -> string, got {json_kind(answers)}", "bad-type")
            return
        for lang, answer in answers.items():
            self.lang_code(lang, rid, "multi_hop_new_answer")
            if not isinstance(answer, str):
                self.error(rid, lang, "multi_hop_new_answer", f"must be a string, got {json_kind(answer)}", "bad-type")
            elif not answer.strip():
                self.empty(rid, lang, "multi_hop_new_answer", "is empty")
            else:
                self.text(rid, lang, "multi_hop_new_answer", answer)
        questions = raw.get("multi_hop_questions")
        if isinstance(questions, Mapping):
            for lang, items in questions.items():
                if items and lang not in answers:
                    self.error(rid, lang, "multi_hop_new_answer", "missing key: multi-hop questions have no answer", "missing-key")

    # -- semantic hooks (no-ops here) ---------------------------------------------

    def lang_code(self, lang: Any, rid, fld: str) -> None:
        """A language code used as a key of field ``fld``."""

    def empty(self, rid, lang, fld: str, message: str) -> None:
        """A value present but empty (a null subject, a blank string, an edit without languages)."""

    def text(self, rid, lang, fld: str, value: str) -> None:
        """A non-blank text of field ``fld``: an edit fact's string, a prompt, an answer."""

    def fact_semantics(self, fact: Mapping, rid, lang: str, templated: bool) -> None:
        """One language's edit fact, after its keys and types were checked."""

    def neighbourhood(self, raw: Mapping, rid) -> None:
        """The record, after its prompt lists were checked (before the multi-hop fields)."""

    def record_warnings(self, raw: Mapping, edit: Mapping, rid) -> None:
        """The record, last, when its edit is an object."""


def json_kind(value: Any) -> str:
    """A JSON value's type in words, for messages: "an object", "a list", "a string", "a number", ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def valid_id(value: Any) -> bool:
    """Whether ``value`` is a usable ``example_id``: an integer (not a bool) or a non-blank string."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(value.strip()))


def record_label(raw: Any, index: int) -> int | str:
    """How problems name a record: its ``example_id``, else ``"#N"`` (1-based position).

    Args:
        raw: the record object.
        index: its 0-based position in the dataset.

    Returns:
        The label.
    """
    eid = raw.get("example_id") if isinstance(raw, Mapping) else None
    return eid if valid_id(eid) else f"#{index + 1}"
