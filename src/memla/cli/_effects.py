"""Rendering of `memla.compare` results as tables (shared by `memla edit` and `memla demo`)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from memla.cli._common import console
from memla.compare import LangEffect, NeighbourEffect


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:5.1f}%"


def print_effects(effects: Sequence[LangEffect], neighbours: Sequence[NeighbourEffect], *, title: str) -> None:
    """Per-language P(new)/P(old) and completions before → after, then the neighbourhood check."""
    table = Table(title=title, caption="P = per-token probability (exp of the mean log-prob), as ES compares")
    for col in ("lang", "prompt", "new / old", "P(new) before→after", "P(old) before→after", "flip",
                "completion before", "completion after"):
        table.add_column(col, overflow="fold")
    for e in effects:
        table.add_row(
            e.lang, e.prompt, f"{e.target_new} / {e.target_true or '-'}",
            f"{_pct(e.p_new_before)} → {_pct(e.p_new_after)}",
            f"{_pct(e.p_old_before)} → {_pct(e.p_old_after)}",
            {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[dim]n/a[/dim]"}[e.flipped],
            e.completion_before, e.completion_after,
        )
    console.print(table)
    judged = [e for e in effects if e.flipped is not None]
    unjudged = len(effects) - len(judged)
    console.print(f"flipped in [bold]{sum(e.flipped for e in judged)} of {len(judged)}[/bold] languages"
                  + (f" ({unjudged} without an old object: n/a)" if unjudged else ""))
    if neighbours:
        table = Table(title="unrelated facts (should not change)",
                      caption="✓ = the true answer appears in the greedy completion")
        for col in ("lang", "prompt", "true answer", "completion before", "completion after"):
            table.add_column(col, overflow="fold")

        def mark(text: str, answer: str) -> str:
            return f"[green]✓[/green] {text}" if answer.casefold() in text.casefold() else f"[red]✗[/red] {text}"

        for n in neighbours:
            table.add_row(n.lang, n.prompt, n.answer, mark(n.completion_before, n.answer),
                          mark(n.completion_after, n.answer))
        console.print(table)
