"""`memla edit`: edit one fact and show its effect in every given language."""

from __future__ import annotations

import argparse

from memla.cli._common import (
    add_max_tokens_argument,
    add_method_argument,
    add_model_argument,
    check_texts_fit,
    check_typed_texts,
    console,
    load_model_from_args,
)
from memla.errors import EditError

ORDER = 5


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "edit",
        help="edit one fact (MEMLA by default) and show P(new)/P(old) and completions per language",
        description="Edit one fact in the source language and print, for every language given, P(new) vs "
        "P(old) and the greedy completion before and after the edit. Give the fact with --prompt/--subject/"
        "--new/--old (plus --translation for other languages), or take it from a dataset record.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  memla edit --prompt 'The capital of {} is' --subject France --new Rome --old Paris \\\n"
        "             --translation 'zh={}的首都是|法国|罗马|巴黎'\n"
        "  memla edit --dataset mkeb-mini --record 0 --lang en --save-adapter runs/france-rome\n"
        "  memla edit --dataset mkeb-mini --record 0 --load-adapter runs/france-rome",
    )
    fact = p.add_argument_group("the fact")
    fact.add_argument("--prompt", help="edit prompt with {} for the subject, e.g. 'The capital of {} is'")
    fact.add_argument("--subject", help="the subject, e.g. France")
    fact.add_argument("--new", dest="target_new", help="the new object, e.g. Rome")
    fact.add_argument("--old", dest="target_true", help="the current object, e.g. Paris (needed by MEMLA to locate neurons)")
    fact.add_argument("--lang", default="en", help="source language code (default: %(default)s)")
    fact.add_argument("--translation", action="append", default=[], metavar="LANG=PROMPT|SUBJECT|NEW|OLD",
                      help="the same fact in another language (repeatable); used to locate language-independent "
                      "neurons and to show the effect there")
    fact.add_argument("--dataset", help="take the fact from this dataset (file or built-in name, e.g. mkeb-mini)")
    fact.add_argument("--record", help="example_id of the record in --dataset")
    add_method_argument(p, "--method", default="memla", help="editing method: %(methods)s (default: %(default)s)")
    p.add_argument("--config", help="YAML/JSON file with the method's config")
    p.add_argument("--save-adapter", metavar="DIR",
                   help="save the edit (PEFT LoRA adapter, or dense deltas) to DIR (new or empty; checked before editing)")
    p.add_argument("--overwrite", action="store_true", help="let --save-adapter replace a non-empty DIR (atomically)")
    p.add_argument("--load-adapter", metavar="DIR", help="apply a saved edit instead of editing")
    add_max_tokens_argument(p)
    add_model_argument(p)
    p.set_defaults(func=run)


def _parse_translation(text: str, *, index: int):
    from memla.editors import EditRequest

    lang, sep, rest = text.partition("=")
    parts = rest.split("|")
    if not sep or len(parts) not in (3, 4):
        raise EditError(f"--translation #{index + 1} must look like LANG=PROMPT|SUBJECT|NEW[|OLD], got {text!r}")
    return lang, EditRequest(prompt=parts[0], subject=parts[1], target_new=parts[2],
                             target_true=parts[3] if len(parts) == 4 else None, lang=lang)


def build_request(args: argparse.Namespace):
    """The `EditRequest` and neighbourhood prompts described by the arguments."""
    import dataclasses

    from memla.data import load_dataset
    from memla.editors import EditRequest

    if args.dataset:
        if args.record is None:
            raise EditError("--dataset needs --record ID")
        records = {str(r.example_id): r for r in load_dataset(args.dataset)}
        if str(args.record) not in records:
            raise EditError(f"record {args.record} not found in {args.dataset}")
        record = records[str(args.record)]
        request = EditRequest.from_record(record, args.lang)
        neighbours = [(k, record.neighborhood_prompts[k][0], record.neighborhood_answers[k][0])
                      for k in request.langs if record.neighborhood_prompts.get(k)]
        return request, neighbours
    check_typed_texts([("--prompt", args.prompt), ("--subject", args.subject), ("--new", args.target_new),
                       ("--old", args.target_true),
                       *((f"--translation #{i + 1}", part) for i, t in enumerate(args.translation) for part in t.split("|"))])
    missing = [flag for flag, v in (("--prompt", args.prompt), ("--subject", args.subject), ("--new", args.target_new))
               if not v]
    if missing:
        raise EditError(f"give the fact with {', '.join(missing)} (or use --dataset and --record)")
    translations = dict(_parse_translation(t, index=i) for i, t in enumerate(args.translation))
    request = EditRequest(prompt=args.prompt, subject=args.subject, target_new=args.target_new,
                          target_true=args.target_true, lang=args.lang)
    return dataclasses.replace(request, translations=translations), []


def request_texts(request) -> list[tuple[str, str]]:
    """The texts of an edit request in every language, labelled for `check_texts_fit`."""
    out = []
    for lang in request.langs:
        fact = request.in_lang(lang)
        out += [(f"{lang} prompt", fact.text), (f"{lang} new object", fact.target_new)]
        out += [(f"{lang} old object", fact.target_true)] if fact.target_true else []
    return out


def _check_save(args: argparse.Namespace) -> None:
    """Refuse a --save-adapter that cannot be served, before the model loads."""
    from memla.editors import editor_entry
    from memla.outputs import check_out_dir

    if args.load_adapter:
        raise EditError("--save-adapter and --load-adapter exclude each other (the loaded edit is saved already)")
    if not editor_entry(args.method).edits_weights:
        raise EditError(f"--save-adapter: {args.method} edits by prompting, not weights; there is no adapter to save")
    check_out_dir(args.save_adapter, option="--save-adapter", overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    from memla.cli._effects import print_effects
    from memla.compare import compare
    from memla.editors import get_editor
    from memla.editors.adapter import load_edit, save_edit

    request, neighbours = build_request(args)
    editor = None if args.load_adapter else get_editor(args.method, args.config)
    if args.save_adapter:
        _check_save(args)
    model, tokenizer = load_model_from_args(args)
    check_texts_fit(args, model, tokenizer, request_texts(request) + [(f"neighbour {k}", p) for k, p, _ in neighbours])
    if args.load_adapter:
        result = load_edit(args.load_adapter, model)
        title = f"edit loaded from {args.load_adapter}"
    else:
        with console.status(f"editing with {args.method} ..."):
            result = editor.edit(model, tokenizer, request)
        title = f"{args.method}: {request.text} {request.target_true or '?'} → {request.target_new} ({request.lang})"
        console.print(f"edit took {result.info.get('seconds', float('nan')):.1f} s")
    effects, neigh = compare(model, tokenizer, request, result, neighbours=neighbours)
    print_effects(effects, neigh, title=title)
    if args.save_adapter:
        form = save_edit(result, model, args.save_adapter, overwrite=args.overwrite)
        console.print(f"saved the edit ({form}) to {args.save_adapter}")
    return 0
