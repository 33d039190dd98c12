"""Helpers shared by the sub-commands: the console, the --model, compute and --method options, tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence

from rich.console import Console
from rich.table import Table

console = Console()


DEFAULT_DEVICE = "cpu"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--model`` (default: the embedded Gemma 3 270M) and the compute options (`add_compute_arguments`)."""
    parser.add_argument(
        "--model",
        default=None,
        help="model to use: 'default' (the embedded Gemma 3 270M, used when --model is not given), "
        "a Hugging Face hub id, a local model directory or a .gguf file",
    )
    add_compute_arguments(parser)


def _device_name(text: str) -> str:
    """An argparse ``type``: a device name as `memla.devices.CHOICES` lists (availability is checked later)."""
    from memla.devices import CHOICES, is_device_name

    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"expected {CHOICES}, got {text!r}")
    return text


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dtype``, ``--device`` and ``--device-map``: how the model is loaded (`memla.models.load_model`)."""
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weight dtype (default: %(default)s)",
    )
    parser.add_argument(
        "--device", type=_device_name, default=DEFAULT_DEVICE, metavar="{cpu,cuda,cuda:N,auto}",
        help="where the model runs: cpu, cuda (the current GPU), cuda:N, or auto (cuda when available, else cpu); "
        "a CUDA device on a machine without CUDA is refused before the model loads (default: %(default)s)",
    )
    parser.add_argument(
        "--device-map", choices=["auto"], default=None,
        help="split the model's layers over every GPU with accelerate, for a model larger than one GPU "
        "(not with an explicit --device; layers that would be offloaded to the CPU or disk are refused)",
    )


def check_compute_arguments(args: argparse.Namespace) -> None:
    """Resolve ``--device auto`` and refuse a device or device map this machine cannot serve, before any work.

    Raises:
        DeviceError: ``--device cuda[:N]`` without CUDA (or without that GPU), ``--device`` together
            with ``--device-map``, or ``--device-map`` without accelerate.
    """
    from memla.devices import check_device_map, resolve_device

    check_device_map(args.device_map, device=args.device)
    args.device = str(resolve_device(args.device))


class _Deferred:
    """Help text made when argparse formats it (``%(name)s``), not when the parser is built."""

    def __init__(self, make: Callable[[], str]):
        self._make = make

    def __str__(self) -> str:
        return self._make()


def _method_names() -> str:
    from memla.editors import registry

    return ", ".join(registry())


def add_method_argument(parser: argparse.ArgumentParser, flag: str, *, help: str, **kwargs) -> argparse.Action:
    """Add an option naming editing methods; ``%(methods)s`` in ``help`` lists the registered ones.

    The registry imports every editor module (about a second), so the list is made only
    when the help is printed; an unknown name is reported with the known ones by
    `memla.editors.editor_entry`.

    Args:
        parser: the sub-command's parser.
        flag: the option, e.g. ``"--method"``.
        help: its help text.
        **kwargs: passed to ``add_argument``.
    """
    action = parser.add_argument(flag, **kwargs)
    action.methods = _Deferred(_method_names)
    action.help = help  # set after add_argument, which checks help strings (Python 3.14) before `methods` exists
    return action


DEFAULT_MAX_TOKENS = 512


def int_at_least(least: int):
    """An argparse ``type``: an integer of at least ``least`` (argparse reports others, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def add_max_tokens_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-tokens``: the longest prompt or target accepted, checked before any work."""
    parser.add_argument(
        "--max-tokens", type=int_at_least(1), default=DEFAULT_MAX_TOKENS, metavar="N",
        help="refuse (exit 2) any prompt, target or test text longer than N tokens, before editing; the model's "
        "context is the limit when it is shorter (default: %(default)s; datasets are also limited to "
        "memla.data.MAX_TEXT_CHARS characters per text)",
    )


def check_typed_texts(texts: Iterable[tuple[str, str | None]]) -> None:
    """Refuse texts typed on the command line that exceed ``memla.data.MAX_TEXT_CHARS``, before the model loads.

    Args:
        texts: ``(option, text)`` pairs, e.g. ``("--prompt", "The capital of {} is")``; None is skipped.
    """
    from memla.data import MAX_TEXT_CHARS
    from memla.errors import DataError

    for option, text in texts:
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise DataError(f"{option}: {len(text)} characters, more than the limit of {MAX_TEXT_CHARS} (MAX_TEXT_CHARS)")


def check_texts_fit(args: argparse.Namespace, model, tokenizer, texts: Sequence[tuple[str, str]]) -> None:
    """Refuse any ``(label, text)`` longer than ``--max-tokens``, or than the model's context allows (`memla.tokens.check_texts_fit`)."""
    from memla.tokens import check_texts_fit as check

    check(model, tokenizer, texts, max_tokens=args.max_tokens)


def load_model_from_args(args: argparse.Namespace):
    """Load ``(model, tokenizer)`` as asked by ``--model``, ``--dtype``, ``--device`` and ``--device-map``."""
    import torch

    from memla.models import load_model

    with console.status(f"loading model {args.model or 'default'} ..."):
        return load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device, device_map=args.device_map)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print rows as a rich table."""
    table = Table(title=title)
    for col in columns:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)
