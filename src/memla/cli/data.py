"""``memla data``: check, show, convert and list benchmark datasets.

Sub-commands (each calls `memla.data` functions and prints rich tables):

* ``memla data check FILE_OR_NAME [--max-chars N]`` -- summary and every validation problem;
  exit status 2 when there are errors.
* ``memla data show NAME --record ID [--lang xx]`` -- one record, readably.
* ``memla data convert --from FORMAT IN... --out OUT`` -- convert BMIKE-53, MzsRE,
  MLaKE, CounterFact or MQuAKE files into the MKEB layout.
* ``memla data list`` -- the built-in datasets.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from memla.cli._common import console, int_at_least
from memla.data import MAX_TEXT_CHARS, Problem, Record, builtin_datasets, load_dataset, read_raw, save_dataset, validate
from memla.data.formats import CONVERTERS, convert
from memla.data.io import FORMATS, check_output_path
from memla.data.summary import COUNTED_FIELDS, DatasetSummary, summarize
from memla.errors import DataError
from memla.langs import join, lang_name, resolve_langs

ORDER = 20

_FIELD_TITLES = {
    "edit": "edit",
    "paraphrase_prompts": "paraphrase",
    "neighborhood_prompts": "neighbourhood",
    "multi_hop_questions": "multi-hop",
}
_RELATIONS_SHOWN = 25


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``memla data`` and its actions to the top-level parser.

    Args:
        subparsers: the top-level sub-parser collection.
    """
    parser = subparsers.add_parser(
        "data",
        help="check, show, convert and list benchmark datasets (MKEB layout)",
        description="Work with datasets in the MKEB JSON layout: validate a file or built-in "
        "dataset, print one record, convert public editing datasets, list built-ins.",
    )
    parser.set_defaults(func=lambda args: _print_help(parser))
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", title="actions")
    _add_check(actions)
    _add_show(actions)
    _add_convert(actions)
    _add_list(actions)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_check(actions: argparse._SubParsersAction) -> None:
    check = actions.add_parser(
        "check",
        help="summarise a dataset and list its problems (exit 2 on errors)",
        description="Print records, languages, prompts per field and language, relations, "
        "splits and every validation error and warning. Exits with status 2 when the "
        "dataset has errors (missing key, no {} in an edit prompt, empty target, "
        "target_new == target_true, unknown language code, bad UTF-8, a text longer than "
        f"{MAX_TEXT_CHARS} characters, ...).",
    )
    check.add_argument("dataset", metavar="FILE_OR_NAME", help="a .json / .jsonl file or a built-in dataset name (see `memla data list`)")
    check.add_argument("--format", choices=FORMATS, default="auto", help="file layout (default: %(default)s: JSONL for .jsonl, else JSON)")
    check.add_argument(
        "--max-problems", type=int_at_least(0), default=30, metavar="N", help="list at most N problems one by one (default: %(default)s); all are counted"
    )
    check.add_argument(
        "--max-chars",
        type=int_at_least(1),
        default=MAX_TEXT_CHARS,
        metavar="N",
        help="report any text (prompt, subject, target, answer, question) longer than N characters as an error "
        "(default: %(default)s, memla.data.MAX_TEXT_CHARS, the limit every command loading a dataset applies; "
        "long texts make editing use a lot of memory)",
    )
    check.set_defaults(func=run_check)


def _add_show(actions: argparse._SubParsersAction) -> None:
    show = actions.add_parser(
        "show",
        help="print one record readably",
        description="Print one record: per language the edit prompt with its subject, the two "
        "targets joined to the prompt as the model scores them, paraphrases, neighbourhood "
        "prompts with answers and multi-hop questions.",
    )
    show.add_argument("dataset", metavar="NAME", help="a built-in dataset name or a dataset file")
    show.add_argument("--record", required=True, metavar="ID", help="the record's example_id")
    show.add_argument("--lang", default=None, metavar="xx", help="language(s) to show: 'zh', 'en,zh' or 'all' (default: every language of the record)")
    show.add_argument("--json", action="store_true", help="print the record's JSON instead")
    show.set_defaults(func=run_show)


