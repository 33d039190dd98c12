"""Multi-hop score (QS) split by whether the unedited model can answer the two-hop prompt itself.

QS is token F1 between the edited model's greedy answer to a multi-hop prompt ("The capital of
the country where Mount Fuji is located is") and the post-edit answer (``target_new``). A
270M model often cannot answer such a prompt with the *true* object before any edit, and an
editor that changes one fact cannot be expected to make it answer with the new one either;
a high QS there comes from a rule ("every capital is Seoul"), not from the fact. So for each
run and method the table gives QS over all records and separately over:

- **knows**: records where the unedited model's greedy answer to the same prompt shares a
  unit with ``target_true`` (token F1 > 0 under ``--unit``), i.e. it resolves both hops;
- **does not**: the others.

The unedited model's answers are read from the same run (every ``memla bench`` run has the
``unedited`` method); nothing is recomputed and no model is loaded.

    python benchmarks/qs_breakdown.py benchmarks/results/locality_test96 \\
        benchmarks/results/locality_test96_v5 --methods memla memla-local
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

from memla.data import load_dataset
from memla.errors import MemlaError
from memla.evaluate import load_run
from memla.evaluate.metrics import F1_UNITS, token_f1


def qs_rows(lines: list[dict], ls: str, lt: str) -> dict[tuple[str, int | str], dict]:
    """``(method, record) -> line`` of a run's ok result lines of one (ls, lt) cell that have QS items."""
    return {(line["method"], line["record"]): line for line in lines
            if line["ls"] == ls and line["lt"] == lt and line["status"] == "ok" and line.get("qs")}


def percent(values: list[float]) -> str:
    """Mean of F1 values in [0, 1] as a percentage, "–" for none."""
    return f"{100 * mean(values):.1f}" if values else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="memla bench output folders (with manifest.json)")
    parser.add_argument("--methods", nargs="*", default=None, help="methods to show (default: every edited one)")
    parser.add_argument("--ls", default="en", help="source language (default en)")
    parser.add_argument("--lt", default="en", help="target language (default en)")
    parser.add_argument("--unit", default="words", choices=F1_UNITS[1:],
                        help="F1 unit for 'knows' (default words; chars for zh, ja, th)")
    args = parser.parse_args(argv)
    try:
        runs = [(run, *load_run(run)) for run in args.runs]
    except MemlaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = [str(run) for run, manifest, _ in runs if "dataset" not in manifest]
    if missing:
        print(f"error: not memla bench folders (no manifest.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    print(f"| run | method | QS {args.ls}-{args.lt} | knows (n) | QS where it knows | QS where it does not |")
    print("|---|---|---:|---:|---:|---:|")
    for run, manifest, lines in runs:
        records = {r.example_id: r for r in load_dataset(manifest["dataset"], split=manifest["split"])}
        rows = qs_rows(lines, args.ls, args.lt)
        truth = {rec: answer for (m, rec) in rows if m == "unedited"
                 if (answer := records[rec].edit[args.lt].target_true)}
        if not truth:
            print(f"error: {run} has no unedited {args.ls}-{args.lt} results to compare with", file=sys.stderr)
            return 2
        knows = {rec: token_f1(rows["unedited", rec]["qs"][0]["prediction"], answer, unit=args.unit) > 0
                 for rec, answer in truth.items()}
        methods = args.methods or sorted({m for m, _ in rows if m != "unedited"})
        for method in methods:
            f1 = {rec: mean(q["f1"] for q in rows[method, rec]["qs"]) for (m, rec) in rows if m == method and rec in knows}
            if not f1:
                continue
            yes = [v for rec, v in f1.items() if knows[rec]]
            no = [v for rec, v in f1.items() if not knows[rec]]
            name = run.as_posix().removeprefix("benchmarks/results/")
            print(f"| {name} | {method} | {percent(list(f1.values()))} | {len(yes)} of {len(f1)} "
                  f"| {percent(yes)} | {percent(no)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
