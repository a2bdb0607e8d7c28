"""CPU references on disk, so a later session (or CI on a Mac) does not recompute them.

One file per reference, in safetensors format (never pickle): the output array plus a metadata header
that holds every field of the key and a SHA-256 checksum over the metadata and the array bytes. The
key covers everything that changes the CPU output:

- the pipeline's class, component configs and a hash of its weights (``ReferenceKey.pipeline``),
- the call inputs and seeds (``ReferenceKey.inputs``), the dtype and the output type,
- the torch, Diffusers and Transformers versions (the public version: ``2.13.0+cpu`` and ``2.13.0``
  are one version, since the local label names the accelerator build, not the CPU kernels).

The machine's platform is recorded in the header for information but is not part of the key, so
references computed on one machine can be committed and used on another (the parity tolerances absorb
CPU-architecture rounding).

File names are for people reviewing a committed folder: the pipeline's label, the check that wrote it,
the dtype and a short hash of the key (``tiny-sd.cpu_parity.float32.3f9a2c1d4e5f.safetensors``). The
hash alone identifies the file: a reference written by one check is found by another check of the same
key, whatever name it was written under.

What is trusted, replaced or kept:

- a file whose content fails verification (it does not parse, its size differs from what its header
  declares, its key or checksum does not match) is reported (:class:`CorruptReferenceWarning`),
  removed and recomputed: never trusted, never a pass. It is removed only if it is still the file that
  failed (a writer may have replaced it meanwhile: that file is left alone).
- a file that cannot be read (permission denied, too many open files, an I/O error) or is not a regular
  file (a FIFO, socket, device or folder at a reference's name, never opened for a blocking read) is
  reported (:class:`UnreadableReferenceWarning`) and kept: the session computes the reference without
  it and does not overwrite it.
- reads are bounded: the 8-byte length, the header, then exactly the data size the header declares, and
  only when the file's size is what the header says (a file padded to gigabytes is refused unread).

Writes are atomic (:func:`pytest_mps.reports.atomic.atomic_write`), so concurrent writers (pytest-xdist
workers, two sessions on one folder) leave one whole file, never half of one.

The file format and safe reading are :mod:`pytest_mps.reference_files`. This module imports numpy and
safetensors only when a reference is read or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_mps.reference_files import (
    _FLOAT_DTYPES,
    _TENSOR,
    FORMAT,
    SUFFIX,
    CorruptReferenceWarning,
    ReferenceStoreWarning,
    UnreadableReferenceWarning,
    _checksum,
    _Corrupt,
    _decode,
    _open_regular,
    _read_entry,
    _Unreadable,
    entry_metadata,
    entry_name,
    file_key,
    key_digest,
    library_versions,
    stored_entries,
    summary_line,
    verify_entry,
)
from pytest_mps.reports.atomic import TEMP_PREFIX, TEMP_SUFFIX, atomic_write

if TYPE_CHECKING:
    from pytest_mps.references import ReferenceKey
    from pytest_mps.running import Run

__all__ = [
    "FORMAT",
    "CorruptReferenceWarning",
    "ReferenceStore",
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


class ReferenceStore:
    """A folder of CPU references, plugged into :class:`pytest_mps.references.ReferenceCache` as its
    ``store`` (``load(key)``/``save(key, run)``).

    Args:
        folder: where the files live (created on first write).
        update: ``--mps-update-references``: ignore what is stored, recompute and rewrite.
        versions: returns the library versions of the key (default :func:`library_versions`).
        warn: emit warnings for corrupted or unreadable entries and failed writes (the plugin always
            does).
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
        self.unreadable: list[dict[str, str]] = []
        self.write_errors: list[dict[str, str]] = []
        self._kept: set[str] = set()  # unreadable files: never overwritten by this session
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

    def _find(self, key: ReferenceKey, fields: Mapping[str, str]) -> Path | None:
        """The file of this key: under the name this key would write (one ``stat``, no descriptor),
        else any file whose name ends with ``.HASH.safetensors``, whatever label and check it was
        written under (the first by name if two sessions wrote it under two names)."""
        own = self.folder / entry_name(key, fields)
        if os.path.lexists(own):
            return own
        ending = f".{key_digest(fields)}{SUFFIX}"
        try:
            with os.scandir(self.folder) as entries:
                names = sorted(
                    e.name for e in entries if e.name.endswith(ending) and not e.name.startswith(TEMP_PREFIX)
                )
        except OSError:  # no folder yet (or one we cannot list: the write will say so)
            return None
        return self.folder / names[0] if names else None

    def path_for(self, key: ReferenceKey) -> Path:
        """The file that holds (or would hold) the reference for ``key`` with today's versions."""
        fields = file_key(key, self.versions())
        return self._find(key, fields) or self.folder / entry_name(key, fields)

    def load(self, key: ReferenceKey) -> Run | None:
        """The stored reference for ``key``, or None when there is none, it cannot be trusted or read,
        or the session rewrites references. A file that fails verification is reported and removed (then
        recomputed and saved); one that cannot be read is reported and kept."""
        from pytest_mps.running import Run

        if self.update:
            return None
        fields = file_key(key, self.versions())
        path = self._find(key, fields)
        if path is None:
            return None
        try:
            fd, info = _open_regular(path)
        except FileNotFoundError:  # removed since the listing: a miss
            return None
        except _Unreadable as exc:
            self._report_unreadable(path, str(exc))
            return None
        except OSError as exc:
            self._report_unreadable(path, f"{type(exc).__name__}: {exc.strerror or exc}")
            return None
        try:
            data, header = _read_entry(fd, info.st_size)
            array, metadata = _decode(data, header, fields)
        except _Corrupt as exc:
            self._discard(path, (info.st_dev, info.st_ino))  # while the descriptor pins the inode
            self._report_corrupt(path, str(exc))
            return None
        except (OSError, MemoryError) as exc:
            self._report_unreadable(path, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")
            return None
        except Exception as exc:  # anything else in a file is a reason to distrust it, not to crash
            self._discard(path, (info.st_dev, info.st_ino))
            self._report_corrupt(path, f"unreadable ({type(exc).__name__})")
            return None
        finally:
            os.close(fd)
        with self._lock:
            self.loaded += 1
            self.used.add(path.name)
        return Run(array, float(metadata.get("seconds", "0")), metadata.get("run_dtype", str(array.dtype)))

    def save(self, key: ReferenceKey, run: Run) -> None:
        """Store ``run`` for ``key`` (atomically). A failed write is a warning, never a test failure. A
        file this session found unreadable is left as it is."""
        import numpy as np
        from safetensors.numpy import save

        fields = file_key(key, self.versions())
        existing = self._find(key, fields)
        if existing is not None and existing.name in self._kept:
            return
        path = existing or self.folder / entry_name(key, fields)
        array = np.ascontiguousarray(run.array)
        if str(array.dtype) not in _FLOAT_DTYPES:
            array = array.astype(np.float32)
        metadata = {
            "format": FORMAT,
            **fields,
            "label": key.label,
            "check": key.check,
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
            self.rewritten += int(existing is not None)
            self.used.add(path.name)

    def _discard(self, path: Path, identity: tuple[int, int]) -> None:
        """Remove the file at ``path`` only if it is still the one that failed verification. It is
        moved aside first (atomically); if what was moved is another file (a writer replaced the bad
        one meanwhile), it is put back, unless an even newer file is already there."""
        aside = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}")
        try:
            os.rename(path, aside)
        except OSError:  # gone already, or not ours to move: the next write replaces it
            return
        try:
            moved = os.stat(aside)
            if (moved.st_dev, moved.st_ino) != identity:
                try:
                    os.link(aside, path)  # never replaces: a newer file at ``path`` wins
                except FileExistsError:
                    pass
                except OSError:  # no hard links on this file system
                    if not os.path.lexists(path):
                        os.replace(aside, path)
                        return
            os.unlink(aside)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(aside)

    def _report_corrupt(self, path: Path, problem: str) -> None:
        # Removed before warning (_discard): where warnings are errors the test fails now, and the next
        # run recomputes the reference instead of failing on the same file again.
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

    def _report_unreadable(self, path: Path, problem: str) -> None:
        with self._lock:
            self.unreadable.append({"file": str(path), "problem": problem})
            self._kept.add(path.name)
        if self.warn:
            warnings.warn(
                UnreadableReferenceWarning(
                    f"stored CPU reference {path.name} could not be read ({problem}); it is kept as it is "
                    "and the reference is computed without it"
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
                "unreadable": list(self.unreadable),
                "write_errors": list(self.write_errors),
            }

    def summary_line(
        self, unused: int | None = None, *, others: Iterable[Mapping[str, Any]] = ()
    ) -> str | None:
        """``references: N loaded, M written, K rewritten, U unused`` for this store plus ``others``
        (pytest-xdist workers' :meth:`stats`); None when nothing was loaded, written, found broken or
        unused. ``unused``: the count of unused references, known only at the end of a full run."""
        return summary_line([self.stats(), *others], unused)
