"""The benchmark runner end to end on a tiny model: cells, skips, manifest, exact restore, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from edit_support import KV_TINY
from test_eval_support import as_records, fake_editors, small_records  # noqa: F401  (fixtures)
from tiny import tiny_model

from memla.editors.kv.stats import FORMAT as STATS_FORMAT
from memla.errors import EditError, MemlaError
from memla.evaluate import load_run, run_bench, score_targets
from memla.evaluate.store import RESULTS, ResultStore, write_manifest

TARGETS = "en,zh,ja,th,fr"
VOLATILE = ("edit_s", "eval_s")  # timings differ between runs


def _stable(lines):
    return sorted(
        (json.dumps({k: v for k, v in line.items() if k not in VOLATILE}, sort_keys=True, ensure_ascii=False) for line in lines)
    )


def _run(out, model, tok, records, **kw):
    kw.setdefault("methods", ["test-shift", "test-prefix"])
    kw.setdefault("sources", "en,zh")
    kw.setdefault("targets", TARGETS)
    return run_bench(model, tok, records, out=out, progress=False, **kw)


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def records():
    return as_records(small_records())


def test_end_to_end_cells_skips_manifest_and_restore(tmp_path, tiny_llama, records, fake_editors):
    model, tok = tiny_llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = _run(tmp_path / "run", model, tok, records)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # restored bitwise

    manifest, lines = load_run(tmp_path / "run")
    # 3 methods (unedited first) x 3 records x 2 ls x 5 lt
    assert len(lines) == summary.written == 90 and summary.reused == 0
    keys = {(ln["method"], ln["record"], ln["ls"], ln["lt"]) for ln in lines}
    assert len(keys) == 90
    by = {(ln["method"], ln["record"], ln["ls"], ln["lt"]): ln for ln in lines}
    # record 1 has no fr edit prompt: "missing" for every method
    assert by[("unedited", 1, "en", "fr")]["status"] == "missing"
    assert "no 'fr'" in by[("test-shift", 1, "zh", "fr")]["reason"]
    # the question-form record is skipped by test-shift with its reason, evaluated for the others
    skipped = by[("test-shift", 2, "en", "zh")]
    assert skipped["status"] == "skipped" and "subject position" in skipped["reason"]
    assert by[("test-prefix", 2, "en", "zh")]["status"] == "ok"
    ok = by[("test-shift", 0, "en", "zh")]
    assert ok["status"] == "ok" and len(ok["es"]) == 1 and len(ok["ps"]) == 1 and len(ok["ns"]) == 1
    assert len(ok["qs"]) == 1 and ok["qs"][0]["answer"] == "罗马"
    assert {"new", "true", "success", "clean"} <= set(ok["es"][0]) and {"mean", "sum", "n"} <= set(ok["es"][0]["new"])
    assert by[("test-shift", 0, "en", "en")]["edit_info"]["lang"] == "en"
    # the unedited model does not depend on ls
    for lt in ("en", "zh", "ja", "th"):
        a, b = dict(by[("unedited", 0, "en", lt)]), dict(by[("unedited", 0, "zh", lt)])
        assert a["es"] == b["es"] and a["ns"] == b["ns"]
    # a weight edit changes scores
    assert ok["es"][0]["new"]["sum"] != by[("unedited", 0, "en", "zh")]["es"][0]["new"]["sum"]

    assert manifest["methods"] == ["unedited", "test-shift", "test-prefix"]
    assert manifest["configs"]["test-shift"] == {"class": "ShiftConfig", "scale": 0.05, "layer": 0, "sleep_s": 0.0}
    assert manifest["status"] == "complete" and manifest["seed"] == 0 and len(manifest["model_fingerprint"]) == 16
    assert {"python", "torch", "transformers", "memla"} <= set(manifest["versions"])
    assert manifest["timings"]["test-shift"]["edits"] == 4  # 2 templated records x 2 ls
    assert manifest["sessions"][0]["written"] == 90


def test_prefix_results_are_scored_with_the_prefix(tmp_path, tiny_llama, records, fake_editors):
    model, tok = tiny_llama
    _run(tmp_path / "run", model, tok, records[:1], methods=["test-prefix"], sources="en")
    _, lines = load_run(tmp_path / "run")
    line = next(ln for ln in lines if ln["method"] == "test-prefix" and ln["lt"] == "ja")
    fact = records[0].edit["ja"]
    prefix = "The capital of France is Rome.\n"
    expected = score_targets(model, tok, [(fact.filled(), fact.target_new, "ja")], prefix=prefix)[0]
    assert line["es"][0]["new"]["sum"] == pytest.approx(expected.sum, abs=1e-5)
    assert line["prefix_chars"] == len(prefix)


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, tiny_llama, records, fake_editors, monkeypatch):
    model, tok = tiny_llama
    small = {"targets": "en,zh,fr"}  # 3 methods x 3 records x 2 ls x 3 lt = 54 cells
    _run(tmp_path / "full", model, tok, records, **small)
    _, full = load_run(tmp_path / "full")

    real_append = ResultStore.append
    calls = {"n": 0}

    def dying_append(self, line):
        calls["n"] += 1
        if calls["n"] == 14:  # in the middle of an edit's group of target languages
            self._handle.write(json.dumps(line).encode()[:40])  # a torn write, as SIGKILL would leave
            self._handle.flush()
            raise KeyboardInterrupt
        real_append(self, line)

    monkeypatch.setattr(ResultStore, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "crash", model, tok, records, **small)
    monkeypatch.setattr(ResultStore, "append", real_append)
    manifest, partial = load_run(tmp_path / "crash")
    assert len(partial) == 13 and manifest["status"] == "interrupted"

    summary = _run(tmp_path / "crash", model, tok, records, **small)
    assert summary.written == 54 - 13
    _, resumed = load_run(tmp_path / "crash")
    assert _stable(resumed) == _stable(full)
    text = (tmp_path / "crash" / RESULTS).read_text(encoding="utf-8")
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())  # the torn line is gone

    again = _run(tmp_path / "crash", model, tok, records, **small)  # the same command once more: nothing to do
    assert again.written == 0 and again.reused == 18


_CHILD = """
import sys
import torch
torch.set_num_threads({threads})  # the parent's count: the resumed and the full run must compute alike
sys.path[:0] = [{tests!r}]
from memla.editors import base
from test_eval_support import as_records, register_test_editors, small_records
from tiny import tiny_model
from memla.evaluate import run_bench
base.registry()
register_test_editors(base._REGISTRY)
model, tok = tiny_model("llama")
run_bench(model, tok, as_records(small_records()), methods=["test-shift", "test-prefix"], sources="en,zh",
          targets={targets!r}, out={out!r}, progress=False, configs={{"test-shift": {{"sleep_s": 0.3}}}})
