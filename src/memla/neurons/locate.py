"""Knowledge neurons of a fact per language, and their split (paper §4.1, Eq. 1–4).

`knowledge_neurons` thresholds the IG scores of several prompts of one fact and
combines them; `locate` does it for a dataset record in several languages and
splits the result into language-independent and language-specific neurons.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from memla.errors import DataError
from memla.models import model_fingerprint

from ._common import Head
from .attribution import Options, attribute_with, make_options
from .sets import NeuronSet, split_language_neurons

log = logging.getLogger(__name__)

DEFAULT_LANGS = ("en", "zh", "fr")


def knowledge_neurons(
    model: nn.Module,
    tokenizer,
    prompts: str | Sequence[str],
    target: str,
    *,
    threshold: float = 0.3,
    thresholds: Mapping[str, float] | None = None,
    share: float | None = None,
    lang: str | None = None,
    cache: bool = True,
    progress: bool = True,
    **options,
) -> NeuronSet:
    """Knowledge neurons of one fact in one language (Eq. 1–2 and the thresholding of §4.1).

    Args:
        model, tokenizer: the model and its tokenizer.
        prompts: one prompt or several (e.g. the edit prompt and its paraphrases), subject filled in.
        target: the answer in the prompts' language.
        threshold: per prompt, a neuron is kept when its score exceeds
            ``threshold × max score over all layers``.
        thresholds: per-language overrides of ``threshold`` (AMIG used 0.3 for en, 0.2 for zh),
            looked up with ``lang``.
        share: None: union over prompts (MEMLA reference code); ``p`` in (0, 1]:
            keep a neuron found for at least a share ``p`` of the prompts (Dai et al.).
        lang: the prompts' language (join rule and ``thresholds`` lookup).
        cache: use the disk cache of attributions.
        progress: show a progress bar over prompts.
        options: the attribution settings, fields of `memla.neurons.attribution.Options`
            (``layers``, ``steps``, ``baseline``, ``point``, ``method``, ``max_rows``).

    Returns:
        The `NeuronSet`.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise DataError("knowledge_neurons needs at least one prompt")
    if share is not None and not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    thr = (thresholds or {}).get(lang, threshold) if lang is not None else threshold
    ctx = _Context(model, make_options(model, **options), cache)
    sets = [_neurons(model, tokenizer, p, target, lang, thr, ctx) for p in _bar(prompts, progress, lang)]
    return _combine(sets, share)


@dataclass(frozen=True)
class Located:
    """The knowledge neurons of one record (`locate`).

    Attributes:
        ls: the source language.
        per_language: ``{lang: N^k}``.
        independent: ``I = ∩_k N^k`` (Eq. 3).
        specific: ``S^ls = N^ls − I`` (Eq. 4).
        missing: requested languages the record does not have (skipped).
    """

    ls: str
    per_language: dict[str, NeuronSet]
    independent: NeuronSet
    specific: NeuronSet
    missing: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"ls": self.ls, "per_language": {k: v.to_dict() for k, v in self.per_language.items()},
                "independent": self.independent.to_dict(), "specific": self.specific.to_dict(),
                "missing": list(self.missing)}


def locate(
    model: nn.Module,
    tokenizer,
    record,
    ls: str,
    *,
    langs: Sequence[str] | str = DEFAULT_LANGS,
    paraphrases: bool = True,
    threshold: float = 0.3,
    thresholds: Mapping[str, float] | None = None,
    share: float | None = None,
    cache: bool = True,
    progress: bool = True,
    **options,
) -> Located:
    """Knowledge neurons of a dataset record in each language, and their split (Eq. 1–4).

    For each language ``k``: the edit prompt with the subject filled in, plus the
    paraphrase prompts, with ``target_true`` in ``k`` as the target.

    Args:
        model, tokenizer: the model and its tokenizer.
        record: a `memla.data` record (``.edit[k].prompt/.subject/.target_true``,
            ``.paraphrase_prompts[k]``, ``.langs``).
        ls: the source language (always located, added to ``langs`` if absent).
        langs: the languages, or ``"all"`` for every language the record has.
            Languages the record lacks (or without a ``target_true``) are skipped
            and listed in ``Located.missing``.
        paraphrases: also use the paraphrase prompts.
        threshold, thresholds, share, cache, progress, options: as in `knowledge_neurons`.

    Returns:
        A `Located`.

    Raises:
        DataError: the record has no edit in ``ls``.
    """
    rid = getattr(record, "example_id", "?")
    have = tuple(k for k in record.langs if k in record.edit and record.edit[k].target_true)
    wanted = list(have) if langs == "all" else list(dict.fromkeys([langs] if isinstance(langs, str) else langs))
    if ls not in wanted:
        wanted.insert(0, ls)
    if ls not in have:
        raise DataError(f"record {rid} has no edit with a target_true in source language {ls!r}")
    missing = tuple(k for k in wanted if k not in have)
    if missing:
        log.warning("record %s lacks an edit with target_true in %s; skipped", rid, ", ".join(missing))
    ctx = _Context(model, make_options(model, **options), cache)
    jobs = []  # (lang, prompt, target)
    for k in (k for k in wanted if k not in missing):
        edit = record.edit[k]
        prompts = [edit.prompt.replace("{}", edit.subject, 1) if edit.subject else edit.prompt]
        if paraphrases:
            prompts += list((getattr(record, "paraphrase_prompts", None) or {}).get(k, []) or [])
        jobs += [(k, p, edit.target_true) for p in prompts]
    found: dict[str, list[NeuronSet]] = {}
    for k, prompt, target in _bar(jobs, progress, "locate"):
        thr = (thresholds or {}).get(k, threshold)
        found.setdefault(k, []).append(_neurons(model, tokenizer, prompt, target, k, thr, ctx))
    per_language = {k: _combine(v, share) for k, v in found.items()}
    independent, specific = split_language_neurons(per_language, ls)
    return Located(ls, per_language, independent, specific, missing)


class _Context:
    """What one call builds once for all its prompts: the options, the LM head, the cache fingerprint."""

    def __init__(self, model: nn.Module, opts: Options, cache: bool):
        self.opts = opts
        self.head = Head(model) if opts.method == "fast" else None
        self.fingerprint = model_fingerprint(model) if cache else None


def _neurons(model, tokenizer, prompt: str, target: str, lang: str | None, thr: float, ctx: _Context) -> NeuronSet:
    scores = attribute_with(model, tokenizer, prompt, target, ctx.opts, lang=lang, head=ctx.head,
                            fingerprint=ctx.fingerprint)
    return NeuronSet.from_scores(scores, threshold=thr, layers=ctx.opts.layers)


def _combine(sets: list[NeuronSet], share: float | None) -> NeuronSet:
    """Union (share None) or the neurons found in at least ``share`` of the sets."""
    if share is None:
        out = NeuronSet()
        for s in sets:
            out = out | s
        return out
    need = math.ceil(share * len(sets) - 1e-9)
    counts = Counter(pair for s in sets for pair in s)
    return NeuronSet(pair for pair, n in counts.items() if n >= need)


def _bar(items: list, show: bool, desc: str | None):
    if not show or len(items) < 2:
        return items
    return tqdm(items, desc=desc or "neurons", unit="prompt", leave=False)
