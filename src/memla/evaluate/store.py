"""The on-disk result store of a benchmark run: an append-only JSONL file and a JSON manifest.

Every result line is written with one ``write`` call, then flushed and fsync'ed,
so a run killed at any moment (also with SIGKILL) leaves at most one truncated
last line.  `ResultStore.load` cuts such a line off (it is the cell that was in
progress) and refuses a file corrupted anywhere else.  The manifest is replaced
atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memla.atomic import write_json_atomic
from memla.errors import MemlaError

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"


def cell_key(line: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """The identity of a result line: ``(method, record, ls, lt)``.

    The record id is JSON-encoded so that ``1`` and ``"1"`` stay distinct.
    """
    return (line["method"], json.dumps(line["record"]), line["ls"], line["lt"])


class ResultStore:
    """The ``results.jsonl`` file of a run directory.

    Args:
        path: the JSONL file (created on first append).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle = None

    def load(self, *, repair: bool = True) -> list[dict[str, Any]]:
        """Read every complete line, dropping a truncated or unparsable last line.

        Args:
            repair: also cut the bad last line off the file (before appending to it).

        Returns:
            The result lines, in file order.

        Raises:
            MemlaError: a line other than the last one is not valid JSON.
        """
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        parts = data.split(b"\n")
        complete, tail = parts[:-1], parts[-1]  # tail is b"" when the file ends with a newline
        lines: list[dict[str, Any]] = []
        good_end = 0
        for number, raw in enumerate(complete, 1):
            try:
                lines.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if number == len(complete) and not tail:
                    tail = raw  # a last line that is not JSON: treat it as truncated
                    break
                raise MemlaError(f"{self.path}: line {number} is not valid JSON; the result file is corrupt") from None
            good_end += len(raw) + 1
        if tail:
            log.warning("%s: dropping a truncated last line (%d bytes; the cell in progress when the run stopped)", self.path, len(tail))
            if repair:
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
                    f.flush()
                    os.fsync(f.fileno())
        return lines

    @contextmanager
    def writer(self) -> Iterator[ResultStore]:
        """Keep the file open for appending inside a ``with`` block."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")
        try:
            yield self
        finally:
            self._handle.close()
            self._handle = None

    def append(self, line: Mapping[str, Any]) -> None:
        """Append one line durably (one write, flush, fsync)."""
        data = (json.dumps(line, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n").encode("utf-8")
        if self._handle is None:
            with self.writer():
                self.append(line)
            return
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())


def _json_default(obj: Any) -> Any:
    raise TypeError(f"result value of type {type(obj).__name__} is not JSON-serialisable")


def jsonable(obj: Any, *, max_items: int = 64) -> Any:
    """A JSON-ready copy of an editor's ``info`` (tensors summarised when large).

    Args:
        obj: nested dicts / lists / tensors / numbers.
        max_items: tensors and arrays with more elements are replaced by their shape and dtype.

    Returns:
        Plain JSON values.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, max_items=max_items) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, max_items=max_items) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((jsonable(v, max_items=max_items) for v in obj), key=str)
    if isinstance(obj, torch.Tensor):
        if obj.numel() > max_items:
            return {"shape": list(obj.shape), "dtype": str(obj.dtype)}
        return jsonable(obj.detach().cpu().tolist(), max_items=max_items)
    if isinstance(obj, np.ndarray):
        if obj.size > max_items:
            return {"shape": list(obj.shape), "dtype": str(obj.dtype)}
        return jsonable(obj.tolist(), max_items=max_items)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def compute_settings(model: nn.Module) -> dict[str, Any]:
    """What decides the floating-point results besides the inputs: torch threads, device and dtype.

    CPU kernels split reductions by thread, so the same cell computed with 1 and with
    2 threads can differ in the last bits; a GPU or another dtype moves them further.
    """
    from memla.devices import model_devices

    param = next(model.parameters())
    return {"torch_threads": torch.get_num_threads(), "device": ", ".join(model_devices(model)),
            "dtype": str(param.dtype).removeprefix("torch.")}


def record_digest(record: Any) -> str:
    """A content hash of a `memla.data.Record` (SHA-256 of its canonical JSON, 16 hex digits).

    A resumed run compares it with the digest stored when the record's cells were
    written, so results of an edited record are never mixed with those of the old one.
    """
    text = json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's manifest, or None when there is none yet."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MemlaError(f"{path}: not valid JSON ({err})") from None


def write_manifest(run_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Replace the run's manifest atomically; returns its path."""
    return write_json_atomic(Path(run_dir) / MANIFEST, dict(manifest), indent=2)


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and result lines of a run directory (read-only; a truncated last line is ignored).

    Raises:
        MemlaError: the directory holds no run.
    """
    run_dir = Path(run_dir)
    results = run_dir / RESULTS
    if not results.is_file():
        raise MemlaError(f"{run_dir}: no {RESULTS} here; is this the --out folder of `memla bench`?")
    return read_manifest(run_dir) or {}, ResultStore(results).load(repair=False)