"""


@pytest.mark.slow  # a real SIGKILL needs a fresh interpreter (~10-20 s); the torn-write test above is the fast twin
def test_sigkill_loses_at_most_the_edit_in_progress(tmp_path, tiny_llama, records, fake_editors):
    model, tok = tiny_llama
    out = tmp_path / "killed"
    script = tmp_path / "child.py"
    threads = torch.get_num_threads()
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent), targets=TARGETS, out=str(out), threads=threads))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / RESULTS
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if results.is_file() and results.read_bytes().count(b"\n") >= 12:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    manifest, partial = load_run(out)
    assert 12 <= len(partial) < 90
    assert manifest["sessions"][0]["torch_threads"] == threads  # the child computed with the parent's thread count
    configs = {"test-shift": {"sleep_s": 0.3}}
    _run(out, model, tok, records, configs=configs)
    _run(tmp_path / "full", model, tok, records, configs=configs)
    assert _stable(load_run(out)[1]) == _stable(load_run(tmp_path / "full")[1])


def test_resume_refuses_a_different_config(tmp_path, tiny_llama, records, fake_editors):
    model, tok = tiny_llama
    _run(tmp_path / "run", model, tok, records[:1], methods=["test-shift"])
    with pytest.raises(MemlaError, match="config of test-shift differs"):
        _run(tmp_path / "run", model, tok, records[:1], methods=["test-shift"], configs={"test-shift": {"scale": 1.0}})
    with pytest.raises(MemlaError, match="seed"):
        _run(tmp_path / "run", model, tok, records[:1], methods=["test-shift"], seed=1)


def test_resume_accepts_a_run_made_before_a_config_field_existed(tmp_path, tiny_llama, records, fake_editors):
    """A field the stored config lacks matches its default (new fields keep the method's old
    behaviour by default), and only its default."""
    model, tok = tiny_llama
    run = tmp_path / "run"
    _run(run, model, tok, records[:1], methods=["test-shift"])
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["configs"]["test-shift"]["sleep_s"]  # as if sleep_s had been added after the run
    path.write_text(json.dumps(manifest))
    with pytest.raises(MemlaError, match="config of test-shift differs"):
        _run(run, model, tok, records[:1], methods=["test-shift"], configs={"test-shift": {"sleep_s": 0.3}})
    _run(run, model, tok, records[:1], methods=["test-shift"])  # the default: resumes
    assert "sleep_s" in load_run(run)[0]["configs"]["test-shift"]


def test_resume_refuses_statistics_of_another_covariance_corpus(tmp_path, tiny_llama, records, fake_editors):
    """ROME's C from another statistics format (another builtin corpus) must not be mixed into one run;
    a run made before the manifest recorded the format used format 1."""
    model, tok = tiny_llama
    run = tmp_path / "run"
    rome = {"rome": {**KV_TINY, "covariance": "stats", "stats_samples": 64, "steps": 2}}
    _run(run, model, tok, records[:1], methods=["rome"], sources="en", targets="en", configs=rome)
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["stats_format"] == STATS_FORMAT > 1
    del manifest["stats_format"]  # as written before the builtin corpus dropped the benchmark's sentences
    path.write_text(json.dumps(manifest))
    with pytest.raises(MemlaError, match=f"rome: key statistics format 1 != {STATS_FORMAT}"):
        _run(run, model, tok, records[:2], methods=["rome"], sources="en", targets="en", configs=rome)
    _run(tmp_path / "other", model, tok, records[:1], methods=["test-shift"], sources="en", targets="en")
    other = json.loads((tmp_path / "other" / "manifest.json").read_text())
    del other["stats_format"]
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(other))
    _run(tmp_path / "other", model, tok, records[:2], methods=["test-shift"], sources="en", targets="en")  # no C


def test_manifest_records_threads_device_and_dtype_per_session(tmp_path, tiny_llama, records, fake_editors, caplog):
    model, tok = tiny_llama
    run = tmp_path / "run"
    _run(run, model, tok, records[:1], methods=["test-shift"], sources="en")
    manifest, _ = load_run(run)
    assert {k: manifest["sessions"][0][k] for k in ("torch_threads", "device", "dtype")} == {
        "torch_threads": torch.get_num_threads(), "device": "cpu", "dtype": "float32"}

    # another thread count: allowed, with a warning naming both counts
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level("WARNING", logger="memla.evaluate.runner"):
            _run(run, model, tok, records[:2], methods=["test-shift"], sources="en")
    finally:
        torch.set_num_threads(threads)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"torch_threads {threads} and this session uses {threads + 1}" in warning
    manifest, lines = load_run(run)
    assert [s["torch_threads"] for s in manifest["sessions"]] == [threads, threads + 1]
    assert {ln["record"] for ln in lines} == {records[0].example_id, records[1].example_id}

    # another device (a run made on a GPU, resumed here): refused unless allowed
    for session in manifest["sessions"]:
        session["device"] = "cuda:0"
    write_manifest(run, manifest)
    with pytest.raises(MemlaError, match="device cuda:0 and this session uses cpu.*--allow-compute-change"):
        _run(run, model, tok, records[:2], methods=["test-shift"], sources="en")
    summary = _run(run, model, tok, records[:2], methods=["test-shift"], sources="en", allow_compute_change=True)
    assert summary.written == 0

    # another dtype: always refused, and the message names it (not only the fingerprint)
    manifest, _ = load_run(run)
    manifest["sessions"][0]["dtype"] = "bfloat16"
    write_manifest(run, manifest)
    with pytest.raises(MemlaError, match="dtype bfloat16, float32 and this session uses float32"):
        _run(run, model, tok, records[:2], methods=["test-shift"], sources="en", allow_compute_change=True)


def test_resume_of_a_manifest_without_session_settings(tmp_path, tiny_llama, records, fake_editors, caplog):
    """Runs written before sessions recorded their settings kept one thread count under "host"."""
    model, tok = tiny_llama
    run = tmp_path / "run"
    _run(run, model, tok, records[:1], methods=["test-shift"], sources="en")
    manifest, _ = load_run(run)
    for session in manifest["sessions"]:
        for key in ("torch_threads", "device", "dtype"):
            del session[key]
    manifest["host"]["torch_threads"] = torch.get_num_threads() + 3
    write_manifest(run, manifest)
    with caplog.at_level("WARNING", logger="memla.evaluate.runner"):
        assert _run(run, model, tok, records[:1], methods=["test-shift"], sources="en").written == 0
    assert f"torch_threads {torch.get_num_threads() + 3} and this session uses" in caplog.text


def test_unknown_method_and_config_keys(tmp_path, tiny_llama, records, fake_editors):
    model, tok = tiny_llama
    with pytest.raises(EditError, match="test-shift"):  # the message lists the known methods
        _run(tmp_path / "run", model, tok, records, methods=["test-shfit"])
    with pytest.raises(MemlaError, match="unknown ShiftConfig key"):
        _run(tmp_path / "run", model, tok, records, methods=["test-shift"], configs={"test-shift": {"sclae": 1}})
    with pytest.raises(MemlaError, match="not in this run"):
        _run(tmp_path / "run", model, tok, records, methods=["test-shift"], configs={"memla": {}})


def test_an_editor_that_mutates_the_model_is_caught(tmp_path, records, fake_editors):
    model, tok = tiny_model("gpt2")
    with pytest.raises(RuntimeError, match="test-mutate.*changed"):
        _run(tmp_path / "run", model, tok, records[:1], methods=["test-mutate"], sources="en")
