"""Report files from a hand-made run: every format is written and holds the expected cells."""

from __future__ import annotations

import csv
import json

import pytest

from memla.errors import MemlaError
from memla.evaluate.store import ResultStore, write_manifest
from memla.report import build_report, parse_formats, write_report
from memla.report.tables import fmt


def _line(method, record, ls, lt, es, ps, ns, qs=None, status="ok"):
    line = {"method": method, "record": record, "ls": ls, "lt": lt, "status": status,
            "es": [{"success": es}], "ps": [{"success": p} for p in ps], "ns": [{"f1": ns}],
            "qs": [] if qs is None else [{"f1": qs}], "edit_s": 0.1, "eval_s": 0.2}
    return line


@pytest.fixture
def run_dir(tmp_path):
    """A run with methods unedited + memla, ls en/zh, lt en/zh/th, 2 records; memla skips record 1 in zh."""
    store = ResultStore(tmp_path / "results.jsonl")
    for rid in (0, 1):
        for ls in ("en", "zh"):
            for lt in ("en", "zh", "th"):
                store.append(_line("unedited", rid, ls, lt, False, [False, False], 0.5))
                if ls == "zh" and rid == 1:
                    store.append({"method": "memla", "record": rid, "ls": ls, "lt": lt, "status": "skipped",
                                  "reason": "needs the subject position"})
                    continue
                es = lt == ls or rid == 0  # en-en, zh-zh always; cross-lingual only for record 0
                qs = 1.0 if lt == ls and ls == "en" else None
                store.append(_line("memla", rid, ls, lt, es, [True, es], 0.25, qs=qs))
    write_manifest(tmp_path, {"dataset": "mkeb-mini", "split": "test", "n_records": 2, "model": "default",
                              "methods": ["unedited", "memla"], "sources": ["en", "zh"], "targets": ["en", "zh", "th"],
                              "timings": {"memla": {"edits": 3, "edit_s": 3.0, "eval_s": 1.5}},
                              "sessions": [{"wall_s": 12.5, "command": ["memla", "bench"]}], "status": "complete"})
    return tmp_path


def test_main_table_layout_and_cells(run_dir):
    report = build_report(run_dir)
    main_en = next(t for t in report.tables if t.key == "main_en")
    assert main_en.columns == ("Method", "Metric", "en-en", "en-zh", "en-th", "en-avg")
    rows = {(r[0], r[1]): r[2:] for r in main_en.rows}
    assert list(rows)[:3] == [("unedited", "ES"), ("unedited", "PS"), ("unedited", "NS")]  # unedited first
    es = rows[("memla", "ES")]
    assert [fmt(c, se=False) for c in es] == ["100.00", "50.00", "50.00", "50.00"]
    assert fmt(es[1]) == "50.00 ± 50.00"  # closed form: sd 0.707 / sqrt(2)
    assert fmt(rows[("memla", "PS")][1], se=False) == "75.00"  # mean over paraphrases, then records
    assert fmt(rows[("unedited", "NS")][3], se=False) == "50.00"
    main_zh = next(t for t in report.tables if t.key == "main_zh")
    zh = {(r[0], r[1]): r[2:] for r in main_zh.rows}
    assert zh[("memla", "ES")][0].n == 1  # record 1 skipped in zh
    assert report.skipped["memla"]["reasons"] == {"needs the subject position": 3}


def test_table5_and_table6_layouts(run_dir):
    report = build_report(run_dir)
    abl = next(t for t in report.tables if t.key == "ablation_zh")
    assert abl.columns == ("Method", "ES zh-zh", "ES zh-avg", "PS zh-zh", "PS zh-avg", "NS zh-zh", "NS zh-avg")
    assert [r[0] for r in abl.rows] == ["unedited", "memla"]
    qs = next(t for t in report.tables if t.key == "qs")
    assert qs.columns == ("Method", "en-en", "en-avg", "zh-zh", "zh-avg")
    memla = next(r for r in qs.rows if r[0] == "memla")
    assert fmt(memla[1], se=False) == "100.00" and memla[2] is None and memla[3] is None


