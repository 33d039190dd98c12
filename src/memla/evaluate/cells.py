"""Evaluate one (possibly edited) model on one record in many target languages at once.

`evaluate_record` gathers every prompt of every target language ``lt`` (edit
prompt, paraphrases, neighbourhood prompts, multi-hop questions), scores them in
one batched pass and one batched greedy generation, and returns one JSON-ready
dict of raw scores per ``lt`` (the ``es`` / ``ps`` / ``ns`` / ``qs`` lists of a
result line, see `memla.evaluate.runner`).  Metrics are computed from these raw
scores by `memla.evaluate.metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from memla.evaluate.metrics import token_f1
from memla.evaluate.scoring import answer_length, greedy_generate, score_encoded
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


def _pair_item(enc_new, enc_true, s_new, s_true, prompt: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "new": {"mean": _finite(s_new.mean), "sum": _finite(s_new.sum), "n": s_new.n},
        "true": {"mean": _finite(s_true.mean), "sum": _finite(s_true.sum), "n": s_true.n},
        "clean": bool(enc_new.clean and enc_true.clean),
        "success": bool(s_new.mean > s_true.mean),
    }


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
    """Raw ES / PS / NS / QS scores of ``record`` in every language of ``lts`` (paper, Appendix B).

    ES and PS compare the mean per-token log-probabilities of ``target_new`` and
    ``target_true`` after the edit prompt and each paraphrase; NS and QS take the
    token F1 between the greedy continuation (as many new tokens as the answer
    has) and the neighbourhood answer / ``multi_hop_new_answer``.

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
        ``{lt: {"es": [...], "ps": [...], "ns": [...], "qs": [...]}}``; ES/PS items hold
        the prompt, both targets' mean and summed log-probabilities, token counts and
        ``success``; NS/QS items hold the prompt, the answer, the prediction and ``f1``.
    """
    batch_kw = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    pairs, pair_slots = [], []  # encoded (prompt, target) pairs; (lt, field, prompt) per two pairs
    gen_prompts, gen_lens, gen_slots = [], [], []  # greedy generation jobs; (lt, field, prompt, answer)
    for lt in lts:
        fact = record.edit[lt]
        if fact.target_true is not None:
            prompts = [("es", fact.filled())] + [("ps", p) for p in record.paraphrase_prompts.get(lt, ())]
            for fld, prompt in prompts:
                pairs.append(encode_pair(tokenizer, prompt, fact.target_new, lt, prefix=prefix))
                pairs.append(encode_pair(tokenizer, prompt, fact.target_true, lt, prefix=prefix))
                pair_slots.append((lt, fld, prompt))
        jobs = [("ns", p, a) for p, a in zip(record.neighborhood_prompts.get(lt, ()), record.neighborhood_answers.get(lt, ()))]
        new_answer = record.multi_hop_new_answer.get(lt)
        if new_answer:
            jobs += [("qs", q, new_answer) for q in record.multi_hop_questions.get(lt, ())]
        for fld, prompt, answer in jobs:
            gen_prompts.append(prompt)
            gen_lens.append(answer_length(tokenizer, prompt, answer, lt, prefix=prefix))
            gen_slots.append((lt, fld, prompt, answer))

    out = {lt: {"es": [], "ps": [], "ns": [], "qs": []} for lt in lts}
    scores = score_encoded(model, tokenizer, pairs, **batch_kw) if pairs else []
    for j, (lt, fld, prompt) in enumerate(pair_slots):
        enc_new, enc_true = pairs[2 * j], pairs[2 * j + 1]
        out[lt][fld].append(_pair_item(enc_new, enc_true, scores[2 * j], scores[2 * j + 1], prompt))
    generated = greedy_generate(model, tokenizer, gen_prompts, gen_lens, prefix=prefix, **batch_kw) if gen_prompts else []
    for ids, (lt, fld, prompt, answer) in zip(generated, gen_slots):
        prediction = tokenizer.decode(ids, skip_special_tokens=True)
        out[lt][fld].append({
            "prompt": prompt,
            "answer": answer,
            "prediction": prediction,
            "f1": token_f1(prediction, answer, unit=f1_unit, tokenizer=tokenizer),
        })
    return out
