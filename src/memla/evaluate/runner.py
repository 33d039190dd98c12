"""The benchmark runner: every method × record × source language ``ls``, evaluated in every ``lt``.

For each record and source language the runner edits with each method (through
the editor registry), evaluates the edited model in all target languages at once
(`memla.evaluate.cells.evaluate_record`), and restores the pristine weights
exactly (``with apply(model, result):``; checked with the model fingerprint).
The unedited model is always measured on the same cells, as method ``"unedited"``.

One JSONL line per (method, record, ls, lt) goes into ``OUT/results.jsonl``::

    {"method": "memla", "record": 17, "ls": "en", "lt": "zh", "status": "ok",
     "es": [{"prompt", "new": {"mean", "sum", "n"}, "true": {...}, "clean", "success"}],
     "ps": [...], "ns": [{"prompt", "answer", "prediction", "f1", "margin": {"answer", "new", "kept"},
                          "continuation": [ids]}],
     "qs": [...], "fluency": [{"prompt", "continuation", "entropy", "repeats"}],
     "edit_s": 1.9, "eval_s": 2.1, "group": 12, "edit_info": {...}}

``status`` is ``"skipped"`` (with ``reason``) when the method cannot serve the
record (it raised `memla.errors.EditError`, e.g. it needs the subject position)
or the record has no ``ls`` edit, and ``"missing"`` when the record has no
``lt`` edit prompt.  ``OUT/manifest.json`` holds the resolved configs, seed,
package versions, model fingerprint, timings, and per session the command line, torch
thread count, device and dtype.  Running the same command again skips every finished
cell; a killed run loses at most the edit in progress.  A resume with another thread
count warns (scores may move in the last bits); another device or dtype is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from memla.config import config_to_dict, load_config
from memla.editors.base import EditRequest, EditResult, apply, editor_entry
from memla.editors.kv.stats import FORMAT as STATS_FORMAT
from memla.errors import EditError, MemlaError
from memla.evaluate.cells import evaluate_record, missing_reason
from memla.evaluate.metrics import F1_UNITS, UNEDITED
from memla.evaluate.store import (
    RESULTS,
    ResultStore,
    cell_key,
    compute_settings,
    jsonable,
    read_manifest,
    record_digest,
    write_manifest,
)
from memla.langs import resolve_langs
from memla.models import model_fingerprint
from memla.seeding import seed_everything

log = logging.getLogger(__name__)

VERSION_PACKAGES = ("memla", "torch", "transformers", "numpy", "peft", "accelerate", "tokenizers")


@dataclass(frozen=True)
class RunSummary:
    """What `run_bench` did.

    Attributes:
        out: the run directory.
        written: result lines written by this call.
        reused: cells already present (skipped on resume).
        skipped: lines written with status "skipped" or "missing".
        wall_s: wall time of this call in seconds.
    """

    out: Path
    written: int
    reused: int
    skipped: int
    wall_s: float


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that affect results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def resolve_methods(methods: Sequence[str], configs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{name: (editor_cls, config)}`` for the methods; "unedited" first, always."""
    names = [UNEDITED] + [m for m in dict.fromkeys(methods) if m != UNEDITED]
    configs = dict(configs or {})
    unknown = sorted(set(configs) - set(names))
    if unknown:
        raise MemlaError(f"configs given for method(s) not in this run: {', '.join(unknown)} (methods: {', '.join(names)})")
    resolved: dict[str, Any] = {UNEDITED: None}
    for name in names[1:]:
        entry = editor_entry(name)
        resolved[name] = (entry.editor_cls, load_config(entry.config_cls, configs.get(name)))
    return resolved


