"""Bad input and misuse of every command: exit 2, one line naming the culprit, no traceback, nothing written.

Each row of `CASES` is one kind of mistake a user makes.  The test runs the command
in-process and asserts:

- exit status 2;
- the message is one line ``memla COMMAND: error: ...`` (argparse's own errors too) and
  holds the expected words, which name the file, record, field or option at fault;
- no traceback on stderr;
- nothing was written or changed: the workspace (datasets, output folders, earlier
  runs) and the ``MEMLA_CACHE`` folder are byte for byte as before.

Rows whose ``--model`` is `NO_MODEL` (a path that does not exist) prove that the check
runs before the model loads: a later check would report the missing model instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_eval_support import small_records
from tiny import save_tiny

from memla.cli import main
from memla.config import type_problem
from memla.data import load_dataset

NO_MODEL = "NO_MODEL"


@dataclass(frozen=True)
class Case:
    """One kind of bad input: the command (``{name}`` = a workspace path) and words its message must hold."""

    id: str
    argv: str | list[str]
    expect: str
    setup: Callable[[Path, str], None] | None = None
    env: tuple[tuple[str, str], ...] = ()
    table: bool = False  # `memla data check` lists a dataset's problems as a table on stdout instead


def _prompt(n: int) -> str:
    return "The capital of {} is" + " very" * n


FACT = ["--prompt", "The capital of {} is", "--subject", "France", "--new", "Rome", "--old", "Paris"]
BENCH = "bench --dataset <small.json> --methods ft --targets en --limit 1 --no-progress"


def _bench_once(root: Path, model: str) -> None:
    """A finished one-record run in runs/x (for the resume cases)."""
    assert main(_fill([*BENCH.split(), "--out", "<runs/x>", "--model", "<model>"], root, model)) == 0


def _stale(root: Path, model: str) -> None:
    """A finished run, then record 0 of its dataset changed (a new target)."""
    _bench_once(root, model)
    data = json.loads((root / "small.json").read_text(encoding="utf-8"))
    data[0]["edit"]["en"]["target_new"] = "Berlin"
    (root / "small.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


CASES = [
    # ---- data
    Case("data-check-deep-json", "data check <deep.json>", "JSON nested too deeply"),
    Case("data-check-too-long-prompt", "data check <long.json>", "<long.json>: 1 error(s)", table=True),
    Case("data-check-empty-file", "data check <empty.json>", "the file is empty"),
    Case("data-check-directory", "data check <notrun>", "is a directory"),
    Case("data-check-utf16", "data check <u16.json>", "the file is UTF-16"),
    Case("data-check-missing-file", "data check <nope.json>", "no dataset file or built-in dataset named"),
    Case("data-check-max-problems-negative", "data check mkeb-mini --max-problems -1", "must be at least 0, got -1"),
    Case("data-show-unknown-record", "data show <small.json> --record 99", "no record with id '99'"),
    Case("data-convert-out-directory", "data convert --from mzsre <small.json> --out <notrun>", "is a directory"),
    Case("data-convert-wrong-layout", "data convert --from bmike53 <small.json> --out <conv.json>",
         "does not look like BMIKE-53"),
    Case("data-convert-out-is-input", "data convert --from counterfact <small.json> --out <small.json>",
         "is also an input file"),
    # ---- edit
    Case("edit-save-adapter-is-file", ["edit", *FACT, "--method", "ft", "--save-adapter", "<afile>", "--model", NO_MODEL],
         "--save-adapter <afile> is a file"),
    Case("edit-save-adapter-not-empty", ["edit", *FACT, "--method", "ft", "--save-adapter", "<notrun>",
                                         "--model", NO_MODEL], "pass --overwrite"),
    Case("edit-ike-save-adapter", ["edit", *FACT, "--method", "ike", "--save-adapter", "<new-adapter>",
                                   "--model", NO_MODEL], "ike edits by prompting"),
    Case("edit-save-and-load-adapter", ["edit", *FACT, "--save-adapter", "<new-adapter>", "--load-adapter", "<mixed>",
                                        "--model", NO_MODEL], "exclude each other"),
    Case("edit-config-wrong-type", ["edit", *FACT, "--method", "ft", "--config", "<lr_fast.yaml>", "--model", NO_MODEL],
         "FTConfig.lr must be a number, got 'fast'"),
    Case("edit-config-unknown-key", ["edit", *FACT, "--method", "ft", "--config", "<typo.yaml>", "--model", NO_MODEL],
         "unknown FTConfig key(s) lrr"),
    Case("edit-prompt-too-long", ["edit", "--prompt", _prompt(600), "--subject", "France", "--new", "Rome",
                                  "--model", NO_MODEL], "--prompt: 3020 characters, more than the limit of 2000"),
    Case("edit-max-tokens-exceeded", ["edit", "--prompt", _prompt(20), "--subject", "France", "--new", "Rome",
                                      "--max-tokens", "8", "--model", "<model>"], "en prompt:"),
    Case("edit-max-tokens-zero", ["edit", *FACT, "--max-tokens", "0"], "argument --max-tokens: must be at least 1"),
    Case("edit-foreign-adapter", ["edit", *FACT, "--load-adapter", "<foreign>", "--model", "<model>"],
         "the adapter targets model.layers.9.mlp.down_proj, which this model does not have"),
    Case("edit-prompt-and-target-beyond-context", ["edit", "--prompt", _prompt(60), "--subject", "France", "--new",
                                                   "Rome", "--model", "<model>"],
         "more than what the model's context of 128 tokens allows per text"),
    Case("edit-mixed-adapter-folder", ["edit", *FACT, "--load-adapter", "<mixed>", "--model", "<model>"],
         "holds both a dense edit"),
    Case("edit-pickle-only-model", ["edit", *FACT, "--model", "<pickle-model>"], "holds only pickle weights"),
    Case("edit-corrupt-gguf", ["edit", *FACT, "--model", "<corrupt.gguf>"], "is corrupt or truncated"),
    Case("edit-bad-translation", ["edit", *FACT, "--translation", "zh=oops", "--model", NO_MODEL],
         "--translation #1 must look like LANG=PROMPT|SUBJECT|NEW[|OLD]"),
    Case("edit-unknown-record", "edit --dataset <small.json> --record 99 --model NO_MODEL", "record 99 not found"),
    Case("edit-unknown-method", ["edit", *FACT, "--method", "memal", "--model", NO_MODEL], "unknown method 'memal'"),
    # ---- neurons
    Case("neurons-threshold-out-of-range", "neurons --prompt Paris --target x --threshold 5 --model NO_MODEL",
         "--threshold is a fraction of the maximum score in [0, 1], got 5.0"),
    Case("neurons-steps-zero", "neurons --prompt Paris --target x --steps 0 --model NO_MODEL", "--steps must be at least 1"),
    Case("neurons-layers-unparsable", "neurons --prompt Paris --target x --layers a-b --model NO_MODEL",
         "--layers: cannot parse 'a-b'"),
    Case("neurons-layers-beyond-model", "neurons --prompt Paris --target x --layers 0-99 --model <model>",
         "--layers: the model has layers 0-1, got 99"),
    Case("neurons-unknown-language", "neurons --dataset <small.json> --record 0 --langs en,xx --model NO_MODEL",
         "unknown language code 'xx'"),
    Case("neurons-slot-without-subject", ["neurons", "--prompt", "The capital of {} is", "--target", "Paris",
                                          "--model", NO_MODEL], "give --subject"),
    # ---- bench
    Case("bench-out-is-file", BENCH + " --out <afile> --model NO_MODEL", "--out <afile> is a file"),
    Case("bench-out-under-a-file", BENCH + " --out <afile>/run --model NO_MODEL",
         "<afile> is a file, so the folder cannot be created"),
    Case("bench-out-not-a-run", BENCH + " --out <notrun> --model NO_MODEL", "holds no manifest.json"),
    Case("bench-no-methods", ["bench", "--dataset", "<small.json>", "--methods", "", "--out", "<runs/y>",
                              "--model", NO_MODEL], "--methods names no method"),
    Case("bench-empty-dataset", "bench --dataset <emptylist.json> --methods ft --out <runs/y> --model NO_MODEL",
         "no records (the list is empty)"),
    Case("bench-stale-resume", BENCH + " --out <runs/x> --model <model>",
         "record(s) 0 of <small.json> changed since their results were written", setup=_stale),
    Case("bench-resume-other-seed", BENCH + " --out <runs/x> --seed 1 --model <model>", "seed 0 != 1",
         setup=_bench_once),
    Case("bench-unknown-split", "bench --dataset <small.json> --methods ft --split nosuch --out <runs/y> --model NO_MODEL",
         "no record in split 'nosuch'"),
    Case("bench-sample-zero", BENCH.replace('--limit 1 ', '') + " --sample 0 --out <runs/y> --model NO_MODEL",
         "--sample must be at least 1"),
    Case("bench-method-typo", "bench --dataset <small.json> --methods memla,rmoe --out <runs/y> --model NO_MODEL",
         "unknown method 'rmoe'"),
    Case("bench-unknown-source", "bench --dataset <small.json> --methods ft --source xx --out <runs/y> --model NO_MODEL",
         "unknown language code 'xx'"),
    Case("bench-too-long-prompt", "bench --dataset <long.json> --methods ft --out <runs/y> --model NO_MODEL",
         "<long.json> record 0 [en] edit.prompt: 100020 characters, more than the limit of 2000"),
    Case("bench-bad-shard", BENCH + " --shard 2/2 --out <runs/y> --model NO_MODEL",
         "--shard must be I/N with 0 <= I < N, e.g. 0/4, got '2/2'"),
    Case("bench-workers-without-ray", BENCH + " --workers 4 --out <runs/y> --model NO_MODEL",
         "--workers only apply with --ray"),
    Case("bench-sequential-sharded", BENCH + " --sequential 2 --shard 0/2 --out <runs/y> --model NO_MODEL",
         "cannot be spread with --ray or --shard"),
    Case("bench-merge-one-folder", "bench merge <runs/x> --out <runs/m>", "needs at least two run folders",
         setup=_bench_once),
    Case("bench-merge-not-runs", "bench merge <notrun> <runs/x> --out <runs/m>", "no results.jsonl here",
         setup=_bench_once),
    # ---- report
    Case("report-out-is-file", "report <runs/x> --out <afile>", "--out <afile> is a file", setup=_bench_once),
    Case("report-not-a-run", "report <notrun>", "no results.jsonl here"),
    Case("report-unknown-format", "report <runs/x> --format pdf", "unknown report format(s) pdf", setup=_bench_once),
    # ---- downstream
    Case("downstream-limit-zero", "downstream --tasks piqa-mini --limit 0 --model NO_MODEL", "--limit must be at least 1"),
    Case("downstream-method-without-dataset", "downstream --tasks piqa-mini --method ft --model NO_MODEL",
         "--method needs --dataset"),
    Case("downstream-out-without-method", "downstream --tasks piqa-mini --out <runs/d> --model NO_MODEL",
         "needs --method"),
    # ---- stats
    Case("stats-layer-beyond-model", "stats --layers 99 --model <model>", "layers must be in 0..1, got [99]"),
    Case("stats-missing-corpus", "stats --corpus <nope.txt> --model NO_MODEL", "corpus file not found"),
    Case("stats-unparsable-layers", "stats --layers x --model <model>", "--layers takes layer numbers"),
    # ---- train-mend
    Case("train-mend-steps-zero", "train-mend --steps 0 --model NO_MODEL", "--steps must be at least 1"),
    Case("train-mend-out-is-file", "train-mend --steps 1 --out <afile> --model NO_MODEL", "--out <afile> is a file"),
    Case("train-mend-config-wrong-type", "train-mend --config <lr_fast.yaml> --model NO_MODEL",
         "MendConfig.lr must be a number, got 'fast'"),
    # ---- build
    Case("build-out-not-json", "build --relations P36 --n 1 --out <x.txt>", "--out must end in .json or .jsonl"),
    Case("build-bad-relation", "build --relations Q36 --n 1 --out <x.json>", "bad relation 'Q36'"),
    Case("build-n-zero", "build --relations P36 --n 0 --out <x.json>", "n must be at least 1"),
    # ---- info (model loading)
    Case("info-path-typo", "info --model <missing-dir>/", "model path does not exist"),
    Case("info-hub-offline", "info --model some-org/unknown-model", "the Hugging Face hub is switched off",
         env=(("HF_HUB_OFFLINE", "1"),)),
]


def _fill(argv: list[str], root: Path, model: str) -> list[str]:
    """``<name>`` -> the path of ``name`` in the workspace (``<model>``: the tiny model; `NO_MODEL`: a missing one)."""
    def path(match: re.Match) -> str:
        return model if match[1] == "model" else str(root / match[1])

    return [str(root / "no-such-model") if a == NO_MODEL else re.sub(r"<([^<>]+)>", path, a) for a in argv]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


def _workspace(root: Path, model: str) -> None:
    """The files the cases misuse."""
    records = small_records()
    (root / "small.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    long = json.loads(json.dumps(records))
    long[0]["edit"]["en"]["prompt"] = "The capital of {} is" + " very" * 20_000
    (root / "long.json").write_text(json.dumps(long, ensure_ascii=False), encoding="utf-8")
    (root / "empty.json").write_text("", encoding="utf-8")
    (root / "emptylist.json").write_text("[]", encoding="utf-8")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    (root / "u16.json").write_bytes(json.dumps(records[:1]).encode("utf-16"))
    (root / "afile").write_text("not a folder\n", encoding="utf-8")
    (root / "notrun").mkdir()
    (root / "notrun" / "notes.txt").write_text("mine\n", encoding="utf-8")
    (root / "lr_fast.yaml").write_text("lr: fast\n", encoding="utf-8")
    (root / "typo.yaml").write_text("lrr: 0.1\n", encoding="utf-8")
    (root / "corrupt.gguf").write_bytes(b"GGUF" + os.urandom(256))
    (root / "pickle-model").mkdir()
    shutil.copy(Path(model) / "config.json", root / "pickle-model" / "config.json")
    (root / "pickle-model" / "pytorch_model.bin").write_bytes(b"\x80\x04pickled weights")
    (root / "foreign").mkdir()
    (root / "foreign" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1}))
    save_file({"base_model.model.model.layers.9.mlp.down_proj.lora_A.weight": torch.zeros(1, 4),
               "base_model.model.model.layers.9.mlp.down_proj.lora_B.weight": torch.zeros(4, 1)},
              str(root / "foreign" / "adapter_model.safetensors"))
    (root / "mixed").mkdir()
    for name in ("adapter_config.json", "deltas.safetensors"):
        (root / "mixed" / name).write_text("{}", encoding="utf-8")


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` with a hash of its bytes."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return out


def _call(argv: list[str]) -> int:
    try:
        return int(main(argv))
    except SystemExit as exit_:  # argparse's own errors
        return int(exit_.code)


def test_there_are_at_least_40_kinds():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    commands = {(c.argv.split()[0] if isinstance(c.argv, str) else c.argv[0]) for c in CASES}
    assert commands >= {"data", "edit", "neurons", "bench", "report", "downstream", "stats", "train-mend", "build"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(case, tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    _workspace(tmp_path, model_dir)
    if case.setup is not None:
        case.setup(tmp_path, model_dir)
    argv = _fill(case.argv.split() if isinstance(case.argv, str) else list(case.argv), tmp_path, model_dir)
    cache = Path(os.environ["MEMLA_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    capsys.readouterr()
    before = _snapshot(tmp_path, cache)

    status = _call(argv)

    out, err = capsys.readouterr()
    assert status == 2, err
    assert "Traceback" not in err
    expect = _fill([case.expect], tmp_path, model_dir)[0]
    if case.table:
        assert expect in " ".join(out.split()) and not err.strip()
    else:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith("memla "), err
        assert expect in errors[0]
    assert _snapshot(tmp_path, cache) == before


def test_real_process_prints_one_line_and_no_traceback(tmp_path, model_dir):
    """Through a real interpreter: stderr is the one error line, nothing else."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "small.json").write_text(json.dumps(small_records(), ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "memla", "bench", "--dataset", "small.json", "--methods", "ft", "--out", "afile",
         "--model", "no-such-model/"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "memla bench: error: --out afile is a file; give a folder (new or empty)"


