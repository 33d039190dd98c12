"""Several bench runs of one method compared on the records every one of them has finished.

A run that is still going (or was stopped, `memla bench` resumes it) has fewer records than
the others; comparing its means with theirs mixes the method's effect with the draw of
records. This script keeps the records for which every named run has an ``ok`` line of the
method in every target language, and summarises each run on those alone with memla's own
metrics (`memla.evaluate.metrics.summarize`, NS-keep against each run's unedited lines):

    python benchmarks/paired_runs.py benchmarks/results/locality_test96_v9_fw6 \\
        benchmarks/results/locality_test96_v8_wt4 benchmarks/results/locality_test96_v5

``RUN:METHOD`` picks another method of a run (default ``--method``, memla-local), e.g.
``benchmarks/results/locality_test96:rome``. Values are percentages, source language ``--ls``
(default en): ``ls-ls`` / ``ls-avg`` (the mean over the other target languages).
With two runs or more, a second table gives each later run's difference from the first, record
by record: the mean over the common records of ``ls-avg(run) − ls-avg(first)`` for ES, PS and
NS-margin, ± the standard error of those per-record differences (a paired comparison: the spread
between records, which the runs share, drops out). Nothing is recomputed and no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memla.errors import MemlaError
from memla.evaluate import load_run
from memla.evaluate.metrics import AVG, UNEDITED, mean_se, record_value, summarize

COLUMNS = (("ES", "es", True), ("PS", "ps", True), ("NS", "ns", False), ("NS-margin", "ns_margin", True),
           ("NS-keep", "ns_keep", True), ("QS", "qs", False))  # (header, metric, with the ls-avg value)
PAIRED = (("ES", "es"), ("PS", "ps"), ("NS-margin", "ns_margin"))  # the paired ls-avg differences


def parse_run(spec: str, default_method: str) -> tuple[Path, str]:
    """``RUN`` or ``RUN:METHOD`` as ``(folder, method)``."""
    folder, _, method = spec.partition(":")
    return Path(folder), method or default_method


def complete_records(lines: list[dict], method: str, ls: str, targets: set[str]) -> set[str]:
    """The records (as JSON keys) whose ``method`` lines from ``ls`` are ``ok`` in every target language."""
    done: dict[str, set[str]] = {}
    for line in lines:
        if line["method"] == method and line["ls"] == ls and line.get("status") == "ok":
            done.setdefault(json.dumps(line["record"]), set()).add(line["lt"])
    return {record for record, lts in done.items() if lts >= targets}


def cross_means(lines: list[dict], method: str, ls: str, records: set[str], metric: str) -> dict[str, float]:
    """Per record (JSON key), the mean of ``metric`` over its target languages other than ``ls`` (the
    record's share of the ``ls-avg`` cell); records without a value in any of them are left out."""
    values: dict[str, list[float]] = {}
    for line in lines:
        record = json.dumps(line["record"])
        if line["method"] == method and line["ls"] == ls and line["lt"] != ls and line.get("status") == "ok" \
                and record in records:
            value = record_value(line, metric)
            if value is not None:
                values.setdefault(record, []).append(value)
    return {record: sum(v) / len(v) for record, v in values.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="memla bench output folders, each optionally :METHOD")
    parser.add_argument("--method", default="memla-local", help="method of runs named without :METHOD (default memla-local)")
    parser.add_argument("--ls", default="en", help="source language (default en)")
    args = parser.parse_args(argv)
    runs = [parse_run(spec, args.method) for spec in args.runs]
    try:
        loaded = [(folder, method, *load_run(folder)) for folder, method in runs]
    except MemlaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    targets = [set(manifest.get("targets") or ()) for *_, manifest, _ in loaded]
    if not all(targets) or any(t != targets[0] for t in targets):
        print("error: the runs must name the same target languages in their manifest.json", file=sys.stderr)
        return 2
    common = set.intersection(*(complete_records(lines, method, args.ls, targets[0]) for _, method, _, lines in loaded))
    if not common:
        print(f"error: no record is complete in every run (method and source {args.ls})", file=sys.stderr)
        return 2
    header = [f"{name} {args.ls}" + (" / avg" if with_avg else "") for name, _, with_avg in COLUMNS]
    print(f"{len(common)} records complete in all {len(loaded)} runs; source {args.ls}, %\n")
    print("| run | method | " + " | ".join(header) + " | ES + NS-margin avg |")
    print("|---|---|" + "---|" * len(COLUMNS) + "---:|")
    for folder, method, _, lines in loaded:
        kept = [line for line in lines if line["method"] in (method, UNEDITED) and json.dumps(line["record"]) in common]
        stats = {(s.lt, s.metric): s.value for s in summarize(kept) if s.method == method and s.ls == args.ls}
        cells = []
        for _, metric, with_avg in COLUMNS:
            values = [stats.get((lt, metric)) for lt in ((args.ls, AVG) if with_avg else (args.ls,))]
            cells.append(" / ".join("–" if v is None else f"{100 * v:.1f}" for v in values))
        total = stats.get((AVG, "es")), stats.get((AVG, "ns_margin"))
        name = folder.as_posix().removeprefix("benchmarks/results/")
        print(f"| {name} | {method} | " + " | ".join(cells) + " | " +
              ("–" if None in total else f"{100 * sum(total):.1f}") + " |")
    if len(loaded) > 1:
        print_paired(loaded, args.ls, common)
    return 0


def print_paired(loaded: list, ls: str, common: set[str]) -> None:
    """The table of each later run's per-record ``ls-avg`` differences from the first run (mean ± SE)."""
    (first, first_method, _, first_lines), later = loaded[0], loaded[1:]
    base = {metric: cross_means(first_lines, first_method, ls, common, metric) for _, metric in PAIRED}
    name = first.as_posix().removeprefix("benchmarks/results/")
    print(f"\npaired against {name} ({first_method}): mean ± standard error of the per-record {ls}-avg differences\n")
    print("| run | method | " + " | ".join(f"Δ {header} {ls}-avg" for header, _ in PAIRED) + " |")
    print("|---|---|" + "---|" * len(PAIRED))
    for folder, method, _, lines in later:
        cells = []
        for _, metric in PAIRED:
            mine = cross_means(lines, method, ls, common, metric)
            shared = sorted(set(mine) & set(base[metric]))
            mean, se = mean_se([100 * (mine[r] - base[metric][r]) for r in shared])
            cells.append("–" if not shared else f"{mean:+.1f}" + ("" if se is None else f" ± {se:.1f}"))
        print(f"| {folder.as_posix().removeprefix('benchmarks/results/')} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
