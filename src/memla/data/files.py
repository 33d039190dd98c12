"""Reading a data file's text strictly as UTF-8, with errors that name the file.

Shared by the dataset reader (`memla.data.io`) and the converters of source formats
(`memla.data.formats_common`).
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path

from memla.errors import DataError


def decode_utf8(data: bytes, *, source: str) -> str:
    """Decode file bytes as UTF-8 (a leading byte-order mark is allowed).

    Args:
        data: the file content.
        source: file name for the error message.

    Returns:
        The text.

    Raises:
        DataError: naming the byte offset and line of the first invalid byte.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{source}: not valid UTF-8 (byte {err.start}, line {line}): {err.reason}") from None


def read_utf8(file: Path | Traversable, *, source: str) -> str:
    """Read a whole file as UTF-8 text.

    Args:
        file: a path, or a packaged resource (built-in datasets).
        source: file name for error messages.

    Returns:
        The text.

    Raises:
        DataError: when the file cannot be read or is not UTF-8.
    """
    try:
        data = file.read_bytes()
    except OSError as err:
        raise DataError(f"{source}: cannot read: {err.strerror or err}") from None
    return decode_utf8(data, source=source)
