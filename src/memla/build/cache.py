"""On-disk stage caches of a build, so a crashed build resumes (MKEB §3.1 pipeline).

Whole stages (facts, chains, labels, plan) are JSON files holding a *key* — a
hash of everything the stage's result depends on — and the result; a file whose
key does not match is recomputed.  The generation stage is a JSONL log with one
line per finished case, keyed by the case's content, written as each case
finishes; a crash loses at most the case in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memla.atomic import write_json_atomic
from memla.build.errors import BuildError

log = logging.getLogger(__name__)


def stage_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (the inputs of a stage)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class StageCache:
    """The stage files of one build directory.

    Args:
        work_dir: the build directory (created when needed).
    """

    def __init__(self, work_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        """The file of a whole-stage result."""
        return self.dir / f"{stage}.json"

    def load(self, stage: str, key: str) -> Any | None:
        """The cached result of ``stage`` if its key matches, else ``None``."""
        path = self.path(stage)
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s is unreadable; recomputing the %s stage", path, stage)
            return None
        if not isinstance(payload, dict) or payload.get("key") != key:
            log.info("%s was built with other settings; recomputing the %s stage", path, stage)
            return None
        return payload.get("data")

    def save(self, stage: str, key: str, data: Any) -> None:
        """Store the result of ``stage`` atomically."""
        write_json_atomic(self.path(stage), {"stage": stage, "key": key, "data": data})


class JsonlLog:
    """An append-only JSONL log of finished items, keyed by content.

    Args:
        path: the log file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        for n, entry in self._read():
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                self.entries[entry["key"]] = entry
            else:
                log.warning("%s:%d: skipping a line without a key", self.path, n)

    def _read(self) -> Iterator[tuple[int, Any]]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except ValueError:
                    # the last line of a crashed run may be cut short
                    log.warning("%s:%d: skipping an unreadable line", self.path, n)

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, if any."""
        return self.entries.get(key)

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry (it must hold a ``key``) and flush it to disk."""
        if not isinstance(entry.get("key"), str):
            raise BuildError("a log entry needs a string 'key'")
        append_jsonl(self.path, [entry])
        self.entries[entry["key"]] = entry


def append_jsonl(path: Path, entries: list[Any]) -> None:
    """Append JSON lines to ``path`` and flush them to disk.

    A line cut short by a crash is closed first, so the new lines stay readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        if fh.tell() > 0:
            with path.open("rb") as rd:
                rd.seek(-1, os.SEEK_END)
                if rd.read(1) != b"\n":
                    fh.write(b"\n")
        fh.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode())
        fh.flush()
        os.fsync(fh.fileno())
