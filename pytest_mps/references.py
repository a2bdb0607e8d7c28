"""CPU references shared by the checks of one session: each (pipeline state, inputs) pair is run on
the CPU once, however many checks compare against it. On a real model the CPU run dominates a parity
check (56 s on 16 CPU cores against 1.05 s on an H100 for an SD-1.5-shaped pipeline at 512x512).

Beside them, :attr:`ReferenceCache.runs` keeps the session's target runs and call timings
(:mod:`pytest_mps.run_cache`), so everything the checks of one session share lives in one object."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_mps.run_cache import RunCache
    from pytest_mps.running import Run

__all__ = ["ReferenceCache", "ReferenceKey", "shared_cache"]


@dataclass(frozen=True)
class ReferenceKey:
    """What decides a CPU reference: the pipeline (class, configs, weights), the inputs, the dtype
    the reference ran in, and the output type.

    ``label`` (where the pipeline came from, e.g. ``tiny-sd``) and ``check`` (the check that asked, e.g.
    ``cpu_parity``) only describe the reference: they name its file on disk for people reviewing a
    folder, and are not part of its identity (two checks asking for the same reference share it)."""

    pipeline: str
    inputs: str
    dtype: str
    output_type: str = "np"
    label: str = field(default="", compare=False)
    check: str = field(default="", compare=False)

    def slug(self) -> str:
        """A file-name-safe identifier."""
        return (
            f"{self.pipeline[:16]}-{self.inputs[:16]}-{self.dtype.replace('torch.', '')}-{self.output_type}"
        )


class ReferenceCache:
    """An in-memory LRU of CPU runs, with hit/miss counts. A persistent store
    (:class:`pytest_mps.reference_store.ReferenceStore`) plugs in behind it through ``store``, or through
    :meth:`defer_store` to be built on first use."""

    def __init__(self, max_entries: int = 64, store: object | None = None) -> None:
        self._entries: OrderedDict[ReferenceKey, Run] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self._store = store
        self._make_store: Callable[[], object | None] | None = None
        self._runs: RunCache | None = None
        self.hits = 0
        self.misses = 0
        self.computed = 0

    @property
    def store(self) -> object | None:
        """The persistent store behind the cache (built now when it was deferred), or None."""
        if self._store is None and self._make_store is not None:
            make, self._make_store = self._make_store, None
            self._store = make()
        return self._store

    @property
    def has_store(self) -> bool:
        """Whether a persistent store is plugged in (built or deferred), without building it."""
        return self._store is not None or self._make_store is not None

    @store.setter
    def store(self, value: object | None) -> None:
        self._store, self._make_store = value, None

    def defer_store(self, make: Callable[[], object | None]) -> None:
        """Plug in the store that ``make()`` builds, on first use (a session whose checks need no CPU
        reference never builds it)."""
        self._store, self._make_store = None, make

    @property
    def runs(self) -> RunCache:
        """The session's target runs and call timings (:class:`pytest_mps.run_cache.RunCache`)."""
        if self._runs is None:
            from pytest_mps.run_cache import RunCache

            self._runs = RunCache()
        return self._runs

    def get_or_compute(self, key: ReferenceKey, compute: Callable[[], Run]) -> tuple[Run, str]:
        """The reference for ``key`` and where it came from: ``memory``, ``disk`` or ``computed``."""
        with self._lock:
            run = self._entries.get(key)
            if run is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return run, "memory"
        origin = "computed"
        run = None
        loader = getattr(self.store, "load", None)
        if loader is not None:
            run = loader(key)
            if run is not None:
                origin = "disk"
        if run is None:
            self.misses += 1
            run = compute()
            self.computed += 1
            saver = getattr(self.store, "save", None)
            if saver is not None:
                saver(key, run)
        with self._lock:
            self._entries[key] = run
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return run, origin


_SHARED: ReferenceCache | None = None


def shared_cache() -> ReferenceCache:
    """The process-wide cache used by checks called outside a pytest session."""
    global _SHARED
    if _SHARED is None:
        _SHARED = ReferenceCache()
    return _SHARED
