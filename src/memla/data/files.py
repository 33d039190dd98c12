"""Reading a data file's text strictly as UTF-8 and parsing its JSON, with errors that name the file.

Shared by the dataset reader (`memla.data.io`) and the converters of source formats
(`memla.data.formats_common`).
"""

from __future__ import annotations

import codecs
import json
import sys
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from memla.errors import DataError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def decode_utf8(data: bytes, *, source: str) -> str:
    """Decode file bytes as UTF-8 (a leading byte-order mark is allowed).

    Args:
        data: the file content.
        source: file name for the error message.

    Returns:
        The text.

    Raises:
        DataError: naming the byte offset and line of the first invalid byte (or
            the UTF-16 byte-order mark, for a file saved as UTF-16).
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if data.startswith(_UTF16_BOMS):
            raise DataError(f"{source}: not valid UTF-8: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8") from None
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


def loads(text: str, *, source: str) -> Any:
    """`json.loads`, reporting JSON nested too deeply or numbers too long for the parser as a `DataError`.

    Args:
        text: JSON text.
        source: what to name in the message (``"FILE"``, ``"FILE: line 3"``).

    Returns:
        The parsed value.

    Raises:
        DataError: when the nesting exceeds Python's recursion limit (the parser
            would raise `RecursionError`) or a number has more digits than Python
            converts (`sys.get_int_max_str_digits`).
        json.JSONDecodeError: on malformed JSON, for the caller to report with its position.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # the only other ValueError of json.loads: an integer with too many digits
        raise DataError(f"{source}: a JSON number too long to read (more than {sys.get_int_max_str_digits()} digits)") from None
    except RecursionError:
        raise DataError(
            f"{source}: JSON nested too deeply (more than about {sys.getrecursionlimit()} levels of [ ] / {{ }}; "
            "an MKEB record needs 4)"
        ) from None
