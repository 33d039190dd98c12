"""Adapter to EleutherAI's lm-evaluation-harness (optional extra ``memla[lm-eval]``).

`run_lm_eval` wraps the caller's in-memory model (edited or not; nothing is written
to disk) in lm-eval's ``HFLM`` and runs multiple-choice tasks through
``lm_eval.evaluator.evaluate``.  Task names are lm-eval's (``piqa``, ``anli_r1``,
``xnli_de``, ...; their datasets come from the Hugging Face hub, so they need the
network or a warm ``datasets`` cache).  memla's local tasks can run through lm-eval
too: each is handed over as task configs whose items live in memory (``custom_dataset``;
nothing is written to disk), with the same context / choice strings and delimiters as
the memla engine, which is how the tests check that both engines agree.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from memla.errors import MemlaError
from memla.evaluate.metrics import TaskResult
from memla.evaluate.tasks import LocalTask

log = logging.getLogger(__name__)

INSTALL_HINT = "lm-evaluation-harness is not installed; install the extra: pip install 'memla[lm-eval]'"


def lm_eval_available() -> bool:
    """Whether the ``lm_eval`` package can be imported."""
    return importlib.util.find_spec("lm_eval") is not None


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS in front by itself (then lm-eval must add it too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("a", add_special_tokens=True)["input_ids"][:1]) == [bos]


def wrap_model(model: nn.Module, tokenizer, *, batch_size: int = 8):
    """lm-eval's ``HFLM`` around an in-memory model (weight edits stay visible through it).

    HFLM gives a tokenizer without a pad token one (possibly a new token id beyond the
    embedding matrix); it then gets a copy, so the caller's tokenizer stays as it is.

    Args:
        model: a causal LM (its current weights are what lm-eval scores).
        tokenizer: its tokenizer.
        batch_size: requests per forward pass.

    Returns:
        The ``lm_eval.models.huggingface.HFLM``.
    """
    if not lm_eval_available():
        raise MemlaError(INSTALL_HINT)
    from lm_eval.models.huggingface import HFLM  # optional extra: imported only when used

    own = tokenizer if tokenizer.pad_token is not None else copy.deepcopy(tokenizer)
    return HFLM(pretrained=model, tokenizer=own, batch_size=batch_size, add_bos_token=_adds_bos(tokenizer),
                logits_cache=False)


def _in_memory(rows: list[dict[str, Any]]):
    """A ``custom_dataset`` callable: the rows as an in-memory test split (no files, no ``datasets`` cache)."""
    def load(**_):
        from datasets import Dataset, DatasetDict  # installed with the optional lm-eval extra

        return DatasetDict({"test": Dataset.from_list(rows)})

    return load


def local_task_configs(task: LocalTask, *, limit: int | None = None) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """lm-eval task configs for a memla local task, one per (language, delimiter, metrics) group.

    Args:
        task: the local task.
        limit: only the first ``limit`` items of the task (as the memla engine counts them).

    Returns:
        ``(configs, positions)``: configs named ``memla_<task>__<lang>[__<k>]`` (multiple choice,
        ``acc``, and ``acc_norm`` where the items allow it) with their items in memory, and
        for each config the items' positions in the task (to restore the task's order).
    """
    items = task.items[:limit] if limit else task.items
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.lang, it.joiner, it.length_norm), []).append(i)
    configs, positions, seen = [], [], set()
    for (lang, joiner, norm), where in groups.items():
        name = f"memla_{task.name}__{lang}" + (f"__{len(seen)}" if lang in seen else "")
        seen.add(lang)
        rows = [{"context": items[i].context, "choices": list(items[i].choices), "label": items[i].label} for i in where]
        metrics = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
        if norm:
            metrics.append({"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})
        configs.append({
            "task": name,
            "custom_dataset": _in_memory(rows),
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "label",
            "target_delimiter": joiner,
            "metric_list": metrics,
            "metadata": {"version": 1.0},
        })
        positions.append(where)
    return configs, positions


def _leaves(name: str, group_map: Mapping[str, Sequence[str]]) -> list[str]:
    """The leaf tasks of a task or group name."""
    if name not in group_map:
        return [name]
    return [leaf for child in group_map[name] for leaf in _leaves(child, group_map)]


def _per_item(samples: Sequence[Mapping[str, Any]], key: str) -> tuple[int, ...] | None:
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    if not ordered or key not in ordered[0]:
        return None
    return tuple(int(round(float(s[key]))) for s in ordered)


def _evaluate(model, tokenizer, tasks, hub, local, *, limit, batch_size):
    """Load the tasks and run lm-eval.

    Returns:
        ``(samples, parts, positions)``: lm-eval's per-sample logs, each task's leaf task
        names, and for local tasks each leaf's item positions in the task.
    """
    # optional extra: imported only when used
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    specs: list[Any] = list(hub)
    parts: dict[str, list[str]] = {}
    positions: dict[str, list[int]] = {}
    for name in tasks:
        if name in local:
            configs, where = local_task_configs(local[name], limit=limit)
            specs += configs
            parts[name] = [c["task"] for c in configs]
            positions.update({c["task"]: w for c, w in zip(configs, where)})
    manager = TaskManager(include_defaults=bool(hub))
    try:
        task_dict = manager.load(specs)
    except (KeyError, ValueError) as err:
        raise MemlaError(f"lm-eval does not know task(s) {', '.join(hub)}: {err}") from None
    except OSError as err:  # ConnectionError included: the dataset is not cached and the hub is out of reach
        raise MemlaError(f"lm-eval could not load the data of {', '.join(hub)} ({err}); "
                         "offline, use local tasks (--engine memla)") from None
    for name in hub:  # a group (e.g. "xnli") stands for its leaf tasks
        parts[name] = _leaves(name, task_dict.get("group_map", {}))
    lm = wrap_model(model, tokenizer, batch_size=batch_size)
    results = evaluate(lm=lm, task_dict=task_dict, limit=limit, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    return results["samples"], parts, positions


def run_lm_eval(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str],
    *,
    local: Mapping[str, LocalTask] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, TaskResult]:
    """Run tasks through lm-evaluation-harness on the model as it is now.

    Args:
        model: the model (not changed).
        tokenizer: its tokenizer.
        tasks: task names; those in ``local`` run from memla's local files, the rest are lm-eval's.
        local: ``{name: LocalTask}`` for local tasks to run through lm-eval.
        limit: at most this many items per task (the first ones, for local tasks as the memla engine takes them).
        batch_size: lm-eval batch size.

    Returns:
        ``{task: TaskResult}`` with ``engine="lm-eval"``; a local task's items in its own order, under its own name.

    Raises:
        MemlaError: lm-eval missing, an unknown task, or a task without an ``acc`` metric.
    """
    if not lm_eval_available():
        raise MemlaError(INSTALL_HINT)
    local = dict(local or {})
    hub = [t for t in tasks if t not in local]
    out: dict[str, TaskResult] = {}
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    if not log.isEnabledFor(logging.DEBUG):  # lm-eval warns about every in-memory model; keep the CLI readable
        quiet.setLevel(logging.ERROR)
    try:
        samples, parts, positions = _evaluate(model, tokenizer, tasks, hub, local, limit=limit, batch_size=batch_size)
    finally:
        quiet.setLevel(level)
    for name in tasks:
        rows: list[tuple[int, int, int | None, str]] = []  # (position, acc, acc_norm, lang)
        for part in parts[name]:
            if part not in samples:
                raise MemlaError(f"lm-eval task {part!r} produced no samples (a tag of tasks? name the tasks)")
            acc = _per_item(samples[part], "acc")
            if acc is None:
                raise MemlaError(f"lm-eval task {part!r} has no 'acc' metric; only multiple-choice tasks are supported")
            acc_norm = _per_item(samples[part], "acc_norm") or (None,) * len(acc)
            if name in local:
                where, lang = positions[part], local[name].items[positions[part][0]].lang
            else:
                where, lang = range(len(rows), len(rows) + len(acc)), (part if part != name else "")
            rows += [(p, a, n, lang) for p, a, n in zip(where, acc, acc_norm)]
        rows.sort()
        norm = None if any(r[2] is None for r in rows) else tuple(r[2] for r in rows)
        task = local[name].name if name in local else name
        out[name] = TaskResult(task, "lm-eval", tuple(r[1] for r in rows), norm, tuple(r[3] for r in rows))
    return out
