"""Texts the model writes itself, drawn once per model and recipe.

* `sample_ids` / `sample_texts`: top-k continuations of token sequences / seed texts (ROME's ``generate_fast``).
* `cached_samples`: such texts kept on disk (``cache_dir()/"samples"``), keyed by the model's
  fingerprint without its down-projections (the weights editors change, so an edited model
  reuses the unedited model's texts, as MEMIT's code does), the tokenizer and the caller's
  recipe.  ROME's context prefixes (`memla.editors.kv.keys`) and the covariance statistics'
  builtin corpus (`memla.editors.kv.stats`) are drawn through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from memla.atomic import write_json_atomic
from memla.devices import input_device
from memla.models import cache_dir, down_param_names, model_fingerprint
from memla.tokens import encode_text, left_pad, next_token_logits, pad_id

log = logging.getLogger(__name__)


def cached_samples(model: nn.Module, tokenizer, recipe: Mapping[str, Any],
                   draw: Callable[[], list[str]]) -> list[str]:
    """The texts ``draw()`` samples from ``model`` for ``recipe``, read from the cache when there.

    Args:
        recipe: JSON-able settings that determine the texts (seeds, lengths, generator seeds,
            and a name for the caller); two callers with equal recipes share the texts.
        draw: samples the texts (called only on a cache miss).
    """
    key = {"model": model_fingerprint(model, skip=down_param_names(model), exact=False),
           "tokenizer": [getattr(tokenizer, "name_or_path", ""), len(tokenizer)], **recipe}
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "samples" / f"{digest}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    texts = draw()
    write_json_atomic(path, texts)
    log.debug("sampled %d texts for %s into %s", len(texts), recipe, path)
    return texts


@torch.no_grad()
def sample_ids(
    model: nn.Module,
    tokenizer,
    seqs: Sequence[Sequence[int]],
    *,
    new_tokens: int,
    top_k: int = 5,
    seed: int = 0,
) -> list[list[int]]:
    """Continue each token sequence by top-k sampling (ROME's ``generate_fast``), with a KV cache.

    Args:
        model, tokenizer: the model and its tokenizer.
        seqs: token ids to continue (one sample each).
        new_tokens: tokens to generate per sample (fewer when EOS comes first).
        top_k: sample among the ``top_k`` most likely tokens (1: greedy).
        seed: seed of a private generator (the global RNG is not touched).

    Returns:
        Each sequence followed by its continuation (EOS excluded).
    """
    device = input_device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids, mask, pos = left_pad(seqs, pad_id=pad_id(tokenizer), device=device)  # (B, T)
    eos = {tokenizer.eos_token_id} - {None}
    cache = DynamicCache(config=model.config)
    out = [list(s) for s in seqs]
    done = [False] * len(seqs)
    for _ in range(new_tokens):
        logits = next_token_logits(model, ids, mask, pos, cache=cache).float()  # (B, V)
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        # drawn on the CPU generator, so that every device samples the same texts (cached per model)
        pick = torch.multinomial(top.values.softmax(-1).cpu(), 1, generator=gen).to(top.indices.device)  # (B, 1)
        nxt = top.indices.gather(-1, pick)  # (B, 1)
        for row, tok in enumerate(nxt[:, 0].tolist()):
            if not done[row]:
                done[row] = tok in eos
                if not done[row]:
                    out[row].append(tok)
        if all(done):
            break
        ids = nxt
        mask = torch.cat([mask, mask.new_ones((len(seqs), 1))], dim=-1)  # (B, T + 1)
        pos = pos[:, -1:] + 1  # (B, 1)
    return out


def sample_texts(
    model: nn.Module,
    tokenizer,
    seeds: Sequence[str],
    *,
    new_tokens: int,
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """Continue each seed text by top-k sampling (`sample_ids`).

    Returns:
        The seed texts with their continuations, decoded without special tokens.
    """
    out = sample_ids(model, tokenizer, [encode_text(tokenizer, s) for s in seeds], new_tokens=new_tokens,
                     top_k=top_k, seed=seed)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in out]
