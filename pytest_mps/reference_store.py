"""CPU references on disk, so a later session (or CI on a Mac) does not recompute them.

One file per reference, in safetensors format (never pickle): the output array plus a metadata header
that holds every field of the key and a SHA-256 checksum over the metadata and the array bytes. The
key covers everything that changes the CPU output:

- the pipeline's class, component configs and a hash of its weights (``ReferenceKey.pipeline``),
- the call inputs and seeds (``ReferenceKey.inputs``), the dtype and the output type,
- the torch and Diffusers versions (the public version: ``2.13.0+cpu`` and ``2.13.0`` are one
  version, since the local label names the accelerator build, not the CPU kernels).

The machine's platform is recorded in the header for information but is not part of the key, so
references computed on one machine can be committed and used on another (the parity tolerances absorb
CPU-architecture rounding).

A file that fails to parse, has another key or fails its checksum is reported (a
:class:`CorruptReferenceWarning` and a line in the session summary), ignored and recomputed: never
trusted, never a pass. Writes are atomic (:func:`pytest_mps.reports.atomic.atomic_write`).

This module imports numpy and safetensors only when a reference is read or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import platform
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_mps.reports.atomic import TEMP_PREFIX, atomic_write
from pytest_mps.warnings import PytestMPSWarning

if TYPE_CHECKING:
    import numpy as np

    from pytest_mps.references import ReferenceKey
    from pytest_mps.running import Run

__all__ = [
    "FORMAT",
    "CorruptReferenceWarning",
    "ReferenceStore",
    "ReferenceStoreWarning",
    "entry_metadata",
    "file_key",
    "library_versions",
    "stored_entries",
    "verify_entry",
]

#: The ``format`` field of every reference file; a reader refuses any other.
FORMAT = "pytest-mps-reference/1"
SUFFIX = ".safetensors"
_TENSOR = "output"
_KEY_FIELDS = ("pipeline", "inputs", "dtype", "output_type", "torch", "diffusers")
_MAX_HEADER = 1 << 20  # our headers are a few hundred bytes; refuse absurd sizes before parsing
_FLOAT_DTYPES = ("float16", "float32", "float64")


class ReferenceStoreWarning(PytestMPSWarning):
    """The reference store could not do its job (a write failed); the session goes on in memory."""


class CorruptReferenceWarning(ReferenceStoreWarning):
    """A stored reference failed its checks (unreadable, truncated, checksum or key mismatch); it was
    ignored and recomputed."""


class _Corrupt(Exception):
    """Why a file cannot be trusted (internal)."""


def _public_version(text: str | None) -> str:
    if not text:
        return "missing"
    return text.split("+", 1)[0]


def library_versions() -> dict[str, str]:
    """The torch and Diffusers versions that are part of every reference key (public versions)."""
    out = {}
    for name in ("torch", "diffusers"):
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
    """Every field that decides a stored reference: the in-memory key plus the library versions."""
    return {
        "pipeline": key.pipeline,
        "inputs": key.inputs,
        "dtype": key.dtype,
        "output_type": key.output_type,
        "torch": versions["torch"],
        "diffusers": versions["diffusers"],
    }


def _entry_name(key: ReferenceKey, fields: Mapping[str, str]) -> str:
    digest = hashlib.blake2b(json.dumps(dict(fields), sort_keys=True).encode(), digest_size=8).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key.slug())[:80]
    return f"{slug}-{digest}{SUFFIX}"


def _checksum(metadata: Mapping[str, str], payload: bytes) -> str:
    fields = {k: v for k, v in metadata.items() if k != "checksum"}
    head = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(head + b"\0" + payload).hexdigest()


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file, parsed by hand (no library involved)."""
    if len(data) < 8:
        raise _Corrupt(f"truncated: {len(data)} bytes, shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > _MAX_HEADER:
        raise _Corrupt(f"header size {size} is not plausible")
    if 8 + size > len(data):
        raise _Corrupt(f"truncated: header needs {8 + size} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Corrupt(f"unreadable header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise _Corrupt("not a pytest-mps reference (no metadata)")
    return header


def entry_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of a stored reference (reads the header only), or None if it is not readable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            if size < 0 or size > _MAX_HEADER:
                return None
            metadata = _header(head + handle.read(size))["__metadata__"]
    except (OSError, _Corrupt):
        return None
    return metadata if metadata.get("format") == FORMAT else None


def verify_entry(path: str | Path) -> str | None:
    """Why the reference file at ``path`` cannot be trusted (checked against its own key fields), or
    None when it is whole."""
    try:
        data = Path(path).read_bytes()
        metadata = _header(data)["__metadata__"]
        _decode(data, {name: metadata.get(name) for name in _KEY_FIELDS})
    except _Corrupt as exc:
        return str(exc)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    return None


def stored_entries(folder: str | Path) -> list[Path]:
    """The reference files in ``folder`` (temporary files of writes in progress excluded)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"*{SUFFIX}") if not p.name.startswith(TEMP_PREFIX) and p.is_file())


def _decode(data: bytes, expected: Mapping[str, str]) -> tuple[np.ndarray, dict[str, str]]:
    """The verified array and metadata of a reference file's bytes; raises :class:`_Corrupt`."""
    import numpy as np

    metadata = _header(data)["__metadata__"]
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
    if str(array.dtype) != metadata.get("array_dtype") or list(array.shape) != json.loads(
        metadata.get("shape", "null")
    ):
        raise _Corrupt("array dtype or shape differs from the metadata")
    array = np.ascontiguousarray(array)
    if _checksum(metadata, array.tobytes()) != metadata.get("checksum"):
        raise _Corrupt("checksum mismatch")
    return array, metadata


class ReferenceStore:
    """A folder of CPU references, plugged into :class:`pytest_mps.references.ReferenceCache` as its
    ``store`` (``load(key)``/``save(key, run)``).

    Args:
        folder: where the files live (created on first write).
        update: ``--mps-update-references``: ignore what is stored, recompute and rewrite.
        versions: returns the library versions of the key (default :func:`library_versions`).
        warn: emit warnings for corrupted entries and failed writes (the plugin always does).
    """

    def __init__(
        self,
        folder: str | Path | Callable[[], Path],
        *,
        update: bool = False,
        versions: Callable[[], dict[str, str]] | None = None,
        warn: bool = True,
    ) -> None:
        self._folder = folder if callable(folder) else Path(folder)
        self.update = update
        self._versions = versions
        self.warn = warn
        #: the test running now, recorded in files it writes (set by the plugin)
        self.current_nodeid: str | None = None
        self.used: set[str] = set()
        self.loaded = 0
        self.saved = 0
        self.rewritten = 0
        self.corrupted: list[dict[str, str]] = []
        self.write_errors: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def versions(self) -> dict[str, str]:
        """The library versions of the key, read at each use (tests may change them)."""
        return self._versions() if self._versions is not None else library_versions()

    @property
    def folder(self) -> Path:
        """The reference folder (a callable given at construction is called once, on first use: the
        plugin passes ``config.cache.mkdir`` so no folder is made by sessions that store nothing)."""
        if callable(self._folder):
            self._folder = Path(self._folder())
        return self._folder

    def path_for(self, key: ReferenceKey) -> Path:
        """The file that holds (or would hold) the reference for ``key`` with today's versions."""
        return self.folder / _entry_name(key, file_key(key, self.versions()))

    def load(self, key: ReferenceKey) -> Run | None:
        """The stored reference for ``key``, or None when there is none, it cannot be trusted, or the
        session rewrites references. A corrupted file is reported and removed (recomputed, then saved)."""
        from pytest_mps.running import Run

        if self.update:
            return None
        fields = file_key(key, self.versions())
        path = self.folder / _entry_name(key, fields)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._report_corrupt(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        try:
            array, metadata = _decode(data, fields)
            seconds = float(metadata.get("seconds", "0"))
        except _Corrupt as exc:
            self._report_corrupt(path, str(exc))
            return None
        except Exception as exc:  # anything unexpected in a file is a reason to distrust it, not to crash
            self._report_corrupt(path, f"unreadable ({type(exc).__name__})")
            return None
        with self._lock:
            self.loaded += 1
            self.used.add(path.name)
        return Run(array, seconds, metadata.get("run_dtype", str(array.dtype)))

    def save(self, key: ReferenceKey, run: Run) -> None:
        """Store ``run`` for ``key`` (atomically). A failed write is a warning, never a test failure."""
        import numpy as np
        from safetensors.numpy import save

        fields = file_key(key, self.versions())
        path = self.folder / _entry_name(key, fields)
        array = np.ascontiguousarray(run.array)
        if str(array.dtype) not in _FLOAT_DTYPES:
            array = array.astype(np.float32)
        metadata = {
            "format": FORMAT,
            **fields,
            "run_dtype": str(run.dtype),
            "seconds": repr(float(run.seconds)),
            "array_dtype": str(array.dtype),
            "shape": json.dumps(list(array.shape)),
            "nodeid": self.current_nodeid or "",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "platform": f"{platform.system()} {platform.machine()}",
            "torch_full": str(getattr(sys.modules.get("torch"), "__version__", "")),
        }
        metadata["checksum"] = _checksum(metadata, array.tobytes())
        existed = path.exists()
        try:
            atomic_write(path, save({_TENSOR: array}, metadata=metadata))
        except OSError as exc:
            with self._lock:
                self.write_errors.append({"file": str(path), "problem": f"{type(exc).__name__}: {exc}"})
            if self.warn:
                warnings.warn(
                    ReferenceStoreWarning(f"could not store the CPU reference {path}: {exc}"), stacklevel=2
                )
            return
        with self._lock:
            self.saved += 1
            self.rewritten += int(existed and self.update)
            self.used.add(path.name)

    def _report_corrupt(self, path: Path, problem: str) -> None:
        # Removed before warning: where warnings are errors the test fails now, and the next run
        # recomputes the reference instead of failing on the same file again.
        with contextlib.suppress(OSError):
            path.unlink()
        with self._lock:
            self.corrupted.append({"file": str(path), "problem": problem})
        if self.warn:
            warnings.warn(
                CorruptReferenceWarning(
                    f"stored CPU reference {path.name} is not trusted ({problem}); it is recomputed and "
                    "rewritten"
                ),
                stacklevel=3,
            )

    def stats(self) -> dict[str, Any]:
        """Counts and problems, JSON-ready (also sent from pytest-xdist workers to the controller)."""
        folder = None if callable(self._folder) else str(self._folder)
        with self._lock:
            return {
                "folder": folder,
                "update": self.update,
                "loaded": self.loaded,
                "saved": self.saved,
                "rewritten": self.rewritten,
                "used": sorted(self.used),
                "corrupted": list(self.corrupted),
                "write_errors": list(self.write_errors),
            }
