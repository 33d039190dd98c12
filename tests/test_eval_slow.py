"""Evaluation on the real default model (Gemma 3 270M, BOS-adding tokenizer): slow tests."""

from __future__ import annotations

import pytest

from memla.data import load_dataset
from memla.evaluate.cells import evaluate_record
from memla.evaluate.scoring import greedy_generate, score_targets
from memla.langs import LANGS
from memla.tokens import encode_pair

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def record():
    return next(r for r in load_dataset("mkeb-mini", split="test") if set(LANGS) <= set(r.edit))


def test_join_rule_splits_cleanly_in_all_12_languages(default_model, record):
    _, tok = default_model
    for lt in LANGS:
        fact = record.edit[lt]
        for prompt in [fact.filled(), *record.paraphrase_prompts[lt]]:
            for target in (fact.target_new, fact.target_true):
                enc = encode_pair(tok, prompt, target, lt)
                assert enc.clean, (lt, prompt, target)
                assert enc.prompt_ids[0] == tok.bos_token_id and tok.bos_token_id not in enc.target_ids
                assert tok.decode(list(enc.target_ids)).strip() == target.strip()


def test_batched_equals_unbatched_on_the_real_model(default_model, record):
    model, tok = default_model
    items = [(record.edit[lt].filled(), t, lt) for lt in LANGS for t in (record.edit[lt].target_new, record.edit[lt].target_true)]
    batched = score_targets(model, tok, items)
    for item, got in zip(items[::5], batched[::5]):
        alone = score_targets(model, tok, [item])[0]
        assert got.sum == pytest.approx(alone.sum, abs=2e-3), item
    prompts = [record.neighborhood_prompts[lt][0] for lt in LANGS]
    gen = greedy_generate(model, tok, prompts, [3] * len(prompts))
    for prompt, got in list(zip(prompts, gen))[::4]:
        assert got == greedy_generate(model, tok, [prompt], [3])[0]


def test_unedited_model_knows_the_true_facts(default_model, record):
    model, tok = default_model
    raw = evaluate_record(model, tok, record, LANGS)
    assert set(raw) == set(LANGS)
    # before any edit, target_new should rarely beat target_true: ES of the unedited model is low
    es = [item["success"] for lt in LANGS for item in raw[lt]["es"]]
    assert sum(es) <= len(es) // 2
    assert all(len(raw[lt]["ns"]) == len(record.neighborhood_prompts[lt]) for lt in LANGS)
