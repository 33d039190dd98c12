"""The lm-evaluation-harness adapter: our in-memory (edited) model through lm-eval's HFLM, offline.

Skipped when the optional extra is not installed (``pip install 'memla[lm-eval]'``).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_downstream import HAND_MADE, write_jsonl
from test_eval_support import one_thread  # noqa: F401  (fixture)
from tiny import tiny_model

from memla.editors.base import EditResult, apply
from memla.evaluate.downstream import evaluate_tasks
from memla.evaluate.lmeval import local_task_configs, run_lm_eval
from memla.evaluate.tasks import load_task
from memla.models import model_fingerprint

pytest.importorskip("lm_eval")

ZH = [{"id": i, "lang": "zh", "premise": "保罗错过了公交车，所以他走路去上班。", "hypothesis": h, "label": label}
      for i, (h, label) in enumerate([("保罗走路去上班。", 0), ("保罗上班迟到了。", 1), ("保罗坐公交车去上班。", 2)])]


@pytest.fixture
def task_file(tmp_path):
    return write_jsonl(tmp_path / "hand.jsonl", HAND_MADE + ZH)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def test_local_task_configs_keep_strings_and_delimiters(task_file, tmp_path):
    configs = local_task_configs(load_task(task_file), tmp_path)
    assert [c["task"] for c in configs] == ["memla_hand__en", "memla_hand__zh"]
    assert [c["target_delimiter"] for c in configs] == [" ", ""]
    rows = [json.loads(line) for line in open(configs[1]["dataset_kwargs"]["data_files"]["test"], encoding="utf-8")]
    assert rows[0]["context"] == load_task(task_file).items[3].context


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
def test_lm_eval_engine_agrees_with_ours_also_after_an_edit(arch, task_file):
    model, tok = tiny_model(arch)
    before = model_fingerprint(model)
    ours = evaluate_tasks(model, tok, task_file, engine="memla")[task_file]
    theirs = evaluate_tasks(model, tok, task_file, engine="lm-eval")[task_file]
    assert theirs.engine == "lm-eval" and theirs.n == 7
    assert theirs.correct == ours.correct and theirs.correct_norm == ours.correct_norm
    assert theirs.langs == ours.langs
    # an in-memory edit is what lm-eval scores (no copy, nothing written to disk)
    head = dict(model.named_parameters())
    name = next(n for n in head if n.endswith("layers.1.mlp.down_proj.weight") or n.endswith("h.1.mlp.c_proj.weight"))
    delta = torch.randn(head[name].shape, generator=torch.Generator().manual_seed(1)) * 3.0
    with apply(model, EditResult(deltas={name: delta})):
        ours_e = evaluate_tasks(model, tok, task_file, engine="memla")[task_file]
        theirs_e = run_lm_eval(model, tok, ["hand"], local={"hand": load_task(task_file)})["hand"]
    assert theirs_e.correct == ours_e.correct
    assert model_fingerprint(model) == before
