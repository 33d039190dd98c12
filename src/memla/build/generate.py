"""Sample generation with an LLM (MKEB §3.1 stage 2, prompts of Appendix A).

`ChatClient` speaks the OpenAI chat-completions protocol, which hosted APIs and
local servers (vLLM, llama.cpp, Ollama, LM Studio) all serve under
``{base_url}/chat/completions``.  `generation_messages` writes the Appendix A
instructions for one planned case: an edit prompt with ``{}`` for the subject,
paraphrases that keep its meaning, neighbourhood prompts about other subjects of
the same type, and a multi-hop question that does not name the intermediate
entity.  `parse_sample` reads the answer strictly as one JSON object.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from memla.build.errors import ServiceError
from memla.build.http import PoliteSession, RequestStats
from memla.build.plan import Case
from memla.langs import lang_name

log = logging.getLogger(__name__)

PROMPT_VERSION = "appendix-a/1"
"""Changes whenever the generation prompts change, so cached samples are redone."""

Message = dict[str, str]


class ChatClient:
    """A client for any OpenAI-compatible chat-completions endpoint (MKEB §3.1, Appendix A).

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the model name the server expects.
        api_key: sent as ``Authorization: Bearer ...`` when given; never logged.
        temperature: sampling temperature.
        max_tokens: the answer length limit (``None``: the server's default).
        json_mode: ask for ``response_format={"type": "json_object"}`` (servers
            that do not know it may reject the request).
        timeout: seconds to wait for an answer.
        max_retries: retries on 429 / 5xx / timeouts / malformed answers.
        backoff: the first backoff in seconds (doubled each retry).
        min_interval: seconds between requests.
        sleep: the sleep function (tests inject a no-op).
        user_agent: the User-Agent header.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        json_mode: bool = False,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        min_interval: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str | None = None,
    ) -> None:
        if not base_url or not model:
            raise ValueError("an LLM base URL and model name are needed")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self._api_key = api_key
        self.http = PoliteSession(
            "llm",
            user_agent=user_agent,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            min_interval=min_interval,
            sleep=sleep,
            redact=(api_key,) if api_key else (),
        )

    def __repr__(self) -> str:  # keeps the key out of logs and tracebacks
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    @property
    def stats(self) -> RequestStats:
        """Counters of the HTTP session."""
        return self.http.stats

    def chat(self, messages: Sequence[Message], *, temperature: float | None = None) -> str:
        """Send one chat-completions request; return the first choice's text.

        Args:
            messages: ``[{"role": ..., "content": ...}, ...]``.
            temperature: overrides the client's temperature for this call.

        Returns:
            ``choices[0].message.content``.

        Raises:
            ServiceError: the server failed, rejected the request, or kept
                answering with something that is not a chat completion.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature if temperature is None else temperature,
        }
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempt = 0
        while True:
            resp = self.http.request("POST", self.url, json=body, headers=headers)
            problem = None
            try:
                payload = resp.json()
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    problem = "message content is not text"
            except ValueError:
                problem = "the answer is not JSON"
            except (KeyError, IndexError, TypeError):
                problem = "the answer has no choices[0].message.content"
            if problem is None:
                return content
            if attempt >= self.http.max_retries:
                self.http.stats.failures += 1
                raise ServiceError(
                    f"llm: {problem} ({self.url}); gave up after {attempt + 1} attempt(s)", service="llm"
                )
            attempt += 1
            self.http.stats.retries += 1
            delay = min(self.http.max_backoff, self.http.backoff * 2 ** (attempt - 1))
            log.info("llm: %s; retry %d/%d in %.1f s", problem, attempt, self.http.max_retries, delay)
            self.http.pause(delay)


@dataclass(frozen=True)
class Neighborhood:
    """One neighbourhood prompt the LLM wrote for a given neighbour subject."""

    subject: str
    prompt: str


@dataclass(frozen=True)
class GeneratedSample:
    """The source-language texts of one record, as generated (Appendix A).

    Attributes:
        prompt: the edit prompt, with ``{}`` for the subject.
        paraphrases: complete prompts with the subject written in.
        neighborhood: prompts about the case's neighbour subjects.
        multi_hop_question: the two-hop question, or ``None`` when the case has no hop.
    """

    prompt: str
    paraphrases: tuple[str, ...]
    neighborhood: tuple[Neighborhood, ...]
    multi_hop_question: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneratedSample:
        """Rebuild a sample from `to_dict`'s output."""
        return cls(
            prompt=d["prompt"],
            paraphrases=tuple(d["paraphrases"]),
            neighborhood=tuple(Neighborhood(**n) for n in d["neighborhood"]),
            multi_hop_question=d.get("multi_hop_question"),
        )


