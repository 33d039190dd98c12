"""Guideline checks and the regeneration loop (MKEB §3.1 stage 3, Appendix A).

`check_sample` tests a generated sample against each guideline and returns one
`Issue` per failure (a stable ``code`` for the build report, a ``message`` that
is fed back to the LLM).  `generate_valid_sample` asks for a sample, checks it,
and on failure asks again with the reasons added to the conversation, at most
``max_tries`` times in all; a sample still failing is dropped with its reasons.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from memla.build.generate import (
    ChatClient,
    GeneratedSample,
    SampleFormatError,
    feedback_messages,
    generation_messages,
    parse_sample,
)
from memla.build.plan import Case
from memla.langs import NO_SPACE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Issue:
    """One failed guideline check.

    Attributes:
        code: a stable name, counted in the build report (``placeholder``, ``paraphrase_same``, ...).
        message: what is wrong, in words the LLM can act on.
    """

    code: str
    message: str


def mentions(text: str, name: str, lang: str) -> bool:
    """Whether ``text`` names ``name`` (case-insensitive; whole words where words are spaced).

    Args:
        text: the text to search.
        name: an entity label.
        lang: the language of both (zh, ja, th are matched as plain substrings).

    Returns:
        True if the name occurs.
    """
    name = name.strip()
    if not name:
        return False
    if lang in NO_SPACE:
        return name.casefold() in text.casefold()
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, flags=re.I) is not None


_PUNCT = str.maketrans("", "", string.punctuation + "，。？！、：；「」『』（）")


def _norm(text: str) -> str:
    return " ".join(text.translate(_PUNCT).casefold().split())


def check_sample(sample: GeneratedSample, case: Case, *, lang: str = "en", n_paraphrases: int = 2) -> list[Issue]:
    """Check a generated sample against each Appendix A guideline.

    Checks: the edit prompt has the ``{}`` placeholder exactly once, no other
    braces, does not write the subject or an answer; paraphrases are there,
    differ from the edit prompt and from each other, name the subject and not
    the answer; each neighbour prompt is about one of the given neighbour
    subjects (which differ from the edit subject), names it, not the edit subject
    and not its answer; the multi-hop question names the first entity, not the
    intermediate one (the edit subject), and not the answer; no text is empty.

    Args:
        sample: the parsed sample.
        case: the case it was generated for.
        lang: the language it is written in.
        n_paraphrases: how many paraphrases were asked for.

    Returns:
        The failed checks (empty when the sample passes).
    """
    issues: list[Issue] = []
    s = case.subject.label
    answers = [case.target_true.label, case.target_new.label]

    def leaks(text: str, names: Sequence[str]) -> str | None:
        return next((a for a in names if mentions(text, a, lang)), None)

    p = sample.prompt
    if p.count("{}") != 1 or p.count("{") != 1 or p.count("}") != 1:
        issues.append(
            Issue("placeholder", 'the "prompt" must contain the placeholder "{}" exactly once and no other braces')
        )
    if not p.replace("{}", "").strip():
        issues.append(Issue("empty", 'the "prompt" is empty apart from the placeholder'))
    if mentions(p.replace("{}", " "), s, lang):
        issues.append(Issue("prompt_names_subject", f'the "prompt" must write "{{}}" instead of the subject "{s}"'))
    if a := leaks(p, answers):
        issues.append(Issue("answer_leak", f'the "prompt" must end before the answer; it contains "{a}"'))

    filled = _norm(p.replace("{}", s))
    if len(sample.paraphrases) < n_paraphrases:
        issues.append(Issue("paraphrase_count", f"give {n_paraphrases} paraphrases, not {len(sample.paraphrases)}"))
    seen: set[str] = set()
    for i, para in enumerate(sample.paraphrases, 1):
        if not para:
            issues.append(Issue("empty", f"paraphrase {i} is empty"))
            continue
        if "{" in para or "}" in para:
            issues.append(
                Issue("paraphrase_placeholder", f'paraphrase {i} must write the subject "{s}" instead of braces')
            )
        if _norm(para) == filled:
            issues.append(Issue("paraphrase_same", f"paraphrase {i} repeats the prompt; reword it"))
        elif _norm(para) in seen:
            issues.append(Issue("paraphrase_duplicate", f"paraphrase {i} repeats an earlier paraphrase"))
        seen.add(_norm(para))
        if not mentions(para, s, lang):
            issues.append(Issue("paraphrase_no_subject", f'paraphrase {i} must name the subject "{s}"'))
        if a := leaks(para, answers):
            issues.append(Issue("answer_leak", f'paraphrase {i} must end before the answer; it contains "{a}"'))

    given = {n.label.casefold(): (n, ans) for n, ans in case.neighbors}
    covered: set[str] = set()
    for i, nb in enumerate(sample.neighborhood, 1):
        key = nb.subject.casefold()
        if key == s.casefold():
            issues.append(
                Issue("neighbor_is_subject", f'neighborhood item {i} must be about a different subject than "{s}"')
            )
            continue
        if key not in given:
            names = ", ".join(f'"{n.label}"' for n, _ in case.neighbors)
            issues.append(
                Issue(
                    "neighbor_unknown",
                    f'neighborhood item {i} is about "{nb.subject}"; use exactly the given subjects: {names}',
                )
            )
            continue
        if key in covered:
            issues.append(Issue("neighbor_duplicate", f'neighborhood subject "{nb.subject}" appears twice'))
        covered.add(key)
        subject, answer = given[key]
        if not nb.prompt or "{" in nb.prompt or "}" in nb.prompt:
            issues.append(
                Issue(
                    "neighbor_prompt",
                    f'neighborhood item {i} needs a prompt that names "{subject.label}" in full, without braces',
                )
            )
        elif not mentions(nb.prompt, subject.label, lang):
            issues.append(Issue("neighbor_prompt", f'neighborhood item {i} must name its subject "{subject.label}"'))
        if mentions(nb.prompt, s, lang):
            issues.append(Issue("neighbor_names_subject", f'neighborhood item {i} must not mention "{s}"'))
        if mentions(nb.prompt, answer.label, lang):
            issues.append(Issue("answer_leak", f'neighborhood item {i} must end before its answer "{answer.label}"'))
    missing = [n.label for n, _ in case.neighbors if n.label.casefold() not in covered]
    if missing:
        issues.append(Issue("neighbor_missing", f"write a neighborhood prompt for: {', '.join(missing)}"))

    if case.hop is not None:
        q = sample.multi_hop_question or ""
        if not q:
            issues.append(Issue("empty", 'the "multi_hop_question" is empty'))
        else:
            if mentions(q, s, lang):
                issues.append(
                    Issue(
                        "multihop_names_intermediate",
                        f'the "multi_hop_question" must not name the intermediate entity "{s}"',
                    )
                )
            if not mentions(q, case.hop.start.label, lang):
                issues.append(
                    Issue("multihop_no_start", f'the "multi_hop_question" must name "{case.hop.start.label}"')
                )
            if a := leaks(q, answers):
                issues.append(Issue("answer_leak", f'the "multi_hop_question" must not contain the answer "{a}"'))
    return issues


@dataclass
class Outcome:
    """The result of generating one case.

    Attributes:
        case_id: the case.
        sample: the accepted sample, or ``None`` if dropped.
        tries: LLM answers requested.
        issues: the failed checks of the last try (why it was dropped).
        history: the failed checks' codes of every rejected try.
    """

    case_id: int
    sample: GeneratedSample | None
    tries: int
    issues: list[Issue] = field(default_factory=list)
    history: list[list[str]] = field(default_factory=list)


def generate_valid_sample(
    case: Case, *, client: ChatClient, lang: str = "en", n_paraphrases: int = 2, max_tries: int = 3
) -> Outcome:
    """Generate a sample, regenerating with the reasons fed back until it passes (MKEB §3.1, Appendix A).

    Args:
        case: the planned edit.
        client: the chat client (anything with ``chat(messages) -> str``).
        lang: the source language.
        n_paraphrases: paraphrases to ask for.
        max_tries: LLM answers to try in all before the case is dropped.

    Returns:
        The outcome; ``sample`` is ``None`` when all tries failed.

    Raises:
        ServiceError: the LLM service itself failed (the build stops; it can resume).
    """
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    first = generation_messages(case, lang=lang, n_paraphrases=n_paraphrases)
    messages = first
    history: list[list[str]] = []
    issues: list[Issue] = []
    for attempt in range(1, max_tries + 1):
        answer = client.chat(messages)
        try:
            sample = parse_sample(answer, case=case)
        except SampleFormatError as err:
            issues = [Issue("invalid_json", r) for r in err.reasons]
        else:
            issues = check_sample(sample, case, lang=lang, n_paraphrases=n_paraphrases)
            if not issues:
                return Outcome(case.case_id, sample, attempt, [], history)
        history.append(sorted({i.code for i in issues}))
        log.info(
            "case %d try %d/%d rejected: %s", case.case_id, attempt, max_tries, "; ".join(i.message for i in issues)
        )
        messages = feedback_messages(first, answer, [i.message for i in issues])
    log.warning("case %d dropped after %d tries: %s", case.case_id, max_tries, "; ".join(i.message for i in issues))
    return Outcome(case.case_id, None, max_tries, issues, history)
