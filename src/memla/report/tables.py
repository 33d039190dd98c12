"""Paper-style tables from a run's summary, rendered as Markdown, LaTeX, CSV or HTML.

- `main_tables` — Tables 3/4 of the paper: rows = method × metric (ES, PS, NS, and the
  locality metrics NS-margin, NS-keep, fluency, repeats when the run has them), columns =
  ``ls-lt`` for every target plus ``ls-avg``; one table per source language.
- `ablation_tables` — Table 5: rows = methods, columns = ``ls-ls`` and ``ls-avg`` per metric.
- `overview_tables` — the terminal summary: ``ls-ls / ls-avg`` per method and metric.
- `qs_table` — Table 6: multi-hop QS, columns ``ls-ls`` and ``ls-avg`` per source language.
- `timing_table`, `skipped_table` — wall time per method and the cells that could not be run.

Values are percentages (``100 ×`` the fraction) with their standard error, except
fluency (bits) and repeats (a count), printed as they are (`memla.evaluate.metrics.RAW_METRICS`).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memla.evaluate.metrics import AVG, RAW_METRICS, Stat

Cell = Stat | str | None
METRIC_NAMES: dict[str, str] = {"es": "ES", "ps": "PS", "ns": "NS", "ns_margin": "NS-margin", "ns_keep": "NS-keep",
                                "qs": "QS", "fluency": "Fluency", "repeats": "Repeats"}
TABLE_METRICS: tuple[str, ...] = ("es", "ps", "ns", "ns_margin", "ns_keep", "fluency", "repeats")  # QS has its own table


@dataclass(frozen=True)
class Table:
    """A rendered-agnostic table.

    Attributes:
        key: short file-friendly name ("main_en", "ablation_zh", "qs").
        title: caption.
        columns: header cells.
        rows: body rows; a cell is a `Stat` (printed as value ± se), a string, or None.
        notes: lines printed under the table.
    """

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


class StatIndex:
    """Look-up of `Stat` rows by (method, ls, lt, metric)."""

    def __init__(self, stats: Sequence[Stat]) -> None:
        self._by_key = {(s.method, s.ls, s.lt, s.metric): s for s in stats}

    def get(self, method: str, ls: str, lt: str, metric: str) -> Stat | None:
        """The stat of a cell, or None when the run has no data for it."""
        return self._by_key.get((method, ls, lt, metric))

    def has_metric(self, metric: str) -> bool:
        """Whether any cell has data for ``metric``."""
        return any(k[3] == metric for k in self._by_key)

    def metrics(self, metrics: Sequence[str] = TABLE_METRICS) -> list[str]:
        """Those of ``metrics`` the run has data for, in order (ES, PS, NS always: the paper's columns)."""
        return [m for m in metrics if m in ("es", "ps", "ns") or self.has_metric(m)]


def main_tables(stats: Sequence[Stat], *, methods: Sequence[str], sources: Sequence[str], targets: Sequence[str]) -> list[Table]:
    """Tables 3/4 layout, one per source language (paper, Section 5 / Appendix B).

    Args:
        stats: the run summary (`memla.evaluate.metrics.summarize`).
        methods: row order ("unedited" first).
        sources: source languages ``ls``.
        targets: target languages ``lt`` in column order.

    Returns:
        One `Table` per ``ls``; rows = method × metric (`StatIndex.metrics`), columns =
        ``ls-lt`` ..., ``ls-avg``.
    """
    index = StatIndex(stats)
    metrics = index.metrics()
    tables = []
    for ls in sources:
        lts = [*targets, AVG] if any(lt != ls for lt in targets) else list(targets)
        rows = [
            (method, METRIC_NAMES[metric], *(index.get(method, ls, lt, metric) for lt in lts))
            for method in methods
            for metric in metrics
        ]
        tables.append(Table(
            key=f"main_{ls}",
            title=f"Edits in {ls}: {' / '.join(METRIC_NAMES[m] for m in metrics)} per target language "
                  f"(Tables 3/4 layout), % ± s.e.",
            columns=("Method", "Metric", *(f"{ls}-{lt}" for lt in lts)),
            rows=tuple(rows),
        ))
    return tables


def ablation_tables(stats: Sequence[Stat], *, methods: Sequence[str], sources: Sequence[str]) -> list[Table]:
    """Table 5 layout (ablations): ``ls-ls`` and ``ls-avg`` of ES, PS, NS (and the locality metrics) per method.

    Args:
        stats: the run summary.
        methods: row order.
        sources: source languages; one table each.

    Returns:
        One `Table` per ``ls``.
    """
    index = StatIndex(stats)
    metrics = index.metrics()
    tables = []
    for ls in sources:
        cols, rows = ["Method"], []
        for metric in metrics:
            cols += [f"{METRIC_NAMES[metric]} {ls}-{ls}", f"{METRIC_NAMES[metric]} {ls}-avg"]
        for method in methods:
            cells: list[Cell] = [method]
            for metric in metrics:
                cells += [index.get(method, ls, ls, metric), index.get(method, ls, AVG, metric)]
            rows.append(tuple(cells))
        tables.append(Table(key=f"ablation_{ls}", title=f"Edits in {ls}: monolingual and cross-lingual average (Table 5 layout), %",
                            columns=tuple(cols), rows=tuple(rows)))
    return tables


def overview_tables(stats: Sequence[Stat], *, methods: Sequence[str], sources: Sequence[str]) -> list[Table]:
    """The terminal summary of a run: per source language, rows = methods, one column per metric
    holding ``ls-ls / ls-avg`` (no standard errors; narrow enough for a terminal).

    Args:
        stats: the run summary.
        methods: row order.
        sources: source languages; one table each.

    Returns:
        One `Table` per ``ls`` (string cells).
    """
    index = StatIndex(stats)
    metrics = index.metrics()
    tables = []
    for ls in sources:
        rows = tuple((method, *(" / ".join(fmt(index.get(method, ls, lt, m), se=False) for lt in (ls, AVG)) for m in metrics))
                     for method in methods)
        units = "%; fluency in bits, repeats a count" if RAW_METRICS & set(metrics) else "%"
        tables.append(Table(key=f"overview_{ls}", title=f"Edits in {ls}: {ls}-{ls} / {ls}-avg ({units})",
                            columns=("Method", *(METRIC_NAMES[m] for m in metrics)), rows=rows))
    return tables


def qs_table(stats: Sequence[Stat], *, methods: Sequence[str], sources: Sequence[str]) -> Table | None:
    """Table 6 layout: multi-hop QS, ``ls-ls`` and ``ls-avg`` per source language.

    Args:
        stats: the run summary.
        methods: row order.
        sources: source languages.

    Returns:
        The table, or None when the run has no multi-hop data.
    """
    index = StatIndex(stats)
    if not index.has_metric("qs"):
        return None
    cols = ["Method"] + [c for ls in sources for c in (f"{ls}-{ls}", f"{ls}-avg")]
    rows = [(m, *(index.get(m, ls, lt, "qs") for ls in sources for lt in (ls, AVG))) for m in methods]
    return Table(key="qs", title="Multi-hop questions: QS (Table 6 layout), % ± s.e.", columns=tuple(cols), rows=tuple(rows))


def timing_table(manifest: Mapping[str, Any]) -> Table | None:
    """Edits and mean seconds per edit / per evaluation, per method, from the manifest."""
    timings = manifest.get("timings") or {}
    if not timings:
        return None
    rows = []
    for method, t in timings.items():
        n = max(int(t.get("edits", 0)), 1)
        rows.append((method, str(t.get("edits", 0)), f"{t.get('edit_s', 0.0) / n:.2f}", f"{t.get('eval_s', 0.0) / n:.2f}"))
    sessions = manifest.get("sessions", [])
    wall = sum(s.get("wall_s", 0.0) for s in sessions)
    notes = [f"total wall time: {wall:.1f} s over {len(sessions)} session(s)"]
    stopped = sum(s.get("status") in ("running", "interrupted") for s in sessions)
    if stopped:  # a session's manifest is rewritten after every edit, so a killed one counts up to its last edit
        notes.append(f"{stopped} session(s) stopped early (killed, interrupted or still running): "
                     "counted up to their last finished edit")
    return Table(key="timing", title="Time per edit (seconds; evaluation covers every target language)",
                 columns=("Method", "Edits", "Edit s", "Eval s"), rows=tuple(rows), notes=tuple(notes))


def skipped_table(skipped: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Cells that were skipped (method could not serve the record) or missing (no such language)."""
    rows = []
    for method, entry in skipped.items():
        for reason, n in entry["reasons"].items():
            rows.append((method, str(n), reason))
    if not rows:
        return None
    return Table(key="skipped", title="Skipped and missing cells", columns=("Method", "Cells", "Reason"), rows=tuple(rows))


# --------------------------------------------------------------------------- rendering


def fmt(cell: Cell, *, se: bool = True, latex: bool = False) -> str:
    """Format a cell: a `Stat` as ``74.38 ± 1.20`` (percent; fluency and repeats as they are), None as ``–``."""
    if cell is None:
        return "–" if not latex else "--"
    if isinstance(cell, str):
        return cell if not latex else _latex_escape(cell)
    scale = 1 if cell.metric in RAW_METRICS else 100
    value = f"{scale * cell.value:.2f}"
    if not se or cell.se is None:
        return value
    return f"{value}{{\\scriptsize$\\pm${scale * cell.se:.2f}}}" if latex else f"{value} ± {scale * cell.se:.2f}"


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown with the title as a bold caption."""
    align = ["---" if text else "---:" for text in _text_columns(table)]
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in table.rows]
    lines += ["", *table.notes] if table.notes else []
    return "\n".join(lines) + "\n"


def _text_columns(table: Table) -> list[bool]:
    """Per column, whether it holds text (left-aligned) rather than numbers."""
    return [all(isinstance(row[j], str) for row in table.rows) if table.rows else j == 0 for j in range(len(table.columns))]


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$"),
                 ("±", r"$\pm$")):
        text = text.replace(a, b)
    return text


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    spec = "".join("l" if text else "r" for text in _text_columns(table))
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(fmt(c, latex=True) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(table.title)}}}",
              rf"\label{{tab:{table.key.replace('_', '-')}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML ``<table>`` with a caption (values escaped)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in table.notes)
    return f"<table><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def stats_csv(stats: Sequence[Stat]) -> str:
    """Every summary cell in long format: method, ls, lt, metric, value, se, n (fractions)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "ls", "lt", "metric", "value", "se", "n"])
    for s in stats:
        writer.writerow([s.method, s.ls, s.lt, s.metric, f"{s.value:.6f}", "" if s.se is None else f"{s.se:.6f}", s.n])
    return buf.getvalue()