def test_sample_larger_than_the_dataset_warns_and_uses_all(tmp_path, model_dir, caplog):
    (tmp_path / "small.json").write_text(json.dumps(small_records(), ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["bench", "--dataset", str(tmp_path / "small.json"), "--methods", "unedited", "--targets", "en",
                 "--sample", "50", "--model", model_dir, "--out", str(out), "--no-progress"]) == 0
    assert "--sample 50: the dataset has only 3 record(s); using all of them" in caplog.text
    assert {json.loads(line)["record"] for line in (out / "results.jsonl").read_text().splitlines()} == {0, 1, 2}


def test_resume_of_an_unchanged_dataset_goes_on_and_the_manifest_holds_record_hashes(tmp_path, model_dir):
    _workspace(tmp_path, model_dir)
    _bench_once(tmp_path, model_dir)
    manifest = json.loads((tmp_path / "runs" / "x" / "manifest.json").read_text())
    assert set(manifest["records"]) == {"0"} and len(manifest["records"]["0"]) == 16
    assert len(manifest["sessions"][0]["dataset_sha256"]) == 16
    _bench_once(tmp_path, model_dir)  # same data: resumes (nothing to do), no error


def test_manifest_keeps_timings_of_a_killed_session(tmp_path, model_dir, monkeypatch):
    """The manifest is rewritten after every edit: a session killed mid-run keeps its time and edits.

    The manifest is read from disk when the third edit starts, which is what a SIGKILL
    at that moment would leave behind (no ``finally`` runs then).
    """
    from memla.evaluate import runner

    real, seen = runner._run_group, []

    def run_group(*args, **kwargs):
        if len(seen) == 2:  # unedited and ft of record 0 are done
            seen.append(json.loads((tmp_path / "run" / "manifest.json").read_text()))
        else:
            seen.append(None)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_run_group", run_group)
    (tmp_path / "small.json").write_text(json.dumps(small_records(), ensure_ascii=False), encoding="utf-8")
    assert main(["bench", "--dataset", str(tmp_path / "small.json"), "--methods", "ft", "--targets", "en", "--limit", "2",
                 "--model", model_dir, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    at_kill = seen[2]
    assert at_kill["timings"]["ft"]["edits"] == 1 and at_kill["timings"]["ft"]["edit_s"] > 0
    session = at_kill["sessions"][-1]
    assert session["status"] == "running" and session["written"] == 2 and session["wall_s"] > 0
    final = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert final["sessions"][-1]["status"] == "complete" and final["timings"]["ft"]["edits"] == 2


def test_translation_without_an_old_object_is_not_a_flip(tmp_path, model_dir, capsys):
    assert main(["edit", "--prompt", "The capital of {} is", "--subject", "France", "--new", "Rome", "--old", "Paris",
                 "--translation", "zh={}的首都是|法国|罗马", "--method", "ft", "--model", model_dir]) == 0
    out = capsys.readouterr().out
    assert "n/a" in out and "flipped in" in out and "of 1 languages (1 without an old object: n/a)" in out


def test_save_adapter_replaces_a_folder_atomically_and_load_refuses_mixed_folders(tmp_path, model_dir, capsys):
    base = ["edit", *FACT, "--model", model_dir, "--save-adapter", str(tmp_path / "edit")]
    assert main([*base, "--method", "ft-unconstrained"]) == 0
    first = sorted(p.name for p in (tmp_path / "edit").iterdir())
    assert _call([*base, "--method", "memla"]) == 2  # not empty: refused before the edit
    assert sorted(p.name for p in (tmp_path / "edit").iterdir()) == first
    assert main([*base, "--method", "memla", "--overwrite"]) == 0
    second = sorted(p.name for p in (tmp_path / "edit").iterdir())
    assert "adapter_config.json" in second and "deltas.safetensors" not in second  # nothing of the first edit left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edit.")]  # no temporary folders left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "edit").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert main(["edit", *FACT, "--model", model_dir, "--load-adapter", str(tmp_path / "edit")]) == 0


def test_config_types_are_checked_against_the_dataclass():
    from collections.abc import Mapping

    from memla.config import config_from_dict
    from memla.editors.ft import FTConfig

    assert config_from_dict(FTConfig, {"lr": "5e-3"}).lr == 0.005  # YAML 1.1 reads 5e-3 as a string

    assert type_problem("fast", float) == "must be a number"
    assert type_problem(3, float) is None and type_problem(True, float) == "must be a number"
    assert type_problem(1.5, int) == "must be an integer"
    assert type_problem(None, int | None) is None and type_problem("x", int | None) == "must be an integer or null"
    assert type_problem([1, 2], tuple[int, ...]) is None
    assert type_problem([1, "a"], tuple[int, ...]) == "must be a list (each item an integer)"
    assert type_problem([1], tuple[int, int]) == "must be a list of 2 items"
    assert type_problem({"a": "x"}, Mapping[str, float]) == "must be a mapping (each key / value a number)"


def test_record_hash_follows_the_content():
    from memla.evaluate.store import record_digest

    import dataclasses

    a, b = load_dataset("mkeb-mini")[:2]
    assert record_digest(a) == record_digest(load_dataset("mkeb-mini")[0]) != record_digest(b)
    a.edit["en"] = dataclasses.replace(a.edit["en"], target_new=a.edit["en"].target_new + "x")
    assert record_digest(a) != record_digest(load_dataset("mkeb-mini")[0])


def test_a_second_writer_of_one_run_folder_is_refused(tmp_path, model_dir, capsys):
    from memla.evaluate.runner import _lock

    _workspace(tmp_path, model_dir)
    _bench_once(tmp_path, model_dir)
    held = _lock(tmp_path / "runs" / "x")  # another process writing the run
    try:
        argv = _fill([*BENCH.replace("--limit 1", "--limit 2").split(), "--out", "<runs/x>", "--model", "<model>"],
                     tmp_path, model_dir)
        assert _call(argv) == 2
        assert "another memla bench is writing to this run folder" in capsys.readouterr().err
    finally:
        held.close()
    assert _call(argv) == 0  # once it is done, the run resumes
