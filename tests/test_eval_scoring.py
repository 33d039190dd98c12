"""Scoring primitives: the join-rule split, batched == unbatched scores and generation, per architecture."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_tokenizer
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from memla.evaluate.scoring import answer_length, greedy_generate, score_targets
from memla.tokens import encode_pair

ITEMS = [
    ("The capital of France is", "Paris", "en"),
    ("The capital of Italy is", "Tokyo of Japan", "en"),
    ("法国的首都是", "巴黎", "zh"),
    ("フランスの首都は", "パリ", "ja"),
    ("เมืองหลวงของฝรั่งเศสคือ", "ปารีส", "th"),
    ("La capitale de la France est", "Rome", "fr"),
    ("Столица Франции —", "Париж", "ru"),
    ("The capital of France is", "Rome, not Paris", "en"),  # shares its prompt (and KV cache) with item 0
    ("法国的首都是", "罗马", "zh"),
]
LIMITS = [1, 3, 2, 4, 5, 2, 3, 2, 1]


def _with_template(single: str) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with a post-processor (e.g. BOS in front, or EOS appended)."""
    base = tiny_tokenizer()
    backend = base.backend_tokenizer.__class__.from_str(base.backend_tokenizer.to_str())
    specials = [("<bos>", base.convert_tokens_to_ids("<bos>")), ("<eos>", base.convert_tokens_to_ids("<eos>"))]
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def _reference_logprob(model, tokenizer, prompt, target, lang, prefix=""):
    """Unbatched, unpadded, full-logits reference of the summed target log-probability."""
    enc = encode_pair(tokenizer, prompt, target, lang, prefix=prefix)
    ids = torch.tensor([enc.prompt_ids + enc.target_ids])  # (1, T)
    logprobs = model(ids).logits.log_softmax(-1)[0]  # (T, V)
    n = len(enc.prompt_ids)
    return sum(float(logprobs[n - 1 + j, tok]) for j, tok in enumerate(enc.target_ids))


def test_split_is_the_suffix_after_the_prompt():
    tok = tiny_tokenizer()
    enc = encode_pair(tok, "The capital of France is", "Paris", "en")
    assert enc.clean
    assert list(enc.prompt_ids) == tok("The capital of France is")["input_ids"]
    assert list(enc.prompt_ids + enc.target_ids) == tok("The capital of France is Paris")["input_ids"]
    assert tok.decode(list(enc.target_ids)) == " Paris"  # the separator belongs to the target


def test_split_with_bos_keeps_bos_on_the_prompt_only():
    tok = _with_template("<bos> $A")
    bos = tok.convert_tokens_to_ids("<bos>")
    enc = encode_pair(tok, "The capital of France is", "Paris", "en")
    assert enc.clean and enc.prompt_ids[0] == bos and bos not in enc.target_ids
    assert enc.target_ids == encode_pair(tiny_tokenizer(), "The capital of France is", "Paris", "en").target_ids


def test_split_drops_an_appended_eos():
    tok = _with_template("<bos> $A <eos>")
    eos = tok.convert_tokens_to_ids("<eos>")
    enc = encode_pair(tok, "The capital of France is", "Paris", "en")
    assert enc.clean and eos not in enc.prompt_ids + enc.target_ids
    assert tok.decode(list(enc.target_ids)) == " Paris"


def test_no_space_languages_join_without_separator():
    tok = tiny_tokenizer()
    enc = encode_pair(tok, "法国的首都是", "巴黎", "zh")
    assert tok.decode(list(enc.prompt_ids + enc.target_ids)) == "法国的首都是巴黎"


def test_unclean_split_is_flagged_and_keeps_the_text():
    tok = tiny_tokenizer()
    # "Par" + "is" merges into one token across the boundary
    enc = encode_pair(tok, "The capital of France is Par", "is", "zh")
    assert not enc.clean
    assert tok.decode(list(enc.prompt_ids + enc.target_ids)) == "The capital of France is Paris"
    assert enc.target_ids == tuple(tok("is", add_special_tokens=False)["input_ids"])


def test_batched_scores_equal_unbatched(tiny):
    model, tok = tiny
    batched = score_targets(model, tok, ITEMS)
    for item, got in zip(ITEMS, batched):
        alone = score_targets(model, tok, [item])[0]
        ref = _reference_logprob(model, tok, *item)
        assert got.n == alone.n and got.n >= 1
        assert got.sum == pytest.approx(alone.sum, abs=1e-4)
        assert got.sum == pytest.approx(ref, abs=1e-4)
        assert got.mean == pytest.approx(got.sum / got.n)


def test_tiny_batches_give_the_same_scores(tiny):
    model, tok = tiny
    one_pass = score_targets(model, tok, ITEMS)
    many = score_targets(model, tok, ITEMS, max_batch_tokens=24, max_batch_rows=2)
    assert [s.sum for s in many] == pytest.approx([s.sum for s in one_pass], abs=1e-4)


