"""`memla downstream`: downstream-task accuracy of the model before and after N sequential edits.

Examples::

    memla downstream --tasks piqa-mini,nli-mini,xnli-mini
    memla downstream --tasks piqa-mini,nli-mini,xnli-mini --method memla --dataset mkeb-mini \\
        --split test --edits 20 --out runs/downstream
    memla downstream --tasks piqa,anli_r1 --engine lm-eval --limit 200     # lm-eval's tasks (online)
"""

from __future__ import annotations

import argparse

from memla.cli._common import (
    add_max_tokens_argument,
    add_method_argument,
    add_model_argument,
    check_texts_fit,
    console,
    load_model_from_args,
    print_table,
)

ORDER = 55


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``memla downstream`` to the top-level parser.

    Args:
        subparsers: the top-level sub-parser collection.
    """
    from memla.evaluate.downstream import ENGINES
    from memla.evaluate.tasks import builtin_tasks

    p = subparsers.add_parser(
        "downstream",
        help="downstream-task accuracy (PIQA / NLI style, log-likelihood of the choices) before and after edits",
        description="Score multiple-choice tasks by the log-likelihood of each choice, on the unedited model "
        "and, with --method, after --edits facts from --dataset were edited one after another (no restore in "
        "between; the model is restored at the end). Local tasks (built-in: " + ", ".join(builtin_tasks()) +
        "; or a JSONL file in PIQA / ANLI / XNLI format) run offline; other names are lm-evaluation-harness "
        "tasks (needs the extra: pip install 'memla[lm-eval]', and the network for their datasets).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + __doc__.split("Examples::", 1)[1],
    )
    p.add_argument("--tasks", default=",".join(builtin_tasks()),
                   help="comma-separated task names or JSONL files (default: %(default)s)")
    add_method_argument(p, "--method", default=None,
                        help="editing method (%(methods)s); omit to measure the unedited model only")
    p.add_argument("--config", default=None, help="YAML/JSON file with the method's config")
    p.add_argument("--dataset", default=None, help="dataset with the facts to edit (file or built-in name, e.g. mkeb-mini)")
    p.add_argument("--split", default=None, help="use only records of this split, e.g. test")
    p.add_argument("--edits", type=int, default=20, help="number of sequential edits (default: %(default)s)")
    p.add_argument("--source", default="en", help="source language of the edits (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="requests per edit for methods with batched edits (MEMIT, PMET) (default: %(default)s)")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="auto: memla's scorer for local tasks, lm-eval for the rest (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="at most N items per task")
    p.add_argument("--seed", type=int, default=0, help="edit seed (default: %(default)s)")
    p.add_argument("--out", default=None, help="add the results to OUT/downstream.json (shown by `memla report OUT`)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_max_tokens_argument(p)
    add_model_argument(p)
    p.set_defaults(func=run)


def _pct(value: float, se: float | None) -> str:
    return f"{100 * value:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def run(args: argparse.Namespace) -> int:
    """Measure downstream accuracy as asked by the parsed arguments; returns the exit status."""
    from memla.data import load_dataset
    from memla.editors.base import editor_entry
    from memla.errors import MemlaError
    from memla.evaluate.downstream import check_tasks, evaluate_tasks, split_task_names
    from memla.evaluate.sequential import downstream_after_edits
    from memla.langs import resolve_langs

    tasks = split_task_names(args.tasks)
    check_tasks(tasks, engine=args.engine)  # before loading the model
    if args.limit is not None and args.limit < 1:
        raise MemlaError("--limit must be at least 1")
    if args.out and args.method is None:
        raise MemlaError("--out saves before / after results and needs --method (the unedited scores are printed only)")
    if args.method is None:
        model, tokenizer = load_model_from_args(args)
        with console.status("scoring ..."):
            results = evaluate_tasks(model, tokenizer, tasks, engine=args.engine, limit=args.limit)
        rows = []
        for r in results.values():
            rows.append((r.task, r.engine, r.n, _pct(*r.acc), "–" if r.acc_norm is None else _pct(*r.acc_norm)))
            rows += [(f"  {r.task}:{lang}", r.engine, n, _pct(acc, se), "") for lang, (acc, se, n) in r.by_lang().items()]
        print_table("Downstream accuracy, unedited model (%)", ("Task", "Engine", "n", "acc", "acc_norm"), rows)
        return 0
    editor_entry(args.method)
    if not args.dataset:
        raise MemlaError("--method needs --dataset (the facts to edit)")
    if args.edits < 1 or args.batch_size < 1:
        raise MemlaError("--edits and --batch-size must be at least 1")
    (ls,) = resolve_langs(args.source)[:1]
    records = load_dataset(args.dataset, split=args.split)
    model, tokenizer = load_model_from_args(args)
    check_texts_fit(args, model, tokenizer, [t for r in records for t in r.texts()])
    result = downstream_after_edits(model, tokenizer, records, method=args.method, tasks=tasks, n_edits=args.edits, ls=ls,
                                    config=args.config, batch_size=args.batch_size, engine=args.engine, limit=args.limit,
                                    seed=args.seed, progress=not args.no_progress)
    rows = [(r["task"], r["n"], _pct(r["before"], r["before_se"]), _pct(r["after"], r["after_se"]),
             f"{100 * r['diff']:+.1f}" + ("" if r["diff_se"] is None else f" ± {100 * r['diff_se']:.1f}"))
            for r in result["rows"]]
    title = (f"Downstream accuracy before / after {result['applied']} sequential {args.method} edits ({ls}), "
             f"% ± s.e. ({result['skipped']} skipped, {result['edit_s']:.0f} s editing)")
    print_table(title, ("Task", "n", "Before", "After", "Δ (paired)"), rows)
    if args.out:
        from memla.report.curves import save_downstream

        entry = {**result, "before": {v.task: v.to_dict() for v in result["before"].values()},
                 "after": {v.task: v.to_dict() for v in result["after"].values()},
                 "dataset": args.dataset, "split": args.split, "model": args.model or "default", "seed": args.seed,
                 "engine": args.engine, "limit": args.limit, "batch_size": args.batch_size}
        console.print(f"saved to {save_downstream(args.out, entry)}")
    return 0
