"""Target runs shared by the checks of one session: a pipeline call on the target is made once for the
same pipeline state, inputs, target and global-RNG policy, however many checks need it (the single-prompt
run serves inference, cpu_parity, determinism's first run, batch's first single, attention slicing's
unsliced run and the scheduler sweep's own scheduler).

A reused run must be exactly what a fresh call would give, so its key holds everything that decides the
output besides the call's own arguments:

- the pipeline's state: :func:`pytest_mps.keys.session_fingerprint` (each module's identity, tensor
  versions and dtypes, buffer contents, hooks, attention processors, replaced ``forward`` methods, the
  scheduler's class and config), plus what that fingerprint does not see: every module's plain attributes
  (``use_slicing``, FreeU's factors, ``training``...), the identity of each module class's ``forward``
  and each processor class's ``__call__`` (a patched class), and a sample of every parameter's values
  (an edit through ``.data``, which leaves the version counter alone);
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

import hashlib
import json
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

#: Values sampled from each parameter for :func:`pipeline_state` (evenly spaced over the tensor).
SAMPLES_PER_TENSOR = 16
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


# --- keys --------------------------------------------------------------------------------------------


def _modules(pipe: Any) -> list[tuple[str, Any]]:
    import torch

    return [
        (name, c)
        for name, c in sorted(getattr(pipe, "components", {}).items())
        if isinstance(c, torch.nn.Module)
    ]


_SCALARS = (bool, int, float, str, type(None))
_internals: frozenset[str] | None = None


def _module_internals() -> frozenset[str]:
    """The bookkeeping every ``nn.Module`` keeps in its ``__dict__`` (hook tables, flags), except
    ``training``, which changes the output."""
    global _internals
    if _internals is None:
        import torch

        _internals = frozenset(torch.nn.Module().__dict__) - {"training"}
    return _internals


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    return kind in (tuple, list) and len(value) <= 16 and all(type(v) in _SCALARS for v in value)


def _resolved(cls: type, name: str) -> Any:
    """The function ``cls.name`` resolves to (through its bases)."""
    return next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)


def _walk(root: Any) -> list[Any]:
    """``root.modules()`` in the same order (pre-order, each module once), without the generator
    recursion and name building of ``named_modules``: the key is read before every run."""
    out: list[Any] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append(module)
        children = [child for child in module._modules.values() if child is not None]
        stack.extend(reversed(children))
    return out


def _no_torch_function() -> Any:
    """A context in which torch ops skip ``__torch_function__`` handling (the emulated device's mode
    among it): the key's own reads of plain CPU tensors need none of it."""
    import contextlib

    import torch

    disable = getattr(torch._C, "DisableTorchFunction", None)
    return disable() if disable is not None else contextlib.nullcontext()


