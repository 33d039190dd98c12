"""Converters from public knowledge-editing datasets into memla's MKEB schema.

Each converter reads the files of one public dataset in its published layout and
returns `Record` objects; `convert` dispatches by name (`CONVERTERS`), and
``memla data convert --from NAME IN... --out OUT`` is its command line.  The
field mapping of each format is documented on its function.

Common rules:

* Edit prompts are templated by replacing the first occurrence of the subject
  with ``{}``.  When the subject cannot be found in the prompt of some language
  (zsRE-style questions, translated subjects), no language of that record is
  templated: the prompts stay as written and the record gets
  ``templated=False`` (methods needing the subject position report such
  records).  MLaKE gives no subject at all, so its records are always
  question-form with ``subject=None``.
* A true answer the source does not give (zsRE-style data) becomes
  ``target_true=None`` (a validation warning, not an error).
* Language tags are normalised with `memla.langs.normalize` (``zh-cn`` -> ``zh``,
  MzsRE's ``cz`` / ``du`` -> ``cs`` / ``nl``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memla.data.formats_common import (
    RELATION_NAMES,
    PathLike,
    read_json,
    read_list,
    require_str,
    target_text,
    template,
    texts,
)
from memla.data.formats_multi import from_bmike53, from_mlake, from_mzsre
from memla.data.schema import EditFact, Record
from memla.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "CONVERTERS",
    "RELATION_NAMES",
    "convert",
    "from_bmike53",
    "from_counterfact",
    "from_mlake",
    "from_mquake",
    "from_mzsre",
    "read_json",
    "template",
]


# ----------------------------------------------------------------------------- CounterFact / MQuAKE


def _rewrite_fact(rewrite: Any, where: str) -> tuple[EditFact, str]:
    """An English `EditFact` and its relation id from a ``requested_rewrite`` object."""
    if not isinstance(rewrite, Mapping):
        raise DataError(f"{where}: 'requested_rewrite' must be an object")
    prompt, subject = require_str(rewrite, "prompt", where), require_str(rewrite, "subject", where)
    new, true = target_text(rewrite.get("target_new")), target_text(rewrite.get("target_true"))
    if new is None:
        raise DataError(f"{where}: missing key 'requested_rewrite.target_new.str'")
    return EditFact(prompt, subject, new, true), str(rewrite.get("relation_id") or "")


def _with_relation(record: Record, relation: str) -> Record:
    record.relation = relation
    record.relation_description = RELATION_NAMES.get(relation, "")
    return record


def from_counterfact(paths: Sequence[PathLike]) -> list[Record]:
    """Convert CounterFact (ROME's ``counterfact.json`` / MEMIT's ``multi_counterfact.json``; English).

    Items: ``case_id, requested_rewrite {prompt (with {}), subject, relation_id,
    target_new {str, id}, target_true {str, id}}, paraphrase_prompts,
    neighborhood_prompts, attribute_prompts, generation_prompts``.

    Field mapping (language ``en``):

    ==========================  ====================================================
    memla                       CounterFact
    ==========================  ====================================================
    example_id                  ``case_id``
    relation                    ``requested_rewrite.relation_id``
    relation_description        looked up in `RELATION_NAMES` ("" if unknown)
    edit.prompt / subject       ``requested_rewrite.prompt`` / ``.subject``
    edit.target_new / _true     ``requested_rewrite.target_new.str`` / ``target_true.str``
    paraphrase_prompts          ``paraphrase_prompts``
    neighborhood_prompts        ``neighborhood_prompts`` (other subjects sharing
                                the true object)
    neighborhood_answers        ``target_true.str`` for each neighbourhood prompt
    attribute / generation      dropped
    ==========================  ====================================================

    Args:
        paths: one or more CounterFact JSON files (records are concatenated).

    Returns:
        One record per case.

    Raises:
        DataError: on unreadable files or missing fields.
    """
    records = []
    for path in map(Path, paths):
        for index, item in enumerate(read_list(path, "counterfact")):
            where = f"{path}: item {index}"
            if not isinstance(item, Mapping):
                raise DataError(f"{where}: expected an object")
            fact, relation = _rewrite_fact(item.get("requested_rewrite"), where)
            neighbours = texts(item.get("neighborhood_prompts"))
            record = Record(
                example_id=item.get("case_id", index),
                edit={"en": fact},
                paraphrase_prompts={"en": texts(item.get("paraphrase_prompts"))},
                neighborhood_prompts={"en": neighbours},
                neighborhood_answers={"en": [fact.target_true or ""] * len(neighbours)},
            )
            records.append(_with_relation(record, relation))
    return records


def from_mquake(paths: Sequence[PathLike]) -> list[Record]:
    """Convert MQuAKE (``MQuAKE-CF-3k.json``, ``MQuAKE-T.json``; English).

    Items: ``case_id, requested_rewrite [{prompt, subject, relation_id,
    target_new {str}, target_true {str}, question}], questions, answer,
    new_answer, single_hops, new_single_hops``.  Our schema holds one edit per
    record, so only cases with exactly one requested rewrite are converted
    (their multi-hop answer depends on that edit alone); the others are skipped
    and counted in the log.

    Field mapping (language ``en``):

    ==========================  ====================================================
    memla                       MQuAKE
    ==========================  ====================================================
    example_id                  ``case_id``
    relation                    ``requested_rewrite[0].relation_id``
    edit.*                      ``requested_rewrite[0]`` (prompt, subject,
                                target_new.str, target_true.str)
    paraphrase_prompts          ``[requested_rewrite[0].question]`` (a question)
    neighborhood_*              none (MQuAKE has no locality prompts)
    multi_hop_questions         ``questions``
    multi_hop_new_answer        ``new_answer``
    ==========================  ====================================================

    Args:
        paths: one or more MQuAKE JSON files.

    Returns:
        One record per single-edit case.

    Raises:
        DataError: on unreadable files, missing fields, or when no case has a single edit.
    """
    records, skipped = [], 0
    for path in map(Path, paths):
        for index, item in enumerate(read_list(path, "mquake")):
            where = f"{path}: item {index}"
            rewrites = item.get("requested_rewrite") if isinstance(item, Mapping) else None
            if not isinstance(rewrites, list) or not rewrites:
                raise DataError(f"{where}: missing key 'requested_rewrite' (a list of edits)")
            if len(rewrites) != 1:
                skipped += 1
                continue
            fact, relation = _rewrite_fact(rewrites[0], where)
            record = Record(
                example_id=item.get("case_id", index),
                edit={"en": fact},
                paraphrase_prompts={"en": texts(rewrites[0].get("question"))},
                multi_hop_questions={"en": texts(item.get("questions"))},
                multi_hop_new_answer={"en": require_str(item, "new_answer", where)},
            )
            records.append(_with_relation(record, relation))
    if skipped:
        log.warning("mquake: skipped %d case(s) with more than one edit (one edit per record)", skipped)
    if not records:
        raise DataError("mquake: no case with exactly one edit in the input")
    return records


CONVERTERS: dict[str, Callable[[Sequence[PathLike]], list[Record]]] = {
    "bmike53": from_bmike53,
    "mzsre": from_mzsre,
    "mlake": from_mlake,
    "counterfact": from_counterfact,
    "mquake": from_mquake,
}


def convert(fmt: str, paths: Sequence[PathLike]) -> list[Record]:
    """Convert files of a public dataset into records of our schema.

    Args:
        fmt: one of `CONVERTERS` (``bmike53``, ``mzsre``, ``mlake``, ``counterfact``, ``mquake``).
        paths: the input files.

    Returns:
        The records (not yet validated; see `memla.data.validate`).

    Raises:
        DataError: on an unknown format or bad input.
    """
    try:
        converter = CONVERTERS[fmt]
    except KeyError:
        raise DataError(f"unknown source format {fmt!r}; known: {', '.join(CONVERTERS)}") from None
    if not paths:
        raise DataError(f"{fmt}: no input file given")
    records = converter(list(paths))
    log.info("%s: converted %d records from %d file(s)", fmt, len(records), len(paths))
    return records
