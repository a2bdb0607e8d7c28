"""Stored CPU references in a pytest run: where they live (``--mps-references DIR`` / ini
``mps_references`` for a folder the project commits, else pytest's cache folder, else memory only),
rewriting them (``--mps-update-references``), the summary line, and the references no test used.

References in a ``--mps-references`` folder that no test used are listed at the end (like syrupy's unused
snapshots), only when the whole suite ran: no test ids or paths on the command line (unless they are the
ini's ``testpaths``), nothing deselected, no collection error, no early stop. A reference whose writing
test (recorded in the file) was skipped in this run is not listed: it may be used where it does not skip.
They are listed, never deleted. References in pytest's cache folder are pytest's to clear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.activation import REFERENCES_KEY
from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.reference_store import ReferenceStore

__all__ = ["ReferenceSetup", "reference_lines", "reference_setup", "reference_summary"]

_REFERENCES_FOLDER = "pytest-mps-references"


@dataclass
class ReferenceSetup:
    """Where this run keeps CPU references, and what it found at the end.

    The store in pytest's cache folder (the default) is built on first use, so a run whose tests
    compare with no CPU reference never imports it (start-up stays cheap)."""

    mode: str  # folder, cache or memory
    folder: Path | None
    make_store: Callable[[], ReferenceStore] | None
    update: bool
    unused: list[tuple[str, str]] | None = None  # (file, note), when the whole suite ran
    unused_reason: str = ""
    worker_stats: list[dict[str, Any]] = field(default_factory=list)
    _store: ReferenceStore | None = field(default=None, repr=False)

    @property
    def store(self) -> ReferenceStore | None:
        """The run's store (built now if it was not yet); None when references live in memory only."""
        if self._store is None and self.make_store is not None:
            self._store = self.make_store()
        return self._store

    @property
    def built_store(self) -> ReferenceStore | None:
        """The store if some check used it, else None (without building it)."""
        return self._store


def _choose(config: pytest.Config) -> tuple[str, Path | None]:
    from pytest_mps.plugin.xdist import worker_input

    given = worker_input(config)
    if given is not None:
        folder = given.get("references")
        return given["mode"], Path(folder) if folder else None
    folder = session_of(config).settings.references
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise pytest.UsageError(
                f"--mps-references {folder}: this is a file, not a folder; "
                "give a folder to keep references in"
            )
        return "folder", folder
    if getattr(config, "cache", None) is not None:
        return "cache", None
    return "memory", None


def install(config: pytest.Config) -> ReferenceSetup:
    """Set up this run's reference store and plug it into the session's reference cache (the one in
    pytest's cache folder is built on first use); done once, by
    :func:`~pytest_mps.plugin.activation.wake`."""
    session = session_of(config)
    mode, folder = _choose(config)
    update = session.settings.update_references
    make: Callable[[], ReferenceStore] | None = None
    if mode == "folder" and folder is not None:
        make = _folder_store(folder, update)
    elif mode == "cache":
        cache = config.cache
        make = _folder_store(lambda: Path(cache.mkdir(_REFERENCES_FOLDER)), update)
    setup = ReferenceSetup(mode, folder, make, update)
    if mode == "folder":
        setup.store  # noqa: B018 - a folder the user named is opened now
    if make is not None:  # the session's reference cache builds it on a check's first need
        session.store_factory = lambda: setup.store
    config.stash[REFERENCES_KEY] = setup
    return setup


def _folder_store(folder: Path | Callable[[], Path], update: bool) -> Callable[[], ReferenceStore]:
    def make() -> ReferenceStore:
        from pytest_mps.reference_store import ReferenceStore

        return ReferenceStore(folder, update=update)

    return make


def reference_setup(config: pytest.Config) -> ReferenceSetup:
    """This run's :class:`ReferenceSetup` (asking for it wakes a dormant run: see
    :mod:`.activation`)."""
    setup = config.stash.get(REFERENCES_KEY, None)
    if setup is None:
        from pytest_mps.plugin.activation import wake

        wake(config)
        setup = config.stash[REFERENCES_KEY]
    return setup


