"""Reading and writing datasets: JSON / JSONL files and the built-in datasets.

`load_dataset` accepts a file path or the name of a dataset shipped in
``memla/data/builtin/<name>.json`` (found with `importlib.resources`), checks
it once with `memla.data.validation.validate` and returns `Record` objects.  Files are
opened read-only and never rewritten.  `save_dataset` writes atomically (a
temporary file in the target folder, then a rename).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from memla.atomic import write_atomic
from memla.data.files import loads, read_utf8
from memla.data.formats import CONVERTERS, convert
from memla.data.schema import Record, json_kind
from memla.data.validation import validate
from memla.errors import DataError

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "memla.data.builtin"
FORMATS: tuple[str, ...] = ("auto", "json", "jsonl")


def builtin_datasets() -> list[str]:
    """Names of the datasets shipped with memla (``load_dataset(name)`` loads them).

    Returns:
        Sorted names, without the ``.json`` suffix.
    """
    root = resources.files(BUILTIN_PACKAGE)
    return sorted(entry.name[: -len(".json")] for entry in root.iterdir() if entry.is_file() and entry.name.endswith(".json"))


def resolve_path(path_or_name: str | os.PathLike[str]) -> tuple[Path | Traversable, str]:
    """Find a dataset file: an existing path, else a built-in dataset name.

    Args:
        path_or_name: file path, or built-in name (``"mkeb-mini"``, with or without ``.json``).

    Returns:
        ``(file, label)``: a readable path-like object and the name to use in messages.

    Raises:
        DataError: when neither a file nor a built-in dataset has that name.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path, str(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a .json or .jsonl dataset file or a built-in dataset name")
    if path.exists():
        raise DataError(f"{path}: not a file")
    name = str(path_or_name)
    stem = name[: -len(".json")] if name.endswith(".json") else name
    if "/" not in stem and os.sep not in stem and stem in builtin_datasets():
        return resources.files(BUILTIN_PACKAGE) / f"{stem}.json", stem
    known = ", ".join(builtin_datasets()) or "none installed"
    raise DataError(f"no dataset file or built-in dataset named {name!r} (built-in: {known})")


def parse_records(text: str, *, source: str, format: str = "auto") -> list[Any]:
    """Parse a JSON list of records or JSONL (one record per line).

    Args:
        text: the file text.
        source: file name for error messages; with ``format="auto"`` a ``.jsonl``
            suffix selects JSONL, otherwise a JSON list is tried first.
        format: ``"auto"``, ``"json"`` or ``"jsonl"``.

    Returns:
        The raw record objects (not yet validated); at least one.

    Raises:
        DataError: on an empty file or list, malformed or too deeply nested JSON (with
            line and column) or a top level that is not a list.
    """
    if format not in FORMATS:
        raise DataError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    if not text.strip():
        raise DataError(f"{source}: the file is empty; expected a JSON list of records (or JSONL)")
    if format == "jsonl" or (format == "auto" and source.endswith(".jsonl")):
        records = _parse_jsonl(text, source=source)
    else:
        records = _parse_json(text, source=source, format=format)
    if not records:
        raise DataError(f"{source}: no records (the list is empty)")
    return records


def _parse_json(text: str, *, source: str, format: str) -> list[Any]:
    """A JSON list of records; with ``format="auto"``, JSONL when the text is not one JSON value."""
    try:
        data = loads(text, source=source)
    except json.JSONDecodeError as err:
        if format == "auto" and _looks_like_jsonl(text):
            return _parse_jsonl(text, source=source)
        raise DataError(f"{source}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, list):
        hint = " (one record? put it in a list: [ ... ])" if isinstance(data, dict) and "edit" in data else ""
        raise DataError(f"{source}: expected a JSON list of records (or JSONL), got {json_kind(data)}{hint}")
    return data


def _looks_like_jsonl(text: str) -> bool:
    """Whether the text has several lines and each one starts a JSON object."""
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines)


def _parse_jsonl(text: str, *, source: str) -> list[Any]:
    """One JSON value per non-blank line."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(loads(line, source=f"{source}: line {number}"))
        except json.JSONDecodeError as err:
            raise DataError(f"{source}: invalid JSON on line {number}, column {err.colno}: {err.msg}") from None
    return records


def read_raw(path_or_name: str | os.PathLike[str], *, format: str = "auto") -> tuple[list[Any], str]:
    """Read a dataset file without validating it.

    Args:
        path_or_name: file path or built-in dataset name.
        format: ``"auto"``, ``"json"`` or ``"jsonl"``.

    Returns:
        ``(raw records, label)``, label being the file or dataset name for messages.

    Raises:
        DataError: when the file is missing, empty, not UTF-8 or not valid JSON / JSONL.
    """
    file, label = resolve_path(path_or_name)
    return parse_records(read_utf8(file, source=label), source=label, format=format), label


def load_dataset(
    path_or_name: str | os.PathLike[str],
    *,
    format: str = "auto",
    split: str | None = None,
) -> list[Record]:
    """Load and validate a dataset in the MKEB layout.

    Args:
        path_or_name: a JSON / JSONL file, or the name of a built-in dataset
            (`builtin_datasets`, e.g. ``"mkeb-mini"``).
        format: ``"auto"`` (by suffix / content), ``"json"``, ``"jsonl"``, or the
            name of a source format of `memla.data.formats` (``"bmike53"``,
            ``"mzsre"``, ``"mlake"``, ``"counterfact"``, ``"mquake"``) to convert on the fly.
        split: keep only records of this split (``"dev"``, ``"test"``); None keeps all.

    Returns:
        The records, in file order.

    Raises:
        DataError: naming file, record id, language and field of the first errors
            (missing key, no ``{}``, empty target, unknown language, bad UTF-8, ...),
            or when no record has the requested split.
    """
    if format not in FORMATS:
        if format not in CONVERTERS:
            known = ", ".join(FORMATS + tuple(CONVERTERS))
            raise DataError(f"unknown dataset format {format!r}; expected one of {known}")
        records, label = convert(format, [path_or_name]), str(path_or_name)
        _check(records, label)
    else:
        raw, label = read_raw(path_or_name, format=format)
        _check(raw, label)
        records = [Record.from_dict(item, source=label, checked=True) for item in raw]
    return _select_split(records, split, label)


def _check(data: list[Any], label: str) -> None:
    report = validate(data, source=label)
    report.raise_for_errors(source=label)
    if report.warnings:
        log.warning("%s: %d warning(s); run `memla data check %s` to list them", label, len(report.warnings), label)


def _select_split(records: list[Record], split: str | None, label: str) -> list[Record]:
    if split is None:
        return records
    chosen = [r for r in records if r.split == split]
    if not chosen:
        present = sorted({r.split for r in records if r.split is not None})
        raise DataError(f"{label}: no record in split {split!r} (splits present: {', '.join(present) or 'none'})")
    return chosen


def check_output_path(
    path: str | os.PathLike[str], *, name: str | None = None, inputs: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Check, before any work, that `save_dataset` can write ``path``.

    A missing parent folder is fine (`save_dataset` creates it); an existing file is
    replaced.

    Args:
        path: the output file.
        name: how messages name it (default: the path; the CLI passes ``"--out PATH"``).
        inputs: files the records are read from, which must not be overwritten.

    Returns:
        ``path`` as a `Path`.

    Raises:
        DataError: when ``path`` is a directory or one of ``inputs``, or its folder
            cannot be created or written.
    """
    path = Path(path)
    name = name or str(path)
    if path.is_dir():
        raise DataError(f"{name} is a directory; give a .json or .jsonl file path")
    if path.exists() and any(path.samefile(i) for i in inputs if Path(i).exists()):
        raise DataError(f"{name} is also an input file; write the converted records to another file")
    folder = _existing_ancestor(path.absolute().parent)
    if not folder.is_dir():
        raise DataError(f"{name}: cannot create the folder {path.parent}: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{name}: cannot write into the folder {folder}: permission denied")
    return path


def _existing_ancestor(folder: Path) -> Path:
    """``folder`` or the nearest of its parents that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def save_dataset(records: Iterable[Record | Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as a JSON list (``.json``) or JSONL (``.jsonl``), atomically.

    The parent folder is created when missing; an existing file is replaced (keeping
    its permissions).

    Args:
        records: `Record` objects or raw record dicts.
        path: output file; its suffix picks the layout (JSON unless ``.jsonl``).

    Returns:
        The path written.

    Raises:
        DataError: when ``path`` is a directory or cannot be written (`check_output_path`).
    """
    path = check_output_path(path)
    dicts = [r.to_dict() if isinstance(r, Record) else dict(r) for r in records]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dicts)
    else:
        text = json.dumps(dicts, ensure_ascii=False, indent=2) + "\n"
    try:
        write_atomic(path, text)
    except OSError as err:
        raise DataError(f"{path}: cannot write: {err.strerror or err}") from None
    log.info("wrote %d records to %s", len(dicts), path)
    return path


