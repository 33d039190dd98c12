"""Metrics of the paper (Appendix B) and of locality beyond it: per-record values and the ls × lt summary.

- **ES** / **PS**: share of edit / paraphrase prompts where the mean per-token
  log-probability of ``target_new`` exceeds that of ``target_true``.
- **NS** / **QS**: token F1 between the greedy prediction and the neighbourhood
  answer / the multi-hop new answer, over bags of tokens.
- **NS-margin** (``ns_margin``; CounterFact's neighbourhood score): share of neighbourhood
  prompts where the edited model still prefers the neighbour's own answer over
  ``target_new`` (mean per-token log-probabilities, as ES); prompts whose answer is
  ``target_new`` itself are not counted.
- **NS-keep** (``ns_keep``): per neighbourhood prompt, the greedy continuation of
  `NS_KEEP_TOKENS` tokens of the edited model against the unedited model's; the share
  kept is the length of their common prefix over the longer of the two (`keep_share`:
  a token after the first change continues another text, so it counts as changed).
  It sees damage whether or not the model knew the neighbour's answer.
- **Fluency** (``fluency``; ROME's generation entropy): the weighted n-gram entropy
  (`ngram_entropy`, bits) of the greedy continuation of `FLUENCY_TOKENS` tokens after
  the edit prompt, over model tokens; **repeats**: how often ``target_new`` occurs in
  that continuation (`count_mentions`).  "Rome Rome Rome Rome" has entropy 0.
- **Transferability** (``lt = "avg"``): the mean of the cells with ``lt ≠ ls``
  ("en-avg").

Each record contributes one value per cell (the mean over its prompts); a cell is
the mean over records.  Standard errors: a seeded bootstrap over records for the F1
metrics (NS, QS), closed form (``s / sqrt(n)``, `mean_se`) for the others.  Values
are fractions in [0, 1] (reports print them as percentages), except fluency (bits)
and repeats (a count).

Downstream accuracy (paper, Section 5.5) is kept per item in a `TaskResult`
(`memla.evaluate.downstream` and `memla.evaluate.lmeval` fill it), with the same
closed-form standard error.
"""

from __future__ import annotations

import json
import logging
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memla.langs import order_langs

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("es", "ps", "ns", "ns_margin", "ns_keep", "qs", "fluency", "repeats")
RATE_METRICS: frozenset[str] = frozenset({"es", "ps"})
F1_METRICS: frozenset[str] = frozenset({"ns", "qs"})  # bootstrap standard errors
RAW_METRICS: frozenset[str] = frozenset({"fluency", "repeats"})  # not fractions: printed as they are
NS_KEEP_TOKENS = 8
FLUENCY_TOKENS = 16
UNEDITED = "unedited"
F1_UNITS: tuple[str, ...] = ("tokens", "chars", "words")
AVG = "avg"


# --------------------------------------------------------------------------- token F1


def normalize_text(text: str) -> str:
    """The form answers are compared in: NFKC-normalised, case-folded, stripped."""
    return unicodedata.normalize("NFKC", text).casefold().strip()


def text_units(text: str, *, unit: str = "tokens", tokenizer=None) -> list[str]:
    """Split a text into the units token F1 counts.

    The text is NFKC-normalised, case-folded and stripped first.

    Args:
        text: a prediction or an answer.
        unit: ``"tokens"`` (the model's tokenizer; works for zh/ja/th), ``"chars"``
            (non-space characters) or ``"words"`` (whitespace-separated).
        tokenizer: required for ``unit="tokens"``.

    Returns:
        The units, in order (a bag once counted).
    """
    norm = normalize_text(text)
    if unit == "tokens":
        if tokenizer is None:
            raise ValueError("token F1 over model tokens needs the tokenizer")
        return list(tokenizer.tokenize(norm)) if norm else []
    if unit == "chars":
        return [c for c in norm if not c.isspace()]
    if unit == "words":
        return norm.split()
    raise ValueError(f"unknown F1 unit {unit!r}; use one of {', '.join(F1_UNITS)}")


