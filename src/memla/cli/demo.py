"""`memla demo`: what `make demo` runs — one MEMLA edit on the embedded model, shown in 12 languages."""

from __future__ import annotations

import argparse
import time

from memla.cli._common import console, load_model_from_args, print_table

ORDER = 1
DEMO_RECORD = 0  # mkeb-mini record 0: the capital of France, Paris -> Rome


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="edit one fact with MEMLA on the embedded model and show the effect in 12 languages",
        description="Load the embedded default model (Gemma 3 270M), edit 'The capital of France is Paris' "
        "to Rome in English with MEMLA (neurons located in en, zh, fr), and print for all 12 languages "
        "P(Rome) vs P(Paris) and the greedy completion before and after, plus unrelated capitals "
        "to show that other knowledge holds.",
    )
    p.add_argument("--record", default=DEMO_RECORD, help="mkeb-mini record to edit (default: %(default)s)")
    p.add_argument("--lang", default="en", help="source language of the edit (default: %(default)s)")
    p.set_defaults(func=run, model=None, dtype="float32")


def run(args: argparse.Namespace) -> int:
    from memla.cli._effects import print_effects
    from memla.compare import compare
    from memla.data import load_dataset
    from memla.editors import EditRequest, get_editor
    from memla.langs import LANGS
    from memla.models import describe

    t0 = time.perf_counter()
    model, tokenizer = load_model_from_args(args)
    info = describe(model)
    print_table("embedded default model", ["property", "value"],
                [(k, info[k]) for k in ("model type", "layers", "d_model", "d_ff", "vocabulary", "parameters")])
    record = {str(r.example_id): r for r in load_dataset("mkeb-mini")}[str(args.record)]
    request = EditRequest.from_record(record, args.lang, langs=LANGS)
    neighbours = [(k, p, a) for k in ("en", "zh", "de", "ja")
                  for p, a in zip(record.neighborhood_prompts[k], record.neighborhood_answers[k])]
    editor = get_editor("memla")
    with console.status(f"MEMLA: locating neurons in {', '.join(editor.config.locate_langs)} and training ..."):
        result = editor.edit(model, tokenizer, request)
    layers = ", ".join(f"{l}: {v['specific']}S+{v['independent']}I" for l, v in result.info["neurons"].items())
    console.print(f"MEMLA edit in {result.info['seconds']:.1f} s ({result.info['steps']} steps); "
                  f"neurons per layer (S = language-specific, I = language-independent): {layers}")
    effects, neigh = compare(model, tokenizer, request, result, neighbours=neighbours)
    print_effects(effects, neigh, title=f"{request.text} {request.target_true} → {request.target_new}  "
                  f"(edited in {request.lang}, shown in all 12 languages)")
    console.print(f"[dim]demo finished in {time.perf_counter() - t0:.0f} s (model load included)[/dim]")
    return 0
