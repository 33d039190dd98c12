"""`memla bench`: run editing methods over a dataset in the source × target language matrix.

Example::

    memla bench --dataset mkeb-mini --split test --methods memla,memit \\
        --source en,zh --targets all --out runs/mkeb-mini
    memla bench --dataset mkeb-mini --split test --sample 16 --methods memla,rome \
        --out runs/sample16                                         # one record per relation
    memla bench --dataset mkeb-mini --split test --methods memla,memit --sequential 50 --every 10 \\
        --batch-size 10 --targets en,zh --out runs/sequential      # edits accumulate (curves)
    memla bench ... --ray --workers 2                              # a pool of Ray workers
    memla bench ... --shard 0/2 --out runs/x-0; memla bench merge runs/x-0 runs/x-1 --out runs/x
"""

from __future__ import annotations

import argparse
import logging

from memla.cli._common import (
    add_max_tokens_argument,
    add_method_argument,
    add_model_argument,
    check_texts_fit,
    console,
    load_model_from_args,
    print_table,
)

ORDER = 50

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``memla bench`` to the top-level parser.

    Args:
        subparsers: the top-level sub-parser collection.
    """
    from memla.cli._scale import add_scale_arguments
    from memla.cli._sequential import add_sequential_arguments
    from memla.evaluate.metrics import F1_UNITS

    p = subparsers.add_parser(
        "bench",
        help="benchmark editing methods: ES / PS / NS / QS for every source and target language",
        description="For every record and source language, edit with each method, evaluate every "
        "target language, and restore the weights exactly. The unedited model is measured on the "
        "same cells. Results go to OUT/results.jsonl (one line per method, record, ls, lt) and "
        "OUT/manifest.json; running the same command again resumes where it stopped. "
        "See `memla report OUT` for the tables.",
    )
    p.add_argument("--dataset", help="(required) dataset file (JSON/JSONL, MKEB layout) or built-in name, e.g. mkeb-mini")
    add_method_argument(p, "--methods",
                        help="(required) comma-separated method names, e.g. memla,memit,ike (registered: %(methods)s); "
                        "'unedited' (the model without an edit) is always measured too")
    p.add_argument("--source", default="en", help="source languages ls, comma-separated or 'all' (default: %(default)s)")
    p.add_argument("--targets", default="all", help="target languages lt, comma-separated or 'all' (default: %(default)s)")
    p.add_argument("--split", default=None, help="use only records of this split, e.g. test (default: all records)")
    subset = p.add_mutually_exclusive_group()
    subset.add_argument("--limit", type=int, default=None, help="use only the first N records (after --split)")
    subset.add_argument("--sample", type=int, default=None, metavar="N",
                        help="use N records (after --split) spread evenly over the relations, chosen with --seed; "
                        "datasets are grouped by relation, so --limit N takes N facts of the first relation")
    p.add_argument("--config", default=None,
                   help="YAML/JSON file mapping method name -> its config, e.g. 'memla: {lr: 0.005}'")
    p.add_argument("--seed", type=int, default=0, help="run seed (default: %(default)s)")
    p.add_argument("--f1-unit", default="tokens", choices=F1_UNITS,
                   help="units of the NS/QS token F1 (default: the model's tokens)")
    p.add_argument("--out", help="(required) run directory, e.g. runs/NAME (resumed if it exists)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--allow-compute-change", action="store_true",
                   help="resume a run made on another device (refused by default: the cells would mix devices); "
                   "another torch thread count only warns, another dtype is always refused")
    add_sequential_arguments(p)
    add_scale_arguments(p)
    add_max_tokens_argument(p)
    add_model_argument(p)
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="bench_command", metavar="ACTION", title="actions (optional)")
    merge = actions.add_parser("merge", help="join the run folders of --shard I/N runs into one run",
                               description="Join the --out folders of the shards of one run (same model, seed, "
                               "dataset, configs) into OUT, reporting cells found twice and cells no shard holds.")
    merge.add_argument("runs", nargs="+", metavar="RUN", help="the shards' run folders")
    merge.add_argument("--out", required=True, help="the merged run folder (new or empty)")
    merge.set_defaults(func=run_merge)


def _command(args: argparse.Namespace) -> list[str]:
    """The canonical command line of this run (every option spelled out, defaults included)."""
    from memla.cli._scale import scale_flags
    from memla.cli._sequential import sequential_flags

    cmd = ["memla", "bench", "--dataset", str(args.dataset), "--methods", args.methods, "--source", args.source,
           "--targets", args.targets]
    for flag, value in (("--split", args.split), ("--limit", args.limit), ("--sample", args.sample), ("--config", args.config)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--seed", str(args.seed), "--f1-unit", args.f1_unit, "--model", args.model or "default",
            "--dtype", args.dtype, "--device", str(args.device), *(["--device-map", args.device_map] if args.device_map else []),
            *sequential_flags(args), *scale_flags(args), "--out", str(args.out)]
    return cmd


def run(args: argparse.Namespace) -> int:
    """Run the benchmark as asked by the parsed arguments; returns the exit status."""
    from memla.cli._scale import check_scale, make_executor
    from memla.cli._sequential import check_sequential, run_sequential_bench
    from memla.config import read_method_configs
    from memla.data import load_dataset, stratified_sample
    from memla.editors.base import editor_entry
    from memla.errors import MemlaError
    from memla.evaluate.metrics import UNEDITED
    from memla.evaluate.runner import run_bench
    from memla.evaluate.sequential import SEQUENTIAL
    from memla.evaluate.store import MANIFEST
    from memla.outputs import check_out_dir
    from memla.langs import resolve_langs
    from memla.report import build_report
    from memla.report.tables import overview_tables

    missing = [flag for flag, value in (("--dataset", args.dataset), ("--methods", args.methods), ("--out", args.out))
               if value is None]
    if missing:
        raise MemlaError(f"the following arguments are required: {', '.join(missing)}")
    shard = check_scale(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise MemlaError(f"--methods names no method (got {args.methods!r}); e.g. --methods memla,rome, "
                         "or --methods unedited for the unedited model alone")
    for method in methods:  # fail on a typo before loading anything
        if method != UNEDITED:
            editor_entry(method)
    check_out_dir(args.out, option="--out", markers=(MANIFEST, SEQUENTIAL))
    sources, targets = resolve_langs(args.source), resolve_langs(args.targets)
    configs = read_method_configs(args.config)
    for flag, value in (("--limit", args.limit), ("--sample", args.sample)):
        if value is not None and value < 1:
            raise MemlaError(f"{flag} must be at least 1")
    check_sequential(args)
    records = load_dataset(args.dataset, split=args.split)
    if args.limit is not None:
        records = records[: args.limit]
    if args.sample is not None:
        if args.sample > len(records):
            log.warning("--sample %d: the dataset has only %d record(s)%s; using all of them", args.sample,
                        len(records), f" in split {args.split!r}" if args.split else "")
        records = stratified_sample(records, args.sample, seed=args.seed)
    if not records:
        raise MemlaError(f"{args.dataset}: no records to run" + (f" in split {args.split!r}" if args.split else ""))
    model, tokenizer = load_model_from_args(args)
    check_texts_fit(args, model, tokenizer, [t for r in records for t in r.texts()])
    if args.sequential is not None:
        return run_sequential_bench(args, model, tokenizer, records, methods=methods, sources=sources, targets=targets,
                                    configs=configs, command=_command(args))
    executor = make_executor(args, model, methods=methods, configs=configs, targets=targets)
    summary = run_bench(
        model, tokenizer, records,
        methods=methods, out=args.out, sources=sources, targets=targets, configs=configs, seed=args.seed,
        f1_unit=args.f1_unit, dataset=args.dataset, split=args.split, model_name=args.model or "default",
        command=_command(args), progress=not args.no_progress, allow_compute_change=args.allow_compute_change,
        shard=shard, executor=executor,
    )
    console.print(
        f"{summary.written} cells written, {summary.reused} edits already done, "
        f"{summary.skipped} skipped/missing cells, {summary.wall_s:.1f} s -> {summary.out}"
    )
    report = build_report(summary.out)
    for table in overview_tables(report.stats, methods=report.methods, sources=report.sources):
        print_table(table.title, table.columns, table.rows)
    console.print(f"full tables: memla report {summary.out}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Run ``memla bench merge``; exit status 2 when cells are missing (the merged run is written anyway)."""
    from memla.evaluate.merge import merge_runs

    summary = merge_runs(args.runs, args.out)
    console.print(f"{summary.cells} cells from {len(args.runs)} folders -> {summary.out} "
                  f"({summary.duplicates} duplicate cell(s) dropped)")
    if summary.missing:
        shown = ", ".join("/".join(map(str, key)) for key in summary.missing[:5])
        console.print(f"[red]{len(summary.missing)} cell(s) missing[/red] (method/record/ls/lt: {shown}"
                      + (", ..." if len(summary.missing) > 5 else "") + "); is a shard unfinished or not given?")
        return 2
    console.print(f"complete; tables: memla report {summary.out}")
    return 0
