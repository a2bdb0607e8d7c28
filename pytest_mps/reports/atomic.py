"""Atomic file writes: a temporary file in the target's own folder, then renamed over the target with
``os.replace``. Readers (other pytest-xdist workers, a later run) see the old file or the new one, never
half a file, even when the writer is killed mid-write.

The data is not fsync'ed by default: a killed process cannot leave half a file either way, and only a
power cut could lose the newest write, which the reference store would then detect by its checksum and
recompute (an fsync costs ~8 ms per file on a cloud disk, as much as a tiny pipeline call). Pass
``durable=True`` where that matters."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

__all__ = ["TEMP_PREFIX", "TEMP_SUFFIX", "atomic_write", "remove_stale_temporaries"]

TEMP_PREFIX = ".pytest-mps-"
TEMP_SUFFIX = ".part"


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); returns the path. ``durable``: also
    fsync the data before the rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600 files; references are shared like any other file
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return target


def remove_stale_temporaries(folder: str | os.PathLike[str], older_than: float = 3600.0) -> list[Path]:
    """Delete temporary files that writers killed mid-write left in ``folder`` (only those older than
    ``older_than`` seconds, so a write in progress elsewhere is never touched). Returns what was removed."""
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    now = time.time()
    for entry in root.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if now - entry.stat().st_mtime >= older_than:
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue
    return removed
