"""Pluggable translators for the dataset builder (MKEB §3.1 stage 4).

A translator turns a list of texts from the source language into a target
language, keeping placeholders such as ``{}`` and ``{1}`` in place:

- `LLMTranslator` — the same OpenAI-compatible chat client as generation;
- `BaiduTranslator` — the Baidu Translate general API (appid + secret key; each
  request carries ``sign = md5(appid + q + salt + key)`` as Baidu documents);
- `HFTranslator` (in `memla.build.hf`) — a local Hugging Face seq2seq translation
  model (NLLB-200, M2M100, mBART-50, or a per-pair model such as
  ``Helsinki-NLP/opus-mt-{src}-{tgt}``);
- `CachedTranslator` — an append-only on-disk translation memory in front of any
  of them, so a resumed build translates nothing twice.

Entity names are not translated here: the pipeline writes their Wikidata labels
(see `memla.build.localize`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from memla.build.cache import append_jsonl
from memla.build.errors import BuildError, ServiceError
from memla.build.generate import ChatClient, SampleFormatError, parse_json_object
from memla.build.http import PoliteSession, RequestStats
from memla.langs import lang_name

log = logging.getLogger(__name__)

BAIDU_URL = "https://fanyi-api.baidu.com/api/trans/vip/translate"

# Baidu's own language codes where they differ from ISO 639-1.
BAIDU_CODES: dict[str, str] = {
    "ja": "jp", "ko": "kor", "fr": "fra", "es": "spa", "ar": "ara", "sv": "swe", "fi": "fin", "da": "dan",
    "ro": "rom", "bg": "bul", "et": "est", "sl": "slo", "vi": "vie",
}  # fmt: skip
BAIDU_RETRY_CODES = frozenset({"52001", "52002", "54003", "54005"})  # timeout, system error, rate limits
BAIDU_MAX_BYTES = 5500  # Baidu asks for at most 6000 bytes of q per request


class Translator(Protocol):
    """What the pipeline needs from a translator."""

    name: str
    stats: RequestStats

    def translate(self, texts: Sequence[str], *, source: str, target: str) -> list[str]:
        """Translate ``texts`` from ``source`` to ``target``; one output per input, in order."""
        ...


class TranslationError(BuildError):
    """A translator answered, but not with a usable translation."""


class LLMTranslator:
    """Translation through an OpenAI-compatible chat model (MKEB §3.1).

    Args:
        client: the chat client.
        max_tries: answers to request per batch before giving up on malformed output.
        batch_size: texts per request.
    """

    def __init__(self, client: ChatClient, *, max_tries: int = 3, batch_size: int = 20) -> None:
        self.client = client
        self.name = f"llm:{client.model}"
        self.max_tries = max_tries
        self.batch_size = batch_size

    @property
    def stats(self) -> RequestStats:
        """Counters of the chat client."""
        return self.client.stats

    def messages(self, texts: Sequence[str], *, source: str, target: str) -> list[dict[str, str]]:
        """The translation instructions for one batch."""
        src, tgt = lang_name(source), lang_name(target)
        user = (
            f"Translate each string in this JSON list from {src} ({source}) to {tgt} ({target}).\n"
            "Rules: keep every placeholder such as {} or {1} exactly as written (same braces, same number), "
            "placed where the translated sentence needs it. Many strings are unfinished sentence beginnings whose "
            "next word is left out on purpose: translate them as unfinished beginnings that the same next word would "
            "complete, and do not add it. Translate questions as questions.\n"
            f'Answer with one JSON object {{"translations": [...]}} holding exactly {len(texts)} strings in the same '
            "order, and nothing else.\n\n" + json.dumps(list(texts), ensure_ascii=False)
        )
        return [
            {"role": "system", "content": "You are a careful professional translator."},
            {"role": "user", "content": user},
        ]

    def translate(self, texts: Sequence[str], *, source: str, target: str) -> list[str]:
        """Translate texts in batches.

        Args:
            texts: source texts.
            source: source language code.
            target: target language code.

        Returns:
            The translations, in order.

        Raises:
            TranslationError: the model kept answering with the wrong layout.
            ServiceError: the LLM service failed.
        """
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            out += self._batch(texts[i : i + self.batch_size], source=source, target=target)
        return out

    def _batch(self, texts: Sequence[str], *, source: str, target: str) -> list[str]:
        messages = self.messages(texts, source=source, target=target)
        problem = ""
        for _ in range(self.max_tries):
            answer = self.client.chat(messages, temperature=0.0)
            try:
                obj = parse_json_object(answer)
            except SampleFormatError as err:
                problem = str(err)
                continue
            items = obj.get("translations")
            if (
                isinstance(items, list)
                and len(items) == len(texts)
                and all(isinstance(t, str) and t.strip() for t in items)
            ):
                return [t.strip() for t in items]
            problem = f'"translations" must be a list of {len(texts)} non-empty strings'
        raise TranslationError(f"llm translator: {problem} ({source}->{target}, after {self.max_tries} tries)")


def baidu_sign(appid: str, q: str, salt: str, key: str) -> str:
    """Baidu Translate's request signature: MD5 of ``appid + q + salt + key`` (q not URL-encoded), lower-case hex."""
    return hashlib.md5(f"{appid}{q}{salt}{key}".encode()).hexdigest()


