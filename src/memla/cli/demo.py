"""`memla demo`: what `make demo` runs — one edit (patch by default) on the embedded model, shown in 12 languages."""

from __future__ import annotations

import argparse
import time

from memla.cli._common import add_compute_arguments, add_method_argument, console, load_model_from_args, print_table

ORDER = 1
DEMO_RECORD = 0  # mkeb-mini record 0: the capital of France, Paris -> Rome


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="edit one fact with patch on the embedded model and show the effect in 12 languages",
        description="Load the embedded default model (Gemma 3 270M), edit 'The capital of France is Paris' "
        "to Rome in English with patch (one gated neuron that fires at the subject in every language; "
        "--method memla-local for the locality-trained MEMLA, --method memla for the paper's), and print for "
        "all 12 languages P(Rome) vs P(Paris) and the greedy completion before and after, plus unrelated "
        "capitals to show that other knowledge holds.",
    )
    p.add_argument("--record", default=DEMO_RECORD, help="mkeb-mini record to edit (default: %(default)s)")
    p.add_argument("--lang", default="en", help="source language of the edit (default: %(default)s)")
    add_method_argument(p, "--method", default="patch",
                        help="editing method (%(methods)s; default: patch; memla is the paper's, which "
                             "also changes unrelated facts of the relation)")
    p.add_argument("--config", help="YAML/JSON file with the method's config (as `memla edit --config`), "
                                    "e.g. 'gate_at: last' to try a patch setting on the demo fact")
    add_compute_arguments(p)
    p.set_defaults(func=run, model=None)


def run(args: argparse.Namespace) -> int:
    from memla.cli._effects import print_effects
    from memla.compare import compare
    from memla.data import load_dataset
    from memla.editors import EditRequest, get_editor
    from memla.langs import LANGS
    from memla.models import describe

    t0 = time.perf_counter()
    editor = get_editor(args.method, args.config)  # an unknown method or a bad config fails before the model loads
    model, tokenizer = load_model_from_args(args)
    info = describe(model)
    print_table("embedded default model", ["property", "value"],
                [(k, info[k]) for k in ("model type", "layers", "d_model", "d_ff", "vocabulary", "parameters")])
    record = {str(r.example_id): r for r in load_dataset("mkeb-mini")}[str(args.record)]
    request = EditRequest.from_record(record, args.lang, langs=LANGS)
    neighbours = [(k, p, a) for k in ("en", "zh", "de", "ja")
                  for p, a in zip(record.neighborhood_prompts[k], record.neighborhood_answers[k])]
    with console.status(f"{args.method}: editing ..."):
        result = editor.edit(model, tokenizer, request)
    line = f"{args.method} edit in {result.info.get('seconds', 0.0):.1f} s"
    if "steps" in result.info:
        line += f" ({result.info['steps']} steps)"
    if "neurons" in result.info:
        layers = ", ".join(f"{l}: {v['specific']}S+{v['independent']}I" for l, v in result.info["neurons"].items())
        line += f"; neurons per layer (S = language-specific, I = language-independent): {layers}"
    console.print(line)
    effects, neigh = compare(model, tokenizer, request, result, neighbours=neighbours)
    print_effects(effects, neigh, title=f"{request.text} {request.target_true} → {request.target_new}  "
                  f"(edited in {request.lang}, shown in all 12 languages)")
    console.print(f"[dim]demo finished in {time.perf_counter() - t0:.0f} s (model load included)[/dim]")
    return 0
