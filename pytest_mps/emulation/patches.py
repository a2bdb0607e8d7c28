"""Fakes of torch's MPS-facing Python API, installed while an emulation is active and always restored.

Inside the emulation ``torch.backends.mps.is_available()``/``is_built()`` say True, the ``torch.mps``
functions that pipelines and test suites call work (synchronize, empty_cache, manual_seed, memory
queries, ...), ``torch.accelerator`` reports ``mps``, and ``torch.Generator("mps")`` works: the emulated
MPS generator is a CPU generator whose ``device`` says ``mps:0``, so a seeded run draws exactly the numbers
a CPU run draws. The MPS default generator is the CPU default generator for the same reason.

Patches are reference counted (nested emulations install once) and every attribute goes back to exactly
what it was, including "absent", so leaving the emulation leaves torch as it found it. A replacement
function wears the attributes of the function it replaces (name, docstring, ``__wrapped__``, an
``lru_cache``'s ``cache_clear``): torch introspects them, e.g. ``torch._dynamo`` reads
``torch.backends.mps.is_available.__wrapped__`` when it is first imported, which Diffusers may do while
an emulation is active.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch

from pytest_mps.emulation.tensor import MPS_DEVICE, EmulatedTensor

__all__ = [
    "EmulatedGenerator",
    "acquire",
    "allocated_bytes",
    "installed",
    "installed_patches",
    "release",
    "resume",
    "suspend",
]

_MISSING = object()
_lock = threading.RLock()
_depth = 0
_saved: list[tuple[Any, str, Any]] = []
_saved_future: list[bool] = []
_memory_fraction = [0.0]


class _GeneratorMeta(type(torch._C.Generator)):  # type: ignore[misc]
    def __instancecheck__(cls, obj: object) -> bool:
        # Generators made before the emulation started are torch._C.Generator instances; code that checks
        # isinstance(g, torch.Generator) during the emulation must still accept them.
        return isinstance(obj, torch._C.Generator)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, torch._C.Generator)


class EmulatedGenerator(torch._C.Generator, metaclass=_GeneratorMeta):
    """``torch.Generator`` during the emulation: ``torch.Generator("mps")`` gives a CPU generator whose
    ``device`` reports ``mps:0``; any other device behaves as torch's own generator."""

    def __new__(cls, device: Any = "cpu") -> Any:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "mps":
            return super().__new__(cls, "cpu")
        return torch._C.Generator(dev)

    def __init__(self, device: Any = "cpu") -> None:  # torch._C.Generator takes its args in __new__
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """``mps:0``."""
        return MPS_DEVICE

    def __reduce__(self) -> Any:
        # Deep copies/pickles of an emulated generator stay emulated (same state, same device).
        return (_rebuild_generator, (self.get_state(),))


def _rebuild_generator(state: torch.Tensor) -> EmulatedGenerator:
    g = EmulatedGenerator("mps")
    g.set_state(state)
    return g


def allocated_bytes() -> int:
    """Bytes held by live emulated tensors (each storage counted once): the emulated
    ``torch.mps.current_allocated_memory()``. Walks the garbage collector's objects, so it costs a few
    milliseconds; only called on demand."""
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        if type(obj) is EmulatedTensor:
            payload = obj.__dict__.get("_payload")
            if payload is None:
                continue
            with torch._C.DisableTorchFunction():
                storage = payload.untyped_storage()
                key = storage._cdata
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
    return total


def _total_ram() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 1024**3


def _recommended_max_memory() -> int:
    # Metal's recommendedMaxWorkingSetSize is roughly 2/3 to 3/4 of unified memory on Apple silicon.
    return _total_ram() * 3 // 4


def _set_per_process_memory_fraction(fraction: float) -> None:
    if not isinstance(fraction, float):
        raise TypeError("Invalid type for fraction argument, must be `float`")
    if fraction < 0 or fraction > 2:
        raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~2")
    _memory_fraction[0] = fraction


def _manual_seed(seed: int) -> None:
    # The emulated MPS generator is the CPU default generator (see module docstring).
    torch.default_generator.manual_seed(int(seed))