class BaiduTranslator:
    """The Baidu Translate general text API (MKEB §3.1 names it for translation).

    Texts go one per line in ``q`` (Baidu answers one ``trans_result`` per line);
    batches stay under Baidu's 6000-byte limit.  Error codes 52001 / 52002 /
    54003 / 54005 (timeout, system error, rate limits) are retried with backoff.

    Args:
        appid: the APP ID from Baidu's console.
        key: the secret key; never logged or sent except inside the signature.
        url: the API address.
        session: a polite HTTP session (default: one request per second, the
            standard tier's rate).
        salt: a function giving each request's random salt (tests fix it).
    """

    name = "baidu"

    def __init__(
        self,
        appid: str,
        key: str,
        *,
        url: str = BAIDU_URL,
        session: PoliteSession | None = None,
        salt: Callable[[], str] | None = None,
    ) -> None:
        if not appid or not key:
            raise BuildError("the Baidu translator needs an APP ID and a secret key (BAIDU_APPID / BAIDU_KEY)")
        self.appid = str(appid)
        self._key = key
        self.url = url
        self.http = session or PoliteSession("baidu", min_interval=1.0, timeout=30.0)
        self.http.redact = tuple({*self.http.redact, key})
        self.salt = salt or (lambda: str(random.randint(32768, 65536)))

    def __repr__(self) -> str:
        return f"BaiduTranslator(appid={self.appid!r}, url={self.url!r})"

    @property
    def stats(self) -> RequestStats:
        """Counters of the HTTP session."""
        return self.http.stats

    def translate(self, texts: Sequence[str], *, source: str, target: str) -> list[str]:
        """Translate texts with Baidu Translate.

        Args:
            texts: source texts (line breaks inside a text become spaces).
            source: source language code (ISO 639-1; mapped to Baidu's codes).
            target: target language code.

        Returns:
            The translations, in order.

        Raises:
            ServiceError: Baidu refused (bad key, no balance, ...) or kept failing.
        """
        lines = [" ".join(t.split()) for t in texts]
        out: list[str] = []
        batch: list[str] = []
        size = 0
        for line in lines:
            n = len(line.encode()) + 1
            if batch and size + n > BAIDU_MAX_BYTES:
                out += self._request(batch, source=source, target=target)
                batch, size = [], 0
            batch.append(line)
            size += n
        if batch:
            out += self._request(batch, source=source, target=target)
        return out

    def _request(self, lines: Sequence[str], *, source: str, target: str) -> list[str]:
        q = "\n".join(lines)
        attempt = 0
        while True:
            salt = self.salt()
            form = {
                "q": q,
                "from": BAIDU_CODES.get(source, source),
                "to": BAIDU_CODES.get(target, target),
                "appid": self.appid,
                "salt": salt,
                "sign": baidu_sign(self.appid, q, salt, self._key),
            }
            resp = self.http.request("POST", self.url, data=form)
            try:
                payload = resp.json()
            except ValueError:
                payload, code, msg = None, "bad_json", "the answer is not JSON"
            else:
                code = str(payload.get("error_code", "52000")) if isinstance(payload, dict) else "bad_json"
                msg = (
                    str(payload.get("error_msg", ""))
                    if isinstance(payload, dict)
                    else "the answer is not a JSON object"
                )
            if code == "52000":
                results = payload.get("trans_result")
                if not isinstance(results, list) or len(results) != len(lines):
                    n = len(results) if isinstance(results, list) else 0
                    raise ServiceError(f"baidu: {n} translations for {len(lines)} lines", service="baidu")
                try:
                    return [str(r["dst"]).strip() for r in results]
                except (KeyError, TypeError):
                    raise ServiceError("baidu: a trans_result entry has no 'dst'", service="baidu") from None
            if code not in BAIDU_RETRY_CODES and code != "bad_json":
                self.http.stats.failures += 1
                raise ServiceError(f"baidu: error {code} {self.http.scrub(msg)}".rstrip(), service="baidu")
            if attempt >= self.http.max_retries:
                self.http.stats.failures += 1
                raise ServiceError(
                    f"baidu: error {code} {self.http.scrub(msg)}; gave up after {attempt + 1} attempt(s)",
                    service="baidu",
                )
            attempt += 1
            self.http.stats.retries += 1
            delay = min(self.http.max_backoff, self.http.backoff * 2 ** (attempt - 1))
            log.info("baidu: error %s; retry %d/%d in %.1f s", code, attempt, self.http.max_retries, delay)
            self.http.pause(delay)


