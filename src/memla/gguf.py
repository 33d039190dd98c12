"""GGUF header checks: a corrupt or truncated file is named before any conversion starts.

`check_gguf` reads the metadata and tensor table (well under a second for the
default model) and compares the tensor data they describe with the file's size.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

from memla.errors import ModelLoadError

_GGUF_MAGIC = b"GGUF"
_GGUF_VERSIONS = (2, 3)
# struct codes of the fixed-size GGUF metadata value types; 8 is a string, 9 an array
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def check_gguf(path: Path) -> None:
    """Raise `ModelLoadError` unless ``path`` is a GGUF file whose header parses and whose tensor data fits.

    Reads the metadata and tensor table only (well under a second for the default
    model), so that a corrupt or truncated file fails with a clear message before
    transformers spends a minute on it or reports it as a bad JSON config.
    """
    with path.open("rb") as f:
        magic = f.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (magic {magic!r}, expected {_GGUF_MAGIC!r})")
    defect = _gguf_defect(path)
    if defect is not None:
        raise ModelLoadError(f"GGUF file {path} is corrupt or truncated ({defect})")


def _gguf_defect(path: Path) -> str | None:
    """Why a file with the GGUF magic is corrupt or truncated, or None when its header and tensor data are whole."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        size = len(buf)
        try:
            end = _gguf_data_end(buf)
        except struct.error:
            return f"its header runs past the end of the file at {size:,} bytes"
        except ValueError as err:
            return str(err)
    if end > size:
        return f"its header describes {end:,} bytes, the file has {size:,}"
    return None


def _gguf_data_end(buf) -> int:
    """Where a GGUF file's tensor data ends, by its header (v2/v3 layout, little-endian).

    Raises:
        struct.error: the header runs past the end of ``buf``.
        ValueError: an unknown version, value type or tensor type, or a bad alignment.
    """
    from gguf import GGML_QUANT_SIZES  # lazy: only a new .gguf file needs it

    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in _GGUF_VERSIONS:
        raise ValueError(f"unknown GGUF version {version}")
    pos, alignment = 24, 32
    for _ in range(n_kv):
        key, pos = _gguf_string(buf, pos)
        (value_type,) = struct.unpack_from("<I", buf, pos)
        if key == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", buf, pos + 4)
        pos = _gguf_skip_value(buf, pos + 4, value_type)
    if alignment <= 0:
        raise ValueError(f"bad alignment {alignment}")
    data_size = 0
    for _ in range(n_tensors):
        _, pos = _gguf_string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 16 + 8 * n_dims
        if ggml_type not in GGML_QUANT_SIZES:
            raise ValueError(f"unknown tensor type {ggml_type}")
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        data_size = max(data_size, offset + math.prod(dims) // block * block_bytes)
    return -(-pos // alignment) * alignment + data_size


def _gguf_string(buf, pos: int) -> tuple[bytes, int]:
    """A GGUF string (u64 length + bytes) at ``pos`` and the offset after it."""
    (length,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + length
    if end > len(buf):
        raise struct.error("string runs past the end")
    return buf[pos + 8 : end], end


def _gguf_skip_value(buf, pos: int, value_type: int) -> int:
    """The offset just past a GGUF metadata value of ``value_type`` at ``pos``."""
    if value_type in _GGUF_SCALARS:
        return pos + struct.calcsize(_GGUF_SCALARS[value_type])
    if value_type == 8:
        return _gguf_string(buf, pos)[1]
    if value_type != 9:
        raise ValueError(f"unknown metadata value type {value_type} at byte {pos:,}")
    item_type, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item_type in _GGUF_SCALARS:
        return pos + count * struct.calcsize(_GGUF_SCALARS[item_type])
    for _ in range(count):
        pos = _gguf_skip_value(buf, pos, item_type)
    return pos
