"""The MKEB record schema: `EditFact` (one edit in one language) and `Record`.

A dataset is a list of records in the official MKEB JSON layout (DESIGN.md,
"Data schema"); every per-language field is a mapping from a language code to
its value.  memla adds two optional record keys: ``split`` (``"dev"`` / ``"test"``)
and ``templated`` (``false`` for question-form records, e.g. zsRE, whose edit
prompt has no ``{}`` because the subject could not be located in it).  A
``null`` ``target_true`` means the source dataset does not say what the true
answer is (zsRE-style data); a ``null`` ``subject`` is allowed only in
question-form records.

Validation lives in `memla.data.validation`.
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
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> Record:
        """Build a record from its MKEB JSON object.

        Args:
            d: the record object; unknown top-level keys go to ``extra``.
            source: file name used in error messages.

        Returns:
            The record (values copied, ``d`` is not kept).

        Raises:
            DataError: when a required key is missing or a value has the wrong type
                (semantic problems are left to `validate`).
        """
        from memla.data.validation import STRUCTURAL, validate

        structural = [p for p in validate([d], source=source).errors if p.code in STRUCTURAL]
        if structural:
            raise DataError(str(structural[0]))
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