def _extras(modules: list[tuple[str, Any]]) -> tuple[list[Any], str]:
    """What :func:`pytest_mps.keys.session_fingerprint` does not see, in one walk over the modules:

    - every module's plain attributes (numbers, strings, flags such as ``use_slicing`` or FreeU's
      factors) and the identity of the code that runs (the ``forward`` of each module class and the
      ``__call__`` of each processor class: a patched class);
    - a digest of :data:`SAMPLES_PER_TENSOR` values of every parameter, read with one transfer per
      dtype: it changes when weights are edited through ``.data`` (which leaves the version counter
      alone); "unreadable" for weights that cannot be read (meta tensors, offloaded modules).
    """
    import torch

    from pytest_mps.devices import plain_cpu

    internals = _module_internals()
    attributes: list[Any] = []
    classes: dict[type, int] = {}
    groups: dict[Any, list[Any]] = {}
    plain_types = (torch.Tensor, torch.nn.Parameter)
    readable = True
    with torch.no_grad():
        for name, component in modules:
            for index, sub in enumerate(_walk(component)):
                plain = [(k, v) for k, v in sub.__dict__.items() if k not in internals and _plain(v)]
                if plain:
                    attributes.append((name, index, plain))
                kind = type(sub)
                if kind not in classes:
                    classes[kind] = id(_resolved(kind, "forward"))
                processor = sub.__dict__.get("processor")
                if processor is not None and type(processor) not in classes:
                    classes[type(processor)] = id(_resolved(type(processor), "__call__"))
                if not readable:
                    continue
                for parameter in sub._parameters.values():
                    if parameter is None:
                        continue
                    try:
                        tensor = plain_cpu(parameter)
                        if type(tensor) not in plain_types:
                            tensor = plain_cpu(parameter.detach())
                        count = tensor.numel()
                        if count:
                            flat = tensor.detach().reshape(-1)
                            step = max(1, count // SAMPLES_PER_TENSOR)
                            groups.setdefault(flat.dtype, []).append(flat[: step * SAMPLES_PER_TENSOR : step])
                    except (RuntimeError, NotImplementedError, TypeError):
                        readable = False
                        break
        attributes.append(sorted((f"{c.__module__}.{c.__qualname__}", i) for c, i in classes.items()))
        if not readable:
            return attributes, "unreadable"
        h = hashlib.blake2b(digest_size=16)
        try:
            for dtype, views in sorted(groups.items(), key=lambda item: str(item[0])):
                data = plain_cpu(torch.cat(views).to("cpu")).contiguous()
                h.update(str(dtype).encode())
                h.update(data.view(torch.uint8).numpy().tobytes())
        except (RuntimeError, NotImplementedError, TypeError):  # meta or offloaded weights
            return attributes, "unreadable"
    return attributes, h.hexdigest()


def pipeline_state(pipe: Any) -> str:
    """A key for the pipeline's state within this process (see the module docstring): changes when its
    weights, dtype, hooks, processors, attributes, module code or scheduler change."""
    from pytest_mps.keys import session_fingerprint

    with _no_torch_function():
        attributes, sample = _extras(_modules(pipe))
        session = session_fingerprint(pipe)
    text = json.dumps([session, attributes, sample], default=repr)
    return "state:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _settings() -> tuple[Any, ...]:
    """Process-wide settings that change a run's arithmetic."""
    import torch

    cuda = torch.backends.cuda
    return (
        str(torch.get_default_dtype()),
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        bool(cuda.matmul.allow_tf32),
        bool(torch.backends.cudnn.allow_tf32),
        bool(torch.backends.cudnn.deterministic),
        bool(torch.backends.cudnn.benchmark),
        bool(cuda.matmul.allow_fp16_reduced_precision_reduction),
        bool(cuda.flash_sdp_enabled()),
        bool(cuda.mem_efficient_sdp_enabled()),
        bool(cuda.math_sdp_enabled()),
    )


def where_key(pipe: Any, target: Target) -> str:
    """Where a run happens: the target, the pipeline's device, the emulated device's state (and the
    MPS fallback variable it reads) and the process-wide numerics settings."""
    import os

    from pytest_mps.emulated_target import emulation_active

    return json.dumps(
        [
            target.label,
            str(getattr(pipe, "device", "")),
            emulation_active(),
            os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", ""),
            _settings(),
        ]
    )


def _inputs_key(call: dict[str, Any]) -> str | None:
    """The inputs' fingerprint, or None when the call must never be reused (a callable argument, such
    as a step callback, may keep state or have side effects)."""
    from pytest_mps.keys import inputs_fingerprint

    if any(callable(v) and not isinstance(v, type) for v in call.values()):
        return None
    return inputs_fingerprint(call)


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
    state, inputs, where = pipeline_state(pipe), _inputs_key(call), where_key(pipe, ctx.target)
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
    state, inputs, where = pipeline_state(pipe), _inputs_key(call), where_key(pipe, ctx.target)
    return _timed_call(
        cache, pipe, call, ctx.target, global_seed=global_seed, state=state, inputs=inputs, where=where
    ).run


def cpu_where() -> str:
    """The place key of CPU reference runs (recorded for the speed check)."""
    return "cpu reference"


def timed_cpu_reference(
    pipe: Any, call: dict[str, Any], ctx: CheckContext, compute: Callable[[], Run]
) -> Callable[[], Run]:
    """Wrap a CPU reference's ``compute`` (run with ``pipe`` on the CPU, in its own dtype) so its
    timing is noted, warm or cold, for the speed check. The state is read before the pipeline moves."""
    cache = runs_of(ctx)

    def timed() -> Run:
        state, inputs = pipeline_state(pipe), _inputs_key(call)  # before compute() moves the pipeline
        warm = cache.is_warm(pipe, "cpu", call)
        run = compute()
        cache.mark_warm(pipe, "cpu", call)
        cache.note(state, inputs, cpu_where(), Timing(run.seconds, warm))
        return run

    return timed


def session_timings(pipe: Any, call: dict[str, Any], ctx: CheckContext) -> tuple[list[Timing], list[Timing]]:
    """The timings this session recorded for ``call`` with the pipeline as it is now: calls on the
    context's target, and CPU references computed here (both oldest first)."""
    cache = runs_of(ctx)
    state, inputs = pipeline_state(pipe), _inputs_key(call)
    return (
        cache.timings(state, inputs, where_key(pipe, ctx.target)),
        cache.timings(state, inputs, cpu_where()),
    )