def _add_convert(actions: argparse._SubParsersAction) -> None:
    conv = actions.add_parser(
        "convert",
        help="convert BMIKE-53 / MzsRE / MLaKE / CounterFact / MQuAKE files to the MKEB layout",
        description="Convert files of a public knowledge-editing dataset into memla's MKEB "
        "layout (field mappings: `pydoc memla.data.formats`). Files of several languages "
        "are joined into one record per fact. The output is validated; with errors nothing "
        "is written (exit 2) unless --drop-invalid is given.",
    )
    conv.add_argument("--from", dest="source_format", required=True, choices=sorted(CONVERTERS), help="layout of the input files")
    conv.add_argument("inputs", nargs="+", metavar="IN", help="input files (e.g. all zsre_test_<lang>.json of BMIKE-53)")
    conv.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="output file (.json: a JSON list, .jsonl: one record per line); its folder is created if missing, "
        "an existing file is replaced, an input file is refused",
    )
    conv.add_argument("--drop-invalid", action="store_true", help="write the valid records and drop those with errors")
    conv.set_defaults(func=run_convert)


def _add_list(actions: argparse._SubParsersAction) -> None:
    lst = actions.add_parser("list", help="list the built-in datasets", description="List the datasets shipped with memla, with record and language counts.")
    lst.set_defaults(func=run_list)


# ----------------------------------------------------------------------------- check


def run_check(args: argparse.Namespace) -> int:
    """Run ``memla data check``; returns 2 when the dataset has errors."""
    raw, label = read_raw(args.dataset, format=args.format)
    report = validate(raw, source=label, max_chars=args.max_chars)
    summary = summarize(raw)
    _print_overview(label, summary, len(report.errors), len(report.warnings))
    _print_prompt_counts(summary)
    _print_relations(summary)
    _print_problems(report.errors + report.warnings, limit=args.max_problems)
    if report.errors:
        console.print(Text(f"{label}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)", style="bold red"))
        return 2
    console.print(Text(f"{label}: OK ({len(report.warnings)} warning(s))", style="bold green"))
    return 0


def _print_overview(label: str, summary: DatasetSummary, errors: int, warnings: int) -> None:
    table = Table(title=Text(f"{label}"), show_header=False)
    table.add_column("item")
    table.add_column("value")
    splits = ", ".join(f"{name}: {n}" for name, n in sorted(summary.splits.items()))
    rows = [
        ("records", str(summary.records)),
        ("languages", f"{len(summary.langs)}: {' '.join(summary.langs)}"),
        ("relations", str(len(summary.relations))),
        ("splits", splits or "-"),
        ("question-form records", str(summary.question_form)),
        ("edits with unknown target_true", str(summary.unknown_true)),
        ("errors", str(errors)),
        ("warnings", str(warnings)),
    ]
    for name, value in rows:
        table.add_row(name, Text(value))
    console.print(table)


def _print_prompt_counts(summary: DatasetSummary) -> None:
    table = Table(title="prompts per language")
    table.add_column("language")
    for name in COUNTED_FIELDS:
        table.add_column(_FIELD_TITLES[name], justify="right")
    for lang in summary.langs:
        cells = [str(summary.prompts[name][lang]) for name in COUNTED_FIELDS]
        table.add_row(Text(f"{lang} {lang_name(lang)}" if lang_name(lang) != lang else lang), *cells)
    console.print(table)


def _print_relations(summary: DatasetSummary) -> None:
    table = Table(title="relations")
    table.add_column("relation")
    table.add_column("description")
    table.add_column("records", justify="right")
    ranked = summary.relations.most_common()
    for (relation, description), count in ranked[:_RELATIONS_SHOWN]:
        table.add_row(Text(relation or "-"), Text(description or "-"), str(count))
    if len(ranked) > _RELATIONS_SHOWN:
        table.add_row("...", f"{len(ranked) - _RELATIONS_SHOWN} more", "")
    console.print(table)


def _print_problems(problems: Sequence[Problem], *, limit: int) -> None:
    if not problems:
        console.print("no problems found")
        return
    table = Table(title=f"problems ({len(problems)})")
    for name in ("severity", "record", "lang", "field", "message"):
        table.add_column(name)
    for p in problems[:limit]:
        style = "red" if p.severity == "error" else "yellow"
        table.add_row(Text(p.severity, style=style), Text(_dash(p.record_id)), Text(_dash(p.lang)), Text(_dash(p.field)), Text(p.message))
    console.print(table)
    if len(problems) > limit:
        kinds = Counter((p.severity, p.code) for p in problems)
        console.print(Text(f"{len(problems) - limit} more problem(s) not listed (--max-problems); all {len(problems)} by kind:"))
        summary = Table(title="problems by kind")
        for name in ("severity", "kind", "count"):
            summary.add_column(name)
        for (severity, code), count in kinds.most_common():
            summary.add_row(severity, Text(code or "-"), str(count))
        console.print(summary)


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


# ----------------------------------------------------------------------------- show


