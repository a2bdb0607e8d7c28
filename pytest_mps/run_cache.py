"""Target runs shared by the checks of one session: a pipeline call on the target is made once for the
same pipeline state, inputs, target and global-RNG policy, however many checks need it (the single-prompt
run serves inference, cpu_parity, determinism's first run, batch's first single, attention slicing's
unsliced run and the scheduler sweep's own scheduler).

A reused run must be exactly what a fresh call would give, so its key holds everything that decides the
output besides the call's own arguments:

- the pipeline's state (:func:`pytest_mps.state_key.pipeline_state`): :func:`pytest_mps.keys.
  session_fingerprint` (each module's identity, tensor versions and dtypes, buffer contents, hooks,
  attention processors, replaced ``forward`` methods, the scheduler's class and config), plus every
  module's plain attributes, the identity of the code that runs, and a sample of every parameter's
  values;
- the inputs (:func:`pytest_mps.keys.inputs_fingerprint`; a call with a callable argument, such as a
  step callback, is never reused);
- where it ran: the target, the pipeline's device, whether the emulated MPS device was active, and the
  process-wide numerics settings (TF32, matmul precision, deterministic algorithms, threads...);
- the global-RNG policy (``run_pipeline``'s ``global_seed``).

The warnings a run raised are raised again each time it is reused. Outputs are kept read-only, in an LRU
bounded by count and bytes. The same cache keeps the timings of the calls made in the session (target
calls and CPU references computed here, each marked warm or cold), which the speed check reuses.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_mps.state_key import inputs_key, pipeline_state, where_key

if TYPE_CHECKING:
    from pytest_mps.context import CheckContext
    from pytest_mps.running import Run
    from pytest_mps.target import Target

__all__ = [
    "RunCache",
    "RunKey",
    "Served",
    "Timing",
    "fresh_on_target",
    "pipeline_state",
    "run_on_target",
    "runs_of",
    "where_key",
]

#: Timings kept per call (the most recent).
TIMINGS_PER_CALL = 8


@dataclass(frozen=True)
class RunKey:
    """What decides a run's output: pipeline state, inputs, where it ran, and the global-RNG seed."""

    pipeline: str
    inputs: str
    where: str
    global_seed: int | None = 0


@dataclass(frozen=True)
class Timing:
    """One timed call: its wall seconds (device synchronised) and whether the pipeline had already
    completed a call of the same size on that device before it (warm)."""

    seconds: float
    warm: bool


@dataclass
class Served:
    """A run as a check gets it: the run, whether it was reused, and the target's memory figure
    measured around it (:meth:`pytest_mps.target.Target.memory_bytes`; None where the backend keeps
    none)."""

    run: Run
    reused: bool
    memory_bytes: int | None = None


@dataclass
class _Entry:
    run: Run
    caught: list[warnings.WarningMessage] = field(default_factory=list)
    memory_bytes: int | None = None


def _shape_tag(call: dict[str, Any]) -> tuple[Any, ...]:
    """What decides whether a device is warmed up for a call: its size and batch, not its values."""
    items = 1
    for key in ("prompt", "class_labels", "image"):
        value = call.get(key)
        if isinstance(value, list):
            items = max(items, len(value))
    return (call.get("height"), call.get("width"), items, call.get("batch_size"))


# --- the cache ---------------------------------------------------------------------------------------


class RunCache:
    """An LRU of target runs (bounded by ``max_entries`` and ``max_bytes`` of output), with hit and
    miss counts, and the timings of the session's calls."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 512 * 2**20) -> None:
        self._entries: OrderedDict[RunKey, _Entry] = OrderedDict()
        self._timings: OrderedDict[tuple[str, str, str], list[Timing]] = OrderedDict()
        self._warm: weakref.WeakKeyDictionary[Any, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every run and timing."""
        with self._lock:
            self._entries.clear()
            self._timings.clear()
            self.bytes = 0

    # runs
    def get(self, key: RunKey) -> _Entry | None:
        """The entry for ``key`` (counted as a hit), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return entry

    def put(self, key: RunKey, entry: _Entry) -> None:
        """Keep ``entry`` (its output made read-only), evicting the least recently used beyond the
        bounds; an output larger than ``max_bytes`` is not kept."""
        size = int(entry.run.array.nbytes)
        if size > self.max_bytes:
            return
        entry.run.array.setflags(write=False)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= int(old.run.array.nbytes)
            self._entries[key] = entry
            self.bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= int(evicted.run.array.nbytes)

    # timings
    def note(self, state: str, inputs: str | None, where: str, timing: Timing) -> None:
        """Record a call's timing (calls whose inputs cannot be keyed are not recorded)."""
        if inputs is None:
            return
        key = (state, inputs, where)
        with self._lock:
            kept = self._timings.setdefault(key, [])
            self._timings.move_to_end(key)
            kept.append(timing)
            del kept[:-TIMINGS_PER_CALL]
            while len(self._timings) > 4 * self.max_entries:
                self._timings.popitem(last=False)

    def timings(self, state: str, inputs: str | None, where: str) -> list[Timing]:
        """The recorded timings of calls with this state, inputs and place, oldest first."""
        if inputs is None:
            return []
        with self._lock:
            return list(self._timings.get((state, inputs, where), ()))

    # warm-up
    def is_warm(self, pipe: Any, device: str, call: dict[str, Any]) -> bool:
        """Whether ``pipe`` has completed a call of this size on ``device`` in this process."""
        with self._lock:
            return (device, *_shape_tag(call)) in self._warm.get(pipe, ())

    def mark_warm(self, pipe: Any, device: str, call: dict[str, Any]) -> None:
        """Note that ``pipe`` completed a call of this size on ``device``."""
        try:
            with self._lock:
                self._warm.setdefault(pipe, set()).add((device, *_shape_tag(call)))
        except TypeError:  # an object that cannot be weakly referenced: never counted warm
            pass


