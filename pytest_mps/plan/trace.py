"""Run a whole pipeline on the emulated MPS device with its models traced on meta tensors.

The pipeline's own code (tokenizer, scheduler, latents, post-processing) runs for real on the emulated
device, on tensors the size of the latents and the image; every model call (``unet(...)``,
``vae.decoder(...)``, ``text_encoder(...)``) is traced instead: its forward runs under a
:class:`~pytest_mps.emulation.shape_trace.MetaEmulation` with meta stand-ins for the weights and the
inputs, so MPS's rules are checked at the real sizes (every buffer of 2**32 bytes or more, every
attention score matrix that large, with module and source line) while nothing that size is allocated,
and the call returns zeros of the traced output's shapes for the pipeline to go on with.

Values are therefore not computed: a traced run finds size, dtype and kernel hazards, not numerical
ones. ``audit()`` uses it above the size at which a real run is heavy; ``pytest-mps plan`` uses it with
:mod:`pytest_mps.plan.memory` to estimate peak memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_mps.emulation.emulator import EmulatedMPS
from pytest_mps.emulation.findings import Finding
from pytest_mps.emulation.shape_trace import MetaEmulation
from pytest_mps.emulation.tensor import EmulatedTensor, is_emulated
from pytest_mps.plan.memory import LiveBytes, MemoryEstimate, Window, sdpa_transients, unique_bytes

__all__ = ["TracedRun", "has_meta_weights", "model_components", "traced_call"]

_META = torch.device("meta")
_MISSING = object()


@dataclass
class TracedRun:
    """What a traced pipeline call found.

    Attributes:
        findings: every hazard, from the pipeline's own code and from the traced models (unmerged).
        output: the pipeline's output, computed from zero stand-ins: real shapes, meaningless values.
        error: the exception that stopped the run, or None (the original one when a model's trace
            stopped).
        traced: the models traced, in the order first called (``unet``, ``vae.decoder``...).
        memory: the peak-memory estimate when asked for, else None.
        seconds: wall time.
    """

    findings: list[Finding]
    output: Any = None
    error: BaseException | None = None
    traced: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    seconds: float = 0.0


def model_components(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's ``nn.Module`` components by name."""
    components = getattr(pipe, "components", None) or {}
    return {k: v for k, v in components.items() if isinstance(v, torch.nn.Module)}


class _TraceStopped(Exception):
    """A model's trace raised: carries the original exception out of the pipeline's code."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class _Replay:
    """A traced model call, kept to answer the same call again (the text encoder at every size)."""

    findings: tuple[Finding, ...]
    specs: Any
    window: Window


def _signature(value: Any) -> Any:
    """A hashable description of a call argument: tensors by shape and dtype, plain values by value;
    raises TypeError for anything else (such a call is not cached)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, is_emulated(value))
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(_signature(v) for v in value))
    if isinstance(value, Mapping):
        return ("map", *((k, _signature(v)) for k, v in value.items()))
    raise TypeError(type(value).__name__)


def _call_key(module: torch.nn.Module, name: str, args: Any, kwargs: Any) -> Any:
    try:
        return (id(module), name, _signature(args), _signature(kwargs))
    except TypeError:
        return None


