"""Token and batch helpers every layer uses: the join rule on tokens, padding, one forward pass.

* `encode_text` / `encode_pair`: token ids of a text, and of a (prompt, target) pair split
  by the join rule of DESIGN.md: the model reads ``prefix + join(prompt, target, lang)``
  and the target's tokens are the suffix after the tokens of ``prefix + prompt``.  When
  that split is not clean (a token spans the boundary) the target tokens are taken from
  ``sep + target`` encoded without special tokens and appended to the prompt's tokens;
  the pair is then flagged ``clean=False``.
* `left_pad` / `right_pad`: token sequences to ``(B, T)`` batches.  Left padding keeps
  every row's last token in the last column (true position ids, masked pads); right
  padding keeps every real position independent of the pads after it (causal attention).
* `forward`: one pass with explicit position ids (for models that take them) and an
  optional KV cache; `select_cache_rows`: drop finished rows from a cache whose layers may
  sit on several devices.
* `context_length` / `check_token_lengths` / `check_texts_fit`: the model's longest sequence,
  and the checks that user texts fit a token budget (and the context) before any work starts.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from memla.devices import is_split
from memla.errors import DataError
from memla.langs import sep

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- encoding


def context_length(model: nn.Module) -> int | None:
    """The model's maximum sequence length, or None if its config names none (e.g. ALiBi models)."""
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_token_lengths(tokenizer, texts: Sequence[tuple[str, str]], *, max_tokens: int,
                        limit_name: str = "the limit") -> None:
    """Refuse any text longer than ``max_tokens`` tokens, naming it, before it reaches a model.

    Args:
        tokenizer: the model's tokenizer.
        texts: ``(label, text)`` pairs; the label names the text in the message
            (e.g. ``"record 7, en, edit prompt"``).
        max_tokens: the budget (``--max-tokens``, at most the model's context).
        limit_name: what the budget is, for the message (e.g. ``"--max-tokens 512"``).

    Raises:
        DataError: the first text over the budget.
    """
    if not texts:
        return
    lengths = [len(ids) for ids in tokenizer([t for _, t in texts], add_special_tokens=False)["input_ids"]]
    for (label, _), n in zip(texts, lengths):
        if n > max_tokens:
            raise DataError(f"{label}: {n} tokens, more than {limit_name} ({max_tokens} tokens)")


GENERATED_TOKENS = 16  # the longest greedy continuation memla reads (the fluency metric's)