def _seed() -> None:
    torch.default_generator.seed()


def _shader_unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(
        "Metal shaders cannot run on the emulated MPS target (it computes on the CPU); "
        "test code that compiles Metal kernels needs a Mac"
    )


class _Event:
    """``torch.mps.Event`` with wall-clock timing."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing
        self._t: float | None = None

    def record(self) -> None:
        self._t = time.perf_counter()

    def wait(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end_event: _Event) -> float:
        if self._t is None or end_event._t is None:
            raise RuntimeError("Events were not recorded")
        return (end_event._t - self._t) * 1000.0


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _mentions_mps(location: Any) -> bool:
    if isinstance(location, torch.device):
        return location.type == "mps"
    if isinstance(location, str):
        return location.partition(":")[0] == "mps"
    if isinstance(location, dict):
        return any(_mentions_mps(v) for v in location.values())
    return False


def _cpu_location(location: Any) -> Any:
    if isinstance(location, dict):
        return {k: ("cpu" if _mentions_mps(v) else v) for k, v in location.items()}
    return "cpu"


def _to_device_tree(obj: Any) -> Any:
    if isinstance(obj, torch.nn.Module):
        return obj.to("mps")
    if isinstance(obj, torch.nn.Parameter):
        return torch.nn.Parameter(obj.to("mps"), requires_grad=obj.requires_grad)
    if isinstance(obj, torch.Tensor):
        return obj.to("mps")
    if isinstance(obj, dict):
        out = obj.copy()
        for key, value in obj.items():
            out[key] = _to_device_tree(value)
        return out
    if isinstance(obj, list):
        return [_to_device_tree(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_device_tree(v) for v in obj)
    return obj


def _make_load(original: Callable[..., Any]) -> Callable[..., Any]:
    def load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        """``torch.load``; a ``map_location`` naming ``mps`` loads on the CPU, then moves the tensors to
        the emulated device (torch's own MPS deserializer needs a real MPS build)."""
        if not _mentions_mps(map_location):
            return original(f, map_location, *args, **kwargs)
        return _to_device_tree(original(f, _cpu_location(map_location), *args, **kwargs))

    load.__wrapped__ = original  # type: ignore[attr-defined]
    return load


def _mps_patches() -> list[tuple[Any, str, Any]]:
    mps = torch.mps
    backends = torch.backends.mps
    accel = getattr(torch, "accelerator", None)
    allocated: Callable[[], int] = allocated_bytes
    patches: list[tuple[Any, str, Any]] = [
        (backends, "is_available", lambda: True),
        (backends, "is_built", lambda: True),
        (backends, "is_macos_or_newer", lambda major, minor: True),
        (backends, "is_macos13_or_newer", lambda minor=0: True),
        (backends, "get_name", lambda: "Apple M (emulated MPS)"),
        (backends, "get_core_count", lambda: 8),
        (mps, "is_available", lambda: True),
        (mps, "device_count", lambda: 1),
        (mps, "synchronize", _nothing),
        (mps, "empty_cache", _nothing),
        (mps, "manual_seed", _manual_seed),
        (mps, "seed", _seed),
        (mps, "get_rng_state", lambda device="mps": torch.default_generator.get_state()),
        (mps, "set_rng_state", lambda new_state, device="mps": torch.default_generator.set_state(new_state)),
        (mps, "_get_default_mps_generator", lambda: torch.default_generator),
        (mps, "_is_in_bad_fork", lambda: False),
        (mps, "set_per_process_memory_fraction", _set_per_process_memory_fraction),
        (mps, "current_allocated_memory", allocated),
        (mps, "driver_allocated_memory", allocated),
        (mps, "recommended_max_memory", _recommended_max_memory),
        (mps, "compile_shader", _shader_unavailable),
        (mps, "load_metallib", _shader_unavailable),
        (mps, "Event", _Event),
        (torch, "Generator", EmulatedGenerator),
        (torch, "load", _make_load(torch.load)),
    ]
    if accel is not None:
        patches += [
            (accel, "is_available", lambda: True),
            (accel, "current_accelerator", lambda check_available=False: torch.device("mps")),
            (accel, "device_count", lambda: 1),
            (accel, "current_device_index", lambda: 0),
            (accel, "current_device_idx", lambda: 0),
            (accel, "set_device_index", _nothing),
            (accel, "set_device_idx", _nothing),
            (accel, "synchronize", _nothing),
            (accel, "empty_cache", _nothing),
            (accel, "memory_allocated", lambda device_index=None: allocated()),
            (accel, "max_memory_allocated", lambda device_index=None: allocated()),
            (accel, "reset_peak_memory_stats", _nothing),
            (accel, "get_memory_info", lambda device_index=None: (_recommended_max_memory(),) * 2),
        ]
    return patches


def acquire() -> None:
    """Install the fakes (first caller) or count one more user of them."""
    global _depth
    with _lock:
        if _depth == 0:
            _install()
        _depth += 1


def release() -> None:
    """Count one user less; the last one restores torch exactly as it was."""
    global _depth
    with _lock:
        if _depth <= 0:
            return
        _depth -= 1
        if _depth == 0:
            _restore()


def suspend() -> bool:
    """Put torch's own attributes back while the emulation is suspended; True if anything was installed
    (then :func:`resume` must follow)."""
    with _lock:
        if _depth > 0 and _saved:
            _restore()
            return True
        return False


def resume(token: bool) -> None:
    """Reinstall the fakes after :func:`suspend` (``token`` is what it returned)."""
    with _lock:
        if token and _depth > 0 and not _saved:
            _install()


def installed() -> bool:
    """True while the fakes are in place."""
    return _depth > 0


# Cached device detections that must be recomputed when the emulation starts and ends (they would keep
# answering "cpu" inside it, or "mps" after it): (module, dotted attribute of an lru_cache'd function).
_DEVICE_CACHES: tuple[tuple[str, str], ...] = (
    ("diffusers.utils.torch_utils", "TorchDeviceBackend._detect_device_type"),
)


def _clear_device_caches() -> None:
    for module_name, dotted in _DEVICE_CACHES:
        obj: Any = sys.modules.get(module_name)  # never import a library just to clear its cache
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
        clear = getattr(obj, "cache_clear", None)
        if callable(clear):
            clear()


def _is_function(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, type)


def _dressed(original: Any, fake: Callable[..., Any]) -> Callable[..., Any]:
    """A new function that calls ``fake`` and wears ``original``'s attributes (see the module docstring)."""

    def replacement(*args: Any, **kwargs: Any) -> Any:
        return fake(*args, **kwargs)

    try:
        functools.update_wrapper(replacement, original)
    except (AttributeError, TypeError):  # pragma: no cover - an exotic callable: keep what could be copied
        replacement.__wrapped__ = original  # type: ignore[attr-defined]
    for attr in ("cache_clear", "cache_info", "cache_parameters"):
        if hasattr(original, attr):
            setattr(replacement, attr, getattr(original, attr))
    return replacement


def _install() -> None:
    _clear_device_caches()
    try:
        for owner, name, value in _mps_patches():
            old = owner.__dict__.get(name, _MISSING)
            _saved.append((owner, name, old))
            if old is not _MISSING and _is_function(old) and _is_function(value):
                value = _dressed(old, value)
            setattr(owner, name, value)
        # Module.to("mps") must create new Parameters around the emulated tensors instead of assigning
        # `param.data = emulated` (which would copy the wrapper's metadata into a CPU TensorImpl).
        _saved_future.append(torch.__future__.get_overwrite_module_params_on_conversion())
        torch.__future__.set_overwrite_module_params_on_conversion(True)
    except BaseException:
        _restore()
        raise


def _restore() -> None:
    while _saved:
        owner, name, old = _saved.pop()
        if old is _MISSING:
            with suppress(AttributeError):
                delattr(owner, name)
        else:
            setattr(owner, name, old)
    while _saved_future:
        torch.__future__.set_overwrite_module_params_on_conversion(_saved_future.pop())
    _clear_device_caches()


@contextmanager
def installed_patches() -> Iterator[None]:
    """Context manager around :func:`acquire` / :func:`release`."""
    acquire()
    try:
        yield
    finally:
        release()