def test_prefix_is_prepended(tiny):
    model, tok = tiny
    prefix = "The capital of France is Rome.\n"
    got = score_targets(model, tok, ITEMS[:3], prefix=prefix)
    for item, s in zip(ITEMS, got):
        assert s.sum == pytest.approx(_reference_logprob(model, tok, *item, prefix=prefix), abs=1e-4)


LONG_PREFIX = "New Fact: The capital of France is Rome.\nPrompt: The capital of France is Rome.\n\n" * 3 + "Prompt: "


def test_long_shared_prefix_is_computed_once_and_scores_the_same(tiny, monkeypatch):
    # longer than the tiny Gemma sliding window (16): the shared cache must keep window semantics
    model, tok = tiny
    import memla.evaluate.batching as batching

    shared_runs = []
    real = batching.shared_length
    monkeypatch.setattr(batching, "shared_length", lambda seqs: shared_runs.append(real(seqs)) or shared_runs[-1])
    got = score_targets(model, tok, ITEMS, prefix=LONG_PREFIX, max_batch_rows=3)
    assert shared_runs and shared_runs[0] >= batching.SHARE_MIN_TOKENS
    for item, s in zip(ITEMS, got):
        assert s.sum == pytest.approx(_reference_logprob(model, tok, *item, prefix=LONG_PREFIX), abs=1e-4)
    prompts = [p for p, _, _ in ITEMS]
    gen = greedy_generate(model, tok, prompts, LIMITS, prefix=LONG_PREFIX)
    for prompt, limit, g in zip(prompts, LIMITS, gen):
        ids = torch.tensor([tok(LONG_PREFIX + prompt)["input_ids"]])  # (1, T)
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert g == (ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref)


def test_batched_generation_equals_unbatched_and_hf_generate(tiny):
    model, tok = tiny
    prompts = [p for p, _, _ in ITEMS]
    batched = greedy_generate(model, tok, prompts, LIMITS)
    for prompt, limit, got in zip(prompts, LIMITS, batched):
        assert got == greedy_generate(model, tok, [prompt], [limit])[0]
        ids = torch.tensor([tok(prompt)["input_ids"]])  # (1, T)
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        eos = tok.eos_token_id
        assert got == (ref[: ref.index(eos)] if eos in ref else ref)
        assert len(got) <= limit


def test_generation_with_zero_budget_is_empty(tiny):
    model, tok = tiny
    prompts = ["The capital of France is", "法国的首都是", "La capitale de la France est"]
    got = greedy_generate(model, tok, prompts, [0, 2, 0])
    assert got[0] == [] and got[2] == [] and got[1] == greedy_generate(model, tok, prompts[1:2], [2])[0]


def test_score_cells_locality_fields_agree_with_the_primitives(tiny):
    """NS-margin, NS-keep continuations and fluency in `score_cells` are what the scoring primitives give alone."""
    from test_eval_support import as_records, small_records

    from memla.evaluate.cells import score_cells
    from memla.evaluate.metrics import FLUENCY_TOKENS, NS_KEEP_TOKENS, count_mentions, ngram_entropy, record_value

    model, tok = tiny
    record = as_records(small_records())[0]
    cells = [(record, lt, ("es", "ps", "ns", "fluency")) for lt in ("en", "zh")]
    raw = score_cells(model, tok, cells)
    for (_, lt, _), cell in zip(cells, raw):
        fact = record.edit[lt]
        (ns,) = cell["ns"]
        prompt, answer = record.neighborhood_prompts[lt][0], record.neighborhood_answers[lt][0]
        a, new = score_targets(model, tok, [(prompt, answer, lt), (prompt, fact.target_new, lt)])
        assert ns["margin"]["answer"] == pytest.approx(a.mean, abs=1e-5)
        assert ns["margin"]["new"] == pytest.approx(new.mean, abs=1e-5)
        assert ns["margin"]["kept"] == (a.mean > new.mean)
        # the continuation is generated once, NS_KEEP_TOKENS long; the NS prediction is its answer-length prefix
        (full,) = greedy_generate(model, tok, [prompt], [NS_KEEP_TOKENS])
        assert ns["continuation"] == full[:NS_KEEP_TOKENS]
        n = answer_length(tok, prompt, answer, lt)
        assert ns["prediction"] == tok.decode(full[:n], skip_special_tokens=True)
        (flu,) = cell["fluency"]
        (ids,) = greedy_generate(model, tok, [fact.filled()], [FLUENCY_TOKENS])
        assert flu["entropy"] == pytest.approx(ngram_entropy(ids))
        text = tok.decode(ids, skip_special_tokens=True)
        assert flu["continuation"] == text and flu["repeats"] == count_mentions(text, fact.target_new)
        assert record_value(cell, "ns_keep", cell) == 1.0  # the model against itself
    # a neighbour whose answer is target_new has no margin comparison
    record.neighborhood_answers["en"][0] = record.edit["en"].target_new
    ((cell,),) = [score_cells(model, tok, [(record, "en", ("ns",))])]
    assert cell["ns"][0]["margin"] is None and cell["fluency"] == [] and cell["es"] == []