def runs_of(ctx: CheckContext) -> RunCache:
    """The run cache of the context's session (the one beside its CPU references)."""
    from pytest_mps.references import shared_cache

    return (ctx.references or shared_cache()).runs


def device_label(pipe: Any) -> str:
    """The device a warm-up counts for: the pipeline's device type (``mps`` under the emulation
    reads ``mps (emulated)``)."""
    from pytest_mps.emulated_target import emulation_active

    kind = getattr(getattr(pipe, "device", None), "type", "cpu")
    return f"{kind} (emulated)" if kind == "mps" and emulation_active() else str(kind)


def _replay(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _timed_call(
    cache: RunCache,
    pipe: Any,
    call: dict[str, Any],
    target: Target,
    *,
    global_seed: int | None,
    state: str,
    inputs: str | None,
    where: str,
) -> _Entry:
    """One fresh call on the target, its warnings recorded (and raised again), its memory figure and
    timing noted."""
    from pytest_mps.running import run_pipeline

    warm = cache.is_warm(pipe, device_label(pipe), call)
    reset, memory = getattr(target, "reset_peak_memory", None), getattr(target, "memory_bytes", None)
    if reset is not None:
        reset()
    with warnings.catch_warnings(record=True) as caught:  # the caller's filters stay in force
        run = run_pipeline(pipe, call, target, global_seed=global_seed)
    entry = _Entry(run, list(caught), memory() if memory is not None else None)
    _replay(entry.caught)
    cache.mark_warm(pipe, device_label(pipe), call)
    cache.note(state, inputs, where, Timing(run.seconds, warm))
    return entry


def run_on_target(
    pipe: Any, call: dict[str, Any], ctx: CheckContext, *, global_seed: int | None = 0
) -> Served:
    """``pipe``'s output on the context's target for ``call``: the session's earlier run when one
    with the same key exists (see the module docstring), else a fresh, timed call that is kept."""
    cache = runs_of(ctx)
    state, inputs, where = pipeline_state(pipe), inputs_key(call), where_key(pipe, ctx.target)
    key = RunKey(state, inputs, where, global_seed) if inputs is not None else None
    if key is not None:
        entry = cache.get(key)
        if entry is not None:
            _replay(entry.caught)
            return Served(entry.run, True, entry.memory_bytes)
    with cache._lock:
        cache.misses += 1
    entry = _timed_call(
        cache, pipe, call, ctx.target, global_seed=global_seed, state=state, inputs=inputs, where=where
    )
    if key is not None:
        cache.put(key, entry)
    return Served(entry.run, False, entry.memory_bytes)


def fresh_on_target(pipe: Any, call: dict[str, Any], ctx: CheckContext, *, global_seed: int | None) -> Run:
    """A fresh call on the context's target, never served from the cache nor kept in it (the
    determinism check's later runs); its timing is noted for the speed check."""
    cache = runs_of(ctx)
    state, inputs, where = pipeline_state(pipe), inputs_key(call), where_key(pipe, ctx.target)
    return _timed_call(
        cache, pipe, call, ctx.target, global_seed=global_seed, state=state, inputs=inputs, where=where
    ).run


def cpu_where() -> str:
    """The place key of CPU reference runs (recorded for the speed check)."""
    return "cpu reference"


def timed_cpu_reference(
    pipe: Any,
    call: dict[str, Any],
    ctx: CheckContext,
    compute: Callable[[], Run],
    *,
    state: str | None = None,
) -> Callable[[], Run]:
    """Wrap a CPU reference's ``compute`` (run with ``pipe`` on the CPU, in its own dtype) so its
    timing is noted, warm or cold, for the speed check. The state is read before the pipeline moves;
    ``state``: :func:`pipeline_state` already read by the caller just before (not read again)."""
    cache = runs_of(ctx)

    def timed() -> Run:
        state_now = state if state is not None else pipeline_state(pipe)  # before compute() moves it
        inputs = inputs_key(call)
        warm = cache.is_warm(pipe, "cpu", call)
        run = compute()
        cache.mark_warm(pipe, "cpu", call)
        cache.note(state_now, inputs, cpu_where(), Timing(run.seconds, warm))
        return run

    return timed


def session_timings(pipe: Any, call: dict[str, Any], ctx: CheckContext) -> tuple[list[Timing], list[Timing]]:
    """The timings this session recorded for ``call`` with the pipeline as it is now: calls on the
    context's target, and CPU references computed here (both oldest first)."""
    cache = runs_of(ctx)
    state, inputs = pipeline_state(pipe), inputs_key(call)
    return (
        cache.timings(state, inputs, where_key(pipe, ctx.target)),
        cache.timings(state, inputs, cpu_where()),
    )
