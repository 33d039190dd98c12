"""The lm-evaluation-harness adapter: our in-memory (edited) model through lm-eval's HFLM, offline.

Skipped when the optional extra is not installed (``pip install 'memla[lm-eval]'``).
"""

from __future__ import annotations

import pytest
import torch
from test_downstream import HAND_MADE, write_jsonl
from tiny import tiny_model

from memla.editors.base import EditResult, apply
from memla.evaluate.downstream import evaluate_tasks
from memla.evaluate.lmeval import local_task_configs, run_lm_eval
from memla.evaluate.tasks import load_task
from memla.models import get_module, model_fingerprint

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


def test_local_task_configs_keep_strings_delimiters_and_positions(task_file):
    task = load_task(task_file)
    configs, positions = local_task_configs(task)
    assert [c["task"] for c in configs] == ["memla_hand__en", "memla_hand__zh"]
    assert positions == [[0, 1, 2], [3, 4, 5, 6]]
    assert [c["target_delimiter"] for c in configs] == [" ", " "]  # XNLI: a space in zh too
    assert [[m["metric"] for m in c["metric_list"]] for c in configs] == [["acc", "acc_norm"], ["acc"]]
    rows = configs[1]["custom_dataset"]()["test"]
    assert rows[0]["context"] == task.items[3].context and rows[0]["choices"] == list(task.items[3].choices)
    configs, positions = local_task_configs(task, limit=4)
    assert positions == [[0, 1, 2], [3]]


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
def test_lm_eval_engine_agrees_with_ours_also_after_an_edit(arch, task_file, tmp_path):
    model, tok = tiny_model(arch)
    before, pad = model_fingerprint(model), tok.pad_token
    ours = evaluate_tasks(model, tok, task_file, engine="memla")[task_file]
    theirs = evaluate_tasks(model, tok, task_file, engine="lm-eval")[task_file]
    assert theirs.engine == "lm-eval" and theirs.n == 7 and theirs.task == ours.task == "hand"
    assert theirs.correct == ours.correct and theirs.correct_norm == ours.correct_norm
    assert theirs.langs == ours.langs
    # languages interleaved in the file: lm-eval runs them as separate tasks, the order comes back
    shuffled = write_jsonl(tmp_path / "mixed.jsonl", [ZH[0], *HAND_MADE[:2], ZH[1], *HAND_MADE[2:], ZH[2]])
    ours_m = evaluate_tasks(model, tok, shuffled, engine="memla", limit=5)[shuffled]
    theirs_m = evaluate_tasks(model, tok, shuffled, engine="lm-eval", limit=5)[shuffled]
    assert theirs_m.langs == ours_m.langs == ("zh", "en", "en", "zh", "en") and theirs_m.correct == ours_m.correct
    # an in-memory edit is what lm-eval scores (no copy, nothing written to disk)
    head = dict(model.named_parameters())
    name = next(n for n in head if n.endswith("layers.1.mlp.down_proj.weight") or n.endswith("h.1.mlp.c_proj.weight"))
    edit = EditResult(deltas={name: torch.randn(head[name].shape, generator=torch.Generator().manual_seed(1)) * 3.0})
    sub = get_module(model, name.rsplit(".", 1)[0])
    seen: list[int] = []
    handle = sub.register_forward_hook(lambda mod, args, out: seen.append(mod.weight.data_ptr()))
    with apply(model, edit):
        live = sub.weight.data_ptr()
        ours_e = evaluate_tasks(model, tok, task_file, engine="memla")[task_file]
        seen.clear()
        theirs_e = run_lm_eval(model, tok, ["hand"], local={"hand": load_task(task_file)})["hand"]
    handle.remove()
    assert seen and set(seen) == {live}  # lm-eval ran our module with the edited weight, not a copy
    assert theirs_e.correct == ours_e.correct
    assert model_fingerprint(model) == before and tok.pad_token == pad
    cache = tmp_path / "hf-datasets"  # local items stay in memory: no Arrow files in the datasets cache
    assert not cache.exists() or not any(cache.rglob("*.arrow"))
