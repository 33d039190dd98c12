"""Downstream tasks: local task files, log-likelihood choice scoring, paired differences, the CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from tiny import save_tiny, tiny_model

from memla.cli import main
from memla.errors import DataError, MemlaError
from memla.evaluate.downstream import compare, evaluate_local, evaluate_tasks, score_choices
from memla.evaluate.metrics import TaskResult, mean_se
from memla.evaluate.tasks import ANLI_CHOICES, XNLI_WORDS, builtin_tasks, load_task
from memla.tokens import encode_pair

HAND_MADE = [
    {"id": "a", "goal": "To dry wet hands", "sol1": "rub them with a towel", "sol2": "dip them in water", "label": 0},
    {"id": "b", "goal": "To light a room", "sol1": "close the curtains", "sol2": "switch on the lamp", "label": 1},
    {"id": "c", "premise": "Anna speaks French.", "hypothesis": "Anna speaks a language.", "label": 0},
    {"id": "d", "premise": "安娜会说法语。", "hypothesis": "安娜不会说话。", "label": 2, "lang": "zh"},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def hand_task(tmp_path):
    return write_jsonl(tmp_path / "hand.jsonl", HAND_MADE)


def reference_loglik(model, tok, context: str, choice: str, lang: str, delimiter: str) -> float:
    """Summed log P(choice | context) from one unbatched full forward pass (no logits_to_keep)."""
    enc = encode_pair(tok, context, choice, lang, delimiter=delimiter)
    ids = torch.tensor([list(enc.prompt_ids + enc.target_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # (T, V)
    n = len(enc.prompt_ids)
    return float(sum(logp[n + m - 1, t] for m, t in enumerate(enc.target_ids)))


def test_formats_and_templates(hand_task):
    task = load_task(hand_task)
    assert task.name == "hand" and task.format == "mixed" and len(task.items) == 4
    piqa, _, anli, xnli = task.items
    assert piqa.context == "Question: To dry wet hands\nAnswer:" and piqa.choices == ("rub them with a towel", "dip them in water")
    assert anli.context == "Anna speaks French.\nQuestion: Anna speaks a language. True, False, or Neither?\nAnswer:"
    assert anli.choices == ANLI_CHOICES and anli.label == 0
    question, yes, also, no = XNLI_WORDS["zh"]
    assert xnli.context == f"安娜会说法语。, {question}?" and xnli.lang == "zh"
    assert xnli.choices == (f"{yes}, 安娜不会说话。", f"{also}, 安娜不会说话。", f"{no}, 安娜不会说话。") and xnli.label == 2
    # lm-eval's xnli text "{premise}, 正确? 是的, {hypothesis}": a space also in zh (the join rule has none)
    assert (piqa.joiner, anli.joiner, xnli.joiner) == (" ", " ", " ")
    assert piqa.length_norm and anli.length_norm and not xnli.length_norm


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
def test_scored_text_is_context_delimiter_choice(arch, hand_task):
    _, tok = tiny_model(arch)
    for item in load_task(hand_task).items:
        for choice in item.choices:
            enc = encode_pair(tok, item.context, choice, item.lang, delimiter=item.joiner)
            text = tok.decode(list(enc.prompt_ids + enc.target_ids), skip_special_tokens=True)
            assert text == item.context + item.joiner + choice
            assert tok.decode(list(enc.target_ids)).strip() == choice


def test_labels_by_name_digit_strings_and_unlabelled_rows(tmp_path, caplog):
    rows = [{"premise": "p", "hypothesis": "h", "label": "contradiction"},
            {"premise": "p", "hypothesis": "h", "label": "1"},
            {"premise": "p", "hypothesis": "h", "label": -1},
            {"premise": "p", "hypothesis": "h", "label": 0, "lang": "de"}]
    task = load_task(write_jsonl(tmp_path / "nli.jsonl", rows))
    assert [it.label for it in task.items] == [2, 1, 0]
    assert "skipped 1 item(s) labelled -1" in caplog.text
    with pytest.raises(DataError, match="entailment, neutral, contradiction"):
        load_task(write_jsonl(tmp_path / "bad.jsonl", [{"premise": "p", "hypothesis": "h", "label": "maybe"}]))


def test_non_finite_scores_count_as_wrong(monkeypatch, hand_task):
    import memla.evaluate.downstream as D

    task = load_task(hand_task)
    fake = [[0.0, -1.0], [float("nan"), float("nan")], [-1.0, 0.0, float("-inf")], [0.0, -1.0, -2.0]]
    monkeypatch.setattr(D, "score_choices", lambda *a, **k: fake)
    result = D.evaluate_local(None, None, task)
    # np.argmax([nan, nan]) == 0 would answer item 1 (label 1) wrongly by accident; item 2's -inf is a valid score
    assert result.correct == (1, 0, 0, 0) and result.invalid == 1
    fake[1] = [-1.0, float("nan")]  # argmax would say 1 == label: must still count as wrong
    assert D.evaluate_local(None, None, task).correct == (1, 0, 0, 0)
    assert result.correct_norm is None  # the zh XNLI item has no acc_norm


FIRST_40_PIQA = "ad6afbcf85934b6f"  # piqa-mini items 0-39: the whole set before 2026-12-07


def test_builtin_tasks_load():
    assert builtin_tasks() == ["nli-mini", "piqa-mini", "xnli-mini"]
    sizes = {name: len(load_task(name).items) for name in builtin_tasks()}
    assert sizes == {"nli-mini": 40, "piqa-mini": 200, "xnli-mini": 54}
    assert {it.lang for it in load_task("xnli-mini").items} == {"en", "zh", "fr", "de", "es", "ru"}
    piqa = load_task("piqa-mini").items
    labels = [it.label for it in piqa]
    assert labels.count(0) == labels.count(1) == 100 and labels[:40].count(0) == 20
    assert len({it.context for it in piqa}) == len(piqa)  # no goal twice
    first = [(it.context, it.choices, it.label) for it in piqa[:40]]  # the set runs before 2026-12-07 scored
    assert hashlib.sha256(repr(first).encode()).hexdigest()[:16] == FIRST_40_PIQA


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
def test_choice_scores_match_unbatched_forward(arch, hand_task):
    model, tok = tiny_model(arch)
    task = load_task(hand_task)
    scores = score_choices(model, tok, task.items)
    for item, lls in zip(task.items, scores):
        want = [reference_loglik(model, tok, item.context, c, item.lang, item.joiner) for c in item.choices]
        np.testing.assert_allclose(lls, want, rtol=1e-4, atol=1e-4)
    result = evaluate_local(model, tok, task)
    assert result.correct == tuple(int(np.argmax(s) == it.label) for it, s in zip(task.items, scores))
    assert result.langs == ("en", "en", "en", "zh") and result.engine == "memla"
    acc, se = result.acc
    assert acc == np.mean(result.correct)


def test_accuracy_follows_the_labels(tmp_path, hand_task):
    """Relabelling every item with its best / worst choice gives accuracy 1 / 0."""
    model, tok = tiny_model("llama")
    scores = score_choices(model, tok, load_task(hand_task).items)
    best = [dict(r, label=int(np.argmax(s))) for r, s in zip(HAND_MADE, scores)]
    worst = [dict(r, label=int(np.argmin(s))) for r, s in zip(HAND_MADE, scores)]
    assert evaluate_local(model, tok, load_task(write_jsonl(tmp_path / "best.jsonl", best))).acc == (1.0, 0.0)
    assert evaluate_local(model, tok, load_task(write_jsonl(tmp_path / "worst.jsonl", worst))).acc == (0.0, 0.0)


def test_mean_se_and_paired_difference():
    assert mean_se([1, 1, 1, 0]) == (0.75, 0.25)  # lm-eval's acc_stderr on 4 items
    before = {"t": TaskResult("t", "memla", (1, 1, 0, 0), langs=("en", "en", "zh", "zh"))}
    after = {"t": TaskResult("t", "memla", (1, 0, 0, 1), langs=("en", "en", "zh", "zh"))}
    rows = {r["task"]: r for r in compare(before, after)}
    assert set(rows) == {"t", "t:en", "t:zh"}
    assert rows["t"]["before"] == rows["t"]["after"] == 0.5 and rows["t"]["diff"] == 0.0
    assert rows["t"]["diff_se"] == pytest.approx(np.std([0, -1, 0, 1], ddof=1) / 2)
    assert rows["t:en"]["diff"] == -0.5 and rows["t:zh"]["diff"] == 0.5
    assert TaskResult.from_dict(json.loads(json.dumps(after["t"].to_dict()))) == after["t"]


@pytest.mark.parametrize("rows, message", [
    ([{"goal": "g", "sol1": "a", "sol2": "b", "label": 2}], "item 1: label must be an integer in [0, 1]"),
    ([{"goal": "g", "sol1": "a", "label": 0}], "item 1: fields"),
    ([{"id": 7, "premise": "p", "hypothesis": "", "label": 0}], "item 1 (id 7): missing field 'hypothesis'"),
    ([{"premise": "p", "hypothesis": "h", "label": 0, "lang": "xx"}], "no XNLI wording for language 'xx'"),
])
def test_bad_task_files_name_file_and_item(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match="bad.jsonl") as err:
        load_task(path)
    assert message in str(err.value)


def test_engine_choice_errors(hand_task):
    model, tok = tiny_model("gpt2")
    with pytest.raises(MemlaError, match="local tasks only"):
        evaluate_tasks(model, tok, [hand_task, "piqa"], engine="memla")
    with pytest.raises(MemlaError, match="unknown engine"):
        evaluate_tasks(model, tok, hand_task, engine="harness")


def test_cli_unedited_and_bad_input(tmp_path, hand_task, capsys):
    save_tiny("gpt2", tmp_path / "m")
    assert main(["downstream", "--tasks", hand_task, "--model", str(tmp_path / "m"), "--engine", "memla"]) == 0
    out = capsys.readouterr().out
    assert "hand" in out and "hand:zh" in out
    assert main(["downstream", "--tasks", str(tmp_path / "nope.jsonl"), "--engine", "memla"]) == 2
    assert main(["downstream", "--tasks", hand_task, "--method", "memla"]) == 2  # no --dataset
    assert "--method needs --dataset" in capsys.readouterr().err
