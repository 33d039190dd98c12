"""One self-contained HTML report: run facts, every table, and the heatmaps inlined as data URIs."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memla.report.tables import Table, to_html

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
thead{background:#f3f3f3} .note{font-size:12px;color:#555} dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{font-weight:600} img{max-width:100%;margin:6px 0} code{background:#f5f5f5;padding:1px 4px}
"""


def _facts(manifest: Mapping[str, Any]) -> str:
    sessions = manifest.get("sessions", [])
    wall = sum(s.get("wall_s", 0.0) for s in sessions)
    facts = [
        ("dataset", f"{manifest.get('dataset')} (split {manifest.get('split') or 'all'}, {manifest.get('n_records')} records)"),
        ("model", f"{manifest.get('model')} ({manifest.get('model_type')}, {manifest.get('dtype')}, fingerprint {manifest.get('model_fingerprint')})"),
        ("methods", ", ".join(manifest.get("methods", []))),
        ("languages", f"ls = {', '.join(manifest.get('sources', []))}; lt = {', '.join(manifest.get('targets', []))}"),
        ("seed", str(manifest.get("seed"))),
        ("status", f"{manifest.get('status')}, {len(sessions)} session(s), {wall:.1f} s wall time"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())),
    ]
    if sessions:
        facts.append(("command", " ".join(sessions[-1].get("command", []))))
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts)
    return f"<dl>{items}</dl>"


def render_html(
    *,
    title: str,
    manifest: Mapping[str, Any],
    tables: Sequence[Table],
    images: Mapping[tuple[str, str], Path | bytes],
    figures: Mapping[str, Path | bytes] | None = None,
) -> str:
    """The complete report page.

    Args:
        title: page title.
        manifest: the run manifest (facts shown at the top).
        tables: tables in display order.
        images: ``{(method, metric): PNG path or bytes}``, inlined as base64.
        figures: ``{name: PNG path or bytes}`` of the sequential-editing curves, inlined too.

    Returns:
        The HTML document (no external resources).
    """
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>", _facts(manifest),
             "<p class='note'>Values are percentages ± standard error (closed form for ES/PS, bootstrap over records "
             "for NS/QS); <code>ls-avg</code> is the mean over target languages other than ls (paper, Appendix B).</p>",
             "<h2>Tables</h2>"]
    parts += [to_html(t) for t in tables]
    if images:
        parts.append("<h2>Source × target heatmaps</h2>")
    for (method, metric), img in images.items():
        data = img if isinstance(img, bytes) else Path(img).read_bytes()
        b64 = base64.b64encode(data).decode("ascii")
        alt = html.escape(f"{method} {metric} heatmap")
        parts.append(f"<figure><img alt='{alt}' src='data:image/png;base64,{b64}'></figure>")
    if figures:
        parts.append("<h2>Sequential editing: metrics vs number of edits</h2>")
    for name, img in (figures or {}).items():
        data = img if isinstance(img, bytes) else Path(img).read_bytes()
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