def test_locality_metrics_get_rows_when_the_run_has_them(tmp_path):
    from memla.report.tables import overview_tables

    store = ResultStore(tmp_path / "results.jsonl")
    for method, cont, kept, entropy in (("unedited", [1, 2, 3, 4], True, 3.25), ("memla", [1, 2, 0, 0], False, 0.5)):
        for rid in (0, 1):
            line = _line(method, rid, "en", "en", True, [True], 0.5)
            line["ns"] = [{"prompt": "p", "f1": 0.5, "margin": {"answer": -1.0, "new": -2.0, "kept": kept},
                           "continuation": cont}]
            line["fluency"] = [{"prompt": "q", "continuation": "x", "entropy": entropy, "repeats": 2 * rid}]
            store.append(line)
    write_manifest(tmp_path, {"methods": ["unedited", "memla"], "sources": ["en"], "targets": ["en"], "sessions": []})
    report = build_report(tmp_path)
    main = next(t for t in report.tables if t.key == "main_en")
    rows = {(r[0], r[1]): r[2] for r in main.rows}
    assert [r[1] for r in main.rows if r[0] == "memla"] == ["ES", "PS", "NS", "NS-margin", "NS-keep", "Fluency", "Repeats"]
    assert fmt(rows[("memla", "NS-margin")], se=False) == "0.00" and fmt(rows[("unedited", "NS-margin")], se=False) == "100.00"
    assert fmt(rows[("memla", "NS-keep")], se=False) == "50.00"  # 2 of 4 tokens kept
    assert fmt(rows[("memla", "Fluency")]) == "0.50 ± 0.00"  # bits, not percent
    assert fmt(rows[("memla", "Repeats")]) == "1.00 ± 1.00"
    (overview,) = overview_tables(report.stats, methods=report.methods, sources=report.sources)
    assert overview.columns == ("Method", "ES", "PS", "NS", "NS-margin", "NS-keep", "Fluency", "Repeats")
    assert overview.rows[1][:2] == ("memla", "100.00 / –") and overview.rows[1][6] == "0.50 / –"
    written = write_report(tmp_path, formats="png")
    assert {p.name for p in written["png"] if "fluency" in p.name} == {"heatmap_memla_fluency.png", "heatmap_unedited_fluency.png"}


def test_every_format_is_written(run_dir):
    written = write_report(run_dir)
    out = run_dir / "report"
    md = (out / "tables.md").read_text(encoding="utf-8")
    assert "| Method | Metric | en-en | en-zh | en-th | en-avg |" in md
    assert "| memla | ES | 100.00 ± 0.00 | 50.00 ± 50.00 | 50.00 ± 50.00 | 50.00 ± 50.00 |" in md
    assert "total wall time: 12.5 s" in md and "needs the subject position" in md
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    cell = next(r for r in rows if (r["method"], r["ls"], r["lt"], r["metric"]) == ("memla", "en", "avg", "es"))
    assert float(cell["value"]) == pytest.approx(0.5) and int(cell["n"]) == 2
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["methods"] == ["unedited", "memla"] and summary["manifest"]["dataset"] == "mkeb-mini"
    tex = (out / "tables.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}{llrrrr}" in tex and r"100.00{\scriptsize$\pm$0.00}" in tex and r"\label{tab:main-en}" in tex
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(written["png"]) >= 7  # 2 methods x ES/PS/NS, + memla QS
    assert "en-avg" in html and "mkeb-mini" in html and "<script" not in html
    for path in written["png"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in written["png"]} >= {"heatmap_memla_es.png", "heatmap_unedited_ns.png"}


def test_format_selection(run_dir, tmp_path):
    written = write_report(run_dir, formats="md,csv", out_dir=tmp_path / "only")
    assert set(written) == {"md", "csv"}
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["summary.csv", "tables.md"]
    assert parse_formats("all") == ("md", "csv", "json", "latex", "html", "png")
    with pytest.raises(MemlaError, match="docx"):
        parse_formats("md,docx")


def test_report_tolerates_a_truncated_last_line(run_dir):
    with open(run_dir / "results.jsonl", "ab") as f:
        f.write(b'{"method": "memla", "rec')
    before = (run_dir / "results.jsonl").read_bytes()
    assert build_report(run_dir).methods == ("unedited", "memla")
    assert (run_dir / "results.jsonl").read_bytes() == before  # reading a run never changes it


def test_a_corrupt_middle_line_is_an_error(run_dir):
    path = run_dir / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3][:20]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MemlaError, match="line 4"):
        build_report(run_dir)
