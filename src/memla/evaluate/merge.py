"""`memla bench merge`: join the run folders of ``--shard I/N`` runs into one run.

The shards must come from one planned run: the same model (weights fingerprint), seed,
dataset and record hashes, split, F1 unit, dtype and method configs, and ``N``; anything
else is refused, naming the key and the folders.  Cells present in two folders are
reported (the first is kept; two different values for one cell are refused), and so are
cells the merged run lacks, so that a missing shard is never mistaken for a finished run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memla.errors import MemlaError
from memla.evaluate.store import MANIFEST, RESULTS, ResultStore, cell_key, load_run, write_manifest
from memla.outputs import check_out_dir

# manifest keys that must agree between shards of one run
SAME = ("model_fingerprint", "seed", "dataset", "split", "f1_unit", "dtype", "n_records")
TIMING_FIELDS = ("edit_s", "eval_s")  # wall-clock fields: the only ones two computations of a cell may differ in


@dataclass(frozen=True)
class MergeSummary:
    """What `merge_runs` wrote.

    Attributes:
        out: the merged run folder.
        cells: result lines written.
        duplicates: cells found in more than one folder (kept once).
        missing: expected (method, record, ls, lt) cells that no folder holds.
    """

    out: Path
    cells: int
    duplicates: int
    missing: tuple[tuple[str, str, str, str], ...]


def merge_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike) -> MergeSummary:
    """Join shard folders of one run into ``out`` (new or empty).

    Args:
        runs: the ``--out`` folders of the shards.
        out: the merged run folder.

    Returns:
        A `MergeSummary`.

    Raises:
        MemlaError: fewer than two folders, a folder without a run, shards of different runs,
            one cell with two different values, or ``out`` not new or empty.
    """
    if len(runs) < 2:
        raise MemlaError("memla bench merge needs at least two run folders")
    out = check_out_dir(out, option="--out")
    loaded = [(Path(r), *load_run(r)) for r in runs]
    for path, manifest, _ in loaded:
        if not manifest:
            raise MemlaError(f"{path}: no {MANIFEST}; is this the --out folder of `memla bench`?")
    manifest = _merged_manifest([(p, m) for p, m, _ in loaded])
    cells: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    duplicates = 0
    for path, _, lines in loaded:
        for line in lines:
            key = cell_key(line)
            if key in cells:
                duplicates += 1
                if _without_timing(cells[key]) != _without_timing(line):
                    raise MemlaError(f"{path}: cell {key} differs from the same cell in another folder; "
                                     "these folders are not shards of one run")
                continue
            cells[key] = line
    missing = _missing(manifest, cells)
    if missing:
        manifest["status"] = "incomplete"
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / RESULTS)
    with store.writer():
        for line in cells.values():
            store.append(line)
    write_manifest(out, manifest)
    return MergeSummary(out, len(cells), duplicates, tuple(missing))


def _merged_manifest(manifests: Sequence[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """One manifest for the joined run: the shards' common settings, all sessions, summed timings."""
    (first_path, first) = manifests[0]
    configs: dict[str, tuple[Path, Any]] = {}
    records: dict[str, tuple[Path, str]] = {}
    for path, m in manifests:
        for key in SAME:
            if m.get(key) != first.get(key):
                raise MemlaError(f"{path} and {first_path} are not shards of one run: {key} "
                                 f"{m.get(key)!r} != {first.get(key)!r}")
        for name, cfg in m.get("configs", {}).items():
            seen = configs.setdefault(name, (path, cfg))
            if seen[1] != cfg:
                raise MemlaError(f"{path} and {seen[0]} are not shards of one run: config of {name} differs")
        for rid, digest in m.get("records", {}).items():
            seen = records.setdefault(rid, (path, digest))
            if seen[1] != digest:
                raise MemlaError(f"{path} and {seen[0]} are not shards of one run: record {rid} differs")
    shards = {m.get("shard") for _, m in manifests}
    counts = {s.split("/")[1] for s in shards if s}
    if len(counts) > 1:
        raise MemlaError(f"the folders are shards of different partitions ({', '.join(sorted(map(str, shards)))})")
    merged = {key: value for key, value in first.items() if key not in ("sessions", "timings", "shard", "status")}
    for key in ("methods", "sources", "targets"):
        merged[key] = list(dict.fromkeys(x for _, m in manifests for x in m.get(key, [])))
    merged["configs"] = {k: v for _, m in manifests for k, v in m.get("configs", {}).items()}
    merged["records"] = {k: v for _, m in manifests for k, v in m.get("records", {}).items()}
    merged["sessions"] = [{**s, "shard": m.get("shard")} for _, m in manifests for s in m.get("sessions", [])]
    timings: dict[str, dict[str, float]] = {}
    for _, m in manifests:
        for method, t in m.get("timings", {}).items():
            acc = timings.setdefault(method, {"edits": 0, "edit_s": 0.0, "eval_s": 0.0})
            for field in acc:
                acc[field] = round(acc[field] + t.get(field, 0), 4)
    merged["timings"] = timings
    merged["merged_from"] = [str(p) for p, _ in manifests]
    merged["status"] = "complete" if all(m.get("status") == "complete" for _, m in manifests) else "incomplete"
    return merged


def _missing(manifest: dict[str, Any], cells: dict) -> list[tuple[str, str, str, str]]:
    """Expected cells (every record of the manifest × ls × method × lt) that no folder holds."""
    return [(m, rid, ls, lt) for rid in manifest.get("records", {}) for ls in manifest["sources"]
            for m in manifest["methods"] for lt in manifest["targets"] if (m, rid, ls, lt) not in cells]


def _without_timing(line: dict[str, Any]) -> dict[str, Any]:
    info = {k: v for k, v in (line.get("edit_info") or {}).items() if not k.startswith("seconds")}
    return {**{k: v for k, v in line.items() if k not in TIMING_FIELDS}, "edit_info": info}