def find_unused(config: pytest.Config, whole_suite: str) -> None:
    """At the end of a run: list the folder's references no test used (``whole_suite`` is why the run
    does not cover the whole suite, "" when it does)."""
    from pytest_mps.plugin.reports import collector_of
    from pytest_mps.reference_store import entry_metadata, stored_entries

    setup = reference_setup(config)
    store = setup.store
    if store is None or setup.mode != "folder":
        return
    if whole_suite:
        setup.unused_reason = whole_suite
        return
    used = set(store.used)
    for stats in setup.worker_stats:
        used.update(stats.get("used", ()))
    collector = collector_of(config)
    unused = []
    for entry in stored_entries(store.folder):
        if entry.name in used:
            continue
        writer = (entry_metadata(entry) or {}).get("nodeid", "")
        if writer and writer in collector.skipped:
            continue  # its test skipped here; it may use the reference where it runs
        gone = "" if writer in collector.ran else ", which no longer exists"
        unused.append((str(entry), f" (written by {writer}{gone})" if writer else ""))
    setup.unused = unused


def reference_summary(config: pytest.Config) -> dict[str, Any]:
    """The reference store's counts and problems over the run (pytest-xdist workers included), as the
    JSON report's ``sources[].references``."""
    setup = reference_setup(config)
    stats = ([setup.built_store.stats()] if setup.built_store is not None else []) + setup.worker_stats
    return {
        "mode": setup.mode,
        "folder": str(setup.folder) if setup.folder else None,
        "update": setup.update,
        "loaded": sum(s["loaded"] for s in stats),
        "saved": sum(s["saved"] for s in stats),
        "rewritten": sum(s["rewritten"] for s in stats),
        "corrupted": [c for s in stats for c in s["corrupted"]],
        "write_errors": [c for s in stats for c in s.get("write_errors", [])],
        "unreadable": [c for s in stats for c in s.get("unreadable", [])],
        "unused": None if setup.unused is None else [path for path, _ in setup.unused],
    }


def reference_lines(config: pytest.Config, *, verbose: bool) -> list[str]:
    """The terminal lines about references: one summary line in every run that used references (or
    was asked to rewrite them), then problems and unused files."""
    from pytest_mps.plugin.reports import collector_of

    setup = reference_setup(config)
    if setup.mode == "memory":
        return []
    summary = reference_summary(config)
    stats = ([setup.built_store.stats()] if setup.built_store is not None else []) + setup.worker_stats
    where = summary["folder"] or "pytest's cache folder"
    lines = []
    line = None
    if stats or setup.unused:
        from pytest_mps.reference_store import summary_line

        line = summary_line(stats, None if setup.unused is None else len(setup.unused))
    if line is not None:
        update = "; --mps-update-references recomputed every one used" if summary["update"] else ""
        lines.append(f"{line} ({where}){update}")
    elif summary["update"]:
        skipped = len(collector_of(config).skipped)
        why = f"{skipped} tests skipped (no target?)" if skipped else "no test ran a check that needs one"
        lines.append(
            f"references: --mps-update-references rewrote nothing: no CPU reference was used ({why})"
        )
    for entry in summary["corrupted"]:
        lines.append(f"corrupted reference recomputed and rewritten: {entry['file']} ({entry['problem']})")
    for entry in summary["unreadable"]:
        lines.append(f"unreadable reference kept, not used: {entry['file']} ({entry['problem']})")
    for entry in summary["write_errors"]:
        lines.append(f"reference not stored: {entry['file']} ({entry['problem']})")
    if setup.unused:
        lines.append(f"{len(setup.unused)} unused references (no test used them in this full run):")
        lines += [f"  {path}{note}" for path, note in setup.unused]
    elif verbose and setup.unused_reason:
        lines.append(f"unused references not listed: {setup.unused_reason}")
    return lines
