"""Where memla writes: output paths checked before any work, folders replaced atomically.

Every command that writes checks its output path first, before it reads inputs or
loads a model, so a bad ``--out`` fails in a second and not after an edit.  A folder
that is written as a whole (a saved edit) is built beside its destination and renamed
into place, so a reader never sees a half-written folder or files of two writes mixed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from memla.errors import MemlaError


def check_out_dir(path: str | os.PathLike, *, option: str, markers: Sequence[str] = (), overwrite: bool = False) -> Path:
    """Refuse an output folder that cannot be written as asked; nothing is created.

    Args:
        path: the folder.
        option: the option or argument that named it, for the message (e.g. ``"--out"``).
        markers: files that mark a folder this command owns and resumes (e.g. a run's
            ``manifest.json``): a non-empty folder with none of them is refused.
        overwrite: without markers, whether a non-empty folder may be replaced; when False a
            non-empty folder is refused (the caller replaces folders with `replace_dir`).

    Returns:
        The path.

    Raises:
        MemlaError: the path is a file, or a non-empty folder this command may not write into.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise MemlaError(f"{option} {out} is a file; give a folder (new or empty)")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if not out.exists() and parent is not None and not parent.is_dir():
        raise MemlaError(f"{option} {out}: {parent} is a file, so the folder cannot be created")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return out
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    if markers and not set(markers) & set(entries):
        raise MemlaError(f"{option} {out} is not empty ({shown}) and holds no {' or '.join(markers)}; "
                         "use a new or empty folder")
    if not markers and not overwrite:
        raise MemlaError(f"{option} {out} is not empty ({shown}); pass --overwrite to replace it, or use a new folder")
    return out


def check_out_file(path: str | os.PathLike, *, option: str) -> Path:
    """Refuse an output file path that is an existing folder."""
    out = Path(path)
    if out.is_dir():
        raise MemlaError(f"{option} {out} is a folder; give a file path")
    return out


@contextmanager
def replace_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` that replaces ``path`` on success.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    The swap is two renames on one file system; a crash between them leaves the old
    folder under ``.<name>.old-*`` beside it, never a mixture of both.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a saved folder gets the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
