"""Locating k*: where ROME, MEMIT and PMET read keys and write values, and the keys themselves.

* **Subject position** (ROME §3.1 "fact_token = subject_last"): the token that holds the
  last character of the subject in the tokenised prompt, found through the tokenizer's
  character offsets (or, for tokenizers without offsets, by tokenising the text up to the
  subject's end as ROME's code does).  **Fallback:** when the subject cannot be found
  (question-form prompts without ``{}`` whose text does not contain the subject verbatim,
  e.g. an inflected subject), the *last prompt token* is used and the fallback is reported
  (``Located.fallback``; editors record it as ``info["subject_fallback"]``).
* **Context prefixes** (ROME Eq. 3, "k* averaged over short texts x_j"): short texts the
  model generates itself from a few seed words with top-k sampling, each followed by
  ``". "`` and the prompt; the empty prefix (the bare prompt) always comes first.
  Generated once per model and settings, then reused (memoised in this module, for at
  most `_MEMO_SIZE` settings, and on disk).
* **Rows**: tokenised prefix + prompt (+ target_new by the DESIGN join rule, teacher forcing).
* **Keys**: `capture` reads module inputs (keys k) or outputs (values v) at given token
  positions; `group_mean` averages a request's keys over the prefixes as MEMIT's ``compute_ks``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memla.devices import input_device
from memla.editors.base import EditRequest
from memla.hooks import output_tensor, trace
from memla.models import down_param_names, model_fingerprint
from memla.samples import cached_samples, sample_texts
from memla.tokens import encode_pair, encode_text, pad_id, right_pad

log = logging.getLogger(__name__)

ROME_SEEDS = ("The", "Therefore", "Because", "I", "You")  # ROME/MEMIT get_context_templates
CAPTURE_ROWS = 64  # rows per forward pass when reading keys
# (model fingerprint, tokenizer, settings) -> prefixes: strings only, no reference to a model; the least
# recently used settings are dropped beyond _MEMO_SIZE (the disk cache keeps them).
_PREFIX_MEMO: OrderedDict[tuple, tuple[str, ...]] = OrderedDict()
_MEMO_SIZE = 16


@dataclass(frozen=True)
class Located:
    """A tokenised prompt and the position where the fact is looked up.

    Attributes:
        prompt_ids: tokens of ``prefix + prompt`` (with the tokenizer's BOS, if any).
        pos: index into ``prompt_ids`` of the subject's last token (or the fallback).
        fallback: True when the subject was not found and ``pos`` is the last prompt token.
    """

    prompt_ids: tuple[int, ...]
    pos: int
    fallback: bool


@dataclass(frozen=True)
class Row:
    """One sequence of the v* optimisation (ROME Eq. 4, MEMIT Eq. 16).

    Attributes:
        ids: prompt tokens followed by ``target_new[:-1]`` (teacher forcing); prompt only for KL rows.
        pos: where δ is added (the subject's last token).
        targets: ``(position, token)`` pairs: the token the model must predict after ``position``.
        kl: True for the "{} is a" rows whose output distribution at ``pos`` is kept (the KL term).
    """

    ids: tuple[int, ...]
    pos: int
    targets: tuple[tuple[int, int], ...] = ()
    kl: bool = False


def subject_span(request: EditRequest, prompt: str | None = None) -> tuple[str, int | None]:
    """The prompt text and the character index just past the subject in it.

    Args:
        request: the edit request.
        prompt: a template with ``{}`` to use instead of the request's prompt (KL prompts).

    Returns:
        ``(text, end)``; ``end`` is None when the subject does not occur in the text
        (question-form prompt, inflected subject).
    """
    template = request.prompt if prompt is None else prompt
    if prompt is not None or request.templated:
        start = template.index("{}")
        return template.replace("{}", request.subject), start + len(request.subject)
    start = template.find(request.subject)
    return template, (None if start < 0 else start + len(request.subject))


def locate(tokenizer, text: str, end: int | None, *, ids: Sequence[int] | None = None) -> Located:
    """Tokenise ``text`` and find the token holding character ``end - 1`` (the subject's last).

    Args:
        tokenizer: the model's tokenizer.
        text: the prompt with the subject written in (and any prefix).
        end: character index just past the subject; None forces the fallback.
        ids: the prompt's token ids when already known (`encode_pair`'s ``prompt_ids``).

    Returns:
        The `Located` prompt; ``fallback`` is True when ``end`` is None.
    """
    ids = encode_text(tokenizer, text) if ids is None else list(ids)
    if end is None or end <= 0:
        return Located(tuple(ids), len(ids) - 1, True)
    pos = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        if list(enc["input_ids"][:len(ids)]) == ids:
            spans = enc["offset_mapping"][:len(ids)]
            hits = [i for i, (a, b) in enumerate(spans) if b > a and a < end]
            pos = hits[-1] if hits else None
    if pos is None:  # ROME's rule: the last token of the text cut after the subject
        pos = len(encode_text(tokenizer, text[:end])) - 1
    return Located(tuple(ids), max(0, min(pos, len(ids) - 1)), False)


def locate_request(tokenizer, request: EditRequest, prefix: str = "", *, prompt: str | None = None,
                   ids: Sequence[int] | None = None) -> Located:
    """`locate` for ``prefix + request's prompt`` (or ``prefix + prompt.format(subject)``)."""
    text, end = subject_span(request, prompt)
    return locate(tokenizer, prefix + text, None if end is None else len(prefix) + end, ids=ids)


def rewriting_rows(tokenizer, request: EditRequest, prefixes: Sequence[str]) -> tuple[list[Row], bool]:
    """One teacher-forced row of ``prefix + prompt + target_new`` per prefix (ROME Eq. 4 first term).

    Returns:
        ``(rows, fallback)``; ``fallback`` is True when the subject was not found.
    """
    rows, fallback = [], False
    for prefix in prefixes:
        enc = encode_pair(tokenizer, prefix + subject_span(request)[0], request.target_new, request.lang)
        loc = locate_request(tokenizer, request, prefix, ids=enc.prompt_ids)
        n = len(loc.prompt_ids)
        tgt = enc.target_ids
        targets = tuple((n - 1 + j, t) for j, t in enumerate(tgt))
        rows.append(Row(loc.prompt_ids + tuple(tgt[:-1]), loc.pos, targets))
        fallback |= loc.fallback
    return rows, fallback


def kl_rows(tokenizer, request: EditRequest, kl_prompts: Sequence[str]) -> list[Row]:
    """Rows of the essence-drift prompts ("{} is a"; ROME Eq. 4 second term), cut after the subject."""
    rows = []
    for template in kl_prompts:
        loc = locate_request(tokenizer, request, prompt=template)
        rows.append(Row(loc.prompt_ids[:loc.pos + 1], loc.pos, kl=True))
    return rows


def context_prefixes(
    model: nn.Module,
    tokenizer,
    lengths: Sequence[tuple[int, int]],
    *,
    seeds: Sequence[str] = ROME_SEEDS,
    seed: int = 0,
) -> tuple[str, ...]:
    """The empty prefix plus model-generated prefixes (ROME Eq. 3 / MEMIT Eq. 19 context templates).

    Args:
        lengths: ``(tokens, count)`` pairs, as ROME's ``context_template_length_params``:
            ``count`` texts of about ``tokens`` tokens, spread evenly over ``seeds``.
        seeds: seed words the samples start with.
        seed: sampling seed.

    Returns:
        ``("", "<text 1>. ", ...)``: prepend to a prompt.  Memoised in memory and on disk
        (`memla.samples.cached_samples`) per model (its fingerprint without the
        down-projections, which editors change), tokenizer and settings.
    """
    fingerprint = model_fingerprint(model, skip=down_param_names(model), exact=False)
    key = (fingerprint, getattr(tokenizer, "name_or_path", ""), len(tokenizer),
           tuple(map(tuple, lengths)), tuple(seeds), seed)
    if key in _PREFIX_MEMO:
        _PREFIX_MEMO.move_to_end(key)
        return _PREFIX_MEMO[key]

    def draw() -> list[str]:
        prefixes = [""]
        for tokens, count in lengths:
            group = [seeds[i % len(seeds)] for i in range(count)]
            texts = sample_texts(model, tokenizer, group, new_tokens=max(1, tokens - 1), seed=seed + tokens)
            prefixes += [t.replace("{", " ").replace("}", " ").strip() + ". " for t in texts]
        return prefixes

    recipe = {"kind": "context prefixes", "lengths": [list(x) for x in lengths], "seeds": list(seeds), "seed": seed}
    prefixes = cached_samples(model, tokenizer, recipe, draw)
    _PREFIX_MEMO[key] = result = tuple(prefixes)
    while len(_PREFIX_MEMO) > _MEMO_SIZE:
        _PREFIX_MEMO.popitem(last=False)
    log.debug("context prefixes: %s", result)
    return result


# --------------------------------------------------------------------------- keys


@torch.no_grad()
def capture(
    model: nn.Module,
    tokenizer,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[int],
    modules: Sequence[str],
    *,
    inputs: bool = True,
) -> dict[str, Tensor]:
    """Module inputs (``inputs=True``) or outputs at one position per sequence.

    Args:
        model, tokenizer: the model and its tokenizer (for the padding id).
        seqs: token sequences.
        positions: per sequence, the position to read.
        modules: module paths.
        inputs: read the first positional input (keys) instead of the output (values).

    Returns:
        ``{module: (N, d)}`` in sequence order, float32, on each module's device.
    """
    device = input_device(model)
    out: dict[str, list[Tensor]] = {m: [] for m in modules}
    for start in range(0, len(seqs), CAPTURE_ROWS):
        chunk = list(seqs[start:start + CAPTURE_ROWS])
        ids, mask = right_pad(chunk, pad_id=pad_id(tokenizer), device=device)  # (B, T)
        rows = torch.arange(len(chunk), device=device)
        cols = torch.tensor(list(positions[start:start + CAPTURE_ROWS]), device=device)  # (B,)
        with trace(model, list(modules), retain_input=inputs, retain_output=not inputs, stop=True) as tr:
            model(input_ids=ids, attention_mask=mask)
        for m in modules:
            x = tr[m].input if inputs else output_tensor(tr[m].output)  # (B, T, d), on the module's device
            out[m].append(x[rows.to(x.device), cols.to(x.device)].float())  # (B, d)
    return {m: torch.cat(v) for m, v in out.items()}


def prefix_groups(lengths: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Index groups of `context_prefixes`: the bare prompt, then one group per ``(tokens, count)``."""
    groups, start = [[0]], 1
    for _, count in lengths:
        if count:
            groups.append(list(range(start, start + count)))
        start += count
    return groups


def group_mean(keys: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """MEMIT's ``compute_ks`` average: the mean over prefixes of each group, then over groups.

    Args:
        keys: ``(P, d)`` keys of one request, in prefix order.
        groups: `prefix_groups`.

    Returns:
        ``(d,)``.
    """
    return torch.stack([keys[list(g)].mean(0) for g in groups]).mean(0)
