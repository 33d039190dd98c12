"""Reports of a benchmark run: paper-style tables (Markdown, CSV, JSON, LaTeX), heatmaps, HTML.

Example::

    from memla.report import build_report, write_report
    report = build_report("runs/mkeb-mini")          # tables + summary, nothing written
    paths = write_report("runs/mkeb-mini", formats=("md", "html"))

Files go to ``RUN/report/`` by default: ``tables.md``, ``summary.csv``,
``summary.json``, ``tables.tex``, ``heatmaps/heatmap_<method>_<metric>.png`` and
``report.html`` (self-contained).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memla.errors import MemlaError
from memla.evaluate.metrics import Stat, skipped_summary, summarize
from memla.evaluate.metrics import UNEDITED
from memla.evaluate.store import load_run
from memla.langs import order_langs
from memla.report.curves import has_curves, sequential_manifest, write_curves
from memla.report.html import render_html
from memla.report.plots import write_heatmaps
from memla.report.tables import (
    Table,
    ablation_tables,
    main_tables,
    qs_table,
    skipped_table,
    stats_csv,
    timing_table,
    to_latex,
    to_markdown,
)

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("md", "csv", "json", "latex", "html", "png")


@dataclass(frozen=True)
class Report:
    """Everything a report shows.

    Attributes:
        run_dir: the run directory.
        manifest: the run manifest.
        stats: the summary cells (`memla.evaluate.metrics.Stat`).
        methods, sources, targets: display order.
        tables: all tables, main tables first.
        skipped: skipped / missing cells per method.
    """

    run_dir: Path
    manifest: dict[str, Any]
    stats: tuple[Stat, ...]
    methods: tuple[str, ...]
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    tables: tuple[Table, ...]
    skipped: dict[str, Any]


def build_report(run_dir: str | Path, *, n_boot: int = 1000, seed: int = 0) -> Report:
    """Read a run and compute its summary and tables (paper Tables 3–6 layouts).

    Args:
        run_dir: a ``memla bench --out`` folder.
        n_boot: bootstrap replicates for NS/QS standard errors.
        seed: bootstrap seed.

    Returns:
        The `Report`.
    """
    run_dir = Path(run_dir)
    curves = has_curves(run_dir)  # `memla bench --sequential` / `memla downstream --out` results
    try:
        manifest, lines = load_run(run_dir)
    except MemlaError:
        if not curves:
            raise
        manifest, lines = sequential_manifest(run_dir), []
    if not lines and not curves:
        raise MemlaError(f"{run_dir}: the run has no results yet")
    present_methods = list(dict.fromkeys(line["method"] for line in lines))
    methods = [m for m in manifest.get("methods", []) if m in present_methods]
    methods += [m for m in present_methods if m not in methods]
    if UNEDITED in methods:
        methods.remove(UNEDITED)
        methods.insert(0, UNEDITED)
    sources = [s for s in manifest.get("sources", []) if any(line["ls"] == s for line in lines)]
    sources += [s for s in dict.fromkeys(line["ls"] for line in lines) if s not in sources]
    targets = [t for t in manifest.get("targets", []) if any(line["lt"] == t for line in lines)]
    targets += [t for t in order_langs(line["lt"] for line in lines) if t not in targets]
    stats = summarize(lines, targets=targets, n_boot=n_boot, seed=seed)
    skipped = skipped_summary(lines)
    tables: list[Table] = main_tables(stats, methods=methods, sources=sources, targets=targets)
    tables += ablation_tables(stats, methods=methods, sources=sources)
    for extra in (qs_table(stats, methods=methods, sources=sources), timing_table(manifest), skipped_table(skipped)):
        if extra is not None:
            tables.append(extra)
    if curves:
        tables += write_curves(run_dir, None, n_boot=n_boot, seed=seed)[0]
    return Report(run_dir, manifest, tuple(stats), tuple(methods), tuple(sources), tuple(targets), tuple(tables), skipped)


def parse_formats(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Validate a format list ("md,csv" or a sequence); "all" selects every format."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if items == ["all"]:
        return FORMATS
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise MemlaError(f"unknown report format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def write_report(
    run_dir: str | Path,
    *,
    formats: str | Sequence[str] = FORMATS,
    out_dir: str | Path | None = None,
    report: Report | None = None,
) -> dict[str, list[Path]]:
    """Write a run's report files.

    Args:
        run_dir: the run directory.
        formats: any of "md", "csv", "json", "latex", "html", "png".
        out_dir: output folder (default ``run_dir/report``).
        report: a `build_report` result to reuse.

    Returns:
        ``{format: [paths written]}``.
    """
    formats = parse_formats(formats)
    report = report or build_report(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}

    def put(fmt: str, name: str, text: str) -> None:
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.setdefault(fmt, []).append(path)

    if "md" in formats:
        put("md", "tables.md", "\n".join(to_markdown(t) for t in report.tables))
    if "csv" in formats:
        put("csv", "summary.csv", stats_csv(report.stats))
    if "json" in formats:
        data = {"methods": report.methods, "sources": report.sources, "targets": report.targets,
                "stats": [s.to_dict() for s in report.stats], "skipped": report.skipped, "manifest": report.manifest}
        put("json", "summary.json", json.dumps(data, indent=2, ensure_ascii=False))
    if "latex" in formats:
        put("latex", "tables.tex", "\n".join(to_latex(t) for t in report.tables))
    images = {}
    if "png" in formats or "html" in formats:
        images = write_heatmaps(report.stats, out / "heatmaps", methods=report.methods,
                                sources=report.sources, targets=report.targets)
        figures = {p.stem: p for p in write_curves(report.run_dir, out / "curves")[1]}
        written["png"] = list(images.values()) + list(figures.values())
    if "html" in formats:
        title = f"memla report: {report.manifest.get('dataset') or report.run_dir.name}"
        put("html", "report.html", render_html(title=title, manifest=report.manifest, tables=report.tables, images=images,
                                               figures=figures))
    return written


__all__ = ["FORMATS", "Report", "build_report", "parse_formats", "write_report"]
