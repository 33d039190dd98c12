"""Batched scoring primitives: teacher-forced target log-probabilities and greedy generation.

Both work on many prompts at once through `memla.evaluate.batching.prompt_passes`
(left padding with true position ids, a shared leading prefix such as IKE's
demonstrations computed once), so a row's numbers do not depend on what it is
batched with (tested per architecture).  Scoring runs each distinct prompt once
and continues from its KV cache with the (right-padded) targets, so
``target_new`` and ``target_true`` share the prompt's compute; the LM head only
sees the positions that predict a target token.

Targets follow the join rule of DESIGN.md (`memla.tokens.encode_pair`): the model
reads ``prefix + join(prompt, target, lang)`` and the target's tokens are the suffix
after the tokens of ``prefix + prompt``; a score whose split was not clean is
flagged ``clean=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from memla.devices import input_device
from memla.evaluate.batching import MAX_BATCH_ROWS, MAX_BATCH_TOKENS, prompt_passes
from memla.tokens import Encoded, encode_pair, encode_text, forward, next_token_logits, pad_id, right_pad, select_cache_rows


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced log-probability of one target (paper, Appendix B: P(target | x)).

    Attributes:
        sum: summed log-probability of the target tokens.
        mean: ``sum / n`` (length-normalised; the quantity ES and PS compare).
        n: number of target tokens.
        clean: whether the prompt/target token split was clean.
    """

    sum: float
    mean: float
    n: int
    clean: bool


def answer_length(tokenizer, prompt: str, answer: str, lang: str, *, prefix: str = "") -> int:
    """Number of tokens of ``answer`` after ``prompt`` by the join rule (max new tokens for NS / QS)."""
    return len(encode_pair(tokenizer, prompt, answer, lang, prefix=prefix).target_ids)


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_encoded(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[Encoded],
    *,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    max_batch_rows: int = MAX_BATCH_ROWS,
) -> list[TargetScore]:
    """Teacher-forced log-probabilities of already encoded pairs, batched.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (for the padding id).
        pairs: encoded (prompt, target) pairs.
        max_batch_tokens: padded tokens per forward pass.
        max_batch_rows: rows per forward pass.

    Returns:
        One `TargetScore` per pair, in input order.
    """
    device = input_device(model)
    pad = pad_id(tokenizer)
    out: list[TargetScore | None] = [None] * len(pairs)
    # Pairs with the same prompt (target_new / target_true) share one prompt pass and its KV cache.
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, p in enumerate(pairs):
        groups.setdefault(p.prompt_ids, []).append(j)
    heads = list(groups)
    head_rows = [1 + sum(len(pairs[j].target_ids) - 1 for j in groups[h]) for h in heads]
    for step in prompt_passes(model, tokenizer, heads, max_tokens=max_batch_tokens, max_rows=max_batch_rows, head=head_rows):
        first = step.logits.float()  # (B, V)
        first = first - first.logsumexp(-1, keepdim=True)  # log P(first target token | prompt)
        members = [(row, j) for row, b in enumerate(step.rows) for j in groups[heads[b]]]
        at = torch.tensor([[row, pairs[j].target_ids[0]] for row, j in members], device=first.device)  # (P, 2)
        lps = {j: [lp] for (_, j), lp in zip(members, first[at[:, 0], at[:, 1]].tolist())}  # one transfer per batch
        tails = [pairs[j].target_ids[:-1] for _, j in members]  # teacher-forced inputs after the prompt
        width = max(len(t) for t in tails)
        if width > 0:
            sel = torch.tensor([row for row, _ in members], device=device)  # (P,)
            select_cache_rows(step.cache, sel)
            # right-padded: a target token never attends to the padding after it
            tail_ids, tail_mask = right_pad(tails, pad_id=pad, device=device)  # (P, Tt) each
            tail_pos = step.pos[sel][:, -1:] + 1 + torch.arange(width, device=device)  # (P, Tt)
            full_mask = torch.cat([step.mask[sel], tail_mask], dim=-1)  # (P, Tp + Tt)
            logits = forward(model, tail_ids, full_mask, tail_pos, logits_to_keep=tail_mask.bool(),
                             cache=step.cache).logits.float()  # (N, V), row by row
            targets = torch.tensor([tok for _, j in members for tok in pairs[j].target_ids[1:]], device=device)  # (N,)
            lp = (logits.gather(-1, targets[:, None])[:, 0] - logits.logsumexp(-1)).tolist()  # (N,)
            offset = 0
            for (_, j), t in zip(members, tails):
                lps[j] += lp[offset: offset + len(t)]
                offset += len(t)
        for j, values in lps.items():
            total = float(sum(values))
            out[j] = TargetScore(total, total / len(values), len(values), pairs[j].clean)
    return out  # type: ignore[return-value]


