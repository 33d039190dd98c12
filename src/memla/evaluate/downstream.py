"""Downstream-task accuracy of a (possibly edited) model: what an edit costs (paper, Section 5.5).

Multiple-choice and classification tasks are scored by the log-likelihood of each
choice after the item's context (lm-evaluation-harness's ``acc``: argmax of the
summed log-probability; ``acc_norm``: divided by the choice's length in characters).

Two engines:

- **memla** (offline, always available): tasks defined on local JSONL files in the
  standard formats (PIQA, ANLI, XNLI, generic; see `memla.evaluate.tasks`), scored with
  the batched teacher-forced primitive `memla.evaluate.scoring.score_encoded` (only the
  choice positions go through the LM head).  The context and a choice are joined by
  the DESIGN.md rule (a space; none for zh / ja / th), which is lm-eval's
  ``target_delimiter`` for space-separated languages.
- **lm-eval** (optional extra ``memla[lm-eval]``): `memla.evaluate.lmeval` wraps the in-memory
  (edited) model in lm-eval's ``HFLM``; any task lm-eval knows (``piqa``, ``anli_r1``,
  ``xnli_de``, ...) then works when its dataset can be downloaded.

Built-in tasks (`builtin_tasks`): ``piqa-mini``, ``nli-mini``, ``xnli-mini``, written for memla.

`evaluate_tasks` measures the model as it is (into `memla.evaluate.metrics.TaskResult`);
`compare` gives the paired differences of two measurements with their standard errors
(`memla.evaluate.sequential.downstream_after_edits` measures before and after N sequential
edits, behind ``memla downstream``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from memla.errors import DataError, MemlaError
from memla.evaluate.lmeval import INSTALL_HINT, lm_eval_available, run_lm_eval
from memla.evaluate.metrics import TaskResult, mean_se
from memla.evaluate.scoring import score_encoded
from memla.evaluate.tasks import ChoiceItem, LocalTask, builtin_tasks, is_local_task, load_task
from memla.tokens import Encoded, context_length, encode_pair

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("auto", "memla", "lm-eval")


# --------------------------------------------------------------------------- scoring


def score_choices(model: nn.Module, tokenizer, items: Sequence[ChoiceItem], *, prefix: str = "") -> list[list[float]]:
    """Summed log-likelihood of every choice of every item, in one batched pass.

    Args:
        model: the model as it should be evaluated.
        tokenizer: its tokenizer.
        items: the items.
        prefix: text prepended to every context (IKE demonstrations).

    Returns:
        Per item, the summed log P(choice | context) of each choice.
    """
    pairs = [encode_pair(tokenizer, it.context, choice, it.lang, prefix=prefix, delimiter=it.joiner)
             for it in items for choice in it.choices]
    limit = context_length(model)
    if limit and any(len(p.prompt_ids) + len(p.target_ids) > limit for p in pairs):
        # as lm-eval does: drop context tokens from the left so the sequence fits the model
        log.warning("some items are longer than the model's %d positions; their contexts are cut from the left", limit)
        pairs = [p if len(p.prompt_ids) + len(p.target_ids) <= limit
                 else Encoded(p.prompt_ids[len(p.prompt_ids) + len(p.target_ids) - limit:], p.target_ids, p.clean)
                 for p in pairs]
    scores = iter(score_encoded(model, tokenizer, pairs) if pairs else [])
    return [[next(scores).sum for _ in it.choices] for it in items]


def evaluate_local(model: nn.Module, tokenizer, task: LocalTask, *, prefix: str = "", limit: int | None = None) -> TaskResult:
    """Accuracy on a local task with the memla engine.

    Args:
        model: the model as it should be evaluated.
        tokenizer: its tokenizer.
        task: the task.
        prefix: text prepended to every context.
        limit: score only the first ``limit`` items.

    Returns:
        The `TaskResult`: ``acc``, and ``acc_norm`` when every item allows it.  An item
        with a NaN or +inf log-likelihood (a broken model) counts as wrong; how many
        there were is ``TaskResult.invalid`` (-inf is a valid, if hopeless, score).
    """
    items = task.items[:limit] if limit else task.items
    logliks = score_choices(model, tokenizer, items, prefix=prefix)
    correct, correct_norm, invalid = [], [], 0
    for item, lls in zip(items, logliks):
        if np.isnan(lls).any() or np.isposinf(lls).any():  # np.argmax would pick the first NaN as an answer
            invalid += 1
            correct.append(0)
            correct_norm.append(0)
            continue
        correct.append(int(int(np.argmax(lls)) == item.label))
        normed = [ll / max(len(c), 1) for ll, c in zip(lls, item.choices)]
        correct_norm.append(int(int(np.argmax(normed)) == item.label))
    if invalid:
        log.warning("%s: %d of %d item(s) have NaN / +inf log-likelihoods and count as wrong", task.name, invalid, len(items))
    norm = tuple(correct_norm) if all(it.length_norm for it in items) else None
    return TaskResult(task.name, "memla", tuple(correct), norm, tuple(it.lang for it in items), invalid)


def split_task_names(spec: str | Sequence[str]) -> list[str]:
    """Task names from ``"a,b"`` or a sequence (duplicates dropped, order kept)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise MemlaError("no task given; built-in tasks: " + ", ".join(builtin_tasks()))
    return list(dict.fromkeys(names))


