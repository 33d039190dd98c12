"""Helpers shared by the sub-commands: the console, the --model option, tables."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

console = Console()


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--model`` (default: the embedded Gemma 3 270M) and ``--dtype``."""
    parser.add_argument(
        "--model",
        default=None,
        help="model to use: 'default' (embedded Gemma 3 270M), a Hugging Face hub id, "
        "a local model directory or a .gguf file (default: %(default)s = embedded model)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weight dtype (default: %(default)s)",
    )


def load_model_from_args(args: argparse.Namespace):
    """Load ``(model, tokenizer)`` as asked by ``--model`` / ``--dtype``."""
    import torch

    from memla.models import load_model

    with console.status(f"loading model {args.model or 'default'} ..."):
        return load_model(args.model, dtype=getattr(torch, args.dtype))


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print rows as a rich table."""
    table = Table(title=title)
    for col in columns:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)
