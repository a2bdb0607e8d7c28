"""The reference file format: one safetensors file per CPU reference (never pickle), its name, its key
fields and checksum, and reading it safely (regular files only, reads bounded by the declared header,
never a blocking open). :class:`pytest_mps.reference_store.ReferenceStore` keeps a folder of them.

This module imports numpy and safetensors only when a reference is read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_mps.reports.atomic import TEMP_PREFIX
from pytest_mps.warnings import PytestMPSWarning

if TYPE_CHECKING:
    import numpy as np

    from pytest_mps.references import ReferenceKey

__all__ = [
    "FORMAT",
    "SUFFIX",
    "CorruptReferenceWarning",
    "ReferenceStoreWarning",
    "UnreadableReferenceWarning",
    "entry_metadata",
    "entry_name",
    "file_key",
    "key_digest",
    "library_versions",
    "stored_entries",
    "summary_line",
    "verify_entry",
]

#: The ``format`` field of every reference file; a reader refuses any other.
FORMAT = "pytest-mps-reference/1"
SUFFIX = ".safetensors"
_TENSOR = "output"
_LIBRARIES = ("torch", "diffusers", "transformers")
_KEY_FIELDS = ("pipeline", "inputs", "dtype", "output_type", *_LIBRARIES)
_MAX_HEADER = 1 << 20  # our headers are a few hundred bytes; refuse absurd sizes before parsing
_FLOAT_DTYPES = ("float16", "float32", "float64")
_DIGEST_BYTES = 6  # 12 hex digits: collisions are caught by the key check inside the file anyway


class ReferenceStoreWarning(PytestMPSWarning):
    """The reference store could not do its job (a write failed); the session goes on in memory."""


class CorruptReferenceWarning(ReferenceStoreWarning):
    """A stored reference failed verification (truncated, padded, checksum or key mismatch); it was
    ignored, removed and recomputed."""


class UnreadableReferenceWarning(ReferenceStoreWarning):
    """A stored reference could not be read (permissions, too many open files, I/O error, not a regular
    file); it was kept as it is and the reference computed without it."""


class _Corrupt(Exception):
    """The content fails verification: the file is replaced (internal)."""


class _Unreadable(Exception):
    """The file cannot be read, whatever it holds: the file is kept (internal)."""


def _public_version(text: str | None) -> str:
    if not text:
        return "missing"
    return text.split("+", 1)[0]


def library_versions() -> dict[str, str]:
    """The torch, Diffusers and Transformers versions that are part of every reference key (public
    versions; ``missing`` for a library that is not installed)."""
    out = {}
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = None
        out[name] = _public_version(version)
    return out


def file_key(key: ReferenceKey, versions: Mapping[str, str]) -> dict[str, str]:
    """Every field that decides a stored reference: the in-memory key plus the library versions (the
    descriptive ``label`` and ``check`` are not part of it)."""
    return {
        "pipeline": key.pipeline,
        "inputs": key.inputs,
        "dtype": key.dtype,
        "output_type": key.output_type,
        **{name: versions.get(name, "missing") for name in _LIBRARIES},
    }


def key_digest(fields: Mapping[str, str]) -> str:
    """The short hash of a file key that ends every reference file's name."""
    text = json.dumps(dict(fields), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST_BYTES).hexdigest()


def _part(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:limit]


def entry_name(key: ReferenceKey, fields: Mapping[str, str]) -> str:
    """The file name a new reference for ``key`` is written under: ``label.check.dtype.HASH`` (today's
    slug when the key carries no label or check), always ending with ``.HASH.safetensors``."""
    if key.label or key.check:
        parts = [_part(key.label) or "pipeline", _part(key.check) or "reference", _part(key.dtype)]
    else:
        parts = [_part(key.slug(), 80)]
    return ".".join([*parts, key_digest(fields)]) + SUFFIX


def _checksum(metadata: Mapping[str, str], payload: bytes) -> str:
    fields = {k: v for k, v in metadata.items() if k != "checksum"}
    head = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(head + b"\0" + payload).hexdigest()