def score_targets(
    model: nn.Module,
    tokenizer,
    items: Sequence[tuple[str, str, str]],
    *,
    prefix: str = "",
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    max_batch_rows: int = MAX_BATCH_ROWS,
) -> list[TargetScore]:
    """Log P(target | prefix + prompt) under teacher forcing for many pairs (paper, Appendix B).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        items: ``(prompt, target, lang)`` triples; ``lang`` picks the join separator.
        prefix: text prepended to every prompt (IKE demonstrations).
        max_batch_tokens: padded tokens per forward pass.
        max_batch_rows: rows per forward pass.

    Returns:
        One `TargetScore` (summed and mean per-token log-probability) per item, in order.
    """
    pairs = [encode_pair(tokenizer, p, t, lang, prefix=prefix) for p, t, lang in items]
    return score_encoded(model, tokenizer, pairs, max_batch_tokens=max_batch_tokens, max_batch_rows=max_batch_rows)


# --------------------------------------------------------------------------- generation


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: Sequence[int],
    *,
    prefix: str = "",
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    max_batch_rows: int = MAX_BATCH_ROWS,
) -> list[list[int]]:
    """Greedy continuations of many prompts, batched with a KV cache (paper, Appendix B: NS, QS).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompts: prompts (``prefix`` is prepended to each).
        max_new_tokens: per prompt, how many tokens to generate (the answer's token count).
        prefix: text prepended to every prompt (IKE demonstrations).
        max_batch_tokens: padded prompt tokens per batch.
        max_batch_rows: rows per batch.

    Returns:
        Generated token ids per prompt, cut at the first EOS (excluded).
    """
    device = input_device(model)
    seqs = [encode_text(tokenizer, prefix + p) for p in prompts]
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos]) | {tokenizer.eos_token_id}
    eos.discard(None)
    out: list[list[int]] = [[] for _ in prompts]
    todo = [i for i in range(len(prompts)) if int(max_new_tokens[i]) > 0]
    for step in prompt_passes(model, tokenizer, [seqs[i] for i in todo], max_tokens=max_batch_tokens, max_rows=max_batch_rows):
        rows = [todo[r] for r in step.rows]  # original index of each row still generating
        logits, cache, mask, pos = step.logits, step.cache, step.mask, step.pos
        while True:
            nxt = logits.argmax(-1)  # (B,)
            active = []
            for row, tok in enumerate(nxt.tolist()):
                i = rows[row]
                if tok in eos:
                    continue
                out[i].append(tok)
                if len(out[i]) < int(max_new_tokens[i]):
                    active.append(row)
            if not active:
                break
            if len(active) < len(rows):  # drop finished rows from the batch and the KV cache
                sel = torch.tensor(active, device=device)  # (B',)
                select_cache_rows(cache, sel)
                nxt, mask, pos = nxt[sel], mask[sel], pos[sel]
                rows = [rows[r] for r in active]
            ids = nxt[:, None]  # (B', 1)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)  # (B', T + 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=-1)  # (B', T + 1)
            logits = next_token_logits(model, ids, mask, pos[:, -1:], cache=cache)  # (B', V)
    return out