def check_tasks(names: Sequence[str], *, engine: str = "auto") -> None:
    """Fail early (before any model work) on task names that cannot run.

    Args:
        names: task names or files.
        engine: "auto", "memla" or "lm-eval".

    Raises:
        DataError: a name that looks like a file but is none, or a malformed local file.
        MemlaError: an unknown engine, a non-local task for the memla engine, or lm-eval missing.
    """
    if engine not in ENGINES:
        raise MemlaError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    other = []
    for name in names:
        if is_local_task(name):
            load_task(name)
        elif name.endswith((".jsonl", ".json")) or "/" in name:
            raise DataError(f"task file {name!r} not found")
        else:
            other.append(name)
    if other and engine == "memla":
        raise MemlaError(f"the memla engine runs local tasks only; not local: {', '.join(other)} "
                         f"(built-in: {', '.join(builtin_tasks())}; lm-eval's tasks need --engine auto or lm-eval)")
    if (other or engine == "lm-eval") and not lm_eval_available():
        raise MemlaError(f"task(s) {', '.join(other) or ', '.join(names)} need lm-evaluation-harness: {INSTALL_HINT}")


def evaluate_tasks(
    model: nn.Module,
    tokenizer,
    tasks: str | Sequence[str],
    *,
    engine: str = "auto",
    limit: int | None = None,
    prefix: str = "",
    batch_size: int = 8,
) -> dict[str, TaskResult]:
    """Accuracy of the model as it is now on each task.

    Args:
        model: the model (edited or not; it is not changed).
        tokenizer: its tokenizer.
        tasks: names ("piqa-mini,nli-mini", local files, or lm-eval task names).
        engine: "auto" (memla for local tasks, lm-eval for the rest), "memla" or "lm-eval".
        limit: at most this many items per task.
        prefix: text prepended to every context (memla engine only).
        batch_size: lm-eval batch size.

    Returns:
        ``{task: TaskResult}`` in the order given.

    Raises:
        MemlaError: unknown engine, or a non-local task without lm-eval installed.
    """
    names = split_task_names(tasks)
    check_tasks(names, engine=engine)
    local = {n: load_task(n) for n in names if is_local_task(n)}
    results: dict[str, TaskResult] = {}
    if engine == "lm-eval" or len(local) < len(names):
        hub = [n for n in names if engine == "lm-eval" or n not in local]
        results.update(run_lm_eval(model, tokenizer, hub, local={n: local[n] for n in hub if n in local},
                                   limit=limit, batch_size=batch_size))
    for name in names:
        if name not in results:
            results[name] = evaluate_local(model, tokenizer, local[name], prefix=prefix, limit=limit)
    return {name: results[name] for name in names}


# --------------------------------------------------------------------------- before / after


def compare(before: Mapping[str, TaskResult], after: Mapping[str, TaskResult]) -> list[dict[str, Any]]:
    """Accuracy before and after editing, and the paired difference, per task (and language).

    The difference's standard error is the paired one: ``sd(after_i - before_i) / sqrt(n)``
    over the same items.

    Args:
        before: results of the unedited model.
        after: results of the edited model (same tasks and items).

    Returns:
        Rows ``{"task", "n", "before", "before_se", "after", "after_se", "diff", "diff_se"}``
        (fractions); multilingual tasks add one row per language (``task`` = ``"name:lang"``).
    """
    rows = []
    for name, b in before.items():
        a = after[name]
        if a.n != b.n:
            raise MemlaError(f"task {name}: {b.n} items before but {a.n} after editing")
        groups = [(b.task, list(range(b.n)))]
        groups += [(f"{b.task}:{lang}", [i for i, k in enumerate(b.langs) if k == lang]) for lang in b.by_lang()]
        for label, idx in groups:
            cb, ca = [b.correct[i] for i in idx], [a.correct[i] for i in idx]
            (mb, sb), (ma, sa) = mean_se(cb), mean_se(ca)
            md, sd = mean_se([y - x for x, y in zip(cb, ca)])
            rows.append({"task": label, "n": len(idx), "before": mb, "before_se": sb, "after": ma, "after_se": sa,
                         "diff": md, "diff_se": sd})
    return rows
