"""Before/after views of one edit: per language P(new) vs P(old) and greedy completions.

Used by ``memla edit`` and ``memla demo`` to show what an edit did in every
language, and whether unrelated (neighbourhood) facts held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from memla.editors.base import EditRequest, EditResult, apply
from memla.evaluate.scoring import greedy_generate, score_targets

COMPLETION_TOKENS = 6


@dataclass(frozen=True)
class LangEffect:
    """The edit prompt of one language before and after the edit.

    Probabilities are per-token (``exp`` of the mean log-probability), the quantity
    the ES metric compares (paper, Appendix B).
    """

    lang: str
    prompt: str
    target_new: str
    target_true: str | None
    p_new_before: float
    p_old_before: float | None
    p_new_after: float
    p_old_after: float | None
    completion_before: str
    completion_after: str

    @property
    def flipped(self) -> bool | None:
        """Whether the edit made the model prefer target_new over target_true; None without target_true.

        Without an old object there is nothing to prefer target_new over: a higher
        P(new) alone is not a flip (the greedy completion may still give the old answer).
        """
        if self.p_old_after is None:
            return None
        return self.p_new_after > self.p_old_after


@dataclass(frozen=True)
class NeighbourEffect:
    """An unrelated prompt's greedy completion before and after the edit."""

    lang: str
    prompt: str
    answer: str
    completion_before: str
    completion_after: str


def _measure(model, tokenizer, facts: Sequence[EditRequest], neighbours, prefix: str):
    items = [(f.text, f.target_new, f.lang) for f in facts]
    items += [(f.text, f.target_true, f.lang) for f in facts if f.target_true is not None]
    scores = [math.exp(s.mean) for s in score_targets(model, tokenizer, items, prefix=prefix)]
    prompts = [f.text for f in facts] + [p for _, p, _ in neighbours]
    ids = greedy_generate(model, tokenizer, prompts, [COMPLETION_TOKENS] * len(prompts), prefix=prefix)
    texts = [tokenizer.decode(t, skip_special_tokens=True).replace("\n", " ⏎ ").strip() for t in ids]
    return scores, texts


def compare(
    model: nn.Module,
    tokenizer,
    request: EditRequest,
    result: EditResult,
    *,
    neighbours: Sequence[tuple[str, str, str]] = (),
) -> tuple[list[LangEffect], list[NeighbourEffect]]:
    """Measure the edit prompt of every language of ``request`` before and after ``result``.

    Args:
        model: the unedited model (the edit is applied temporarily and restored exactly).
        tokenizer: its tokenizer.
        request: the edit, with its translations (each one is measured).
        result: the editor's output.
        neighbours: ``(lang, prompt, true answer)`` of unrelated facts to check.

    Returns:
        ``(per-language effects, neighbourhood effects)``.
    """
    facts = [request.in_lang(k) for k in request.langs]
    before_scores, before_texts = _measure(model, tokenizer, facts, neighbours, "")
    with apply(model, result):
        after_scores, after_texts = _measure(model, tokenizer, facts, neighbours, result.prefix)
    n = len(facts)
    old_index = {}
    for f in facts:
        if f.target_true is not None:
            old_index[f.lang] = n + len(old_index)
    effects = []
    for i, f in enumerate(facts):
        j = old_index.get(f.lang)
        effects.append(LangEffect(
            lang=f.lang, prompt=f.text, target_new=f.target_new, target_true=f.target_true,
            p_new_before=before_scores[i], p_old_before=None if j is None else before_scores[j],
            p_new_after=after_scores[i], p_old_after=None if j is None else after_scores[j],
            completion_before=before_texts[i], completion_after=after_texts[i],
        ))
    neigh = [
        NeighbourEffect(lang, prompt, answer, before_texts[n + i], after_texts[n + i])
        for i, (lang, prompt, answer) in enumerate(neighbours)
    ]
    return effects, neigh

