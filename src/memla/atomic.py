"""Writing a file so that a crash never leaves half of it: a temporary file, renamed into place.

The temporary file lies in the target's folder (``os.replace`` is atomic only within one file
system), is hidden (``.NAME.XXXX.tmp``, so no cache listing or glob picks it up) and is removed
when the write fails.  The result gets the permissions of the file it replaces, or 0644 for a
new file (``mkstemp`` creates 0600; caches and datasets are shared like the model cache).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    For writers that take a file name (``safetensors.torch.save_file``)::

        with atomic_path(out / "weights.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace ``path`` by ``data`` (text is written as UTF-8 with ``\\n`` line ends), flushed to disk."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int | None = None) -> Path:
    """Replace ``path`` by ``payload`` as JSON (non-ASCII kept, newline at the end)."""
    return write_atomic(path, json.dumps(payload, ensure_ascii=False, indent=indent) + "\n")
