"""Adapter to EleutherAI's lm-evaluation-harness (optional extra ``memla[lm-eval]``).

`run_lm_eval` wraps the caller's in-memory model (edited or not; nothing is written
to disk) in lm-eval's ``HFLM`` and runs multiple-choice tasks through
``lm_eval.evaluator.evaluate``.  Task names are lm-eval's (``piqa``, ``anli_r1``,
``xnli_de``, ...; their datasets come from the Hugging Face hub, so they need the
network or a warm ``datasets`` cache).  memla's local tasks can run through lm-eval
too: each is handed over as an in-memory task config on a temporary JSONL file with
the same context / choice strings and the same delimiter as the memla engine, which
is how the tests check that both engines agree.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from memla.errors import MemlaError
from memla.evaluate.downstream import TaskResult
from memla.evaluate.tasks import LocalTask
from memla.langs import sep

log = logging.getLogger(__name__)

INSTALL_HINT = "lm-evaluation-harness is not installed; install the extra: pip install 'memla[lm-eval]'"


def lm_eval_available() -> bool:
    """Whether the ``lm_eval`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS in front by itself (then lm-eval must add it too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("a", add_special_tokens=True)["input_ids"][:1]) == [bos]


def wrap_model(model: nn.Module, tokenizer, *, batch_size: int = 8):
    """lm-eval's ``HFLM`` around an in-memory model (weight edits stay visible through it).

    Args:
        model: a causal LM (its current weights are what lm-eval scores).
        tokenizer: its tokenizer.
        batch_size: requests per forward pass.

    Returns:
        The ``lm_eval.models.huggingface.HFLM``.
    """
    if not lm_eval_available():
        raise MemlaError(INSTALL_HINT)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=_adds_bos(tokenizer),
                logits_cache=False)


def local_task_configs(task: LocalTask, folder: str | Path) -> list[dict[str, Any]]:
    """lm-eval task configs for a memla local task: one per language (each has its own delimiter).

    Args:
        task: the local task.
        folder: where to write the JSONL files the configs point at.

    Returns:
        Configs named ``memla_<task>__<lang>`` (multiple-choice, ``acc`` and ``acc_norm``).
    """
    configs = []
    for lang in dict.fromkeys(it.lang for it in task.items):
        path = Path(folder) / f"{task.name}.{lang}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i, it in enumerate(t for t in task.items if t.lang == lang):
                row = {"doc": i, "context": it.context, "choices": list(it.choices), "label": it.label, "lang": lang}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        configs.append({
            "task": f"memla_{task.name}__{lang}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "label",
            "target_delimiter": sep(lang),
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        })
    return configs


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


def _evaluate(model, tokenizer, tasks, hub, local, *, limit, batch_size) -> tuple[dict, dict[str, list[str]]]:
    """Load the tasks and run lm-eval; returns its per-sample logs and each task's leaf task names."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="memla-lmeval-") as tmp:
        specs: list[Any] = list(hub)
        parts: dict[str, list[str]] = {}
        for name in tasks:
            if name in local:
                configs = local_task_configs(local[name], tmp)
                specs += configs
                parts[name] = [c["task"] for c in configs]
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
    return results["samples"], parts


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
        limit: at most this many items per task (per language for local tasks).
        batch_size: lm-eval batch size.

    Returns:
        ``{task: TaskResult}`` with ``engine="lm-eval"``.

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
        samples, parts = _evaluate(model, tokenizer, tasks, hub, local, limit=limit, batch_size=batch_size)
    finally:
        quiet.setLevel(level)
    for name in tasks:
        correct: list[int] = []
        norm: list[int] | None = []
        langs: list[str] = []
        for part in parts[name]:
            if part not in samples:
                raise MemlaError(f"lm-eval task {part!r} produced no samples")
            acc = _per_item(samples[part], "acc")
            if acc is None:
                raise MemlaError(f"lm-eval task {part!r} has no 'acc' metric; only multiple-choice tasks are supported")
            acc_norm = _per_item(samples[part], "acc_norm")
            correct += acc
            norm = None if norm is None or acc_norm is None else norm + list(acc_norm)
            lang = part.rsplit("__", 1)[1] if name in local else (part if part != name else "")
            langs += [lang] * len(acc)
        out[name] = TaskResult(name, "lm-eval", tuple(correct), None if norm is None else tuple(norm), tuple(langs))
    return out
