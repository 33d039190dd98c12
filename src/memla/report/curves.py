"""Sequential-editing curves and downstream tables (issue 7: what edits cost a model).

- `curve_points` — from ``OUT/sequential.jsonl`` (`memla.evaluate.sequential`): per method,
  ``ls``, checkpoint and metric, the monolingual cell (``lt = ls``) and the cross-lingual
  average (``lt = "avg"``), with the standard errors of `memla.evaluate.metrics.summarize_group`
  (bootstrap over records for NS, closed form for the others).
- `curve_tables` / `curves_png` — metric vs number of edits, as a table and a figure.
- `sequential_downstream_table` — downstream accuracy at every checkpoint of a sequence.
- `downstream_table` — ``memla downstream`` results: accuracy before, after, and the paired
  difference, per task and method.

Figures use matplotlib's object API with the Agg canvas (no global pyplot state).
"""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memla.evaluate.metrics import AVG, RAW_METRICS, Stat, mean_se, summarize_group
from memla.evaluate.sequential import SEQUENTIAL, load_sequential
from memla.langs import order_langs
from memla.report.tables import METRIC_NAMES, Table

log = logging.getLogger(__name__)

DOWNSTREAM = "downstream.json"
CURVE_METRICS: tuple[str, ...] = ("es", "ps", "ns", "ns_margin", "ns_keep", "fluency")


@dataclass(frozen=True)
class CurvePoint:
    """One point of a curve: a summary cell after ``step`` sequential edits.

    Attributes:
        step: requests processed (0 = the unedited model, measured on all N facts).
        stat: the cell (``stat.lt`` is a language or "avg").
    """

    step: int
    stat: Stat


def curve_points(lines: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0) -> list[CurvePoint]:
    """Summarise the "cell" lines of a sequential run.

    Args:
        lines: lines of ``sequential.jsonl``.
        n_boot: bootstrap replicates for NS.
        seed: bootstrap seed.

    Returns:
        Points ordered by method, ls, step, metric, lt.
    """
    targets: dict[tuple[str, str], list[str]] = {}
    rows: dict[tuple[str, str, int, str], dict[tuple[Any, str], float]] = defaultdict(dict)
    for line in lines:
        key = (line["method"], line["ls"])
        if line.get("kind") == "run":
            targets[key] = list(line.get("targets", []))
        elif line.get("kind") == "cell":
            for metric in CURVE_METRICS:
                if line.get(metric) is not None:
                    rows[(*key, int(line["step"]), metric)][(line["record"], line["lt"])] = float(line[metric])
    points = []
    for (method, ls, step, metric), group in sorted(rows.items(), key=lambda kv: kv[0][2]):
        lts = targets.get((method, ls)) or list(order_langs(lt for _, lt in group))
        for stat in summarize_group(group, method=method, ls=ls, metric=metric, lts=lts, n_boot=n_boot, seed=seed):
            points.append(CurvePoint(step, stat))
    order = {k: i for i, k in enumerate(dict.fromkeys((p.stat.method, p.stat.ls) for p in points))}
    return sorted(points, key=lambda p: (order[(p.stat.method, p.stat.ls)], p.step))


def _views(ls: str, points: Sequence[CurvePoint]) -> list[str]:
    return [ls] + ([AVG] if any(p.stat.lt == AVG for p in points) else [])


def curve_tables(points: Sequence[CurvePoint]) -> list[Table]:
    """One table per source language: rows = method × metric × (``ls-ls``, ``ls-avg``), columns = edits.

    Args:
        points: from `curve_points`.

    Returns:
        The tables (values in % ± s.e.; column 0 is the unedited model on all N facts).
    """
    tables = []
    for ls in dict.fromkeys(p.stat.ls for p in points):
        mine = [p for p in points if p.stat.ls == ls]
        steps = sorted({p.step for p in mine})
        index = {(p.stat.method, p.step, p.stat.metric, p.stat.lt): p.stat for p in mine}
        rows = []
        for method in dict.fromkeys(p.stat.method for p in mine):
            for metric in CURVE_METRICS:
                for lt in _views(ls, mine):
                    cells = [index.get((method, s, metric, lt)) for s in steps]
                    if any(c is not None for c in cells):
                        rows.append((method, f"{METRIC_NAMES[metric]} {ls}-{lt}", *cells))
        tables.append(Table(
            key=f"sequential_{ls}",
            title=f"Sequential edits in {ls}: ES / PS / fluency of the facts edited so far, NS / NS-margin / NS-keep "
                  "of all N records, vs number of edits (%, fluency in bits, ± s.e.)",
            columns=("Method", "Metric", *(str(s) for s in steps)),
            rows=tuple(rows),
            notes=("Column 0 is the unedited model, with ES / PS over all N facts.",),
        ))
    return tables


