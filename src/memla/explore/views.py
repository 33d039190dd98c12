"""What the explore page shows, as plain rows and PNG charts (no UI library).

Each ``*_rows`` function turns `MethodRun` results into the rows of one table of the page
(strings and numbers, with the column names in the matching ``*_COLUMNS``); the charts are
a languages × methods heatmap (`memla.report.plots.heatmap_png`) and a bar chart of the
knowledge neurons per layer (matplotlib's object API, no global pyplot state).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from memla.explore.session import MethodRun
from memla.langs import order_langs
from memla.report.plots import heatmap_png

SUMMARY_COLUMNS = ("method", "flipped", "NS-margin before → after", "NS-keep", "fluency before → after (bits)",
                   "repeats of new", "edit s", "note")
RESULT_COLUMNS = ("method", "lang", "prompt", "new / old", "P(new) before → after", "P(old) before → after", "flip",
                  "completion before", "completion after")
NEIGHBOURHOOD_COLUMNS = ("method", "lang", "prompt", "answer", "before", "after",
                         "answer beats new (before → after)", "NS-keep")
FLUENCY_COLUMNS = ("method", "lang", "continuation before", "continuation after", "entropy before → after (bits)",
                   "repeats of new")
NEURON_COLUMNS = ("method", "lang", "rank", "layer", "neuron", "IG score", "relative", "kind")
RESULT_WIDTHS = ("9%", "4%", "17%", "9%", "9%", "9%", "4%", "19%", "20%")
STATUS_COLUMNS = ("method", "status", "edit s")
FLIP = {True: "yes", False: "no", None: "n/a"}


def pct(value: float | None) -> str:
    """A share as a percentage ("–" when unknown)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def prob(value: float | None) -> str:
    """A probability as a percentage, with two significant digits below 1% (P(new) often starts near 0)."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if value >= 0.01 or value == 0 else f"{100 * value:.2g}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _arrow(before: str, after: str) -> str:
    return f"{before} → {after}"


def summary_rows(runs: Sequence[MethodRun]) -> list[list[str]]:
    """One row per method: languages flipped, and the locality and fluency averaged over the languages."""
    rows = []
    for run in runs:
        if run.error:
            rows.append([run.method, "–", "–", "–", "–", "–", "–", run.error])
            continue
        loc = run.locality.values()
        flipped, judged = run.flips
        rows.append([
            run.method, f"{flipped} / {judged}",
            _arrow(pct(_mean(x.ns_margin_before for x in loc)), pct(_mean(x.ns_margin_after for x in loc))),
            pct(_mean(x.ns_keep for x in loc)),
            _arrow(_num(_mean(x.fluency_before for x in loc)), _num(_mean(x.fluency_after for x in loc))),
            _num(_mean(x.repeats_after for x in loc)), f"{run.seconds:.1f}",
            "prompt prefix (no weights changed)" if run.result is not None and run.result.prefix else "",
        ])
    return rows


def result_rows(runs: Sequence[MethodRun]) -> list[list[str]]:
    """One row per method and language: P(new), P(old) before → after, the flip, greedy completions."""
    return [[run.method, e.lang, e.prompt, f"{e.target_new} / {e.target_true or '–'}",
             _arrow(prob(e.p_new_before), prob(e.p_new_after)), _arrow(prob(e.p_old_before), prob(e.p_old_after)),
             FLIP[e.flipped], e.completion_before, e.completion_after]
            for run in runs for e in run.effects]


def neighbour_rows(runs: Sequence[MethodRun]) -> list[list[str]]:
    """One row per method and neighbourhood prompt: continuations before and after, NS-margin, NS-keep."""

    def mark(kept: bool | None) -> str:
        return {True: "✓", False: "✗", None: "–"}[kept]

    return [[run.method, n.lang, n.prompt, n.answer, n.before, n.after,
             _arrow(mark(n.kept_before), mark(n.kept_after)), pct(n.keep)]
            for run in runs for n in run.neighbours]


def fluency_rows(runs: Sequence[MethodRun]) -> list[list[str]]:
    """One row per method and language: the edit prompt's continuation before and after, entropy, repeats."""
    return [[run.method, f.lang, f.before, f.after, _arrow(_num(f.entropy_before), _num(f.entropy_after)),
             str(f.repeats_after)]
            for run in runs for f in run.fluency]


def neuron_rows(runs: Sequence[MethodRun]) -> list[list[str]]:
    """One row per MEMLA-family method, locating language and top neuron."""
    return [[run.method, t.lang, str(t.rank), str(t.layer), str(t.index), f"{t.score:.4g}", pct(t.relative), t.kind]
            for run in runs if run.neurons for t in run.neurons.top]


def status_rows(status: Mapping[str, tuple[str, float | None]]) -> list[list[str]]:
    """The progress table: ``{method: (stage, edit seconds or None)}`` in run order."""
    return [[m, stage, "" if s is None else f"{s:.1f}"] for m, (stage, s) in status.items()]


def flip_heatmap(runs: Sequence[MethodRun]) -> bytes | None:
    """Methods × languages: ``P(new) / (P(new) + P(old))`` after the edit, in percent (above 50: flipped).

    Returns:
        PNG bytes, or None when no method has results.
    """
    done = [r for r in runs if r.effects]
    if not done:
        return None
    langs = order_langs({e.lang for r in done for e in r.effects})
    values = np.full((len(done), len(langs)), np.nan)  # (M, L)
    for i, run in enumerate(done):
        for e in run.effects:
            if e.p_old_after is not None and e.p_new_after + e.p_old_after > 0:
                values[i, langs.index(e.lang)] = 100 * e.p_new_after / (e.p_new_after + e.p_old_after)
    return heatmap_png(values, sources=[r.method for r in done], targets=langs, xlabel="language", ylabel="method",
                       title="after the edit: P(new) / (P(new) + P(old)), % (above 50 = flipped)")


def neuron_chart(runs: Sequence[MethodRun]) -> bytes | None:
    """Per MEMLA-family method, language-specific and language-independent neurons per layer (stacked bars).

    Returns:
        PNG bytes, or None when no method located neurons.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in runs if r.neurons and r.neurons.counts]
    if not shown:
        return None
    fig = Figure(figsize=(4.2 * len(shown) + 0.6, 3.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, run in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        layers = list(run.neurons.counts)
        specific = [run.neurons.counts[layer][0] for layer in layers]
        independent = [run.neurons.counts[layer][1] for layer in layers]
        x = np.arange(len(layers))
        ax.bar(x, specific, color="#4c72b0", label="language-specific (S)")
        ax.bar(x, independent, bottom=specific, color="#dd8452", label="language-independent (I)")
        ax.set_xticks(x, labels=[str(layer) for layer in layers])
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons")
        ax.set_title(f"{run.method}: neurons per edited layer", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