def bag_f1(prediction: Sequence[str], answer: Sequence[str]) -> float:
    """F1 between two bags of units (paper, Appendix B, NS/QS).

    Args:
        prediction: predicted units.
        answer: reference units.

    Returns:
        ``2PR / (P + R)`` with P = overlap / |prediction|, R = overlap / |answer|;
        1.0 when both are empty, 0.0 when only one is.
    """
    if not prediction and not answer:
        return 1.0
    overlap = sum((Counter(prediction) & Counter(answer)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction), overlap / len(answer)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answer: str, *, unit: str = "tokens", tokenizer=None) -> float:
    """Token-level F1 between a greedy prediction and an answer (paper, Appendix B, NS/QS).

    Args:
        prediction: the decoded greedy continuation.
        answer: the neighbourhood answer or ``multi_hop_new_answer``.
        unit: ``"tokens"`` (default), ``"chars"`` or ``"words"``; see `text_units`.
        tokenizer: the model's tokenizer (for ``unit="tokens"``).

    Returns:
        The F1 in [0, 1].
    """
    return bag_f1(text_units(prediction, unit=unit, tokenizer=tokenizer), text_units(answer, unit=unit, tokenizer=tokenizer))


# --------------------------------------------------------------------------- per record


def keep_share(edited: Sequence[int], unedited: Sequence[int]) -> float:
    """NS-keep of one neighbourhood prompt: the share of its greedy continuation the edit left unchanged.

    Args:
        edited: the edited model's greedy token ids.
        unedited: the unedited model's, after the same prompt.

    Returns:
        ``|common prefix| / max(|edited|, |unedited|)``; 1.0 when both are empty.
    """
    longest = max(len(edited), len(unedited))
    if longest == 0:
        return 1.0
    same = 0
    for a, b in zip(edited, unedited):
        if a != b:
            break
        same += 1
    return same / longest


def ngram_entropy(ids: Sequence[int], orders: Sequence[int] = (2, 3), weights: Sequence[float] = (1 / 3, 2 / 3)) -> float:
    """Fluency of a continuation: weighted entropy of its n-gram frequencies (ROME's generation entropy).

    ``H_n = -Σ_g p(g) log2 p(g)`` over the n-grams ``g`` of ``ids`` with their relative
    frequencies ``p``; the result is ``Σ_n w_n H_n`` (weights 1/3 and 2/3 for bigrams and
    trigrams: ROME's 2/3 and 4/3, normalised to sum to one).

    Args:
        ids: token ids of the continuation (prompt excluded).
        orders: the n-gram orders.
        weights: one weight per order.

    Returns:
        The entropy in bits (0 for a sequence too short for any n-gram, or one n-gram repeated).
    """
    total = 0.0
    for n, w in zip(orders, weights):
        grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
        count = sum(grams.values())
        if count:
            p = np.array(list(grams.values()), dtype=float) / count  # (G,)
            total += w * float(-(p * np.log2(p)).sum())
    return total


def count_mentions(text: str, target: str) -> int:
    """Non-overlapping occurrences of ``target`` in ``text`` (both NFKC-normalised and case-folded; 0 for an empty target)."""
    needle = normalize_text(target)
    return normalize_text(text).count(needle) if needle else 0