class CachedTranslator:
    """An append-only translation memory (JSONL) in front of a translator.

    Each line holds one translated text, keyed by (translator name, source,
    target, text); lines are written as soon as a batch comes back, so a crash
    loses at most the batch in flight.

    Args:
        inner: the translator that answers misses.
        path: the JSONL file.
        chunk_size: texts sent to ``inner`` at a time (and saved after each chunk).
    """

    def __init__(self, inner: Translator, path: str | os.PathLike[str], *, chunk_size: int = 32) -> None:
        self.inner = inner
        self.chunk_size = max(1, chunk_size)
        self.name = inner.name
        self.path = Path(path)
        self._memory: dict[str, str] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    try:
                        entry = json.loads(line)
                        self._memory[entry["k"]] = entry["t"]
                    except (ValueError, KeyError, TypeError):
                        log.warning("%s:%d: skipping an unreadable translation-memory line", self.path, n)

    @property
    def stats(self) -> RequestStats:
        """Counters of the inner translator."""
        return self.inner.stats

    def _key(self, text: str, source: str, target: str) -> str:
        return hashlib.sha256(f"{self.name}\x1f{source}\x1f{target}\x1f{text}".encode()).hexdigest()

    def translate(self, texts: Sequence[str], *, source: str, target: str) -> list[str]:
        """Translate, answering from the memory where possible.

        Args:
            texts: source texts.
            source: source language code.
            target: target language code.

        Returns:
            The translations, in order.
        """
        keys = [self._key(t, source, target) for t in texts]
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self._memory))
        self.stats.cache_hits += len(texts) - sum(1 for k in keys if k not in self._memory)
        for i in range(0, len(todo), self.chunk_size):
            chunk = todo[i : i + self.chunk_size]
            done = self.inner.translate(chunk, source=source, target=target)
            if len(done) != len(chunk):
                raise TranslationError(f"{self.name}: {len(done)} translations for {len(chunk)} texts")
            lines = []
            for text, trans in zip(chunk, done, strict=True):
                k = self._key(text, source, target)
                self._memory[k] = trans
                lines.append({"k": k, "from": source, "to": target, "t": trans})
            append_jsonl(self.path, lines)
        return [self._memory[k] for k in keys]