def curves_png(points: Sequence[CurvePoint], *, ls: str, downstream: Sequence[Mapping[str, Any]] = ()) -> bytes:
    """ES, PS, NS (and NS-margin, NS-keep, fluency when measured) against the number of edits, one line per
    method and view (ls-ls solid, ls-avg dashed), and a last panel with downstream accuracy (one marker per
    task) when it was measured; at most four panels a row.

    Args:
        points: from `curve_points`.
        ls: the source language to plot.
        downstream: "downstream" lines of the sequential results (any ``ls``; this one's are plotted).

    Returns:
        PNG bytes.
    """
    # lazy: matplotlib takes most of a second to import, and only PNG output needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mine = [p for p in points if p.stat.ls == ls]
    tasks = [line for line in downstream if line.get("ls") == ls]
    metrics = [m for m in CURVE_METRICS if any(p.stat.metric == m for p in mine)]
    panels = len(metrics) + bool(tasks)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig = Figure(figsize=(3.7 * cols, 3.3 * rows + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(p.stat.method for p in mine))}
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        scale = 1.0 if metric in RAW_METRICS else 100.0
        for method, color in colors.items():
            for lt, style in zip(_views(ls, mine), ("-", "--")):
                pts = sorted((p for p in mine if p.stat.method == method and p.stat.metric == metric and p.stat.lt == lt),
                             key=lambda p: p.step)
                if pts:
                    ax.errorbar([p.step for p in pts], [scale * p.stat.value for p in pts],
                                yerr=[scale * (p.stat.se or 0.0) for p in pts], color=color, linestyle=style,
                                marker="o", markersize=3, capsize=2, label=f"{method} {ls}-{lt}")
        ax.set_title(METRIC_NAMES[metric], fontsize=10)
        ax.set_xlabel("edit requests processed")
        if metric in RAW_METRICS:
            ax.set_ylabel("bits" if metric == "fluency" else "count")
        else:
            ax.set_ylim(-2, 102)
            ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    if tasks:
        _downstream_panel(fig.add_subplot(rows, cols, panels), tasks, colors)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, min(len(labels), 4)), fontsize=8)
    fig.tight_layout(rect=(0, 0.1 / rows, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _downstream_panel(ax, lines: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> None:
    """Downstream accuracy against the number of edits: method by colour, task by marker."""
    markers = {t: m for t, m in zip(dict.fromkeys(line["task"] for line in lines), "os^Dvx*")}
    for (method, task) in dict.fromkeys((line["method"], line["task"]) for line in lines):
        pts = sorted((line for line in lines if (line["method"], line["task"]) == (method, task)), key=lambda x: x["step"])
        ax.errorbar([p["step"] for p in pts], [100 * p["acc"] for p in pts], yerr=[100 * (p.get("acc_se") or 0.0) for p in pts],
                    color=colors.get(method, "C9"), linestyle=":", marker=markers.get(task, "o"), markersize=4, capsize=2,
                    label=f"{method} {task}")
    ax.set_title("downstream accuracy", fontsize=10)
    ax.set_xlabel("edit requests processed")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")


def _acc_stat(method: str, task: str, result: Mapping[str, Any]) -> Stat:
    return Stat(method, "", task, "acc", float(result["acc"]), result.get("acc_se"), int(result["n"]))


def sequential_downstream_table(lines: Sequence[Mapping[str, Any]]) -> Table | None:
    """Downstream accuracy at every checkpoint of the sequences (None when none was measured)."""
    found = [line for line in lines if line.get("kind") == "downstream"]
    if not found:
        return None
    steps = sorted({int(line["step"]) for line in found})
    index = {(line["method"], line["ls"], line["task"], int(line["step"])): line for line in found}
    keys = list(dict.fromkeys((line["method"], line["ls"], line["task"]) for line in found))
    rows = [(m, f"{task} ({ls} edits)", *(None if (m, ls, task, s) not in index else _acc_stat(m, task, index[(m, ls, task, s)])
                                          for s in steps), _paired_change(m, task, index, (m, ls, task), steps))
            for m, ls, task in keys]
    return Table(key="sequential_downstream", title="Downstream accuracy vs number of sequential edits (%, ± s.e.)",
                 columns=("Method", "Task", *(str(s) for s in steps), f"Δ {steps[-1]} vs 0"), rows=tuple(rows),
                 notes=("Δ: accuracy after the last checkpoint minus the unedited model's, with the paired s.e. "
                        "over the same items.",))


def _paired_change(method: str, task: str, index: Mapping[tuple, Mapping[str, Any]], key: tuple, steps: Sequence[int]) -> Stat | None:
    """Accuracy at the last step minus step 0 on the same items, with the paired standard error."""
    first, last = index.get((*key, steps[0])), index.get((*key, steps[-1]))
    if first is None or last is None or len(first["correct"]) != len(last["correct"]):
        return None
    diff, se = mean_se([b - a for a, b in zip(first["correct"], last["correct"])])
    return Stat(method, "", task, "diff", diff, se, len(first["correct"]))


def downstream_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    """``memla downstream`` results: accuracy before / after N edits and the paired difference.

    Args:
        runs: entries of ``downstream.json`` (each has "method", "ls", "n_edits", "applied", "rows").

    Returns:
        Rows = task × method; columns Task, Method, Edits, n, Before, After, Δ (%, ± s.e.).
    """
    rows = []
    for run in runs:
        for row in run["rows"]:
            def stat(key: str) -> Stat:
                return Stat(run["method"], run["ls"], row["task"], key, float(row[key]), row.get(f"{key}_se"), int(row["n"]))

            rows.append((row["task"], run["method"], f"{run['applied']} ({run['ls']})", str(row["n"]),
                         stat("before"), stat("after"), stat("diff")))
    rows.sort(key=lambda r: (r[0].split(":")[0], r[0], r[1]))
    return Table(key="downstream", title="Downstream accuracy before and after sequential edits (%, ± s.e.; Δ paired)",
                 columns=("Task", "Method", "Edits", "n", "Before", "After", "Δ"), rows=tuple(rows),
                 notes=("Accuracy = argmax of the summed log-likelihood of the choices (lm-eval's acc).",))


def load_downstream(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``run_dir/downstream.json`` (empty when there is none)."""
    path = Path(run_dir) / DOWNSTREAM
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


SAME_MEASUREMENT = ("engine", "limit", "batch_size", "dataset", "split", "model", "seed")


def save_downstream(run_dir: str | Path, entry: Mapping[str, Any]) -> Path:
    """Add one ``memla downstream`` result to ``run_dir/downstream.json``.

    It replaces an earlier entry only of the same measurement: method, ls, number of
    edits, tasks, engine, item limit, batch size, dataset, split, model and seed.

    Args:
        run_dir: folder (created).
        entry: JSON-ready result (`memla.evaluate.sequential.downstream_after_edits`, TaskResults as dicts).

    Returns:
        The file's path.
    """
    path = Path(run_dir) / DOWNSTREAM
    path.parent.mkdir(parents=True, exist_ok=True)
    def key(e: Mapping[str, Any]) -> tuple:
        return (e["method"], e["ls"], e["n_edits"], tuple(sorted(e.get("after", {}))), *(str(e.get(k)) for k in SAME_MEASUREMENT))

    same = lambda e: key(e) == key(entry)  # noqa: E731
    runs = [e for e in load_downstream(run_dir) if not same(e)] + [dict(entry)]
    path.write_text(json.dumps(runs, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def has_curves(run_dir: str | Path) -> bool:
    """Whether the run folder holds sequential or downstream results."""
    return (Path(run_dir) / SEQUENTIAL).is_file() or (Path(run_dir) / DOWNSTREAM).is_file()


def sequential_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Run facts for a folder without a bench manifest, from the "run" lines of its sequential results."""
    runs = [line for line in load_sequential(run_dir) if line.get("kind") == "run"]
    if not runs:
        return {}
    first = runs[0]
    return {"dataset": first.get("dataset"), "split": first.get("split"), "n_records": first.get("n_edits"),
            "model": first.get("model"), "model_fingerprint": first.get("model_fingerprint"), "seed": first.get("seed"),
            "methods": list(dict.fromkeys(r["method"] for r in runs)), "sources": list(dict.fromkeys(r["ls"] for r in runs)),
            "targets": first.get("targets", []), "status": "sequential",
            "sessions": [{"command": r["command"]} for r in runs if r.get("command")][-1:]}


def write_curves(run_dir: str | Path, out_dir: str | Path | None, *, n_boot: int = 1000,
                 seed: int = 0) -> tuple[list[Table], list[Path]]:
    """Tables and PNG curves of a run's sequential and downstream results.

    Args:
        run_dir: the run folder (``sequential.jsonl`` and / or ``downstream.json``).
        out_dir: folder for ``curves_<ls>.png`` (created if there is something to plot); None: tables only.
        n_boot: bootstrap replicates for NS.
        seed: bootstrap seed.

    Returns:
        ``(tables, png paths)``; both empty when the run has neither file.
    """
    lines = load_sequential(run_dir)
    points = curve_points(lines, n_boot=n_boot, seed=seed)
    tables = curve_tables(points)
    extra = sequential_downstream_table(lines)
    tables += [extra] if extra is not None else []
    runs = load_downstream(run_dir)
    tables += [downstream_table(runs)] if runs else []
    paths: list[Path] = []
    for ls in dict.fromkeys(p.stat.ls for p in points) if out_dir is not None else ():
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"curves_{ls}.png"
        path.write_bytes(curves_png(points, ls=ls, downstream=[line for line in lines if line.get("kind") == "downstream"]))
        paths.append(path)
    return tables, paths
