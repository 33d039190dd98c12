"""`memla demo`: what `make demo` runs, on the embedded default model."""

from __future__ import annotations

import argparse

from memla.cli._common import console, load_model_from_args, print_table

ORDER = 1

# "The capital of France is" in the 12 benchmark languages.
CAPITAL_OF_FRANCE = {
    "en": "The capital of France is",
    "zh": "法国的首都是",
    "fr": "La capitale de la France est",
    "de": "Die Hauptstadt von Frankreich ist",
    "ja": "フランスの首都は",
    "ko": "프랑스의 수도는",
    "pt": "A capital da França é",
    "ru": "Столица страны Франция —",
    "it": "La capitale della Francia è",
    "es": "La capital de Francia es",
    "pl": "Stolicą kraju Francja jest",
    "th": "เมืองหลวงของฝรั่งเศสคือ",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="load the embedded model and show its greedy completions in 12 languages",
        description="Load the embedded default model (Gemma 3 270M), print its architecture summary "
        "and its greedy completions of 'The capital of France is' in the 12 benchmark languages.",
    )
    p.set_defaults(func=run, model=None, dtype="float32")


def run(args: argparse.Namespace) -> int:
    import torch

    from memla.models import describe

    model, tok = load_model_from_args(args)
    print_table("embedded default model", ["property", "value"], describe(model).items())
    rows = []
    for lang, prompt in CAPITAL_OF_FRANCE.items():
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False, top_p=None, top_k=None)
        rows.append((lang, prompt, tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).replace("\n", " ⏎ ")))
    print_table("greedy completions", ["lang", "prompt", "completion"], rows)
    console.print("[dim]Editing methods arrive with the MEMLA editor; this demo shows the unedited model.[/dim]")
    return 0
