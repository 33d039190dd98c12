"""IKE: in-context knowledge editing with retrieved demonstrations (Zheng et al. 2023).

No weight changes.  The edit is a prompt prefix: ``k`` demonstrations retrieved
from a training pool, then the new fact, then ``"Prompt: "``; the evaluator
prepends it to every prompt it scores (`EditResult.prefix`).  Each
demonstration restates a pool fact and shows one of three behaviours (§3.2):

- **copy**: the prompt is the new fact itself, answered with its new target;
- **update**: a paraphrase of the fact, answered with the new target (generalise);
- **retain**: a neighbourhood prompt, answered with its true answer (stay local).

Defaults follow the paper and its code (``icl.py``): ``k = 32`` demonstrations in
the ratio copy : update : retain = 4 : 12 : 16, kinds shuffled, the most similar
pool facts nearest to the query; the format ``"New Fact: {fact}\\nPrompt: {prompt}\\n\\n"``.
The paper ranks pool facts with a sentence encoder (all-MiniLM-L6-v2); offline
memla ranks by character n-gram TF-IDF cosine (`CharTfidf`, default) or by the
edited model's own mean-pooled hidden states; ``retriever="sentence"`` uses a
sentence-transformers model the user has (``sentence_model``).
"""

from __future__ import annotations

import logging
import math
import random
import time
import weakref
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from memla.data import load_dataset
from memla.devices import input_device
from memla.editors.base import EditRequest, EditResult, register_editor
from memla.errors import EditError
from memla.langs import join
from memla.tokens import context_length, encode_text, forward, last_columns, left_pad, pad_id

log = logging.getLogger(__name__)

KINDS = ("copy", "update", "retain")
RETRIEVERS = ("tfidf", "hidden", "sentence")
DEMO_TEMPLATE = "New Fact: {fact}\nPrompt: {prompt}\n\n"


@dataclass(frozen=True)
class IKEConfig:
    """Settings of IKE (defaults: Zheng et al. 2023 and their ``icl.py``).

    Attributes:
        k: number of demonstrations (paper: 32).
        ratio: relative counts of copy, update and retain demonstrations (code: 4 : 12 : 16).
        pool: the training pool: a dataset file or built-in name (MKEB layout).
        pool_split: use only this split of the pool (``None`` = all records).
        retriever: ``"tfidf"`` (character n-grams, offline), ``"hidden"`` (the model's
            mean-pooled hidden states) or ``"sentence"`` (a sentence-transformers model).
        sentence_model: name or local path of the sentence-transformers model
            (paper: all-MiniLM-L6-v2); required for ``retriever="sentence"``.
        ngram_range: smallest and largest character n-gram of the TF-IDF retriever.
        hidden_layer: hidden-state index pooled by ``retriever="hidden"`` (-1 = last).
        seed: seed of the kind shuffle and the paraphrase / neighbour choice.
    """

    k: int = 32
    ratio: tuple[int, int, int] = (4, 12, 16)
    pool: str = "mkeb-mini"
    pool_split: str | None = "dev"
    retriever: str = "tfidf"
    sentence_model: str | None = None
    ngram_range: tuple[int, int] = (2, 4)
    hidden_layer: int = -1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", tuple(self.ratio))
        object.__setattr__(self, "ngram_range", tuple(self.ngram_range))
        if self.k < 0:
            raise ValueError("k must be >= 0")
        if len(self.ratio) != 3 or any(r < 0 for r in self.ratio) or sum(self.ratio) == 0:
            raise ValueError("ratio must be three non-negative counts (copy, update, retain), not all zero")
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be one of {', '.join(RETRIEVERS)}, got {self.retriever!r}")
        if self.retriever == "sentence" and not self.sentence_model:
            raise ValueError("retriever 'sentence' needs sentence_model (a sentence-transformers name or path)")
        lo, hi = self.ngram_range if len(self.ngram_range) == 2 else (0, -1)
        if not 1 <= lo <= hi:
            raise ValueError("ngram_range must be (min, max) with 1 <= min <= max")


def kind_counts(k: int, ratio: Sequence[int]) -> dict[str, int]:
    """Split ``k`` demonstrations over the kinds in ``ratio`` (largest remainder), e.g. 32 -> 4/12/16."""
    total = sum(ratio)
    exact = [k * r / total for r in ratio]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[: k - sum(counts)]:
        counts[i] += 1
    return dict(zip(KINDS, counts))


