"""`memla info`: the architecture summary of a model."""

from __future__ import annotations

import argparse

from memla.cli._common import add_model_argument, load_model_from_args, print_table

ORDER = 10


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="show a model's architecture summary (layers, sizes, MLP module paths)",
        description="Load a model and print its type, layers, d_model, d_ff, vocabulary, "
        "parameter count and the module paths memla edits.",
    )
    add_model_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memla.models import describe

    model, _ = load_model_from_args(args)
    print_table(f"model: {args.model or 'default (Gemma 3 270M)'}", ["property", "value"], describe(model).items())
    return 0