class _Tracer:
    """Replaces every module's ``forward`` for the duration of a run; the outermost call traces."""

    def __init__(
        self,
        roots: Mapping[str, torch.nn.Module],
        tracker: LiveBytes | None,
        fallback: bool,
        cache: dict[Any, _Replay] | None,
    ) -> None:
        self.roots = dict(roots)
        self.tracker = tracker
        self.fallback = fallback
        self.cache = cache
        self.findings: list[Finding] = []
        self.traced: list[str] = []
        self.depth = 0
        # id(weight) -> (weight, its meta stand-in): kept for the whole run so that storages, and the
        # ids above, are not reused while the tracker excludes them.
        self._meta: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        patched: list[tuple[torch.nn.Module, Any]] = []
        try:
            for root_name, root in self.roots.items():
                for sub_name, module in root.named_modules():
                    name = f"{root_name}.{sub_name}" if sub_name else root_name
                    previous = module.__dict__.get("forward", _MISSING)
                    patched.append((module, previous))
                    module.forward = self._wrap(module, name, module.forward)
            yield
        finally:
            for module, previous in reversed(patched):
                if previous is _MISSING:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = previous

    def _wrap(self, module: torch.nn.Module, name: str, forward: Any) -> Any:
        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return forward(*args, **kwargs)
            return self._trace(module, name, forward, args, kwargs)

        return traced_forward

    def _trace(self, module: torch.nn.Module, name: str, forward: Any, args: Any, kwargs: Any) -> Any:
        key = _call_key(module, name, args, kwargs) if self.cache is not None else None
        replay = self.cache.get(key) if self.cache is not None and key is not None else None
        if name not in self.traced:
            self.traced.append(name)
        if replay is not None:
            self.findings.extend(replay.findings)
            if self.tracker is not None:
                self.tracker.replay(replay.window, name)
            return _standins(replay.specs)
        tracker = self.tracker
        emulation = MetaEmulation(fallback=self.fallback)
        emulation.name_modules({name: module})
        with tracker.paused() if tracker is not None else contextlib.nullcontext():
            swaps = self._meta_swaps(module)
            meta_args, meta_kwargs = _to_meta(args), _to_meta(kwargs)
        window = Window()
        error: BaseException | None = None
        out: Any = None
        self.depth += 1
        try:
            with contextlib.ExitStack() as stack:
                if tracker is not None:
                    tracker.component = name
                    window = stack.enter_context(tracker.window())
                stack.enter_context(emulation)
                stack.enter_context(torch.no_grad())
                stack.enter_context(_swapped(swaps))
                out = forward(*meta_args, **meta_kwargs)
        except Exception as exc:
            error = exc
        finally:
            self.depth -= 1
            if tracker is not None:
                tracker.component = ""
            self.findings.extend(emulation.findings)
        if error is not None:
            raise _TraceStopped(error) from error
        specs = _specs(out)
        del out, meta_args, meta_kwargs  # frees the traced activations before the stand-ins exist
        if self.cache is not None and key is not None:
            self.cache[key] = _Replay(tuple(emulation.findings), specs, window)
        return _standins(specs)

    def _meta_swaps(self, module: torch.nn.Module) -> list[tuple[dict[str, Any], str, torch.Tensor]]:
        swaps = []
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for key, tensor in store.items():
                    if tensor is not None:
                        swaps.append((store, key, self._meta_of(tensor)))
        return swaps

    def _meta_of(self, tensor: torch.Tensor) -> torch.Tensor:
        entry = self._meta.get(id(tensor))
        if entry is not None:
            return entry[1]
        payload = tensor._payload if is_emulated(tensor) else tensor
        if payload.device.type == "meta" and is_emulated(tensor):
            meta = tensor  # already a meta stand-in (a pipeline built with meta weights)
        else:
            meta = EmulatedTensor(payload.detach().to(_META))
        self._meta[id(tensor)] = (tensor, meta)
        if self.tracker is not None:
            self.tracker.exclude([meta])
        return meta


@contextlib.contextmanager
def _swapped(swaps: list[tuple[dict[str, Any], str, torch.Tensor]]) -> Iterator[None]:
    saved = [(store, key, store[key]) for store, key, _ in swaps]
    for store, key, meta in swaps:
        store[key] = meta
    try:
        yield
    finally:
        for store, key, original in saved:
            store[key] = original


@contextlib.contextmanager
def _meta_dtype_casts(roots: Mapping[str, torch.nn.Module]) -> Iterator[None]:
    """Let the pipeline cast models with meta weights (SDXL upcasts its float16 VAE to float32 for the
    decode and back): ``module.to(dtype)`` casts the meta payloads; a device move stays where it is."""

    def cast(module: torch.nn.Module) -> Any:
        def to(*args: Any, **kwargs: Any) -> torch.nn.Module:
            _device, dtype, _non_blocking, _format = torch._C._nn._parse_to(*args, **kwargs)
            if dtype is not None:

                def convert(t: torch.Tensor) -> torch.Tensor:
                    if is_emulated(t) and t.is_floating_point() and t.dtype != dtype:
                        return EmulatedTensor(t._payload.to(dtype))
                    return t

                with torch.no_grad():
                    module._apply(convert)
            return module

        return to

    patched = [(module, module.__dict__.get("to", _MISSING)) for module in roots.values()]
    try:
        for module, _ in patched:
            module.to = cast(module)  # type: ignore[method-assign]
        yield
    finally:
        for module, previous in patched:
            if previous is _MISSING:
                module.__dict__.pop("to", None)
            else:
                module.to = previous  # type: ignore[method-assign]


