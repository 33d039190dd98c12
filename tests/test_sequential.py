"""Sequential editing: edits accumulate, checkpoints, exact restore, batches, curves and the report parts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from test_eval_support import as_records, small_records
from tiny import save_tiny, tiny_model

from memla.editors import base
from memla.editors.base import EditRequest, EditResult, pristine
from memla.errors import EditError, MemlaError
from memla.evaluate.sequential import downstream_after_edits, edit_sequentially, load_sequential, run_sequential
from memla.models import arch_spec, model_fingerprint
from memla.report.curves import curve_points, curve_tables, write_curves


@dataclass(frozen=True)
class AddConfig:
    """Config of the test-only additive editor.

    Attributes:
        step: ΔW = step everywhere on layer 0's down-projection.
        refuse: record ids the editor refuses (EditError).
        explode_at: raise RuntimeError on this call number (0 = never).
    """

    step: float = 0.25
    refuse: tuple = ()
    explode_at: int = 0


class AddEditor:
    """Test-only editor: a constant ΔW; logs the weight it saw, so accumulation is visible."""

    name = "test-add"

    def __init__(self, config: AddConfig) -> None:
        self.config = config
        self.seen: list[float] = []
        self.batches: list[int] = []

    def _delta(self, model, n: int) -> EditResult:
        if self.config.explode_at and len(self.seen) + 1 == self.config.explode_at:
            raise RuntimeError("boom")
        name = arch_spec(model).down_weight_name(0)
        weight = dict(model.named_parameters())[name]
        self.seen.append(float(weight.double().mean()))
        self.batches.append(n)
        return EditResult(deltas={name: torch.full(weight.shape, self.config.step * n)}, info={"n": n})

    def edit(self, model, tokenizer, request) -> EditResult:
        if request.record_id in self.config.refuse:
            raise EditError("refused")
        return self._delta(model, 1)

    def edit_batch(self, model, tokenizer, requests) -> EditResult:
        return self._delta(model, len(requests))


@pytest.fixture
def add_editor(monkeypatch):
    base.registry()
    monkeypatch.setitem(base._REGISTRY, "test-add", base.EditorEntry("test-add", AddEditor, AddConfig, "add"))


def requests(n: int) -> list[EditRequest]:
    return [EditRequest(prompt="The capital of {} is", subject=f"Country{i}", target_new="Rome", target_true="Paris",
                        record_id=i) for i in range(n)]


def down(model) -> torch.Tensor:
    return dict(model.named_parameters())[arch_spec(model).down_weight_name(0)].detach().clone()


def test_edits_stay_applied_and_are_restored_exactly():
    model, tok = tiny_model("llama")
    w0, fp = down(model), model_fingerprint(model)
    editor = AddEditor(AddConfig(step=0.25))
    steps = []
    with pristine(model):
        for step, events in edit_sequentially(model, tok, editor, requests(5), every=2, progress=False):
            steps.append((step, [e.records for e in events]))
            # no restore in between: the model carries every edit so far
            torch.testing.assert_close(down(model), w0 + 0.25 * step, rtol=0, atol=1e-6)
    assert steps == [(0, []), (2, [(0,), (1,)]), (4, [(2,), (3,)]), (5, [(4,)])]
    # each edit is computed on the model the previous edits left
    assert editor.seen == pytest.approx([float(w0.double().mean()) + 0.25 * k for k in range(5)], abs=1e-6)
    assert torch.equal(down(model), w0) and model_fingerprint(model) == fp


def test_batches_do_not_cross_checkpoints_and_refusals_are_skipped():
    model, tok = tiny_model("gpt2")
    editor = AddEditor(AddConfig(step=0.1))
    got = list(edit_sequentially(model, tok, editor, requests(7), every=3, batch_size=2, progress=False))
    assert [s for s, _ in got] == [0, 3, 6, 7] and editor.batches == [2, 1, 2, 1, 1]
    single = AddEditor(AddConfig(refuse=(1,)))
    events = [e for _, evs in edit_sequentially(model, tok, single, requests(3), progress=False) for e in evs]
    assert [(e.records, e.status) for e in events] == [((0,), "ok"), ((1,), "skipped"), ((2,), "ok")]
    with pytest.raises(MemlaError, match="no batched edits"):
        next(edit_sequentially(model, tok, object(), requests(2), batch_size=2))


def test_restored_after_an_error_mid_sequence_and_the_earlier_curve_kept(add_editor, tmp_path):
    model, tok = tiny_model("gemma3_text")
    fp = model_fingerprint(model)
    records = as_records(small_records()[:2])
    run_sequential(model, tok, records, methods=["test-add"], out=tmp_path, n_edits=2, every=1, progress=False)
    earlier = load_sequential(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        run_sequential(model, tok, records, methods=["test-add"], out=tmp_path, n_edits=2,
                       every=1, configs={"test-add": {"explode_at": 2}}, progress=False)
    assert model_fingerprint(model) == fp
    assert load_sequential(tmp_path) == earlier  # the failed rerun left the complete curve alone
    partial = [json.loads(x) for x in (tmp_path / "sequential.jsonl.partial").read_text().splitlines()]
    assert partial[0]["kind"] == "run" and partial[-1]["kind"] != "end"  # what the failed run got through


def test_run_sequential_lines_curves_and_report_parts(add_editor, tmp_path):
    model, tok = tiny_model("gpt2")
    fp = model_fingerprint(model)
    records = as_records(small_records())
    task = tmp_path / "mini.jsonl"
    task.write_text('{"goal": "To dry hands", "sol1": "use a towel", "sol2": "use water", "label": 0}\n', encoding="utf-8")
    summary = run_sequential(model, tok, records, methods=["test-add"], out=tmp_path, n_edits=3, every=2,
                             sources=["en"], targets=["en", "zh"], configs={"test-add": {"step": 0.01}},
                             tasks=[str(task)], engine="memla", progress=False)
    assert model_fingerprint(model) == fp and summary.edits == 3
    lines = load_sequential(tmp_path)
    kinds = [line["kind"] for line in lines]
    assert kinds[0] == "run" and kinds[-1] == "end" and lines[-1]["restored"] is True
    cells = [line for line in lines if line["kind"] == "cell"]
    assert sorted({c["step"] for c in cells}) == [0, 2, 3]
    # step 0: the unedited model on every fact; later: ES / PS only for the facts edited so far, NS for all
    rated = {(c["step"], c["record"]) for c in cells if c["es"] is not None}
    assert rated == {(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)}
    assert all(c["ns"] is not None for c in cells)
    # locality: NS-keep is measured against step 0, so the unedited model keeps everything; fluency goes with ES
    assert all(c["ns_keep"] == 1.0 for c in cells if c["step"] == 0)
    assert all(0.0 <= c["ns_keep"] <= 1.0 and c["ns_margin"] is not None for c in cells)
    assert {(c["step"], c["record"]) for c in cells if c["fluency"] is not None} == rated
    assert {(line["step"], line["task"]) for line in lines if line["kind"] == "downstream"} == {(0, "mini"), (2, "mini"), (3, "mini")}

    points = curve_points(lines, n_boot=50)
    assert {(p.step, p.stat.metric, p.stat.lt) for p in points} >= {(2, "es", "en"), (2, "es", "avg"), (3, "ns", "zh")}
    (table,) = curve_tables(points)
    assert table.columns == ("Method", "Metric", "0", "2", "3")
    assert [r[1] for r in table.rows] == [f"{m} en-{lt}" for m in ("ES", "PS", "NS", "NS-margin", "NS-keep", "Fluency")
                                          for lt in ("en", "avg")]
    tables, pngs = write_curves(tmp_path, tmp_path / "report")
    assert [t.key for t in tables] == ["sequential_en", "sequential_downstream"]
    assert tables[1].columns == ("Method", "Task", "0", "2", "3", "Δ 3 vs 0")
    ds = {line["step"]: line["correct"] for line in lines if line["kind"] == "downstream"}
    assert tables[1].rows[0][-1].value == pytest.approx(sum(ds[3]) - sum(ds[0]))  # one item: the paired difference
    assert [p.name for p in pngs] == ["curves_en.png"] and pngs[0].read_bytes()[:4] == b"\x89PNG"

    # a second run of the same method replaces its lines instead of mixing them
    run_sequential(model, tok, records, methods=["test-add"], out=tmp_path, n_edits=1, every=1, progress=False)
    assert [line["n_edits"] for line in load_sequential(tmp_path) if line["kind"] == "run"] == [1]


def test_downstream_after_edits_real_memla_on_tiny_model(tmp_path):
    model, tok = tiny_model("llama")
    fp = model_fingerprint(model)
    task = tmp_path / "t.jsonl"
    task.write_text('{"goal": "To dry hands", "sol1": "use a towel", "sol2": "use water", "label": 0}\n'
                    '{"premise": "Anna speaks French.", "hypothesis": "Anna is mute.", "label": 2}\n', encoding="utf-8")
    out = downstream_after_edits(model, tok, as_records(small_records()[:2]), method="memla", tasks=[str(task)],
                                 n_edits=2, config={"max_steps": 3, "ig_steps": 2, "locate_langs": ["en"]},
                                 engine="memla", progress=False)
    assert out["applied"] == 2 and out["skipped"] == 0
    assert [r["task"] for r in out["rows"]] == ["t"] and out["rows"][0]["n"] == 2
    assert model_fingerprint(model) == fp


def test_cli_downstream_after_edits_saves_a_report_table(add_editor, tmp_path, capsys):
    from test_eval_support import small_dataset

    from memla.cli import main
    from memla.report.curves import downstream_table, load_downstream

    save_tiny("gpt2", tmp_path / "m")
    task = tmp_path / "mini.jsonl"
    task.write_text('{"goal": "To dry hands", "sol1": "use a towel", "sol2": "use water", "label": 0}\n', encoding="utf-8")
    args = ["downstream", "--tasks", str(task), "--method", "test-add", "--dataset", str(small_dataset(tmp_path)),
            "--edits", "2", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    assert "sequential test-add edits" in " ".join(capsys.readouterr().out.split())
    (entry,) = load_downstream(tmp_path / "run")
    assert entry["applied"] == 2 and entry["before"]["mini"]["n"] == 1
    table = downstream_table([entry])
    assert table.columns == ("Task", "Method", "Edits", "n", "Before", "After", "Δ") and table.rows[0][:3] == ("mini", "test-add", "2 (en)")
    # another task into the same folder adds an entry; the same measurement again replaces its own
    other = tmp_path / "other.jsonl"
    other.write_text('{"goal": "To cut bread", "sol1": "use a knife", "sol2": "use a spoon", "label": 0}\n', encoding="utf-8")
    assert main([*args[:2], str(other), *args[3:]]) == 0
    assert main(args) == 0
    assert sorted(t for e in load_downstream(tmp_path / "run") for t in e["after"]) == ["mini", "other"]
    # --out keeps before / after pairs only
    assert main(["downstream", "--tasks", str(task), "--out", str(tmp_path / "run")]) == 2
    assert "needs --method" in capsys.readouterr().err


def test_cli_bench_sequential_then_report(add_editor, tmp_path, capsys):
    from test_eval_support import small_dataset

    from memla.cli import main

    save_tiny("gpt2", tmp_path / "m")
    out = tmp_path / "run"
    args = ["bench", "--dataset", str(small_dataset(tmp_path)), "--methods", "test-add", "--targets", "en,zh,ja",
            "--sequential", "2", "--every", "1", "--batch-size", "2", "--model", str(tmp_path / "m"), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    assert "ES en-avg" in capsys.readouterr().out
    (run,) = [line for line in load_sequential(out) if line["kind"] == "run"]
    assert run["batch_size"] == 2 and run["command"][-4:-2] == ["--batch-size", "2"] and run["every"] == 1
    assert main(["report", str(out), "--format", "md,html,png", "--quiet"]) == 0
    md = (out / "report" / "tables.md").read_text(encoding="utf-8")
    assert "| Method | Metric | 0 | 1 | 2 |" in md and "| test-add | NS en-avg |" in md
    assert (out / "report" / "curves" / "curves_en.png").is_file()
    assert "Sequential editing: metrics vs number of edits" in (out / "report" / "report.html").read_text(encoding="utf-8")
    assert main([*args[:-3], "--sequential", "0", "--out", str(out)]) == 2
