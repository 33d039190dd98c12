"""`memla bench` and `memla report` through the CLI, on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest
from test_eval_support import fake_editors, small_dataset, small_records  # noqa: F401  (fixtures)
from tiny import save_tiny

from memla.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


def test_bench_then_report(tmp_path, model_dir, fake_editors, capsys):
    data = small_dataset(tmp_path)
    out = tmp_path / "runs" / "small"
    args = ["bench", "--dataset", str(data), "--methods", "test-shift", "--source", "en,zh", "--targets", "en,zh,ja",
            "--limit", "2", "--model", str(model_dir), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * 2 * 2 * 3  # methods x records x ls x lt
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == str(data) and manifest["n_records"] == 2
    command = manifest["sessions"][0]["command"]
    assert command[:4] == ["memla", "bench", "--dataset", str(data)] and "--limit" in command
    assert "zh-avg" in capsys.readouterr().out

    assert main(args) == 0  # resumed: nothing left to do
    assert len((out / "results.jsonl").read_text(encoding="utf-8").splitlines()) == 24
    assert "0 cells written" in capsys.readouterr().out

    assert main(["report", str(out), "--format", "md,csv,json,latex,html", "--quiet"]) == 0
    report = out / "report"
    for name in ("tables.md", "summary.csv", "summary.json", "tables.tex", "report.html"):
        assert (report / name).is_file(), name
    md = (report / "tables.md").read_text(encoding="utf-8")
    assert "| Method | Metric | en-en | en-zh | en-ja | en-avg |" in md
    assert "| test-shift | ES |" in md and "| unedited | NS |" in md
    assert (report / "heatmaps" / "heatmap_test-shift_es.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_bad_input_exits_2(tmp_path, model_dir, fake_editors, capsys):
    data = small_dataset(tmp_path)
    base = ["bench", "--dataset", str(data), "--model", str(model_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*base, "--methods", "test-shfit"]) == 2
    assert "did you mean 'test-shift'" in capsys.readouterr().err
    assert main([*base, "--methods", "test-shift", "--targets", "en,xx"]) == 2
    assert main([*base, "--methods", "test-shift", "--sample", "0"]) == 2
    assert "--sample must be at least 1" in capsys.readouterr().err
    assert main([*base, "--methods", "test-shift", "--downstream", "piqa-mini", "--every", "5"]) == 2
    assert "--every, --downstream only apply with --sequential N" in capsys.readouterr().err
    assert main(["bench", "--dataset", str(tmp_path / "nope.json"), "--methods", "test-shift", "--out", str(tmp_path / "r")]) == 2
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("test-shift:\n  scael: 1.0\n")
    assert main([*base, "--methods", "test-shift", "--config", str(cfg)]) == 2
    assert "scael" in capsys.readouterr().err


def test_bench_sample_spreads_over_relations(tmp_path, model_dir, fake_editors):
    raw = small_records()
    raw[2]["relation"] = "P17"  # records 0 and 1 share P36: a sample of 2 must take record 2
    data = tmp_path / "two-relations.json"
    data.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "runs" / "sample"
    assert main(["bench", "--dataset", str(data), "--methods", "test-shift", "--targets", "en", "--sample", "2",
                 "--model", str(model_dir), "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    picked = {line["record"] for line in lines}
    assert len(picked) == 2 and 2 in picked
    assert "--sample" in json.loads((out / "manifest.json").read_text())["sessions"][0]["command"]


def test_report_bad_input_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text("")
    assert main(["report", str(tmp_path), "--format", "docx"]) == 2
    assert "docx" in capsys.readouterr().err


def test_option_help_lists_library_choices(capsys, monkeypatch):
    from memla.editors import registry
    from memla.evaluate.downstream import ENGINES
    from memla.evaluate.metrics import F1_UNITS

    monkeypatch.setenv("COLUMNS", "2000")  # no line breaks inside hyphenated names
    for argv in (["edit", "--help"], ["bench", "--help"], ["downstream", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "default: None" not in out
        assert all(name in out for name in registry())  # --method / --methods name the registered editors
        if argv[0] != "edit":
            assert "{" + ",".join(ENGINES) + "}" in out
        if argv[0] == "bench":
            assert "{" + ",".join(F1_UNITS) + "}" in out