def _ns_items(line: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(line.get("ns") or [])


def record_value(line: Mapping[str, Any], metric: str, reference: Mapping[str, Any] | None = None) -> float | None:
    """One record's value of ``metric`` in one cell: the mean over its prompts.

    Args:
        line: a result line (``status == "ok"``) or raw cell with ``es``/``ps``/``ns``/``qs``/``fluency`` lists.
        metric: one of `METRICS`.
        reference: the unedited model's line or raw cell of the same record and ``lt``
            (NS-keep compares against its continuations; unused by the other metrics).

    Returns:
        The mean success rate (ES, PS, NS-margin), F1 (NS, QS), kept share (NS-keep),
        entropy (fluency) or count (repeats); None when the record has no prompt for the
        metric in this language, or the line predates the metric (no such field), or
        NS-keep has no reference with the same neighbourhood prompts.
    """
    if metric == "ns_margin":
        kept = [item["margin"]["kept"] for item in _ns_items(line) if (item.get("margin") or {}).get("kept") is not None]
        return float(np.mean(kept)) if kept else None
    if metric == "ns_keep":
        items, ref = _ns_items(line), _ns_items(reference or {})
        if not items or any("continuation" not in i for i in (*items, *ref)):
            return None
        if [i.get("prompt") for i in items] != [i.get("prompt") for i in ref]:
            return None
        return float(np.mean([keep_share(a["continuation"], b["continuation"]) for a, b in zip(items, ref)]))
    if metric in RAW_METRICS:
        key = "entropy" if metric == "fluency" else "repeats"
        values = [float(item[key]) for item in line.get("fluency") or []]
        return float(np.mean(values)) if values else None
    items = line.get(metric) or []
    if not items:
        return None
    key = "success" if metric in RATE_METRICS else "f1"
    return float(np.mean([float(item[key]) for item in items]))


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Stat:
    """One summary cell.

    Attributes:
        method: method name ("unedited" for the unedited model).
        ls: source language of the edit.
        lt: target language, or ``"avg"`` for the mean over ``lt ≠ ls``.
        metric: one of `METRICS`.
        value: the mean (a fraction in [0, 1]; bits for fluency, a count for repeats).
        se: its standard error (None with fewer than two records).
        n: number of records behind the value.
    """

    method: str
    ls: str
    lt: str
    metric: str
    value: float
    se: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and closed-form standard error ``s / sqrt(n)`` of the non-NaN values.

    ``s`` is the sample standard deviation (``ddof=1``), as lm-eval's ``acc_stderr``.

    Args:
        values: the values (NaN marks a missing one).

    Returns:
        ``(mean, se)``: the mean is NaN when no value is left, the standard error None
        with fewer than two values.
    """
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if len(arr) == 0:
        return float("nan"), None
    return float(arr.mean()), (float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else None)


def _group_matrix(rows: Mapping[tuple[Any, str], float], lts: Sequence[str]) -> np.ndarray:
    records = sorted({rid for rid, _ in rows}, key=str)
    matrix = np.full((len(records), len(lts)), np.nan)  # (R, L)
    index = {rid: i for i, rid in enumerate(records)}
    col = {lt: j for j, lt in enumerate(lts)}
    for (rid, lt), v in rows.items():
        matrix[index[rid], col[lt]] = v
    return matrix


def summarize_group(
    rows: Mapping[tuple[Any, str], float],
    *,
    method: str,
    ls: str,
    metric: str,
    lts: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Stat]:
    """Cells and the transferability average of one (method, ls, metric).

    Args:
        rows: ``{(record_id, lt): record value}``.
        method, ls, metric: the group's keys.
        lts: target languages in display order.
        n_boot: bootstrap replicates for F1 metrics (NS, QS).
        seed: bootstrap seed.

    Returns:
        One `Stat` per ``lt`` with data, then one with ``lt="avg"`` when some ``lt ≠ ls`` has data.
    """
    lts = [lt for lt in lts if any(k[1] == lt for k in rows)]
    if not lts:
        return []
    matrix = _group_matrix(rows, lts)  # (R, L)
    counts = (~np.isnan(matrix)).sum(0)  # (L,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(matrix, axis=0)  # (L,)
        cross = [j for j, lt in enumerate(lts) if lt != ls]
        if metric not in F1_METRICS:
            ses = [mean_se(matrix[:, j])[1] for j in range(len(lts))]
            avg_se = mean_se(np.nanmean(matrix[:, cross], axis=1))[1] if cross else None
        else:
            rng = np.random.default_rng(seed)
            n_rec = matrix.shape[0]
            idx = rng.integers(0, n_rec, size=(n_boot, n_rec))  # (B, R)
            boot = np.nanmean(matrix[idx], axis=1)  # (B, L)
            ses = [float(np.nanstd(boot[:, j], ddof=1)) if counts[j] > 1 else None for j in range(len(lts))]
            avg_boot = np.nanmean(boot[:, cross], axis=1) if cross else None  # (B,)
            avg_se = float(np.nanstd(avg_boot, ddof=1)) if cross and n_rec > 1 else None
    stats = [Stat(method, ls, lt, metric, float(means[j]), ses[j], int(counts[j])) for j, lt in enumerate(lts)]
    if cross:
        n_avg = int((~np.isnan(matrix[:, cross])).any(axis=1).sum())
        stats.append(Stat(method, ls, AVG, metric, float(np.mean(means[cross])), avg_se, n_avg))
    return stats


def summarize(
    lines: Iterable[Mapping[str, Any]],
    *,
    targets: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Stat]:
    """The ls × lt summary of a run's result lines (paper, Appendix B; Tables 3–6; NS-margin, NS-keep, fluency).

    NS-keep compares each line with the ``"unedited"`` line of the same record and ``lt``.

    Args:
        lines: result lines; only ``status == "ok"`` lines count.
        targets: target languages in display order (default: benchmark order of those present).
        n_boot: bootstrap replicates for NS/QS standard errors.
        seed: bootstrap seed.

    Returns:
        `Stat` rows ordered by method (first appearance), ls, metric and lt.
    """
    groups: dict[tuple[str, str, str], dict[tuple[Any, str], float]] = defaultdict(dict)
    methods: list[str] = []
    sources: list[str] = []
    seen_lts: list[str] = []
    ok = [line for line in lines if line.get("status") == "ok"]
    unedited = {(json.dumps(line["record"]), line["lt"]): line for line in ok if line["method"] == UNEDITED}
    for line in ok:
        method, ls, lt = line["method"], line["ls"], line["lt"]
        if method not in methods:
            methods.append(method)
        if ls not in sources:
            sources.append(ls)
        seen_lts.append(lt)
        for metric in METRICS:
            value = record_value(line, metric, unedited.get((json.dumps(line["record"]), lt)))
            if value is not None:
                groups[(method, ls, metric)][(line["record"], lt)] = value
    lts = list(targets) if targets is not None else list(order_langs(seen_lts))
    out: list[Stat] = []
    for method in methods:
        for ls in sources:
            for metric in METRICS:
                rows = groups.get((method, ls, metric))
                if rows:
                    out += summarize_group(rows, method=method, ls=ls, metric=metric, lts=lts, n_boot=n_boot, seed=seed)
    return out


def skipped_summary(lines: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Count the skipped and missing cells of a run, per method, with their reasons.

    Args:
        lines: result lines.

    Returns:
        ``{method: {"skipped": n, "missing": n, "reasons": {reason: n}}}`` for methods
        with at least one such cell.
    """
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        status = line.get("status")
        if status in ("skipped", "missing"):
            entry = out.setdefault(line["method"], {"skipped": 0, "missing": 0, "reasons": Counter()})
            entry[status] += 1
            entry["reasons"][line.get("reason", "")] += 1
    for entry in out.values():
        entry["reasons"] = dict(entry["reasons"])
    return out


# --------------------------------------------------------------------------- downstream accuracy


@dataclass(frozen=True)
class TaskResult:
    """Accuracy of one model state on one task.

    Attributes:
        task: task name.
        engine: "memla" or "lm-eval".
        correct: per item, 1 if the highest-likelihood choice is the label (``acc``).
        correct_norm: per item, the same with length-normalised likelihoods (``acc_norm``), if known.
        langs: per item, its language.
        invalid: items with a NaN / +inf log-likelihood (counted as wrong).
    """

    task: str
    engine: str
    correct: tuple[int, ...]
    correct_norm: tuple[int, ...] | None = None
    langs: tuple[str, ...] = ()
    invalid: int = 0

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.correct)

    @property
    def acc(self) -> tuple[float, float | None]:
        """Accuracy and its standard error."""
        return mean_se(self.correct)

    @property
    def acc_norm(self) -> tuple[float, float | None] | None:
        """Length-normalised accuracy and its standard error (None if unknown)."""
        return None if self.correct_norm is None else mean_se(self.correct_norm)

    def by_lang(self) -> dict[str, tuple[float, float | None, int]]:
        """``{lang: (acc, se, n)}`` when the task has more than one language, else ``{}``."""
        if len(set(self.langs)) < 2:
            return {}
        out = {}
        for lang in dict.fromkeys(self.langs):
            vals = [c for c, k in zip(self.correct, self.langs) if k == lang]
            out[lang] = (*mean_se(vals), len(vals))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with the summary values added)."""
        acc, se = self.acc
        return {**asdict(self), "n": self.n, "acc": acc, "acc_se": se}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        """Inverse of `to_dict`."""
        norm = data.get("correct_norm")
        return cls(data["task"], data["engine"], tuple(data["correct"]), None if norm is None else tuple(norm),
                   tuple(data.get("langs", ())), int(data.get("invalid", 0)))