class SampleFormatError(ValueError):
    """The LLM's answer is not the JSON object asked for (the reasons say why)."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = tuple(reasons)


SYSTEM_PROMPT = (
    "You write test items for a benchmark of knowledge editing in language models. "
    "Each item is about one fact (subject, relation, answer) from Wikidata. "
    "You follow the guidelines exactly and answer with one JSON object and nothing else."
)


def _hop_sentence(case: Case) -> str:
    hop = case.hop
    assert hop is not None
    head, tail = (case.subject.label, hop.start.label)
    if not hop.relation.startswith("^"):
        head, tail = tail, head
    return f"({head}, {hop.relation_label}, {tail}): the {hop.relation_label} of {head} is {tail}"


def generation_messages(case: Case, *, lang: str = "en", n_paraphrases: int = 2) -> list[Message]:
    """The Appendix A instructions for one case (first try).

    Args:
        case: the planned edit.
        lang: the language to write in (the source language ``ls``).
        n_paraphrases: how many paraphrases to ask for.

    Returns:
        The chat messages (system + user).
    """
    s, r, o = case.subject.label, case.relation_label, case.target_true.label
    neigh = "\n".join(f'   - "{a.label}" (answer: "{b.label}")' for a, b in case.neighbors)
    keys = ['"prompt"', '"paraphrases"', '"neighborhood"'] + (['"multi_hop_question"'] if case.hop else [])
    lines = [
        f"Write in {lang_name(lang)} ({lang}).",
        "",
        f'Fact: ({s}, {r}, {o}) -- the {r} of "{s}" is "{o}".',
        "",
        f"Return one JSON object with the keys {', '.join(keys)}:",
        "",
        '1. "prompt": the beginning of a sentence that states the fact, with the subject replaced by "{}" '
        "(exactly one pair of braces, nothing inside them), ending just before the answer so that the "
        "answer would be the next word(s). Do not write the answer. "
        'Example for (France, capital, Paris): "The capital of {} is".',
        f'2. "paraphrases": a list of {n_paraphrases} different sentence beginnings with the same meaning as '
        f'the prompt, worded differently, each naming the subject "{s}" in full (no braces), each ending just '
        "before the answer, none containing the answer.",
        '3. "neighborhood": a list with one object {"subject": ..., "prompt": ...} for each of these subjects, '
        f'which are different subjects of the same type with their own answers for the relation "{r}":',
        neigh,
        "   Each prompt states the same relation for its own subject, names that subject in full, "
        f'ends just before its answer, does not contain the answer and does not mention "{s}".',
    ]
    if case.hop:
        lines += [
            f'4. "multi_hop_question": one question whose answer is "{o}", reached in two steps through the fact '
            f'{_hop_sentence(case)}, and then ({s}, {r}, {o}). The question names "{case.hop.start.label}" and '
            f'must NOT name "{s}": describe it through "{case.hop.start.label}" instead. Do not write the answer.',
        ]
    lines += ["", "Answer with the JSON object only: no explanation, no Markdown."]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def feedback_messages(previous: Sequence[Message], answer: str, reasons: Sequence[str]) -> list[Message]:
    """The conversation for a regeneration: the rejected answer and why it was rejected (Appendix A).

    Args:
        previous: the messages of the first try.
        answer: the rejected answer.
        reasons: the failed guideline checks.

    Returns:
        The messages for the next try.
    """
    fix = "\n".join(f"- {r}" for r in reasons)
    return [
        *previous[:2],
        {"role": "assistant", "content": answer},
        {
            "role": "user",
            "content": f"That answer breaks the guidelines:\n{fix}\n"
            "Write a new JSON object that follows every guideline. Answer with the JSON object only.",
        },
    ]


_FENCE = re.compile(r"^```(?:json|JSON)?[ \t]*\n(.*)\n```$", re.S)


def parse_json_object(text: str) -> dict[str, Any]:
    """Read text that must be exactly one JSON object (a surrounding ```json fence is tolerated).

    Args:
        text: the model's answer.

    Returns:
        The decoded object.

    Raises:
        SampleFormatError: anything else (prose around the object, a list, bad JSON).
    """
    body = text.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise SampleFormatError(
            [f"the answer is not one valid JSON object ({err.msg} at line {err.lineno} column {err.colno})"]
        ) from None
    if not isinstance(value, dict):
        raise SampleFormatError([f"the answer must be a JSON object, not a {type(value).__name__}"])
    return value


def parse_sample(text: str, *, case: Case) -> GeneratedSample:
    """Parse an LLM answer into a `GeneratedSample`, checking the JSON layout strictly (Appendix A).

    Keys and types are checked here; the guidelines are checked by
    `memla.build.validate.check_sample`.  Keys that were not asked for are ignored.

    Args:
        text: the model's answer.
        case: the case it answers (decides whether a multi-hop question is required).

    Returns:
        The sample, with surrounding whitespace stripped from every text.

    Raises:
        SampleFormatError: the answer is not the JSON object asked for.
    """
    obj = parse_json_object(text)
    reasons: list[str] = []
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        reasons.append('"prompt" must be a string')
    paras = obj.get("paraphrases")
    if not isinstance(paras, list) or not all(isinstance(p, str) for p in paras):
        reasons.append('"paraphrases" must be a list of strings')
    neigh = obj.get("neighborhood")
    if not isinstance(neigh, list) or not all(
        isinstance(n, dict) and isinstance(n.get("subject"), str) and isinstance(n.get("prompt"), str) for n in neigh
    ):
        reasons.append('"neighborhood" must be a list of objects with string "subject" and "prompt"')
    question = obj.get("multi_hop_question")
    if case.hop is not None and not isinstance(question, str):
        reasons.append('"multi_hop_question" must be a string')
    if reasons:
        raise SampleFormatError(reasons)
    return GeneratedSample(
        prompt=prompt.strip(),
        paraphrases=tuple(p.strip() for p in paras),
        neighborhood=tuple(Neighborhood(n["subject"].strip(), n["prompt"].strip()) for n in neigh),
        multi_hop_question=question.strip() if case.hop is not None else None,
    )