def _same_config(name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether a stored method config is the new one, where a field the stored one lacks
    (added to the method after the run was made) is at its default now: new fields default
    to the behaviour the method had before them."""
    if old is None or new is None or old == new:
        return old == new
    default = config_to_dict(editor_entry(name).config_cls())
    return all(old.get(key, default.get(key)) == value for key, value in new.items() if key != "class") \
        and old.get("class") == new.get("class") and set(old) <= set(new)


def _check_resume(old: Mapping[str, Any], new: Mapping[str, Any], session: Mapping[str, Any], out: Path, *,
                  allow_compute_change: bool) -> None:
    """Refuse to mix results of a different model, seed, dataset, config, dtype or device into one run.

    A different torch thread count is allowed with a warning naming both values: it
    moves scores only in the last bits, but the resumed run is then no longer bitwise
    equal to an uninterrupted one.  A different device is refused unless
    ``allow_compute_change``; a different dtype always (the weights differ).
    """
    for key in ("dtype", "device", "torch_threads"):
        earlier = sorted({str(s[key]) for s in old.get("sessions", []) if key in s} or _legacy_setting(old, key))
        if not earlier or earlier == [str(session[key])]:
            continue
        change = f"{out} was computed with {key} {', '.join(earlier)} and this session uses {session[key]}"
        if key == "torch_threads":
            log.warning("%s: scores may differ in the last bits from an uninterrupted run", change)
        elif key == "device" and allow_compute_change:
            log.warning("%s (allowed by --allow-compute-change)", change)
        else:
            allow = " or pass --allow-compute-change" if key == "device" else ""
            raise MemlaError(f"{change}; rerun with the same {key}, use another --out{allow}")
    problems = []
    for key in ("model_fingerprint", "seed", "dataset", "split", "f1_unit", "shard"):
        if old.get(key) != new[key] and (key in old or new[key] is not None):
            problems.append(f"{key} {old.get(key)!r} != {new[key]!r}")
    for name, cfg in new["configs"].items():
        if name in old.get("configs", {}) and not _same_config(name, old["configs"][name], cfg):
            problems.append(f"config of {name} differs")
    uses_stats = [name for name, cfg in new["configs"].items() if (cfg or {}).get("covariance") == "stats"
                  and name in old.get("configs", {})]
    if uses_stats and old.get("stats_format", 1) != new["stats_format"]:  # runs before the field: format 1
        problems.append(f"{', '.join(uses_stats)}: key statistics format {old.get('stats_format', 1)} != "
                        f"{new['stats_format']} (the covariance corpus changed)")
    if problems:
        raise MemlaError(f"{out} holds a run that does not match this one ({'; '.join(problems)}); use another --out")
    if "records" not in old:
        log.warning("%s was made before runs recorded record hashes: changed records cannot be detected", out)
        return
    changed = [rid for rid, digest in new["records"].items() if old["records"].get(rid, digest) != digest]
    if changed:
        shown = ", ".join(str(json.loads(rid)) for rid in changed[:10])
        more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
        raise MemlaError(f"{out}: record(s) {shown}{more} of {new['dataset']} changed since their results were written "
                         "(content hash differs); use another --out, or restore the dataset")


def _legacy_setting(old: Mapping[str, Any], key: str) -> set[str]:
    """The setting as a manifest written before sessions recorded it holds it (CPU runs only then)."""
    value = {"torch_threads": old.get("host", {}).get("torch_threads"), "dtype": old.get("dtype"),
             "device": "cpu" if "dtype" in old else None}[key]
    return set() if value is None else {str(value)}


def _merge(old: Sequence[str], new: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*old, *new]))


def run_bench(
    model: nn.Module,
    tokenizer,
    records: Sequence,
    *,
    methods: Sequence[str],
    out: str | Path,
    sources: str | Sequence[str] = "en",
    targets: str | Sequence[str] = "all",
    configs: Mapping[str, Any] | None = None,
    seed: int = 0,
    f1_unit: str = "tokens",
    dataset: str | None = None,
    split: str | None = None,
    model_name: str | None = None,
    command: Sequence[str] | None = None,
    progress: bool = True,
    allow_compute_change: bool = False,
    shard: tuple[int, int] | None = None,
    executor: Executor | None = None,
) -> RunSummary:
    """Run the MKEB-style benchmark (paper, Appendix B) and store raw scores per cell.

    Args:
        model: the model to edit (left unchanged on return, bitwise).
        tokenizer: its tokenizer.
        records: `memla.data.Record` objects.
        methods: editor names; "unedited" is always added (first).
        out: run directory (created; an existing run there is resumed).
        sources: source languages ``ls`` ("en,zh", a list, or "all").
        targets: target languages ``lt`` ("all" = the 12 benchmark languages).
        configs: ``{method: config}`` (dict, YAML/JSON path or config instance).
        seed: run seed; each (method, record, ls) edit is seeded from it.
        f1_unit: NS/QS F1 unit, "tokens", "chars" or "words".
        dataset: dataset name or path, for the manifest.
        split: dataset split used, for the manifest.
        model_name: model name or path, for the manifest.
        command: the command line, for the manifest (default ``sys.argv``).
        progress: show a progress bar with ETA.
        allow_compute_change: resume a run made on another device (refused by default).
            A different torch thread count is allowed with a warning; a different dtype never.
        shard: ``(i, n)``: run only the units ``u`` with ``u.index % n == i`` (`plan_units`), for
            ``--shard I/N``; the shard is recorded in the manifest and a resume must use the same one.
        executor: runs the units and yields ``(method, record, ls, lines)`` per finished edit, e.g.
            `memla.evaluate.parallel.RayExecutor` (default: `UnitRunner` on ``model`` in this process).
            This function stays the only writer of the run directory.

    Returns:
        A `RunSummary`.

    Raises:
        MemlaError: unknown method or config key, or ``out`` holds a different run.
    """
    from tqdm.auto import tqdm

    if f1_unit not in F1_UNITS:
        raise MemlaError(f"unknown F1 unit {f1_unit!r}; use one of {', '.join(F1_UNITS)}")
    started = time.perf_counter()
    out = Path(out)
    sources, targets = resolve_langs(sources), resolve_langs(targets)
    resolved = resolve_methods(methods, configs)
    fingerprint = model_fingerprint(model)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    compute = compute_settings(model)
    session = {"started": now, "command": list(command if command is not None else sys.argv), **compute,
               **dict(getattr(executor, "session_info", {})),  # e.g. the workers' thread count under Ray
               "status": "running"}  # stays "running" in the manifest of a killed session
    manifest = {
        "memla_run": 1,
        "dataset": dataset,
        "split": split,
        "n_records": len(records),
        "model": model_name or "default",
        "model_type": getattr(model.config, "model_type", None),
        "model_fingerprint": fingerprint,
        "dtype": compute["dtype"],
        "device": compute["device"],
        "seed": seed,
        "f1_unit": f1_unit,
        "methods": list(resolved),
        "sources": list(sources),
        "targets": list(targets),
        "configs": {n: (None if v is None else {"class": type(v[1]).__name__, **config_to_dict(v[1])}) for n, v in resolved.items()},
        "records": {_json_id(r.example_id): record_digest(r) for r in records},  # content hash per record
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "stats_format": STATS_FORMAT,  # what C = E[k kᵀ] of ROME, MEMIT and PMET is computed from
        "versions": package_versions(),
        "host": {"platform": platform.platform()},
    }
    session["dataset_sha256"] = hashlib.sha256(json.dumps(manifest["records"]).encode()).hexdigest()[:16]
    old = read_manifest(out)
    if old is not None:
        _check_resume(old, manifest, session, out, allow_compute_change=allow_compute_change)
        manifest["methods"] = _merge(old.get("methods", []), manifest["methods"])
        manifest["sources"] = _merge(old.get("sources", []), manifest["sources"])
        manifest["targets"] = _merge(old.get("targets", []), manifest["targets"])
        manifest["configs"] = {**old.get("configs", {}), **manifest["configs"]}
        manifest["records"] = {**old.get("records", {}), **manifest["records"]}
    manifest["created"] = (old or {}).get("created", now)
    manifest["sessions"] = [*(old or {}).get("sessions", []), session]
    timings: dict[str, dict[str, float]] = (old or {}).get("timings", {})
    manifest["timings"] = timings
    manifest["status"] = "running"
    store = ResultStore(out / RESULTS)
    done = {cell_key(line) for line in store.load()}  # a corrupt file is refused before this session is recorded
    lock = _lock(out)  # noqa: F841  (held until the function returns: one writer per run folder)
    write_manifest(out, manifest)

    units = plan_units(records, sources, list(resolved), targets, done, shard=shard)
    pairs = range(len(records) * len(sources))  # the (record, ls) units of the whole run
    total = len(resolved) * sum(1 for i in pairs if in_shard(i, shard))
    pending = sum(len(u.todo) for u in units)
    written = skipped = 0
    # one bar for the whole run, in cells (tqdm shows cells/s and the ETA), whichever executor runs the units
    cells_left = sum(len(todo) for u in units for _, todo in u.todo)
    bar = tqdm(total=total * len(targets), initial=total * len(targets) - cells_left, unit="cell",
               disable=not progress, desc="bench", dynamic_ncols=True)
    if executor is None:
        executor = UnitRunner(model, tokenizer, resolved, targets=targets, seed=seed, f1_unit=f1_unit,
                              fingerprint=fingerprint).run_all
    status = "interrupted"
    try:
        with store.writer():
            for method, record, ls, lines in executor(units):
                for line in lines:
                    store.append(line)
                    done.add(cell_key(line))
                    written += 1
                    skipped += line["status"] != "ok"
                first_ok = next((line for line in lines if line["status"] == "ok"), None)
                if first_ok is not None:
                    t = timings.setdefault(method, {"edits": 0, "edit_s": 0.0, "eval_s": 0.0})
                    t["edits"] += 1
                    t["edit_s"] = round(t["edit_s"] + first_ok["edit_s"], 4)
                    t["eval_s"] = round(t["eval_s"] + first_ok["eval_s"], 4)
                session.update(wall_s=round(time.perf_counter() - started, 3), written=written)
                write_manifest(out, manifest)  # timings as they happen: a killed session keeps its share
                bar.set_postfix_str(f"{method} {record.example_id} {ls}", refresh=False)
                bar.update(len(lines))
        status = "complete"
    finally:
        bar.close()
        wall = time.perf_counter() - started
        session.update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), wall_s=round(wall, 3),
                       written=written, status=status)
        manifest["status"] = status
        write_manifest(out, manifest)
    return RunSummary(out, written, total - pending, skipped, wall)


@dataclass(frozen=True)
class Unit:
    """One unit of work: a record in one source language, with the targets each method still needs.

    ``index`` numbers the (record, ls) pairs of the whole run in order, so that the partition
    into shards (``index % n``) does not depend on what a resumed run has done already.
    """

    index: int
    record: Any
    ls: str
    todo: tuple[tuple[str, tuple[str, ...]], ...]  # (method, targets still missing), in run order


Executor = Callable[[Sequence[Unit]], Iterator[tuple[str, Any, str, list[dict[str, Any]]]]]


def in_shard(index: int, shard: tuple[int, int] | None) -> bool:
    """Whether unit ``index`` belongs to ``shard`` = ``(i, n)`` (``index % n == i``); every unit when None."""
    return shard is None or index % shard[1] == shard[0]


def plan_units(records: Sequence, sources: Sequence[str], methods: Sequence[str], targets: Sequence[str],
               done: set, *, shard: tuple[int, int] | None = None) -> list[Unit]:
    """The units still to run: per (record, ls) of the shard, the methods with a missing cell."""
    units = []
    for index, (record, ls) in enumerate((r, ls) for r in records for ls in sources):
        if not in_shard(index, shard):
            continue
        rid = _json_id(record.example_id)
        todo = tuple((m, missing) for m in methods
                     if (missing := tuple(lt for lt in targets if (m, rid, ls, lt) not in done)))
        if todo:
            units.append(Unit(index, record, ls, todo))
    return units


class UnitRunner:
    """Runs units on one model: the editors, the run settings and the unedited model's cache.

    One lives in the driver process of a serial run and one in every worker of a parallel
    run; either way each (method, record, ls) edit is seeded from the run seed alone, so the
    lines do not depend on which process ran them or in which order.
    """

    def __init__(self, model: nn.Module, tokenizer, resolved: Mapping[str, Any], *, targets: Sequence[str], seed: int,
                 f1_unit: str, fingerprint: str) -> None:
        self.model, self.tokenizer, self.targets = model, tokenizer, list(targets)
        self.seed, self.f1_unit, self.fingerprint = seed, f1_unit, fingerprint
        self.editors = {name: (None if v is None else v[0](v[1])) for name, v in resolved.items()}
        # the unedited model's raw scores of the latest record ({"record": id, "raw": ...}): one entry, reused by the
        # record's next source languages (its units follow one another, and without an edit ls changes nothing)
        self.cache: dict[str, Any] = {}

    def run(self, unit: Unit) -> Iterator[tuple[str, Any, str, list[dict[str, Any]]]]:
        """Yield ``(method, record, ls, lines)`` for each method of ``unit``, as each edit finishes."""
        for method, todo in unit.todo:
            yield method, unit.record, unit.ls, _run_group(
                self.model, self.tokenizer, unit.record, unit.ls, method, todo, self.targets, self.editors[method],
                seed=self.seed, f1_unit=self.f1_unit, fingerprint=self.fingerprint, cache=self.cache)

    def run_all(self, units: Sequence[Unit]) -> Iterator[tuple[str, Any, str, list[dict[str, Any]]]]:
        """The serial executor: every unit in order, in this process."""
        for unit in units:
            yield from self.run(unit)


def _check_restored(model: nn.Module, fingerprint: str, method: str, record) -> None:
    """Stop the run if ``method`` left the model's weights changed (editors must not modify their model)."""
    if model_fingerprint(model) != fingerprint:
        raise RuntimeError(f"method {method!r} left the model's weights changed after record {record.example_id}; "
                           "editors must not modify the model they are given")


def _lock(out: Path):
    """An exclusive lock on ``out/.lock`` for this process (released when the returned file is closed).

    Two `memla bench` processes writing one run folder would both append the same cells;
    the second is refused.  Where ``fcntl`` does not exist (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise MemlaError(f"{out}: another memla bench is writing to this run folder; wait for it or use another --out") \
            from None
    return handle


def _json_id(example_id: Any) -> str:
    """A record id as `cell_key` spells it (``1`` and ``"1"`` stay distinct)."""
    return json.dumps(example_id)


def _line(method: str, record, ls: str, lt: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"method": method, "record": record.example_id, "ls": ls, "lt": lt, "status": status, **fields}


def _run_group(
    model: nn.Module,
    tokenizer,
    record,
    ls: str,
    method: str,
    todo: Sequence[str],
    targets: Sequence[str],
    editor,
    *,
    seed: int,
    f1_unit: str,
    fingerprint: str,
    cache: dict[str, Any],
) -> list[dict[str, Any]]:
    """Edit once with ``method`` in ``ls`` and return the result lines of the ``todo`` targets.

    All present targets are evaluated (not just ``todo``) so that a resumed group
    sees the same batches, and hence the same numbers, as an uninterrupted run.
    """
    if ls not in record.edit:
        reason = f"record {record.example_id} has no {ls!r} edit prompt"
        return [_line(method, record, ls, lt, "skipped", reason=reason) for lt in todo]
    lines = [_line(method, record, ls, lt, "missing", reason=missing_reason(record, lt)) for lt in todo if missing_reason(record, lt)]
    present = [lt for lt in targets if not missing_reason(record, lt)]
    if not any(lt in present for lt in todo):
        return lines
    rid = _json_id(record.example_id)
    edit_s = 0.0
    if editor is None:
        result = EditResult()
    else:
        seed_everything(seed, method, rid, ls)
        t0 = time.perf_counter()
        try:
            request = EditRequest.from_record(record, ls)
            result = editor.edit(model, tokenizer, request)
        except EditError as err:
            log.info("%s skipped record %s (%s): %s", method, record.example_id, ls, err)
            _check_restored(model, fingerprint, method, record)
            return lines + [_line(method, record, ls, lt, "skipped", reason=str(err)) for lt in todo if lt in present]
        edit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if editor is None and cache.get("record") == rid:
        raw = cache["raw"]
    else:
        seed_everything(seed, "eval", method, rid, ls)
        with apply(model, result):
            raw = evaluate_record(model, tokenizer, record, present, prefix=result.prefix, f1_unit=f1_unit)
        if editor is None:
            cache.update(record=rid, raw=raw)
    eval_s = time.perf_counter() - t0
    _check_restored(model, fingerprint, method, record)
    info = jsonable(dict(result.info))
    # the edit's info goes on one fixed line (the monolingual cell if present), also when resumed
    info_lt = ls if ls in present else present[0]
    for lt in (lt for lt in todo if lt in present):
        extra = {"edit_info": info} if lt == info_lt and info else {}
        lines.append(_line(method, record, ls, lt, "ok", **raw[lt], edit_s=round(edit_s, 4), eval_s=round(eval_s, 4),
                           group=len(present), prefix_chars=len(result.prefix), **extra))
    return lines
