"""The `memla` command line.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the module's
``run`` (``run_<name>`` for a command's own sub-commands, as ``memla data check``):
a callable taking the parsed ``argparse.Namespace`` and returning an exit status.  Modules
are discovered automatically and listed in ``--help`` in the order of their
module-level ``ORDER`` number.  Sub-commands parse arguments and call library
functions only.  For the commands that load a model, ``--device`` / ``--device-map``
are checked (and ``--device auto`` resolved) before the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from memla.cli._common import check_compute_arguments
from memla.errors import MemlaError


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered sub-command."""
    from memla import __version__

    parser = argparse.ArgumentParser(
        prog="memla",
        description="memla: multilingual knowledge editing of language models "
        "(MEMLA neuron-masked LoRA, baselines, MKEB-style benchmark).",
    )
    parser.add_argument("--version", action="version", version=f"memla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"{__name__}.{info.name}"))
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, without a traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if hasattr(args, "device"):  # every command that loads a model (`_common.add_compute_arguments`)
            check_compute_arguments(args)
        return int(args.func(args) or 0)
    except MemlaError as err:
        print(f"memla {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
