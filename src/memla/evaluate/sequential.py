"""Sequential editing: many edits applied one after another to the same model (no restore between).

`edit_sequentially` applies the edits of a list of requests in order (single edits, or
batches through an editor's ``edit_batch`` as MEMIT / PMET offer) and pauses at
checkpoints (before the first edit, then every ``every`` requests).  `run_sequential`
(behind ``memla bench --sequential N``) measures at each checkpoint:

- **retention**: ES and PS (paper, Appendix B) of the facts edited so far, per target
  language, and the fluency of their edit prompts' continuations;
- **locality**: NS, NS-margin and NS-keep (`memla.evaluate.metrics`; NS-keep against the
  step-0 continuations) over the neighbourhood prompts of all N records (a fixed set, so
  the curve is comparable across checkpoints);
- optionally downstream accuracy (`memla.evaluate.downstream`).

At step 0 the unedited model is measured on all N facts (the reference).  The model is
restored bitwise at the end (`memla.editors.base.pristine`), also after an error.
Lines go to ``OUT/sequential.jsonl`` (kinds "run", "edit", "cell", "downstream", "end");
`memla.report.curves` turns them into curves and tables.  `downstream_after_edits`
(behind ``memla downstream``) measures only downstream accuracy, before and after N edits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from memla.atomic import write_atomic
from memla.config import config_to_dict, load_config
from memla.editors.base import BatchEditor, EditRequest, SequenceEditor, apply_, editor_entry, pristine
from memla.errors import EditError, MemlaError
from memla.evaluate.cells import score_cells
from memla.evaluate.downstream import compare, evaluate_tasks
from memla.evaluate.metrics import UNEDITED, record_value
from memla.evaluate.store import compute_settings, jsonable
from memla.models import model_fingerprint
from memla.seeding import seed_everything

log = logging.getLogger(__name__)

SEQUENTIAL = "sequential.jsonl"
SEQUENTIAL_METRICS: tuple[str, ...] = ("es", "ps", "ns", "ns_margin", "ns_keep", "fluency", "repeats")


@dataclass(frozen=True)
class EditEvent:
    """One edit (or one batch of edits) of a sequence.

    Attributes:
        step: requests processed once this edit is done.
        records: record ids of the requests in this edit.
        status: "ok" (applied) or "skipped" (the editor refused; nothing applied).
        reason: why it was skipped ("" when applied).
        edit_s: seconds the editor took.
        info: the editor's ``info``.
    """

    step: int
    records: tuple[Any, ...]
    status: str
    reason: str = ""
    edit_s: float = 0.0
    info: Mapping[str, Any] | None = None


def edit_sequentially(
    model: nn.Module,
    tokenizer,
    editor,
    requests: Sequence[EditRequest],
    *,
    every: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[tuple[int, list[EditEvent]]]:
    """Apply ``requests`` one after another to ``model``, pausing at checkpoints.

    Each edit is computed on the model as the previous edits left it and applied
    permanently (`apply_`).  The caller restores the model (``with pristine(model):``).
    An editor that can protect earlier edits (`SequenceEditor`, memla-local) edits inside
    its ``sequence()`` block, so it sees the requests edited before each one.

    Args:
        model: the model to edit (changed in place).
        tokenizer: its tokenizer.
        editor: an editor instance; with ``batch_size > 1`` it needs ``edit_batch``.
        requests: the edits, in order.
        every: checkpoint every this many requests (default: only before and after all).
        batch_size: requests per edit (MEMIT / PMET ``edit_batch``); batches never cross a checkpoint.
        seed: each edit is seeded from it and its record ids.
        progress: show a progress bar.

    Yields:
        ``(step, events)`` at step 0, after every ``every`` requests and after the last one;
        ``step`` counts processed requests, ``events`` are the edits since the last checkpoint.

    Raises:
        MemlaError: ``batch_size > 1`` for an editor without ``edit_batch``, or a prompt-prefix
            (in-context) editor, which has no weights to accumulate.
    """
    if batch_size < 1 or (every is not None and every < 1):
        raise MemlaError("batch_size and every must be at least 1")
    if batch_size > 1 and not isinstance(editor, BatchEditor):
        raise MemlaError(f"method {getattr(editor, 'name', editor)!r} has no batched edits (edit_batch); use batch size 1")
    every = every or max(len(requests), 1)
    yield 0, []
    events: list[EditEvent] = []
    step = 0
    memory = editor.sequence() if isinstance(editor, SequenceEditor) else nullcontext()  # earlier edits kept in mind
    with memory, tqdm(total=len(requests), unit="edit", desc=f"sequential {getattr(editor, 'name', '')}", disable=not progress,
              dynamic_ncols=True) as bar:
        while step < len(requests):
            size = min(batch_size, every - step % every, len(requests) - step)
            chunk = list(requests[step: step + size])
            ids = tuple(r.record_id for r in chunk)
            seed_everything(seed, getattr(editor, "name", ""), *ids)
            t0 = time.perf_counter()
            try:
                result = editor.edit_batch(model, tokenizer, chunk) if size > 1 else editor.edit(model, tokenizer, chunk[0])
            except EditError as err:
                log.info("edit of record(s) %s skipped: %s", ids, err)
                result, reason = None, str(err)
            edit_s = time.perf_counter() - t0
            step += size
            if result is not None and result.prefix:
                raise MemlaError(f"method {getattr(editor, 'name', editor)!r} edits with a prompt prefix; "
                                 "sequential editing needs a weight editor")
            if result is not None:
                apply_(model, result)
                events.append(EditEvent(step, ids, "ok", "", edit_s, dict(result.info)))
            else:
                events.append(EditEvent(step, ids, "skipped", reason, edit_s))
            bar.update(size)
            if step % every == 0 or step == len(requests):
                yield step, events
                events = []


# --------------------------------------------------------------------------- measuring


def measure_records(
    model: nn.Module,
    tokenizer,
    records: Sequence,
    lts: Sequence[str],
    *,
    rate_ids: set[Any],
    f1_unit: str = "tokens",
    reference: Mapping[tuple[Any, str], Mapping[str, Any]] | None = None,
) -> tuple[dict[tuple[Any, str], dict[str, float | None]], dict[tuple[Any, str], dict[str, Any]]]:
    """ES / PS / fluency of some records and the locality metrics of all, per (record, lt), batched across records.

    The raw scores are `memla.evaluate.cells.score_cells`'s, the values
    `memla.evaluate.metrics.record_value`'s: a record's ES / PS is its share of prompts
    where P(target_new) > P(target_true) (mean per-token log-probability), its NS the
    mean token F1 of the greedy continuations of its neighbourhood prompts, NS-margin
    and NS-keep as defined there (NS-keep against ``reference``), fluency and repeats
    those of the edit prompt's continuation.

    Args:
        model: the model as it should be evaluated.
        tokenizer: its tokenizer.
        records: `memla.data.Record` objects.
        lts: target languages (a record without ``lt`` is left out there).
        rate_ids: ids of the records whose ES / PS / fluency to measure.
        f1_unit: NS F1 unit ("tokens", "chars" or "words").
        reference: the unedited model's raw cells (this function's second return value
            at step 0); None measures the reference itself (NS-keep is then 1).

    Returns:
        ``({(record_id, lt): {metric: v}}, {(record_id, lt): raw cell})``, the values
        for `SEQUENTIAL_METRICS` (None where not measured / no prompt).
    """
    cells = [(record, lt, ("es", "ps", "ns", "fluency") if record.example_id in rate_ids else ("ns",))
             for record in records for lt in lts if lt in record.edit]
    raw = {(record.example_id, lt): items
           for (record, lt, _), items in zip(cells, score_cells(model, tokenizer, cells, f1_unit=f1_unit))}
    ref = raw if reference is None else reference
    values = {key: {m: record_value(items, m, ref.get(key)) for m in SEQUENTIAL_METRICS} for key, items in raw.items()}
    return values, raw


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class SequentialSummary:
    """What `run_sequential` did.

    Attributes:
        path: the ``sequential.jsonl`` file.
        sequences: (method, ls) pairs run.
        edits: edits applied, over all sequences.
        wall_s: wall time in seconds.
    """

    path: Path
    sequences: tuple[tuple[str, str], ...]
    edits: int
    wall_s: float


def _commit(path: Path, sequence: tuple[str, str], lines: Sequence[str]) -> None:
    """Replace the lines of an earlier run of the same (method, ls) sequence by ``lines``, atomically."""
    keep = []
    if path.exists():
        keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and (json.loads(line)["method"], json.loads(line)["ls"]) != sequence]
    write_atomic(path, "".join(x + "\n" for x in [*keep, *lines]))


def run_sequential(
    model: nn.Module,
    tokenizer,
    records: Sequence,
    *,
    methods: Sequence[str],
    out: str | Path,
    n_edits: int,
    every: int,
    sources: Sequence[str] = ("en",),
    targets: Sequence[str] = ("en",),
    configs: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    tasks: Sequence[str] | None = None,
    engine: str = "auto",
    seed: int = 0,
    f1_unit: str = "tokens",
    run_info: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> SequentialSummary:
    """Sequential editing curves: per method and ``ls``, N edits in a row, measured every k.

    Args:
        model: the model (restored bitwise on return).
        tokenizer: its tokenizer.
        records: the records; the first ``n_edits`` with an ``ls`` edit prompt are edited, in order.
        methods: editor names ("unedited" is ignored: step 0 is the unedited model).
        out: run directory; lines go to ``out/sequential.jsonl``.  A sequence's lines are
            written to ``sequential.jsonl.partial`` while it runs (to follow it) and replace
            those of an earlier run of the same method and ``ls`` only when it completes,
            so a crash keeps the earlier curve.  Sequences do not resume.
        n_edits: N, the number of edits per sequence.
        every: k, measure after every k edits.
        sources: source languages ``ls`` (one sequence each).
        targets: target languages ``lt``.
        configs: ``{method: config}``.
        batch_size: requests per edit for editors with ``edit_batch`` (others edit one at a time).
        tasks: downstream tasks measured at every checkpoint (None: none).
        engine: downstream engine ("auto", "memla", "lm-eval").
        seed: run seed.
        f1_unit: NS F1 unit.
        run_info: extra facts for the "run" line (dataset, split, model, command).
        progress: show progress bars.

    Returns:
        A `SequentialSummary`.
    """
    if n_edits < 1 or every < 1:
        raise MemlaError("--sequential N and --every k must be at least 1")
    started = time.perf_counter()
    path = Path(out) / SEQUENTIAL
    path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    names = [m for m in dict.fromkeys(methods) if m != UNEDITED]
    entries = {m: editor_entry(m) for m in names}
    sequences = [(m, ls) for ls in sources for m in names]
    partial = path.parent / (path.name + ".partial")
    reference: dict[str, tuple[dict, dict, dict]] = {}  # ls -> step-0 values, raw cells, downstream (same for every method)
    applied = 0
    for method, ls in sequences:
        lines: list[str] = []
        with partial.open("w", encoding="utf-8") as f:
            def write(**line: Any) -> None:
                lines.append(json.dumps(jsonable(line), ensure_ascii=False))
                f.write(lines[-1] + "\n")
                f.flush()

            chosen = [r for r in records if ls in r.edit][:n_edits]
            if len(chosen) < n_edits:
                log.warning("only %d records have a %r edit prompt; the sequence has %d edits", len(chosen), ls, len(chosen))
            config = load_config(entries[method].config_cls, (configs or {}).get(method))
            editor = entries[method].editor_cls(config)
            if batch_size > 1 and not isinstance(editor, BatchEditor):
                log.warning("%s has no batched edits; editing one request at a time", method)
            size = batch_size if isinstance(editor, BatchEditor) else 1
            write(kind="run", method=method, ls=ls, n_edits=len(chosen), every=every, batch_size=size, targets=list(targets),
                  records=[r.example_id for r in chosen], config={"class": type(config).__name__, **config_to_dict(config)},
                  seed=seed, f1_unit=f1_unit, model_fingerprint=fingerprint, tasks=list(tasks or ()), **compute_settings(model),
                  started=datetime.now(timezone.utc).isoformat(timespec="seconds"), **dict(run_info or {}))
            requests = [EditRequest.from_record(r, ls) for r in chosen]
            edited: set[Any] = set()
            with pristine(model):
                for step, events in edit_sequentially(model, tokenizer, editor, requests, every=every, batch_size=size,
                                                      seed=seed, progress=progress):
                    for ev in events:
                        write(kind="edit", method=method, ls=ls, step=ev.step, records=list(ev.records), status=ev.status,
                              reason=ev.reason, edit_s=round(ev.edit_s, 3), info=ev.info or {})
                        if ev.status == "ok":
                            edited.update(ev.records)
                            applied += len(ev.records)
                    t0 = time.perf_counter()
                    if step == 0 and ls in reference:
                        cells, _, downstream = reference[ls]
                    else:
                        rate_ids = {r.example_id for r in chosen} if step == 0 else edited
                        cells, raw = measure_records(model, tokenizer, chosen, targets, rate_ids=rate_ids, f1_unit=f1_unit,
                                                     reference=reference[ls][1] if step else None)
                        downstream = evaluate_tasks(model, tokenizer, tasks, engine=engine) if tasks else {}
                        if step == 0:
                            reference[ls] = (cells, raw, downstream)
                    for (rid, lt), vals in cells.items():
                        write(kind="cell", method=method, ls=ls, step=step, record=rid, lt=lt,
                              edited=rid in edited, **vals)
                    for result in downstream.values():
                        write(kind="downstream", method=method, ls=ls, step=step, **result.to_dict())
                    log.info("%s %s: step %d measured in %.1f s", method, ls, step, time.perf_counter() - t0)
            restored = model_fingerprint(model) == fingerprint
            write(kind="end", method=method, ls=ls, edits=len(edited), restored=restored)
            if not restored:
                raise RuntimeError("the model was not restored after sequential editing")
        _commit(path, (method, ls), lines)
        partial.unlink()
    return SequentialSummary(path, tuple(sequences), applied, time.perf_counter() - started)


def load_sequential(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``run_dir/sequential.jsonl`` (empty when there is none)."""
    path = Path(run_dir) / SEQUENTIAL
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- downstream before / after


