"""The sequential mode of `memla bench` (``--sequential N``): its options and its run.

Example::

    memla bench --dataset mkeb-mini --split test --methods memla,memit --sequential 50 --every 10 \\
        --batch-size 10 --targets en,zh,fr,ru --downstream piqa-mini,nli-mini,xnli-mini --out runs/seq
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from memla.cli._common import console, print_table


# defaults of the options that only apply with --sequential (a changed one without it is an error)
SEQUENTIAL_DEFAULTS = {"every": 10, "batch_size": 1, "downstream": None, "engine": "auto"}


def add_sequential_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--sequential``, ``--every``, ``--batch-size``, ``--downstream`` and ``--engine``.

    Args:
        parser: the ``memla bench`` parser.
    """
    from memla.evaluate.downstream import ENGINES

    g = parser.add_argument_group("sequential editing")
    g.add_argument("--sequential", type=int, default=None, metavar="N",
                   help="apply N edits (the first N records) one after another to the same model, without restoring "
                   "in between, and measure ES / PS of the facts edited so far and NS of all N every --every edits "
                   "(OUT/sequential.jsonl; curves in `memla report OUT`); the model is restored at the end. Sequences do not "
                   "resume: a rerun replaces a method's curve once the new one is complete")
    g.add_argument("--every", type=int, default=SEQUENTIAL_DEFAULTS["every"], metavar="K", help="measure every K edits (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=SEQUENTIAL_DEFAULTS["batch_size"], metavar="B",
                   help="requests per edit for methods with batched edits (MEMIT, PMET); others edit one at a time "
                   "(default: %(default)s)")
    g.add_argument("--downstream", default=SEQUENTIAL_DEFAULTS["downstream"], metavar="TASKS",
                   help="also measure downstream accuracy on these tasks at every checkpoint, e.g. piqa-mini,nli-mini "
                   "(see `memla downstream`)")
    g.add_argument("--engine", default=SEQUENTIAL_DEFAULTS["engine"], choices=ENGINES,
                   help="engine of --downstream (default: %(default)s)")


def sequential_flags(args: argparse.Namespace) -> list[str]:
    """The sequential options spelled out, for the canonical command line (empty when not sequential)."""
    if getattr(args, "sequential", None) is None:
        return []
    flags = ["--sequential", str(args.sequential), "--every", str(args.every), "--batch-size", str(args.batch_size)]
    if args.downstream:
        flags += ["--downstream", args.downstream, "--engine", args.engine]
    return flags


def check_sequential(args: argparse.Namespace) -> None:
    """Validate the sequential options before anything is loaded.

    Raises:
        MemlaError: N, K or B below 1, unusable downstream tasks, or sequential options
            without ``--sequential``.
    """
    from memla.errors import MemlaError
    from memla.evaluate.downstream import check_tasks, split_task_names

    if args.sequential is None:
        given = ["--" + key.replace("_", "-") for key, default in SEQUENTIAL_DEFAULTS.items() if getattr(args, key) != default]
        if given:
            raise MemlaError(f"{', '.join(given)} only apply with --sequential N")
        return
    if args.sequential < 1 or args.every < 1 or args.batch_size < 1:
        raise MemlaError("--sequential, --every and --batch-size must be at least 1")
    if args.downstream:
        check_tasks(split_task_names(args.downstream), engine=args.engine)


def run_sequential_bench(
    args: argparse.Namespace,
    model,
    tokenizer,
    records: Sequence,
    *,
    methods: Sequence[str],
    sources: Sequence[str],
    targets: Sequence[str],
    configs: Mapping[str, Any],
    command: Sequence[str],
) -> int:
    """Run ``memla bench --sequential N`` and print the curve tables; returns the exit status.

    Args:
        args: the parsed ``memla bench`` arguments.
        model: the loaded model (restored bitwise at the end).
        tokenizer: its tokenizer.
        records: the records (after ``--split`` / ``--limit`` / ``--sample``).
        methods: method names.
        sources: source languages.
        targets: target languages.
        configs: per-method configs.
        command: the canonical command line, for the run lines.
    """
    from memla.evaluate.downstream import split_task_names
    from memla.evaluate.sequential import load_sequential, run_sequential
    from memla.report.curves import curve_points, curve_tables, sequential_downstream_table
    from memla.report.tables import fmt

    summary = run_sequential(
        model, tokenizer, records, methods=methods, out=args.out, n_edits=args.sequential, every=args.every,
        sources=sources, targets=targets, configs=configs, batch_size=args.batch_size,
        tasks=split_task_names(args.downstream) if args.downstream else None, engine=args.engine, seed=args.seed,
        f1_unit=args.f1_unit, progress=not args.no_progress,
        run_info={"dataset": str(args.dataset), "split": args.split, "model": args.model or "default", "command": list(command)},
    )
    console.print(f"{summary.edits} edits applied in {len(summary.sequences)} sequence(s), {summary.wall_s:.1f} s -> {summary.path}")
    lines = load_sequential(args.out)
    tables = curve_tables(curve_points(lines))
    extra = sequential_downstream_table(lines)
    for table in tables + ([extra] if extra is not None else []):
        print_table(table.title, table.columns, [[fmt(c, se=False) for c in row] for row in table.rows])
    console.print(f"curves: memla report {args.out}")
    return 0
