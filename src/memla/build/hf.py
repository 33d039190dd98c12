"""A local Hugging Face translation model as a dataset-build translator (MKEB §3.1, stage 4).

For users who translate offline: one multilingual seq2seq model (NLLB-200,
M2M100 and mBART-50 are recognised by their language tokens, never by model
name) or one model per language pair named by a ``{src}``/``{tgt}`` template.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from memla.build.errors import BuildError
from memla.build.http import RequestStats

log = logging.getLogger(__name__)

NLLB_CODES: dict[str, str] = {
    "en": "eng_Latn", "zh": "zho_Hans", "fr": "fra_Latn", "de": "deu_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang",
    "pt": "por_Latn", "ru": "rus_Cyrl", "it": "ita_Latn", "es": "spa_Latn", "pl": "pol_Latn", "th": "tha_Thai",
    "ar": "arb_Arab", "nl": "nld_Latn", "tr": "tur_Latn", "vi": "vie_Latn", "uk": "ukr_Cyrl", "cs": "ces_Latn",
}  # fmt: skip
MBART50_CODES: dict[str, str] = {
    "en": "en_XX", "zh": "zh_CN", "fr": "fr_XX", "de": "de_DE", "ja": "ja_XX", "ko": "ko_KR", "pt": "pt_XX",
    "ru": "ru_RU", "it": "it_IT", "es": "es_XX", "pl": "pl_PL", "th": "th_TH", "ar": "ar_AR", "nl": "nl_XX",
    "tr": "tr_TR", "vi": "vi_VN", "uk": "uk_UA", "cs": "cs_CZ",
}  # fmt: skip


class HFTranslator:
    """A local Hugging Face translation model (MKEB §3.1, offline alternative).

    ``model`` is a hub id or local directory of one multilingual model (NLLB-200,
    M2M100 and mBART-50 are recognised by their language tokens), or a template
    with ``{src}`` and ``{tgt}`` naming one model per language pair.

    Args:
        model: the model id / path, or a ``{src}``/``{tgt}`` template.
        device: the torch device.
        batch_size: texts per ``generate`` call.
        max_new_tokens: the longest translation.
        loader: ``loader(name) -> (tokenizer, model)``; default loads with
            ``AutoTokenizer`` / ``AutoModelForSeq2SeqLM`` (tests inject fakes).
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        batch_size: int = 8,
        max_new_tokens: int = 256,
        loader: Callable[[str], tuple[Any, Any]] | None = None,
    ) -> None:
        self.model_spec = model
        self.name = f"hf:{model}"
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.loader = loader or self._load
        self.stats = RequestStats()
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _load(self, name: str) -> tuple[Any, Any]:
        # lazy, as torch below: the rest of `memla build` runs without loading transformers / torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name)
            mdl = AutoModelForSeq2SeqLM.from_pretrained(name).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise BuildError(f"hf translator: cannot load {name!r}: {err}") from None
        return tok, mdl

    def _get(self, name: str) -> tuple[Any, Any]:
        if name not in self._loaded:
            log.info("loading translation model %s", name)
            self._loaded[name] = self.loader(name)
        return self._loaded[name]

    @staticmethod
    def _has_token(tok: Any, token: str) -> bool:
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        return token in vocab

    def _codes(self, tok: Any, source: str, target: str) -> tuple[str | None, Any]:
        """The tokenizer's source-language setting and the forced first token id for the target."""
        if self._has_token(tok, "eng_Latn"):
            table = NLLB_CODES
        elif self._has_token(tok, "en_XX"):
            table = MBART50_CODES
        elif hasattr(tok, "get_lang_id"):
            return source, tok.get_lang_id(target)
        else:
            return None, None
        if source not in table or target not in table:
            raise BuildError(f"hf translator: no language code for {source!r} or {target!r} in {self.model_spec}")
        return table[source], tok.convert_tokens_to_ids(table[target])

    def translate(self, texts: Sequence[str], *, source: str, target: str) -> list[str]:
        """Translate texts with the local model.

        Args:
            texts: source texts.
            source: source language code.
            target: target language code.

        Returns:
            The translations, in order.
        """
        import torch  # lazy: only a local translation model needs torch

        pair = "{src}" in self.model_spec or "{tgt}" in self.model_spec
        name = self.model_spec.format(src=source, tgt=target) if pair else self.model_spec
        tok, mdl = self._get(name)
        src_code, forced = (None, None) if pair else self._codes(tok, source, target)
        if src_code is not None:
            tok.src_lang = src_code
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i : i + self.batch_size])
            enc = tok(batch, return_tensors="pt", padding=True, truncation=True)
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
            if forced is not None:
                kwargs["forced_bos_token_id"] = forced
            with torch.no_grad():
                gen = mdl.generate(**{k: v.to(self.device) for k, v in enc.items()}, **kwargs)
            self.stats.requests += 1
            out += [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
        return out
