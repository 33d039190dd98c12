"""Batched prompt passes with padding, position ids, KV caches and a shared leading prefix.

`prompt_passes` runs many token sequences through a causal LM in batches and
yields, per batch, the KV cache, attention mask and position ids (so callers can
continue with targets or greedy steps) and the next-token logits at each row's
last prompt token.

- Rows are left-padded: every row ends at the last column, position ids count
  real tokens only and the attention mask hides the padding, so a row's numbers
  do not depend on what it is batched with.
- When all sequences start with the same long run of tokens (an IKE prefix of
  in-context demonstrations, hundreds of tokens), that run is computed once and
  its KV cache is copied into every batch.  The remainders are then batched by
  exact length, without padding, because padding between the shared part and a
  remainder would shift sliding-window attention (Gemma 2/3).
- The LM head only sees the positions asked for, through a boolean
  ``logits_to_keep`` (`memla.tokens.last_columns` says why).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

import torch
from torch import nn
from transformers import DynamicCache

from memla.devices import input_device
from memla.tokens import forward, left_pad, next_token_logits, pad_id

MAX_BATCH_TOKENS = 4096  # padded tokens per forward pass
MAX_BATCH_ROWS = 64
MIN_SPLIT_ROWS = 8  # batches this full may be closed early to avoid padding ...
MIN_FILL = 0.75  # ... when the next sequence is shorter than this fraction of the batch width
MAX_HEAD_ROWS = 256  # positions through the LM head per pass (bounds the (rows, V) logits in memory)
SHARE_MIN_TOKENS = 16  # a common leading run at least this long is computed once


def plan_batches(
    lengths: Sequence[int], *, max_tokens: int, max_rows: int, head: Sequence[int] | None = None
) -> Iterator[list[int]]:
    """Index batches, longest first, within the padded-token, row and LM-head-row budgets.

    A batch of at least `MIN_SPLIT_ROWS` rows is also closed when the next sequence is
    shorter than `MIN_FILL` of the batch width, which bounds the compute spent on padding.

    Args:
        lengths: sequence lengths.
        max_tokens: budget of ``rows × width`` per batch.
        max_rows: rows per batch.
        head: LM-head positions each sequence needs (budget `MAX_HEAD_ROWS` per batch).

    Returns:
        An iterator of index lists.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    width = head_rows = 0
    for i in order:
        w, h = max(width, lengths[i]), head_rows + (head[i] if head else 0)
        rows = len(batch) + 1
        short = len(batch) >= MIN_SPLIT_ROWS and lengths[i] < MIN_FILL * width
        if batch and (short or rows * w > max_tokens or rows > max_rows or h > MAX_HEAD_ROWS):
            yield batch
            batch, w, h = [], lengths[i], head[i] if head else 0
        batch.append(i)
        width, head_rows = w, h
    if batch:
        yield batch


def shared_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the leading run of tokens common to all sequences, kept one short of the shortest."""
    if len(seqs) < 2:
        return 0
    shortest = min(len(s) for s in seqs)
    n = 0
    first = seqs[0]
    while n < shortest - 1 and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


@dataclass
class PromptPass:
    """One batch after its prompt pass.

    Attributes:
        rows: indices (into the caller's sequences) of the batch rows, in row order.
        cache: the KV cache holding every row's prompt.
        mask: ``(B, T)`` attention mask over the cached positions.
        pos: ``(B, T)`` position ids of the cached positions (last column = last prompt token).
        logits: ``(B, V)`` next-token logits after each row's last prompt token.
    """

    rows: list[int]
    cache: DynamicCache
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor


@torch.no_grad()
def prompt_passes(
    model: nn.Module,
    tokenizer,
    seqs: Sequence[Sequence[int]],
    *,
    max_tokens: int = MAX_BATCH_TOKENS,
    max_rows: int = MAX_BATCH_ROWS,
    head: Sequence[int] | None = None,
) -> Iterator[PromptPass]:
    """Run token sequences through ``model`` in batches; yield each batch's cache and last logits.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (for the padding id).
        seqs: token id sequences (each non-empty).
        max_tokens: padded tokens per batch (the shared prefix is not counted).
        max_rows: rows per batch.
        head: LM-head positions each sequence will need later (for the batch budget).

    Returns:
        An iterator of `PromptPass`, covering every sequence once.
    """
    device = input_device(model)
    shared = shared_length(seqs) if len(seqs) > 1 else 0
    shared = shared if shared >= SHARE_MIN_TOKENS else 0
    base = None
    if shared:
        base = DynamicCache(config=model.config)
        ids = torch.tensor([list(seqs[0][:shared])], device=device)  # (1, S)
        forward(model, ids, torch.ones_like(ids), torch.arange(shared, device=device)[None], logits_to_keep=1, cache=base)
    rest = [s[shared:] for s in seqs]
    if shared:  # batch by exact remainder length: no padding between the shared part and a row
        order = sorted(range(len(seqs)), key=lambda i: -len(rest[i]))
        groups = [list(g) for _, g in groupby(order, key=lambda i: len(rest[i]))]
        batches = (
            [group[j] for j in sub]
            for group in groups
            for sub in plan_batches([len(rest[i]) for i in group], max_tokens=max_tokens, max_rows=max_rows,
                                    head=None if head is None else [head[i] for i in group])
        )
    else:
        batches = plan_batches([len(s) for s in seqs], max_tokens=max_tokens, max_rows=max_rows, head=head)
    for batch in batches:
        ids, mask, pos = left_pad([rest[i] for i in batch], pad_id=pad_id(tokenizer), device=device)  # (B, T) each
        if base is None:
            cache = DynamicCache(config=model.config)
        else:
            cache = copy.deepcopy(base)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([mask.new_ones((len(batch), shared)), mask], dim=-1)  # (B, S + T)
            pos = pos + shared  # (B, T)
            pos = torch.cat([torch.arange(shared, device=device).expand(len(batch), shared), pos], dim=-1)  # (B, S + T)
        logits = next_token_logits(model, ids, mask, pos[:, -ids.shape[1]:], cache=cache)
        yield PromptPass(list(batch), cache, mask, pos, logits)  # logits: (B, V)
