"""Heatmaps of the source × target language matrix, one per method and metric (matplotlib).

Uses matplotlib's object API with the Agg canvas, so no global pyplot state or
display backend is touched.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memla.evaluate.metrics import RAW_METRICS, Stat
from memla.report.tables import METRIC_NAMES, StatIndex

log = logging.getLogger(__name__)


def matrix(stats: Sequence[Stat], *, method: str, metric: str, sources: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """The ``ls × lt`` matrix of one method and metric, in percent (NaN where there is no data).

    Args:
        stats: the run summary.
        method: method name.
        metric: one of `memla.evaluate.metrics.METRICS` (fluency and repeats are not scaled to percent).
        sources: row languages.
        targets: column languages.

    Returns:
        Array of shape ``(len(sources), len(targets))``.
    """
    index = StatIndex(stats)
    scale = 1.0 if metric in RAW_METRICS else 100.0
    out = np.full((len(sources), len(targets)), np.nan)  # (S, L)
    for i, ls in enumerate(sources):
        for j, lt in enumerate(targets):
            s = index.get(method, ls, lt, metric)
            if s is not None:
                out[i, j] = scale * s.value
    return out


def heatmap_png(values: np.ndarray, *, sources: Sequence[str], targets: Sequence[str], title: str,
                vmax: float = 100.0, xlabel: str = "target language (lt)", ylabel: str = "source (ls)") -> bytes:
    """Render a ``ls × lt`` matrix (or any rows × languages matrix) as an annotated heatmap.

    Args:
        values: ``(S, L)`` values, percentages unless ``vmax`` says otherwise (NaN = no data).
        sources: row labels.
        targets: column labels.
        title: figure title.
        vmax: the top of the colour scale (the bottom is 0).
        xlabel: what the columns are.
        ylabel: what the rows are.

    Returns:
        PNG bytes.
    """
    # lazy: matplotlib takes most of a second to import, and only PNG output needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.62 * len(targets) + 1.8), max(1.9, 0.5 * len(sources) + 1.3)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(targets)), labels=list(targets))
    ax.set_yticks(range(len(sources)), labels=list(sources))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}" if vmax == 100.0 else f"{values[i, j]:.1f}", ha="center",
                        va="center", fontsize=7, color="white" if values[i, j] < 0.6 * vmax else "black")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_heatmaps(
    stats: Sequence[Stat],
    out_dir: str | Path,
    *,
    methods: Sequence[str],
    sources: Sequence[str],
    targets: Sequence[str],
) -> dict[tuple[str, str], Path]:
    """Write ``heatmap_<method>_<metric>.png`` for every method and metric that has data.

    Args:
        stats: the run summary.
        out_dir: folder for the PNG files (created).
        methods: methods to plot.
        sources: row languages.
        targets: column languages.

    Returns:
        ``{(method, metric): path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for method in methods:
        for metric in METRIC_NAMES:
            values = matrix(stats, method=method, metric=metric, sources=sources, targets=targets)
            if np.isnan(values).all():
                continue
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
            path = out_dir / f"heatmap_{safe}_{metric}.png"
            if metric in RAW_METRICS:
                vmax, unit = max(float(np.nanmax(values)), 1.0), "bits" if metric == "fluency" else "count"
            else:
                vmax, unit = 100.0, "%"
            path.write_bytes(heatmap_png(values, sources=sources, targets=targets,
                                         title=f"{method}: {METRIC_NAMES[metric]} ({unit})", vmax=vmax))
            paths[(method, metric)] = path
    return paths