def check_texts_fit(model: nn.Module, tokenizer, texts: Sequence[tuple[str, str]], *, max_tokens: int,
                    limit_name: str = "--max-tokens") -> None:
    """Refuse any ``(label, text)`` longer than ``max_tokens``, or than the model's context allows, before any work.

    The model reads a prompt and a target (or a prompt and its greedy continuation) in one
    sequence, with a BOS token: so that every such pair fits, each text may take at most half
    of the context left after `GENERATED_TOKENS` and the BOS.

    Args:
        model: the model the texts are for (its context length).
        tokenizer: its tokenizer.
        texts: ``(label, text)`` pairs, as `check_token_lengths` takes them.
        max_tokens: the user's budget.
        limit_name: what the budget is called in the message (e.g. ``"--max-tokens"``).

    Raises:
        DataError: the first text over the budget.
    """
    context = context_length(model)
    room = None if context is None else (context - GENERATED_TOKENS - 1) // 2
    if room is not None and room < max_tokens:
        check_token_lengths(tokenizer, texts, max_tokens=room,
                            limit_name=f"what the model's context of {context} tokens allows per text")
    else:
        check_token_lengths(tokenizer, texts, max_tokens=max_tokens, limit_name=limit_name)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids with the tokenizer's leading specials (BOS) but without trailing ones (EOS).

    Args:
        tokenizer: the model's tokenizer.
        text: the text to encode.

    Returns:
        The token ids.
    """
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    specials = set(tokenizer.all_special_ids)
    lead = 0
    while lead < len(ids) and ids[lead] in specials and ids[lead:lead + len(plain)] != plain:
        lead += 1
    if ids[lead:lead + len(plain)] == plain:
        return ids[:lead + len(plain)]
    return ids


@dataclass(frozen=True)
class Encoded:
    """A (prompt, target) pair split into token ids by the join rule.

    Attributes:
        prompt_ids: tokens of ``prefix + prompt`` (with the tokenizer's BOS, if it adds one).
        target_ids: the target's tokens (the suffix after ``prompt_ids``).
        clean: whether ``prompt_ids + target_ids`` is exactly how the tokenizer
            encodes the joined text.
    """

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    clean: bool


def encode_pair(tokenizer, prompt: str, target: str, lang: str, *, prefix: str = "", delimiter: str | None = None) -> Encoded:
    """Split ``prefix + join(prompt, target, lang)`` into prompt and target tokens.

    Args:
        tokenizer: the model's tokenizer.
        prompt: the prompt with the subject written in.
        target: the answer appended by the join rule (DESIGN.md).
        lang: language of the prompt (chooses the separator).
        prefix: text prepended to the prompt (IKE demonstrations).
        delimiter: text between prompt and target instead of the join rule's separator.

    Returns:
        The `Encoded` pair; ``target_ids`` is never empty.
    """
    between = sep(lang) if delimiter is None else delimiter
    prompt_ids = encode_text(tokenizer, prefix + prompt)
    full_ids = encode_text(tokenizer, prefix + prompt + between + target)
    n = len(prompt_ids)
    if full_ids[:n] == prompt_ids and len(full_ids) > n:
        return Encoded(tuple(prompt_ids), tuple(full_ids[n:]), True)
    target_ids = tokenizer(between + target, add_special_tokens=False)["input_ids"]
    log.debug("unclean prompt/target split for %r + %r (%s)", prompt, target, lang)
    return Encoded(tuple(prompt_ids), tuple(target_ids), False)


# --------------------------------------------------------------------------- padding


def pad_id(tokenizer) -> int:
    """The id written into padding (masked out, so its value does not matter).

    Returns:
        The tokenizer's pad id, else its EOS id, else 0.
    """
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def left_pad(seqs: Sequence[Sequence[int]], *, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token sequences.

    Args:
        seqs: token id sequences (each non-empty).
        pad_id: id written into padding.
        device: target device.

    Returns:
        ``(input_ids, attention_mask, position_ids)``, each ``(B, T)``; the position ids
        of real tokens are ``0 .. len - 1``, padding gets 1.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # (B, T)
    return ids.to(device), mask.to(device), pos.to(device)


def right_pad(seqs: Sequence[Sequence[int]], *, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token sequences.

    Args:
        seqs: token id sequences (empty ones give an all-padding row).
        pad_id: id written into padding.
        device: target device.

    Returns:
        ``(input_ids, attention_mask)``, each ``(B, T)``.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------- forward passes


@functools.lru_cache(maxsize=64)
def _forward_takes_position_ids(cls: type) -> bool:
    return "position_ids" in inspect.signature(cls.forward).parameters


def accepts_position_ids(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``position_ids`` (BLOOM derives positions from the mask)."""
    return _forward_takes_position_ids(type(model))


def forward(model: nn.Module, ids, mask, pos, *, logits_to_keep: int | torch.Tensor, cache=None,
            output_hidden_states: bool = False):
    """One forward pass with explicit position ids (when the model takes them) and an optional KV cache.

    Args:
        model: a causal LM.
        ids: input ids ``(B, T)``.
        mask: attention mask ``(B, T')`` over the cached and new positions.
        pos: position ids ``(B, T)`` of the new positions.
        logits_to_keep: how many last positions (int) or which positions (bool ``(B, T)``)
            go through the LM head.
        cache: a KV cache to read and extend (None: no cache).
        output_hidden_states: also return every layer's hidden states ``(B, T, d_model)``.

    Returns:
        The model's output.
    """
    kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=cache is not None)
    if output_hidden_states:
        kwargs["output_hidden_states"] = True
    if accepts_position_ids(model):
        kwargs["position_ids"] = pos
    if cache is not None:
        kwargs["cache"] = cache
    if isinstance(logits_to_keep, torch.Tensor) and is_split(model):
        return _forward_kept_columns(model, kwargs, logits_to_keep)
    return model(**kwargs, logits_to_keep=logits_to_keep)


def last_columns(ids: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Boolean ``logits_to_keep`` selecting each row's last ``n`` columns: ``(B, T)``.

    Slicing ``(B, T, d)`` to its last columns (``logits_to_keep=n``) leaves a non-contiguous
    tensor that the LM head multiplies through a broadcast bmm over a per-row copy of the
    ``(V, d)`` weight (~10x slower for a 262k vocabulary); a boolean mask gathers the rows
    into one contiguous ``(B * n, d)`` matrix first (logits ``(B * n, V)``, row-major).
    """
    keep = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)  # (B, T)
    keep[:, ids.shape[1] - n:] = True
    return keep


def next_token_logits(model: nn.Module, ids, mask, pos, *, cache=None) -> torch.Tensor:
    """The logits after each row's last token (left-padded rows), through the fast LM-head path: ``(B, V)``."""
    return forward(model, ids, mask, pos, logits_to_keep=last_columns(ids), cache=cache).logits


def _forward_kept_columns(model: nn.Module, kwargs: dict, keep: torch.Tensor):
    """`forward` with a boolean ``logits_to_keep`` ``(B, T)`` on a model split over devices.

    transformers selects the positions from the last hidden states, on the last layers'
    device, with the mask moved to the model's first device.  Here the model keeps the last
    columns that hold every selected position (an int works on any device), and the
    positions are selected from the logits, which come back on the input device.

    Returns:
        The model's output, with ``logits`` ``(N, V)`` as for a boolean ``logits_to_keep``.
    """
    width = keep.shape[1] - int(keep.any(0).nonzero()[0])  # from the first column with a selected position
    out = model(**kwargs, logits_to_keep=width)
    out.logits = out.logits[keep[:, -width:]]  # (B, width, V) -> (N, V), rows in (b, t) order
    return out


def select_cache_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep only ``rows`` (batch indices) in every layer of ``cache``, in place.

    ``DynamicCache.batch_select_indices`` for a model split over devices: each layer holds
    its keys and values on its own layer's device, and gets the indices there.

    Args:
        cache: the KV cache.
        rows: ``(B',)`` indices into the batch dimension.
    """
    local: dict[torch.device, torch.Tensor] = {}
    for layer in cache.layers:
        if layer.is_initialized:
            device = layer.keys.device
            if device not in local:
                local[device] = rows.to(device)
            layer.batch_select_indices(local[device])
