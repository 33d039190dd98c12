"""Converters for the multilingual editing datasets BMIKE-53, MzsRE and MLaKE.

Registered in `memla.data.formats.CONVERTERS`; see that module for the rules
all converters share.  Each converter's docstring gives its field mapping.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memla.data.formats_common import (
    RELATION_NAMES,
    Draft,
    PathLike,
    require,
    first_text,
    read_list,
    reorder_langs,
    require_str,
    source_lang,
    strip_loc,
    target_text,
    texts,
)
from memla.data.schema import EditFact, Record
from memla.errors import DataError
from memla.langs import order_langs

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- BMIKE-53 / MzsRE


def _pair_entry(draft: Draft, lang: str, entry: Mapping[str, Any], where: str) -> None:
    """Fill one language of a BMIKE-53 / MzsRE record (shared field names)."""
    if not isinstance(entry, Mapping):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    draft.src[lang] = require_str(entry, "src", where)
    draft.subject[lang] = require_str(entry, "subject", where)
    new = target_text(require(entry, "alt", where))
    if new is None:
        raise DataError(f"{where}: 'alt' is not a string")
    draft.target_new[lang] = new
    draft.target_true[lang] = (
        target_text(entry.get("old")) or first_text(entry.get("answers")) or target_text(entry.get("ground_truth"))
    )
    rephrase = texts(entry.get("rephrase"))
    if rephrase:
        draft.record.paraphrase_prompts[lang] = rephrase
    loc, loc_ans = [strip_loc(t) for t in texts(entry.get("loc"))], texts(entry.get("loc_ans"))
    if loc and len(loc) == len(loc_ans):
        draft.record.neighborhood_prompts[lang] = loc
        draft.record.neighborhood_answers[lang] = loc_ans
    elif loc or loc_ans:
        raise DataError(f"{where}: {len(loc)} 'loc' prompt(s) but {len(loc_ans)} 'loc_ans' answer(s)")
    _pair_multi_hop(draft, lang, entry)


def _pair_multi_hop(draft: Draft, lang: str, entry: Mapping[str, Any]) -> None:
    portability = entry.get("portability")
    if isinstance(portability, Mapping):
        questions, answer = texts(portability.get("New Question")), first_text(portability.get("New Answer"))
    else:
        questions, answer = texts(entry.get("port")), first_text(entry.get("port_ans"))
    if questions and answer:
        draft.record.multi_hop_questions[lang] = questions
        draft.record.multi_hop_new_answer[lang] = answer


def _join_pairs(
    paths: Sequence[PathLike],
    *,
    fmt: str,
    key_of: Callable[[Path, int, Mapping[str, Any]], Any],
) -> list[Record]:
    """Merge files whose items are ``{lang: entry, lang2: entry}`` into one record per key."""
    if not paths:
        raise DataError(f"{fmt}: no input file given")
    drafts: dict[Any, Draft] = {}
    for path in map(Path, paths):
        for index, item in enumerate(read_list(path, fmt)):
            if not isinstance(item, Mapping) or not item:
                raise DataError(f"{path}: item {index}: expected an object language -> entry")
            key = key_of(path, index, item)
            draft = drafts.setdefault(key, Draft(key))
            for code, entry in item.items():
                lang = source_lang(code, f"{path}: item {index}")
                where = f"{path}: item {index} (case {key}) [{lang}]"
                if lang in draft.sources:
                    _check_same(draft, lang, entry, where)
                    continue
                draft.sources[lang] = str(path)
                _pair_entry(draft, lang, entry, where)
    return [draft.finish() for draft in drafts.values()]


def _check_same(draft: Draft, lang: str, entry: Any, where: str) -> None:
    """A language seen in an earlier file (English in every pair file) must agree."""
    src = entry.get("src") if isinstance(entry, Mapping) else None
    if src != draft.src[lang]:
        raise DataError(
            f"{where}: differs from the same record in {draft.sources[lang]} "
            f"({src!r} vs {draft.src[lang]!r}); the files are not aligned"
        )


def from_bmike53(paths: Sequence[PathLike]) -> list[Record]:
    """Convert BMIKE-53 test files (``<subset>_test_<lang>.json``).

    Each file is a list of ``{"en": {...}, "<lang>": {...}}``; the entries carry
    ``case_id, subject, src, rephrase, old (CounterFact subset only), alt, loc,
    loc_ans, port, port_ans``.  All given files are joined by ``case_id`` (per
    subset; with several subsets the id becomes ``"<subset>-<case_id>"``).

    Field mapping, per language:

    ==========================  ====================================================
    memla                       BMIKE-53
    ==========================  ====================================================
    example_id                  ``case_id``
    edit.prompt                 ``src`` with the subject replaced by ``{}``
                                (question-form, ``templated=False``, if impossible)
    edit.subject                ``subject``
    edit.target_new             ``alt``
    edit.target_true            ``old``; null when absent (zsRE, WikiFactDiff)
    paraphrase_prompts          ``[rephrase]``
    neighborhood_prompts        ``[loc]`` (zsRE's "nq question: " prefix dropped)
    neighborhood_answers        ``[loc_ans]``
    multi_hop_questions         ``[port]``
    multi_hop_new_answer        ``port_ans``
    relation, description       "" (not given)
    ==========================  ====================================================

    Args:
        paths: BMIKE-53 files of one or more languages and subsets.

    Returns:
        One record per case, with every language found in the files.

    Raises:
        DataError: on unreadable files, missing fields or files whose shared English
            entries disagree.
    """
    subsets = {_bmike_subset(Path(p)) for p in paths}

    def key_of(path: Path, index: int, item: Mapping[str, Any]) -> Any:
        case_id = next((e.get("case_id") for e in item.values() if isinstance(e, Mapping) and "case_id" in e), index)
        return case_id if len(subsets) == 1 else f"{_bmike_subset(path)}-{case_id}"

    return _join_pairs(paths, fmt="bmike53", key_of=key_of)


def _bmike_subset(path: Path) -> str:
    match = re.match(r"(.+?)_test_", path.name)
    return match.group(1) if match else path.stem


def from_mzsre(paths: Sequence[PathLike]) -> list[Record]:
    """Convert MzsRE test files (``mzsre_test_duplicate_<src><tgt>.json``).

    Each file is a list of ``{"<src>": {...}, "<tgt>": {...}}`` with entries
    ``subject, src, rephrase, alt, loc, loc_ans, portability: {"New Question",
    "New Answer"}`` (optionally ``case_id`` and ``answers``).  The files hold the
    same records in the same order, so they are joined by ``case_id`` when present,
    else by position; the shared source-language entries must agree.

    Field mapping, per language:

    ==========================  ====================================================
    memla                       MzsRE
    ==========================  ====================================================
    example_id                  ``case_id``, else the position in the file
    edit.prompt                 ``src`` (a question) with the subject replaced by
                                ``{}`` when it occurs, else ``templated=False``
    edit.subject                ``subject``
    edit.target_new             ``alt``
    edit.target_true            ``answers[0]`` when present, else null
    paraphrase_prompts          ``[rephrase]``
    neighborhood_prompts        ``[loc]`` ("nq question: " prefix dropped)
    neighborhood_answers        ``[loc_ans]``
    multi_hop_questions         ``[portability["New Question"]]``
    multi_hop_new_answer        ``portability["New Answer"]``
    ==========================  ====================================================

    Args:
        paths: MzsRE files of one or more language pairs.

    Returns:
        One record per question, with every language found in the files.

    Raises:
        DataError: on unreadable or misaligned files and missing fields.
    """

    def key_of(path: Path, index: int, item: Mapping[str, Any]) -> Any:
        return next((e["case_id"] for e in item.values() if isinstance(e, Mapping) and "case_id" in e), index)

    return _join_pairs(paths, fmt="mzsre", key_of=key_of)


# ----------------------------------------------------------------------------- MLaKE

_MLAKE_FILE = re.compile(r"^(?:(new|old)_)?([A-Za-z]{2}(?:[-_][A-Za-z]+)?)_(qa|mcqa)\.json$")


def _mlake_files(paths: Sequence[PathLike]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Sort MLaKE files into single-hop and post-edit multi-hop files per language."""
    single: dict[str, Path] = {}
    multi: dict[str, Path] = {}
    for path in map(Path, paths):
        match = _MLAKE_FILE.match(path.name)
        if not match:
            read_list(path, "mlake")  # a file in another layout is named as such
            raise DataError(f"{path}: not an MLaKE file name (<lang>_qa.json or new_<lang>_qa.json)")
        kind, code, style = match.groups()
        if style == "mcqa":
            raise DataError(f"{path}: MLaKE multiple-choice files are not supported; use the free-form *_qa.json files")
        lang = source_lang(code, str(path))
        if kind == "old":
            log.info("%s: pre-edit multi-hop file skipped (only new_<lang>_qa.json is used)", path)
        else:
            (multi if kind == "new" else single)[lang] = path
    if not single:
        raise DataError("mlake: no single-hop file (<lang>_qa.json) given")
    return single, multi


def _cloze(entry: Mapping[str, Any]) -> str | None:
    """The sentence before the answer, when ``o_prompt`` and ``e_prompt`` differ only in it."""
    o_prompt, e_prompt = entry.get("o_prompt"), entry.get("e_prompt")
    o_answer, e_answer = entry.get("o_answer"), entry.get("e_answer")
    if not all(isinstance(x, str) and x for x in (o_prompt, e_prompt, o_answer, e_answer)):
        return None
    p, q = o_prompt.rfind(o_answer), e_prompt.rfind(e_answer)
    if p <= 0 or q <= 0 or o_prompt[:p] != e_prompt[:q]:
        return None
    if o_prompt[p + len(o_answer) :] != e_prompt[q + len(e_answer) :]:
        return None
    return o_prompt[:p].rstrip() or None


def _mlake_fact(entry: Mapping[str, Any], where: str) -> tuple[EditFact, list[str]]:
    question = require_str(entry, "question", where)
    new, true = require_str(entry, "e_answer", where), require_str(entry, "o_answer", where)
    extra = {
        key: list(entry[src])
        for key, src in (("target_new_aliases", "e_answer_aliases"), ("target_true_aliases", "o_answer_aliases"))
        if entry.get(src)
    }
    cloze = _cloze(entry)
    prompt, paraphrases = (cloze, [question]) if cloze else (question, [])
    return EditFact(prompt, None, new, true, extra), paraphrases


def _mlake_multi_hop(path: Path, lang: str, by_e_prompt: Mapping[str, int], records: list[Record]) -> None:
    """Attach the first post-edit multi-hop question of each single-hop fact."""
    linked = 0
    for index, item in enumerate(read_list(path, "mlake")):
        where = f"{path}: item {index}"
        target = by_e_prompt.get(item.get("e_prompt")) if isinstance(item, Mapping) else None
        if target is None:
            continue
        record = records[target]
        if lang in record.multi_hop_questions:
            continue
        record.multi_hop_questions[lang] = [require_str(item, "question", where)]
        record.multi_hop_new_answer[lang] = require_str(item, "e_answer", where)
        triples = item.get("triples")
        if not record.relation and triples and isinstance(triples[0], list) and len(triples[0]) == 3:
            record.relation = str(triples[0][1])
            record.relation_description = RELATION_NAMES.get(record.relation, "")
        linked += 1
    log.info("%s: linked %d multi-hop questions to single-hop facts", path, linked)


def from_mlake(paths: Sequence[PathLike]) -> list[Record]:
    """Convert MLaKE free-form QA files.

    Inputs: ``single_hop/<lang>_qa.json`` (required; items ``question, o_prompt,
    o_answer, o_answer_aliases, e_prompt, e_answer, e_answer_aliases``; the files
    of different languages are parallel, item i is the same fact) and optionally
    ``multi_hop/new_<lang>_qa.json`` (items ``question, triples, relations,
    e_prompt, e_answer, ...``), linked to the single-hop fact with the same
    ``e_prompt``.  ``old_*`` files are skipped.  MLaKE names no subject, so records
    are question-form (``templated=False``, ``subject=None``).

    Field mapping, per language:

    ==========================  ====================================================
    memla                       MLaKE
    ==========================  ====================================================
    example_id                  position in the single-hop files
    edit.prompt                 the part of ``o_prompt`` before ``o_answer`` when
                                ``o_prompt`` / ``e_prompt`` differ only in the
                                answer (a cloze), else ``question``
    edit.subject                null (not given)
    edit.target_new             ``e_answer`` (aliases kept as ``target_new_aliases``)
    edit.target_true            ``o_answer`` (aliases kept as ``target_true_aliases``)
    paraphrase_prompts          ``[question]`` when the prompt is the cloze, else none
    neighborhood_*              none (MLaKE has no locality prompts)
    multi_hop_questions         the first linked multi-hop ``question``
    multi_hop_new_answer        its ``e_answer``
    relation                    first property id of its ``triples``; "" otherwise
    ==========================  ====================================================

    Args:
        paths: MLaKE JSON files (any mix of languages, single- and multi-hop).

    Returns:
        One record per single-hop fact.

    Raises:
        DataError: on unreadable files, unknown file names, single-hop files of
            different lengths or missing fields.
    """
    single, multi = _mlake_files(paths)
    lists = {lang: read_list(path, "mlake") for lang, path in single.items()}
    sizes = {lang: len(items) for lang, items in lists.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"mlake: single-hop files have different lengths ({sizes}); they must be parallel")
    count = next(iter(sizes.values()))
    records = [Record(example_id=i, templated=False) for i in range(count)]
    for lang in order_langs(lists):
        for index, entry in enumerate(lists[lang]):
            where = f"{single[lang]}: item {index}"
            if not isinstance(entry, Mapping):
                raise DataError(f"{where}: expected an object")
            fact, paraphrases = _mlake_fact(entry, where)
            records[index].edit[lang] = fact
            if paraphrases:
                records[index].paraphrase_prompts[lang] = paraphrases
    for lang, path in multi.items():
        if lang not in lists:
            raise DataError(f"{path}: no single-hop file for {lang!r} to link it to")
        by_e_prompt = {e.get("e_prompt"): i for i, e in enumerate(lists[lang]) if isinstance(e, Mapping)}
        _mlake_multi_hop(path, lang, by_e_prompt, records)
    for record in records:
        reorder_langs(record)
    return records
