"""Turning validated source-language samples into multilingual records (MKEB §3.1, stage 4 and output).

Entity names are never machine-translated when Wikidata has a label in the
target language: before translation each known name in a text is replaced by a
numbered placeholder (``{1}``, ``{2}``, ...), and after translation the
placeholders receive the target-language labels.  If a translator loses or
duplicates a placeholder, the text is translated again without masking (the
name is then translated too; the report counts it).  Names without a target
label are translated on their own.  The edit prompt's ``{}`` slot must survive
translation exactly once, or the record loses that language.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memla.build.generate import GeneratedSample
from memla.build.plan import Case, Entity
from memla.build.translate import TranslationError, Translator
from memla.langs import NO_SPACE

log = logging.getLogger(__name__)

_SLOT = re.compile(r"[{｛]\s*[}｝]")
_MARK = re.compile(r"[{｛]\s*(\d+)\s*[}｝]")


@dataclass(frozen=True)
class LangEntry:
    """One record's texts in one language (the per-language fields of the MKEB layout)."""

    prompt: str
    subject: str
    target_new: str
    target_true: str
    paraphrases: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    neighborhood_answers: tuple[str, ...]
    multi_hop_question: str | None = None
    multi_hop_answer: str | None = None


@dataclass
class LocalizeResult:
    """What localisation into one language produced.

    Attributes:
        entries: ``{case_id: LangEntry}`` for the cases that made it.
        drops: ``(case_id, reason)`` for the cases that lost this language.
        counts: label sources (``label_wikidata`` / ``label_translated``), placeholder
            fallbacks and dropped multi-hop questions.
    """

    entries: dict[int, LangEntry] = field(default_factory=dict)
    drops: list[tuple[int, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def _name_pattern(name: str, lang: str) -> str:
    if lang in NO_SPACE:
        return re.escape(name)
    return rf"(?<!\w){re.escape(name)}(?!\w)"


def mask_entities(text: str, names: Sequence[str], *, lang: str) -> tuple[str, list[int]]:
    """Replace known entity names in ``text`` with numbered placeholders.

    Args:
        text: a source-language text.
        names: entity names; ``names[i]`` becomes ``{i+1}``.  Longer names are
            matched first so "New York City" wins over "New York".
        lang: the source language (decides whole-word matching).

    Returns:
        ``(masked text, numbers used)``.
    """
    used: list[int] = []
    order = sorted(range(len(names)), key=lambda i: -len(names[i]))
    for i in order:
        name = names[i].strip()
        if not name:
            continue
        pattern = re.compile(_name_pattern(name, lang), flags=re.I)
        if pattern.search(text):
            text = pattern.sub(lambda _m, n=i + 1: "{" + str(n) + "}", text)
            used.append(i + 1)
    return text, sorted(used)


def unmask(text: str, fill: Mapping[int, str], *, lang: str, slot: bool = False) -> str | None:
    """Put target-language names back into a translated text.

    Args:
        text: the translation of a masked text.
        fill: ``{number: name}`` for every placeholder the masked text had.
        lang: the target language (no spaces around names in zh / ja / th).
        slot: whether the text must keep the ``{}`` subject slot exactly once.

    Returns:
        The text, or ``None`` when a placeholder was lost, duplicated or invented.
    """
    text = text.strip()
    marks = [int(m) for m in _MARK.findall(text)]
    if sorted(marks) != sorted(fill):
        return None
    if len(_SLOT.findall(text)) != (1 if slot else 0):
        return None
    text = _MARK.sub(lambda m: "{" + m.group(1) + "}", _SLOT.sub("{}", text))
    tight = lang in NO_SPACE

    def put(m: re.Match) -> str:
        name = fill[int(m.group(2))] if m.group(2) else "{}"
        if not tight:
            return m.group(1) + name + m.group(3)
        # zh / ja / th: no space around a name unless it touches Latin letters or digits
        src = m.string
        left = " " if m.group(1) and m.start() > 0 and _latin(src[m.start() - 1]) else ""
        right = " " if m.group(3) and m.end() < len(src) and _latin(src[m.end()]) else ""
        return left + name + right

    text = re.sub(r"([ \t]*)\{(\d*)\}([ \t]*)", put, text)
    return " ".join(text.split()) if not tight else text.strip()


def _latin(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


@dataclass
class _Job:
    case_id: int
    kind: str
    source: str
    masked: str
    fill: dict[int, str]
    slot: bool = False
    result: str | None = None


def _label(entity: Entity, labels: Mapping[str, Mapping[str, str]], lang: str) -> str | None:
    return labels.get(entity.id, {}).get(lang)


def localize(
    items: Sequence[tuple[Case, GeneratedSample]],
    *,
    target: str,
    source: str,
    labels: Mapping[str, Mapping[str, str]],
    translator: Translator | None,
) -> LocalizeResult:
    """Write samples in one target language (MKEB §3.1, translation stage).

    Args:
        items: validated ``(case, sample)`` pairs in the source language.
        target: the language to write.
        source: the samples' language.
        labels: ``{entity id: {lang: label}}`` from Wikidata.
        translator: the translator (unused when ``target == source``).

    Returns:
        The entries, the drops and the counters.
    """
    out = LocalizeResult()
    if target == source:
        for case, sample in items:
            out.entries[case.case_id] = _entry_from_source(case, sample)
        return out
    if translator is None:
        raise ValueError("a translator is needed for languages other than the source")

    # Names: the Wikidata label where there is one, else a translation of the source label.
    entities: dict[str, Entity] = {}
    for case, _ in items:
        for e in _case_entities(case):
            entities.setdefault(e.id, e)
    names: dict[str, str] = {}
    missing = [e for e in entities.values() if not _label(e, labels, target)]
    for e in entities.values():
        if e not in missing:
            names[e.id] = _label(e, labels, target)
    if missing:
        done = _translate(translator, [e.label for e in missing], source=source, target=target)
        names.update({e.id: t for e, t in zip(missing, done, strict=True)})
    wikidata_named = {e.id for e in entities.values() if e not in missing}

    jobs: list[_Job] = []
    for case, sample in items:
        maskable = [e for e in _mask_entities(case) if e.id in wikidata_named]
        texts = [("prompt", sample.prompt)]
        texts += [(f"paraphrase{i}", p) for i, p in enumerate(sample.paraphrases)]
        texts += [(f"neighbor{i}", nb.prompt) for i, nb in enumerate(sample.neighborhood)]
        if sample.multi_hop_question:
            texts.append(("multihop", sample.multi_hop_question))
        for kind, text in texts:
            masked, used = mask_entities(text, [e.label for e in maskable], lang=source)
            fill = {n: names[maskable[n - 1].id] for n in used}
            jobs.append(_Job(case.case_id, kind, text, masked, fill, slot=kind == "prompt"))

    translated = _translate(translator, [j.masked for j in jobs], source=source, target=target)
    retry: list[_Job] = []
    for j, t in zip(jobs, translated, strict=True):
        j.result = unmask(t, j.fill, lang=target, slot=j.slot)
        if j.result is None and j.fill:
            retry.append(j)
    if retry:
        again = _translate(translator, [j.source for j in retry], source=source, target=target)
        for j, t in zip(retry, again, strict=True):
            j.result = unmask(t, {}, lang=target, slot=j.slot)
            out.counts["placeholder_fallback"] += 1
    out.counts["label_wikidata"] += len(wikidata_named)
    out.counts["label_translated"] += len(missing)

    by_case: dict[int, dict[str, _Job]] = {}
    for j in jobs:
        by_case.setdefault(j.case_id, {})[j.kind] = j
    for case, sample in items:
        got = by_case.get(case.case_id, {})
        reason = _entry_problem(case, sample, got)
        if reason:
            out.drops.append((case.case_id, reason))
            continue
        question = got["multihop"].result if "multihop" in got else None
        if sample.multi_hop_question and not question:
            out.counts["multihop_dropped"] += 1
        entry = LangEntry(
            prompt=got["prompt"].result,
            subject=names[case.subject.id],
            target_new=names[case.target_new.id],
            target_true=names[case.target_true.id],
            paraphrases=tuple(got[f"paraphrase{i}"].result for i in range(len(sample.paraphrases))),
            neighborhood_prompts=tuple(got[f"neighbor{i}"].result for i in range(len(sample.neighborhood))),
            neighborhood_answers=tuple(names[_answer_of(case, nb.subject).id] for nb in sample.neighborhood),
            multi_hop_question=question,
            multi_hop_answer=names[case.target_new.id] if question else None,
        )
        if entry.target_new.casefold() == entry.target_true.casefold():
            out.drops.append((case.case_id, "same_targets_in_translation"))
            continue
        out.entries[case.case_id] = entry
    return out


def _translate(translator: Translator, texts: list[str], *, source: str, target: str) -> list[str]:
    if not texts:
        return []
    out = translator.translate(texts, source=source, target=target)
    if len(out) != len(texts):
        raise TranslationError(
            f"{translator.name}: {len(out)} translations for {len(texts)} texts ({source}->{target})"
        )
    return out


def _entry_problem(case: Case, sample: GeneratedSample, got: Mapping[str, _Job]) -> str | None:
    if got.get("prompt") is None or not got["prompt"].result:
        return "slot_lost_in_translation"
    kinds = [f"paraphrase{i}" for i in range(len(sample.paraphrases))]
    kinds += [f"neighbor{i}" for i in range(len(sample.neighborhood))]
    if any(not (got.get(k) and got[k].result) for k in kinds):
        return "translation_failed"
    return None


def _case_entities(case: Case) -> list[Entity]:
    ents = [case.subject, case.target_true, case.target_new]
    ents += [e for pair in case.neighbors for e in pair]
    if case.hop:
        ents.append(case.hop.start)
    return ents


def _mask_entities(case: Case) -> list[Entity]:
    """The names that may occur in the texts (answers never should)."""
    ents = [case.subject] + [n for n, _ in case.neighbors]
    if case.hop:
        ents.append(case.hop.start)
    return ents


def _answer_of(case: Case, subject_label: str) -> Entity:
    for subject, answer in case.neighbors:
        if subject.label.casefold() == subject_label.casefold():
            return answer
    raise KeyError(subject_label)


def _entry_from_source(case: Case, sample: GeneratedSample) -> LangEntry:
    return LangEntry(
        prompt=sample.prompt,
        subject=case.subject.label,
        target_new=case.target_new.label,
        target_true=case.target_true.label,
        paraphrases=tuple(sample.paraphrases),
        neighborhood_prompts=tuple(nb.prompt for nb in sample.neighborhood),
        neighborhood_answers=tuple(_answer_of(case, nb.subject).label for nb in sample.neighborhood),
        multi_hop_question=sample.multi_hop_question,
        multi_hop_answer=case.target_new.label if sample.multi_hop_question else None,
    )


def assemble_record(case: Case, entries: Mapping[str, LangEntry], *, langs: Iterable[str]) -> dict[str, Any]:
    """One record in the MKEB JSON layout (DESIGN.md "Data schema").

    Args:
        case: the planned edit (id, relation).
        entries: ``{lang: LangEntry}`` for the languages that made it.
        langs: the requested languages, in output order.

    Returns:
        The record dict (``example_id`` = the case id).
    """
    order = [lang for lang in langs if lang in entries]
    rec: dict[str, Any] = {
        "example_id": case.case_id,
        "relation": case.relation,
        "relation_description": case.relation_label,
        "edit": {
            lang: {
                "prompt": entries[lang].prompt,
                "subject": entries[lang].subject,
                "target_new": entries[lang].target_new,
                "target_true": entries[lang].target_true,
            }
            for lang in order
        },
        "paraphrase_prompts": {lang: list(entries[lang].paraphrases) for lang in order},
        "neighborhood_prompts": {lang: list(entries[lang].neighborhood_prompts) for lang in order},
        "neighborhood_answers": {lang: list(entries[lang].neighborhood_answers) for lang in order},
    }
    hop_langs = [lang for lang in order if entries[lang].multi_hop_question]
    if hop_langs:
        rec["multi_hop_questions"] = {lang: [entries[lang].multi_hop_question] for lang in hop_langs}
        rec["multi_hop_new_answer"] = {lang: entries[lang].multi_hop_answer for lang in hop_langs}
    return rec