class CharTfidf:
    """Character n-gram TF-IDF with cosine similarity (sublinear tf, smoothed idf, L2 rows).

    Character n-grams need no word segmentation, so they work for zh, ja and th too.

    Args:
        docs: the pool documents.
        ngram_range: smallest and largest n.
    """

    def __init__(self, docs: Sequence[str], *, ngram_range: tuple[int, int] = (2, 4)):
        self.ngram_range = ngram_range
        grams = [self._grams(d) for d in docs]
        self.vocab: dict[str, int] = {}
        for g in grams:
            for key in g:
                self.vocab.setdefault(key, len(self.vocab))
        df = np.zeros(len(self.vocab))
        for g in grams:
            df[[self.vocab[key] for key in g]] += 1
        self.idf = np.log((1 + len(docs)) / (1 + df)) + 1  # (V,)
        self.matrix = self._vectors(grams)  # (N_docs, n_grams)

    def _grams(self, text: str) -> Counter:
        text = f" {' '.join(text.lower().split())} "
        lo, hi = self.ngram_range
        return Counter(text[i:i + n] for n in range(lo, hi + 1) for i in range(len(text) - n + 1))

    def _vectors(self, grams: Sequence[Counter]) -> np.ndarray:
        out = np.zeros((len(grams), len(self.vocab)))  # (N_docs, n_grams)
        for row, g in enumerate(grams):
            for key, tf in g.items():
                col = self.vocab.get(key)
                if col is not None:
                    out[row, col] = (1 + math.log(tf)) * self.idf[col]
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # (N, 1)
        return out / np.where(norms == 0, 1, norms)

    def similarity(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query`` to every pool document, ``(N,)``."""
        return self.matrix @ self._vectors([self._grams(query)])[0]


@dataclass(frozen=True)
class PoolFact:
    """One pool record in one language, ready to be shown as a demonstration."""

    record_id: object
    subject: str
    fact: str
    target_new: str
    paraphrases: tuple[str, ...]
    neighbours: tuple[tuple[str, str], ...]


@register_editor("ike", config=IKEConfig, summary="IKE: in-context editing with copy/update/retain demonstrations (Zheng et al. 2023)",
                 edits_weights=False)
class IKEEditor:
    """IKE editor: retrieves demonstrations and returns them as `EditResult.prefix`; weights never change."""

    def __init__(self, config: IKEConfig | None = None):
        self.config = config or IKEConfig()
        self._records = None
        self._facts: dict[str, list[PoolFact]] = {}
        self._tfidf: dict[str, CharTfidf] = {}
        self._embeddings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {lang: (N, d)}
        self._sentence_model = None
        self._sentence_emb: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ pool
    def pool(self, lang: str) -> list[PoolFact]:
        """The pool facts in ``lang`` (loaded once)."""
        if lang not in self._facts:
            if self._records is None:
                self._records = load_dataset(self.config.pool, split=self.config.pool_split)
            facts = []
            for r in self._records:
                fact = r.edit.get(lang)
                if fact is None or fact.subject is None:
                    continue
                answers = r.neighborhood_answers.get(lang, ())
                facts.append(PoolFact(
                    record_id=r.example_id,
                    subject=fact.subject,
                    fact=join(fact.filled(), fact.target_new, lang),
                    target_new=fact.target_new,
                    paraphrases=tuple(r.paraphrase_prompts.get(lang, ())),
                    neighbours=tuple(zip(r.neighborhood_prompts.get(lang, ()), answers)),
                ))
            self._facts[lang] = facts
        return self._facts[lang]

    # ------------------------------------------------------------------ retrieval
    def similarities(self, model: nn.Module, tokenizer, query: str, lang: str) -> np.ndarray:
        """Similarity of ``query`` to every pool fact in ``lang``, ``(N,)``."""
        facts = self.pool(lang)
        cfg = self.config
        if cfg.retriever == "tfidf":
            if lang not in self._tfidf:
                self._tfidf[lang] = CharTfidf([f.fact for f in facts], ngram_range=cfg.ngram_range)
            return self._tfidf[lang].similarity(query)
        if cfg.retriever == "hidden":
            cache = self._embeddings.setdefault(model, {})
            if lang not in cache:
                cache[lang] = self._hidden(model, tokenizer, [f.fact for f in facts])
            return cache[lang] @ self._hidden(model, tokenizer, [query])[0]
        key = f"sentence:{lang}"
        if key not in self._sentence_emb:
            self._sentence_emb[key] = self._encode_sentences([f.fact for f in facts])
        return self._sentence_emb[key] @ self._encode_sentences([query])[0]

    @torch.no_grad()
    def _hidden(self, model: nn.Module, tokenizer, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised mean-pooled hidden states, ``(N, d_model)`` (left-padded batches of 32)."""
        device = input_device(model)
        rows = []
        for start in range(0, len(texts), 32):
            seqs = [encode_text(tokenizer, t) for t in texts[start:start + 32]]
            ids, mask, pos = left_pad(seqs, pad_id=pad_id(tokenizer), device=device)  # (B, T) each
            out = forward(model, ids, mask, pos, logits_to_keep=last_columns(ids), output_hidden_states=True)
            hidden = out.hidden_states[self.config.hidden_layer].float()  # (B, T, d_model)
            m = mask[..., None].to(hidden.dtype)  # (B, T, 1)
            rows.append((hidden * m).sum(1) / m.sum(1))  # (B, d_model)
        emb = torch.cat(rows)  # (N, d_model)
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy().astype(np.float64)

    def _encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        if self._sentence_model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EditError("IKE retriever 'sentence' needs the sentence-transformers package "
                                "(pip install sentence-transformers); the offline retrievers are 'tfidf' and 'hidden'") from None
            try:
                self._sentence_model = SentenceTransformer(self.config.sentence_model)
            except OSError as err:
                raise EditError(f"cannot load sentence model {self.config.sentence_model!r}: {err}") from None
        emb = self._sentence_model.encode(list(texts), normalize_embeddings=True)
        return np.asarray(emb, dtype=np.float64)

    # ------------------------------------------------------------------ the edit
    def demonstrations(self, model: nn.Module, tokenizer, request: EditRequest) -> list[tuple[PoolFact, str, float, str]]:
        """The ``k`` demonstrations for ``request``: ``(pool fact, kind, similarity, text)``, in prompt order.

        The most similar pool facts come last, next to the query (as in IKE's ``icl.py``).
        Pool facts about the request's own record or subject are left out.
        """
        cfg = self.config
        query = join(request.text, request.target_new, request.lang)
        facts = self.pool(request.lang)
        sims = self.similarities(model, tokenizer, query, request.lang) if facts else np.zeros(0)
        allowed = [i for i, f in enumerate(facts)
                   if f.subject != request.subject and not (request.record_id is not None and f.record_id == request.record_id)]
        if cfg.k and not allowed:
            raise EditError(f"the IKE pool {cfg.pool!r} ({cfg.pool_split or 'all splits'}) has no {request.lang!r} facts to use as demonstrations")
        ranked = sorted(allowed, key=lambda i: -sims[i])[: cfg.k]
        if len(ranked) < cfg.k:
            log.info("IKE pool has %d usable %s facts; using %d demonstrations instead of %d", len(ranked), request.lang, len(ranked), cfg.k)
        counts = kind_counts(len(ranked), cfg.ratio)
        kinds = [kind for kind in KINDS for _ in range(counts[kind])]
        rng = random.Random(zlib.crc32(f"{cfg.seed}|{request.lang}|{request.text}|{request.target_new}".encode()))
        rng.shuffle(kinds)
        demos = []
        for i, kind in zip(ranked, kinds):  # most similar first
            fact = facts[i]
            if kind == "retain" and not fact.neighbours:
                kind = "update"
            if kind == "update" and not fact.paraphrases:
                kind = "copy"
            if kind == "copy":
                prompt = fact.fact
            elif kind == "update":
                prompt = join(rng.choice(fact.paraphrases), fact.target_new, request.lang)
            else:
                n_prompt, answer = rng.choice(fact.neighbours)
                prompt = join(n_prompt, answer, request.lang)
            demos.append((fact, kind, float(sims[i]), DEMO_TEMPLATE.format(fact=fact.fact, prompt=prompt)))
        demos.reverse()  # the most similar next to the query
        return demos

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult:
        """Build the in-context prefix (Zheng et al. 2023, §3): demonstrations, the new fact, ``"Prompt: "``.

        Args:
            model: the model (read only for ``retriever="hidden"``; never changed).
            tokenizer: its tokenizer.
            request: the fact, in the source language.

        Returns:
            ``EditResult(deltas={}, prefix=...)``; the evaluator reads ``prefix + prompt``.
        """
        t0 = time.perf_counter()
        demos = self.demonstrations(model, tokenizer, request)
        fact = join(request.text, request.target_new, request.lang)
        prefix = "".join(text for *_, text in demos) + f"New Fact: {fact}\nPrompt: "
        _check_fits(model, tokenizer, prefix, request, k=len(demos))
        info = {
            "method": "ike",
            "retriever": self.config.retriever,
            "k": len(demos),
            "kinds": {kind: sum(d[1] == kind for d in demos) for kind in KINDS},
            "demos": [{"record": d[0].record_id, "kind": d[1], "similarity": round(d[2], 4)} for d in demos],
            "prefix_chars": len(prefix),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditResult(prefix=prefix, info=info)


def _check_fits(model: nn.Module, tokenizer, prefix: str, request: EditRequest, *, k: int) -> None:
    """Refuse a prefix that leaves the model's context no room for the prompt and its target."""
    limit = context_length(model)
    if limit is None:
        return
    n = len(encode_text(tokenizer, prefix + join(request.text, request.target_new, request.lang)))
    if n > limit:
        raise EditError(f"IKE's {k} demonstrations and the prompt take {n} tokens, more than the model's context of "
                        f"{limit}; lower IKEConfig.k")