def _to_meta(value: Any) -> Any:
    """Emulated inputs become meta stand-ins of the same shape; plain tensors stay as they are (a CPU
    tensor handed to a model on MPS is a device error on a Mac, and the trace reports it)."""
    if is_emulated(value):
        payload = value._payload
        if payload.device.type == "meta":
            return value
        return EmulatedTensor(
            torch.empty_strided(payload.shape, payload.stride(), dtype=payload.dtype, device=_META)
        )
    if type(value) is dict:
        return {k: _to_meta(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_to_meta(v) for v in value)
    return value


def _specs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _Spec(tuple(int(s) for s in value.shape), value.dtype)
    return _map(value, _specs)


def _standins(value: Any) -> Any:
    if isinstance(value, _Spec):
        return EmulatedTensor(torch.zeros(value.shape, dtype=value.dtype))
    return _map(value, _standins)


def _map(value: Any, fn: Any) -> Any:
    """Apply ``fn`` to the items of lists, tuples (named too), dicts and model outputs (Diffusers'
    ``BaseOutput``, Transformers' ``ModelOutput``); other objects are returned unchanged."""
    if isinstance(value, tuple):
        items = [fn(v) for v in value]
        if hasattr(value, "_fields"):
            return type(value)(*items)
        return type(value)(items) if type(value) is not tuple else tuple(items)
    if isinstance(value, list):
        return [fn(v) for v in value]
    if isinstance(value, Mapping):
        mapped = {k: fn(v) for k, v in value.items()}
        if type(value) is dict:
            return mapped
        try:
            return type(value)(**mapped)
        except TypeError:
            return mapped
    return value


def traced_call(
    pipe: Any,
    call: Mapping[str, Any],
    *,
    move: bool = True,
    memory: bool = False,
    fallback: bool | None = None,
    cache: dict[Any, Any] | None = None,
) -> TracedRun:
    """Call ``pipe(**call)`` on the emulated MPS device with every model call traced on meta tensors.

    Args:
        pipe: a Diffusers pipeline (real weights, or meta weights already on the emulated device; see
            :func:`pytest_mps.plan.meta_pipeline.load_meta_pipeline`).
        call: the call's arguments (generators are consumed: pass copies).
        move: move the pipeline to the emulated device for the run and back afterwards (the weights are
            aliased, not copied). False for a pipeline whose weights are emulated already.
        memory: also estimate peak memory (:class:`~pytest_mps.plan.memory.MemoryEstimate`).
        fallback: ``PYTORCH_ENABLE_MPS_FALLBACK`` behaviour; None reads the environment.
        cache: with ``memory``, a dict shared by runs of the same pipeline in the same state (same
            attention processors): a model call whose inputs have the same shapes as one already
            traced (the text encoder, at every image size) is answered from it instead of traced.

    Returns:
        A :class:`TracedRun`; an exception ends the run and is returned, never raised.
    """
    from pytest_mps.emulation.emulator import fallback_from_env

    roots = model_components(pipe)
    fallback = fallback_from_env() if fallback is None else fallback
    outer = EmulatedMPS(collect=True, fallback=fallback)
    weights = [t for m in roots.values() for t in (*m.parameters(), *m.buffers())]
    tracker = LiveBytes() if memory else None
    tracer = _Tracer(roots, tracker, fallback, cache if memory else None)
    output: Any = None
    error: BaseException | None = None
    start = time.perf_counter()
    with outer:
        outer.name_modules(getattr(pipe, "components", {}) or {})
        original = _device_of(pipe) if move else None
        try:
            with contextlib.ExitStack() as stack:
                if move and getattr(original, "type", None) != "mps":
                    pipe.to("mps")
                    weights = [t for m in roots.values() for t in (*m.parameters(), *m.buffers())]
                stack.enter_context(tracer.installed())
                if has_meta_weights(pipe):
                    stack.enter_context(_meta_dtype_casts(roots))
                if tracker is not None:
                    tracker.exclude(weights)
                    stack.enter_context(tracker)
                    stack.enter_context(sdpa_transients(tracker))
                output = pipe(**call)
        except _TraceStopped as exc:
            error = exc.error
        except Exception as exc:
            error = exc
        finally:
            if original is not None and original.type != "mps":
                with torch.no_grad():
                    pipe.to(original)
    estimate = None
    if tracker is not None:
        largest_weight = max((_nbytes(t) for t in weights), default=0)
        estimate = MemoryEstimate(
            weights_bytes=unique_bytes(weights),
            peak_activation_bytes=tracker.peak,
            largest_buffer_bytes=max(tracker.largest, largest_weight),
            largest_buffer_op=tracker.largest_op if tracker.largest >= largest_weight else "weights",
            largest_buffer_component=tracker.largest_component,
        )
    return TracedRun(
        findings=[*outer.findings, *tracer.findings],
        output=output,
        error=error,
        traced=tracer.traced,
        memory=estimate,
        seconds=time.perf_counter() - start,
    )


def has_meta_weights(pipe: Any) -> bool:
    """True for a pipeline built with meta weights (nothing to compute with: it can only be traced)."""
    for module in model_components(pipe).values():
        for tensor in module.parameters():
            return getattr(tensor, "_payload", tensor).device.type == "meta"
    return False


def _nbytes(t: torch.Tensor) -> int:
    payload = getattr(t, "_payload", t)
    return int(payload.untyped_storage().nbytes())


def _device_of(pipe: Any) -> Any:
    try:
        return pipe.device
    except Exception:
        return None