def run_show(args: argparse.Namespace) -> int:
    """Run ``memla data show``; prints one record."""
    records = load_dataset(args.dataset)
    record = _find_record(records, args.record, args.dataset)
    if args.json:
        console.print_json(json.dumps(record.to_dict(), ensure_ascii=False))
        return 0
    langs = record.langs if args.lang is None else resolve_langs(args.lang)
    missing = [lang for lang in langs if lang not in record.edit]
    if missing:
        raise DataError(f"record {record.example_id} has no edit in {', '.join(missing)} (languages: {', '.join(record.langs)})")
    head = f"record {record.example_id} · {record.relation or '-'} {record.relation_description}".rstrip()
    if record.split:
        head += f" · split {record.split}"
    if not record.templated:
        head += " · question-form (no {} slot)"
    console.print(Text(head, style="bold"))
    for lang in langs:
        console.print(_record_table(record, lang))
    return 0


def _find_record(records: Sequence[Record], wanted: str, label: str) -> Record:
    for record in records:
        if str(record.example_id) == wanted:
            return record
    sample = ", ".join(str(r.example_id) for r in records[:10]) + (", ..." if len(records) > 10 else "")
    raise DataError(f"{label}: no record with id {wanted!r} (ids: {sample})")


def _record_table(record: Record, lang: str) -> Table:
    fact = record.edit[lang]
    filled = fact.filled()
    table = Table(title=Text(f"{lang} · {lang_name(lang)}"), show_header=False, expand=False)
    table.add_column("field", style="cyan", no_wrap=True)
    table.add_column("value")
    table.add_row("prompt", _highlight(fact.prompt, fact.subject))
    table.add_row("subject", Text(_dash(fact.subject)))
    table.add_row("target_new", Text(join(filled, fact.target_new, lang)))
    table.add_row("target_true", Text(join(filled, fact.target_true, lang) if fact.target_true is not None else "(unknown)"))
    for i, text in enumerate(record.paraphrase_prompts.get(lang, [])):
        table.add_row(f"paraphrase {i + 1}", Text(text))
    prompts = record.neighborhood_prompts.get(lang, [])
    answers = record.neighborhood_answers.get(lang, [])
    for i, (text, answer) in enumerate(zip(prompts, answers, strict=False)):
        table.add_row(f"neighbour {i + 1}", Text(f"{text} → {answer}"))
    answer = record.multi_hop_new_answer.get(lang, "?")
    for i, text in enumerate(record.multi_hop_questions.get(lang, [])):
        table.add_row(f"multi-hop {i + 1}", Text(f"{text} → {answer}"))
    return table


def _highlight(prompt: str, subject: str | None) -> Text:
    """The edit prompt with the subject written in, the subject in bold."""
    if subject is None or "{}" not in prompt:
        return Text(prompt)
    before, after = prompt.split("{}", 1)
    return Text.assemble(before, (subject, "bold magenta"), after)


# ----------------------------------------------------------------------------- convert / list


def run_convert(args: argparse.Namespace) -> int:
    """Run ``memla data convert``; returns 2 (writing nothing) when the result has errors."""
    check_output_path(args.out, name=f"--out {args.out}", inputs=args.inputs)
    records = convert(args.source_format, args.inputs)
    report = validate(records, source=f"{args.source_format} input")
    if report.errors and not args.drop_invalid:
        _print_problems(report.errors, limit=30)
        console.print(Text(f"{len(report.errors)} error(s) in the converted records; nothing written (use --drop-invalid to skip them)", style="bold red"))
        return 2
    bad = {str(p.record_id) for p in report.errors if p.record_id is not None}
    kept = [r for r in records if str(r.example_id) not in bad]
    if not kept:
        raise DataError("no valid record to write")
    save_dataset(kept, args.out)
    summary = summarize(kept)
    line = f"wrote {len(kept)} records ({len(summary.langs)} languages: {' '.join(summary.langs)}) to {args.out}"
    if len(kept) < len(records):
        line += f"; dropped {len(records) - len(kept)} invalid"
    console.print(Text(line))
    if report.warnings:
        console.print(Text(f"{len(report.warnings)} warning(s); see `memla data check {args.out}`", style="yellow"))
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Run ``memla data list``; prints the built-in datasets."""
    table = Table(title="built-in datasets")
    for name in ("name", "records", "languages", "splits"):
        table.add_column(name)
    for name in builtin_datasets():
        raw, _ = read_raw(name)
        summary = summarize(raw)
        splits = ", ".join(f"{s}: {n}" for s, n in sorted(summary.splits.items()))
        table.add_row(name, str(summary.records), Text(" ".join(summary.langs)), Text(splits))
    console.print(table)
    return 0