# --- bounded, non-blocking reads ---------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An open descriptor on ``path`` and its status, only for a regular file. The type is checked with
    ``stat`` before opening, and the open never blocks (``O_NONBLOCK``: a FIFO swapped in meanwhile is
    caught by ``fstat``). Raises FileNotFoundError, :class:`_Unreadable` or OSError."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise _Unreadable(f"{_kind(info.st_mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable(f"{_kind(info.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_header(fd: int, file_size: int) -> tuple[bytes, dict[str, Any], int]:
    """The raw head (length + JSON), the parsed header and the declared data size; the file must be
    exactly as long as its header says. Raises :class:`_Corrupt` (OSError for a failed read)."""
    if file_size < 8:
        raise _Corrupt(f"truncated: {file_size} bytes, shorter than a safetensors header")
    length = _read_exact(fd, 8)
    size = int.from_bytes(length, "little")
    if size > _MAX_HEADER:
        raise _Corrupt(f"header size {size} is not plausible")
    if 8 + size > file_size:
        raise _Corrupt(f"truncated: header needs {8 + size} bytes, the file has {file_size}")
    raw = _read_exact(fd, size)
    if len(raw) < size:
        raise _Corrupt("truncated while reading the header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Corrupt(f"unreadable header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise _Corrupt("not a pytest-mps reference (no metadata)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _Corrupt(f"tensor {str(name)[:40]!r} has no valid data_offsets")
        end = max(end, offsets[1])
    declared = 8 + size + end
    if declared != file_size:
        state = "truncated" if file_size < declared else "padded"
        raise _Corrupt(f"{state}: the file has {file_size} bytes, its header declares {declared}")
    return length + raw, header, end


def _read_entry(fd: int, file_size: int) -> tuple[bytes, dict[str, Any]]:
    """The whole file (bounded by its header) and its parsed header."""
    head, header, data_size = _read_header(fd, file_size)
    data = _read_exact(fd, data_size)
    if len(data) < data_size:
        raise _Corrupt("truncated while reading the data")
    return head + data, header


def _decode(
    data: bytes, header: Mapping[str, Any], expected: Mapping[str, str]
) -> tuple[np.ndarray, dict[str, str]]:
    """The verified array and metadata of a reference file's bytes; raises :class:`_Corrupt`."""
    import numpy as np

    metadata = header["__metadata__"]
    if metadata.get("format") != FORMAT:
        raise _Corrupt(f"unknown format {str(metadata.get('format'))[:40]!r}")
    for name in _KEY_FIELDS:
        if metadata.get(name) != expected[name]:
            raise _Corrupt(f"key field {name!r} does not match the file name")
    try:
        from safetensors.numpy import load

        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        raise _Corrupt(f"unreadable safetensors data ({type(exc).__name__}: {str(exc)[:80]})") from None
    array = tensors.get(_TENSOR)
    if array is None or set(tensors) != {_TENSOR}:
        raise _Corrupt("unexpected tensors in the file")
    try:
        shape = json.loads(metadata.get("shape", "null"))
        float(metadata.get("seconds", "0"))
    except (TypeError, ValueError):
        raise _Corrupt("unreadable shape or timing in the metadata") from None
    if str(array.dtype) != metadata.get("array_dtype") or list(array.shape) != shape:
        raise _Corrupt("array dtype or shape differs from the metadata")
    array = np.ascontiguousarray(array)
    if _checksum(metadata, array.tobytes()) != metadata.get("checksum"):
        raise _Corrupt("checksum mismatch")
    return array, metadata


def entry_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of a stored reference (reads the header only), or None if it is not readable."""
    try:
        fd, info = _open_regular(Path(path))
    except (OSError, _Unreadable):
        return None
    try:
        metadata = _read_header(fd, info.st_size)[1]["__metadata__"]
    except (OSError, _Corrupt):
        return None
    finally:
        os.close(fd)
    return metadata if metadata.get("format") == FORMAT else None


def verify_entry(path: str | Path) -> str | None:
    """Why the reference file at ``path`` cannot be trusted (checked against its own key fields), or
    None when it is whole."""
    try:
        fd, info = _open_regular(Path(path))
    except _Unreadable as exc:
        return f"unreadable ({exc})"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc.strerror})"
    try:
        data, header = _read_entry(fd, info.st_size)
        metadata = header["__metadata__"]
        _decode(data, header, {name: metadata.get(name) for name in _KEY_FIELDS})
    except _Corrupt as exc:
        return str(exc)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    finally:
        os.close(fd)
    return None


def stored_entries(folder: str | Path) -> list[Path]:
    """The reference files in ``folder`` (temporary files of writes in progress excluded)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"*{SUFFIX}") if not p.name.startswith(TEMP_PREFIX) and p.is_file())


def summary_line(stats: Iterable[Mapping[str, Any]], unused: int | None = None) -> str | None:
    """One line for the session summary from :meth:`ReferenceStore.stats` dictionaries (the session's
    own and its pytest-xdist workers'): ``references: N loaded, M written, K rewritten, U unused``, plus
    the problems when there are any. ``unused``: known only at the end of a full run (None: not
    listed). None when the store did nothing and nothing is unused."""
    stats = list(stats)
    loaded = sum(int(s.get("loaded", 0)) for s in stats)
    saved = sum(int(s.get("saved", 0)) for s in stats)
    rewritten = sum(int(s.get("rewritten", 0)) for s in stats)
    problems = [
        (sum(len(s.get(name) or ()) for s in stats), label)
        for name, label in (
            ("corrupted", "corrupt replaced"),
            ("unreadable", "unreadable kept"),
            ("write_errors", "not stored"),
        )
    ]
    if not (loaded or saved or unused or any(count for count, _ in problems)):
        return None
    parts = [f"{loaded} loaded", f"{saved - rewritten} written", f"{rewritten} rewritten"]
    if unused is not None:
        parts.append(f"{unused} unused")
    extra = [f"{count} {label}" for count, label in problems if count]
    return "references: " + ", ".join(parts) + (f" ({', '.join(extra)})" if extra else "")
