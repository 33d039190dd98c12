"""Evaluate one (possibly edited) model on records in many target languages at once.

`score_cells` gathers every prompt of many (record, ``lt``) cells (edit prompt,
paraphrases, neighbourhood prompts, multi-hop questions), scores them in one batched
pass and one batched greedy generation, and returns one JSON-ready dict of raw scores
per cell (the ``es`` / ``ps`` / ``ns`` / ``qs`` / ``fluency`` lists of a result line, see
`memla.evaluate.runner`).  `evaluate_record` does so for one record in several
languages (the benchmark runner), `memla.evaluate.sequential` for many records at each
checkpoint.  Metrics are computed from these raw scores by `memla.evaluate.metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from typing import Any

from torch import nn

from memla.evaluate.metrics import (FLUENCY_TOKENS, METRICS, NS_KEEP_TOKENS, count_mentions, ngram_entropy,
                                     normalize_text, token_f1)
from memla.evaluate.scoring import TargetScore, answer_length, greedy_generate, score_encoded
from memla.tokens import encode_pair

log = logging.getLogger(__name__)


def missing_reason(record, lt: str) -> str | None:
    """Why ``record`` cannot be evaluated in ``lt`` (no edit prompt there), or None."""
    if lt not in record.edit:
        return f"record {record.example_id} has no {lt!r} edit prompt"
    return None


def _finite(x: float) -> float | None:
    """The value, or None for NaN / ±inf (a broken edit must not break the JSON result file)."""
    return x if math.isfinite(x) else None


def es_success(new: TargetScore, true: TargetScore) -> bool:
    """The ES / PS rule (paper, Appendix B): ``target_new`` beats ``target_true`` on one prompt.

    Args:
        new: the score of ``target_new`` after the prompt.
        true: the score of ``target_true`` after the same prompt.

    Returns:
        Whether the mean per-token log-probability of ``target_new`` is the higher (False
        when either is NaN).
    """
    return bool(new.mean > true.mean)


def _pair_item(enc_new, enc_true, s_new, s_true, prompt: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "new": {"mean": _finite(s_new.mean), "sum": _finite(s_new.sum), "n": s_new.n},
        "true": {"mean": _finite(s_true.mean), "sum": _finite(s_true.sum), "n": s_true.n},
        "clean": bool(enc_new.clean and enc_true.clean),
        "success": es_success(s_new, s_true),
    }


def score_cells(
    model: nn.Module,
    tokenizer,
    cells: Sequence[tuple[Any, str, Collection[str]]],
    *,
    prefix: str = "",
    f1_unit: str = "tokens",
    max_batch_tokens: int | None = None,
) -> list[dict[str, list[dict[str, Any]]]]:
    """Raw scores of many (record, lt) cells, in one batched scoring pass and one batched generation.

    ES and PS compare the mean per-token log-probabilities of ``target_new`` and
    ``target_true`` after the edit prompt and each paraphrase (`es_success`).  NS and QS
    take the token F1 between the greedy continuation (as many new tokens as the answer
    has) and the neighbourhood answer / ``multi_hop_new_answer``; each NS item also holds
    the NS-margin comparison (the neighbour's answer against ``target_new``, scored like
    ES) and the first `NS_KEEP_TOKENS` greedy tokens (for NS-keep against the unedited
    model).  Fluency generates `FLUENCY_TOKENS` tokens after the edit prompt and keeps
    their n-gram entropy and the mentions of ``target_new`` (`memla.evaluate.metrics`).

    Args:
        model: the model as it should be evaluated (edit applied by the caller).
        tokenizer: its tokenizer.
        cells: ``(record, lt, metrics)``: a `memla.data.Record`, a target language it has
            an edit prompt in, and which of ``es``, ``ps``, ``ns``, ``qs``, ``fluency`` to
            score (ES and PS together; none when the record's ``target_true`` is unknown).
        prefix: text prepended to every prompt (IKE demonstrations).
        f1_unit: ``"tokens"`` (model tokenizer), ``"chars"`` or ``"words"``.
        max_batch_tokens: padded tokens per forward pass (default: the scoring module's).

    Returns:
        Per cell, ``{"es": [...], "ps": [...], "ns": [...], "qs": [...], "fluency": [...]}``;
        ES/PS items hold the prompt, both targets' mean and summed log-probabilities, token
        counts and ``success``; NS/QS items the prompt, the answer, the prediction and
        ``f1``, NS items also ``margin`` (``{"answer", "new", "kept"}`` mean log-probabilities,
        None when the answer is ``target_new``) and ``continuation`` (token ids); fluency
        items the prompt, the decoded ``continuation``, ``entropy`` and ``repeats``.
    """
    batch_kw = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    pairs, pair_slots = [], []  # encoded (prompt, target) pairs; (cell, field, prompt) per two pairs
    gen_prompts, gen_lens, gen_slots = [], [], []  # greedy generation jobs; (cell, field, prompt, answer, answer tokens)
    for c, (record, lt, metrics) in enumerate(cells):
        fact = record.edit[lt]
        if "es" in metrics and fact.target_true is not None:
            prompts = [("es", fact.filled())] + [("ps", p) for p in record.paraphrase_prompts.get(lt, ())]
            for fld, prompt in prompts:
                pairs.append(encode_pair(tokenizer, prompt, fact.target_new, lt, prefix=prefix))
                pairs.append(encode_pair(tokenizer, prompt, fact.target_true, lt, prefix=prefix))
                pair_slots.append((c, fld, prompt))
        jobs = []
        if "ns" in metrics:
            neighbours = list(zip(record.neighborhood_prompts.get(lt, ()), record.neighborhood_answers.get(lt, ())))
            for prompt, answer in neighbours:
                if normalize_text(answer) != normalize_text(fact.target_new):
                    pairs.append(encode_pair(tokenizer, prompt, answer, lt, prefix=prefix))
                    pairs.append(encode_pair(tokenizer, prompt, fact.target_new, lt, prefix=prefix))
                    pair_slots.append((c, "margin", prompt))
            jobs += [("ns", p, a) for p, a in neighbours]
        new_answer = record.multi_hop_new_answer.get(lt)
        if "qs" in metrics and new_answer:
            jobs += [("qs", q, new_answer) for q in record.multi_hop_questions.get(lt, ())]
        for fld, prompt, answer in jobs:
            n = answer_length(tokenizer, prompt, answer, lt, prefix=prefix)
            gen_prompts.append(prompt)
            gen_lens.append(max(n, NS_KEEP_TOKENS) if fld == "ns" else n)
            gen_slots.append((c, fld, prompt, answer, n))
        if "fluency" in metrics:
            gen_prompts.append(fact.filled())
            gen_lens.append(FLUENCY_TOKENS)
            gen_slots.append((c, "fluency", fact.filled(), fact.target_new, FLUENCY_TOKENS))

    out = [{"es": [], "ps": [], "ns": [], "qs": [], "fluency": []} for _ in cells]
    margins: dict[tuple[int, str], dict[str, Any]] = {}
    scores = score_encoded(model, tokenizer, pairs, **batch_kw) if pairs else []
    for j, (c, fld, prompt) in enumerate(pair_slots):
        enc_new, enc_true = pairs[2 * j], pairs[2 * j + 1]
        if fld == "margin":  # the first of the two is the neighbour's answer, the second target_new
            answer, new = scores[2 * j], scores[2 * j + 1]
            margins[(c, prompt)] = {"answer": _finite(answer.mean), "new": _finite(new.mean), "kept": es_success(answer, new)}
        else:
            out[c][fld].append(_pair_item(enc_new, enc_true, scores[2 * j], scores[2 * j + 1], prompt))
    generated = greedy_generate(model, tokenizer, gen_prompts, gen_lens, prefix=prefix, **batch_kw) if gen_prompts else []
    for ids, (c, fld, prompt, answer, n) in zip(generated, gen_slots):
        if fld == "fluency":
            text = tokenizer.decode(ids, skip_special_tokens=True)
            out[c][fld].append({"prompt": prompt, "continuation": text, "entropy": ngram_entropy(ids),
                                "repeats": count_mentions(text, answer)})
            continue
        prediction = tokenizer.decode(ids[:n], skip_special_tokens=True)
        item = {"prompt": prompt, "answer": answer, "prediction": prediction,
                "f1": token_f1(prediction, answer, unit=f1_unit, tokenizer=tokenizer)}
        if fld == "ns":
            item.update(margin=margins.get((c, prompt)), continuation=ids[:NS_KEEP_TOKENS])
        out[c][fld].append(item)
    return out


def evaluate_record(
    model: nn.Module,
    tokenizer,
    record,
    lts: Sequence[str],
    *,
    prefix: str = "",
    f1_unit: str = "tokens",
    max_batch_tokens: int | None = None,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Raw ES / PS / NS / QS / fluency scores of ``record`` in every language of ``lts`` (paper, Appendix B).

    Args:
        model: the model as it should be evaluated (edit applied by the caller).
        tokenizer: its tokenizer.
        record: a `memla.data.Record`.
        lts: target languages; each must have an edit prompt in the record
            (see `missing_reason`).
        prefix: text prepended to every prompt (IKE demonstrations).
        f1_unit: ``"tokens"`` (model tokenizer), ``"chars"`` or ``"words"``.
        max_batch_tokens: padded tokens per forward pass (default: the scoring module's).

    Returns:
        ``{lt: {"es": [...], "ps": [...], "ns": [...], "qs": [...], "fluency": [...]}}``, the items of `score_cells`.
    """
    raw = score_cells(model, tokenizer, [(record, lt, METRICS) for lt in lts], prefix=prefix, f1_unit=f1_unit,
                      max_batch_tokens=max_batch_tokens)
    return dict(zip(lts, raw))