def downstream_after_edits(
    model: nn.Module,
    tokenizer,
    records: Sequence,
    *,
    method: str,
    tasks: str | Sequence[str],
    n_edits: int,
    ls: str = "en",
    config: Any = None,
    batch_size: int = 1,
    engine: str = "auto",
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Downstream accuracy before and after N sequential edits (paper, Section 5.5).

    Args:
        model: the model (restored bitwise on return).
        tokenizer: its tokenizer.
        records: records; the first ``n_edits`` with an ``ls`` edit prompt are edited in order.
        method: editor name.
        tasks: task names (see `memla.evaluate.downstream.evaluate_tasks`).
        n_edits: number of edits applied one after another before measuring again.
        ls: source language of the edits.
        config: the method's config (dict, path or instance).
        batch_size: requests per edit for editors with ``edit_batch``.
        engine: "auto", "memla" or "lm-eval".
        limit: at most this many items per task.
        seed: edit seed.
        progress: show a progress bar.

    Returns:
        ``{"method", "ls", "n_edits", "applied", "skipped", "edit_s", "before": {task: TaskResult},
        "after": {task: TaskResult}, "rows": compare(before, after)}``.
    """
    entry = editor_entry(method)
    editor = entry.editor_cls(load_config(entry.config_cls, config))
    chosen = [r for r in records if ls in r.edit][:n_edits]
    if not chosen:
        raise MemlaError(f"no record has a {ls!r} edit prompt; nothing to edit")
    if len(chosen) < n_edits:
        log.warning("only %d records have a %r edit prompt; measuring after %d edits", len(chosen), ls, len(chosen))
    size = batch_size if isinstance(editor, BatchEditor) else 1
    results: dict[int, dict] = {}
    events: list[EditEvent] = []
    with pristine(model):
        requests = [EditRequest.from_record(r, ls) for r in chosen]
        for step, new in edit_sequentially(model, tokenizer, editor, requests, batch_size=size, seed=seed, progress=progress):
            events += new
            results[step] = evaluate_tasks(model, tokenizer, tasks, engine=engine, limit=limit)
    before, after = results[0], results[max(results)]
    applied = sum(len(e.records) for e in events if e.status == "ok")
    if not applied:
        log.warning("%s applied none of the %d edits; 'after' is the unedited model", method, len(chosen))
    return {"method": method, "ls": ls, "n_edits": len(chosen), "applied": applied,
            "skipped": sum(len(e.records) for e in events if e.status != "ok"),
            "edit_s": round(sum(e.edit_s for e in events), 3), "before": before, "after": after,
            "rows": compare(before, after)}
