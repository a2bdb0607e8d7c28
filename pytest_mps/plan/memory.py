"""A peak-memory model for traced runs: live tensor bytes followed through a run on meta tensors.

Every aten operator's outputs are seen by a ``TorchDispatchMode``; each new storage adds its bytes to
the live total when first seen and gives them back when the last tensor over it is garbage collected
(Python frees a tensor at the same point of the same code on a Mac, so the live total follows what
PyTorch's MPS allocator holds as *allocated* memory, not what its caches reserve). The peak of that
total plus the weights is the estimate.

One thing a meta trace never allocates: the attention score matrix that MPS's math path materialises
inside ``scaled_dot_product_attention``. :func:`sdpa_transients` counts it (twice: the scores and their
softmax are alive together, as in ATen's ``_scaled_dot_product_attention_math``) while the call runs.

How the estimate was validated: ``benchmarks/bench_plan.py --device cuda`` runs an SD-1.5-shaped
pipeline for real with the math attention backend and compares this estimate with
``torch.cuda.max_memory_allocated`` at several sizes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytes", "MemoryEstimate", "Window", "sdpa_transients", "storage_key", "unique_bytes"]


@dataclass(frozen=True)
class MemoryEstimate:
    """What a traced run would hold on the device.

    Attributes:
        weights_bytes: parameters and buffers of every component (each storage once).
        peak_activation_bytes: the largest live total of everything else (activations, latents, the
            decoded image, attention scores inside an attention call).
        largest_buffer_bytes: the largest single buffer the run asked for (weights included).
        largest_buffer_op: the aten operator (or ``scaled_dot_product_attention scores``) that asked.
        largest_buffer_component: the pipeline component running at the time ("" outside them).
    """

    weights_bytes: int
    peak_activation_bytes: int
    largest_buffer_bytes: int
    largest_buffer_op: str = ""
    largest_buffer_component: str = ""

    @property
    def peak_bytes(self) -> int:
        """Weights plus peak activations: the estimated peak of allocated device memory."""
        return self.weights_bytes + self.peak_activation_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "peak_bytes": self.peak_bytes,
            "weights_bytes": self.weights_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "largest_buffer_bytes": self.largest_buffer_bytes,
            "largest_buffer_op": self.largest_buffer_op,
            "largest_buffer_component": self.largest_buffer_component,
        }


def _payload(t: torch.Tensor) -> torch.Tensor:
    return getattr(t, "_payload", t)  # an emulated tensor's data lives in its payload


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind ``t`` (views share it); works for meta tensors too."""
    return int(_payload(t).untyped_storage()._cdata)


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        p = _payload(t)
        seen.setdefault(storage_key(p), p.untyped_storage().nbytes())
    return sum(seen.values())


@dataclass
class Window:
    """One call's own figures, from :meth:`LiveBytes.window`."""

    peak_delta: int = 0
    largest: int = 0
    largest_op: str = ""


class LiveBytes(TorchDispatchMode):
    """Follows live storage bytes through every aten call (see the module docstring).

    Args:
        exclude: storages not to count (the weights, counted separately).
    """

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        super().__init__()
        self.excluded: set[int] = set(exclude)
        self.live = 0
        self.peak = 0
        self.largest = 0
        self.largest_op = ""
        self.largest_component = ""
        self.component = ""
        self._refs: dict[int, int] = {}  # storage key -> tracked tensors over it
        self._sizes: dict[int, int] = {}
        self._tracked: set[int] = set()  # ids of tracked tensor objects
        self._aliases: dict[int, int] = {}  # storages allocated while paused -> tensors over them
        self._paused = 0

    def exclude(self, tensors: Iterable[torch.Tensor]) -> None:
        """Never count these tensors' storages (weights; aliases of tensors counted elsewhere)."""
        for t in tensors:
            self.excluded.add(storage_key(t))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Allocations inside the block are not counted, nor views of them later, while they live
        (meta copies that stand for tensors already counted, e.g. the inputs of a traced module)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextlib.contextmanager
    def window(self) -> Iterator[Window]:
        """Measure one call's own peak above the live total at its start, and its largest buffer
        (the overall peak and largest are kept)."""
        window = Window()
        live, peak = self.live, self.peak
        largest = (self.largest, self.largest_op, self.largest_component)
        self.peak, self.largest, self.largest_op = self.live, 0, ""
        try:
            yield window
        finally:
            window.peak_delta = self.peak - live
            window.largest, window.largest_op = self.largest, self.largest_op
            self.peak = max(peak, self.peak)
            if largest[0] >= self.largest:
                self.largest, self.largest_op, self.largest_component = largest

    def replay(self, window: Window, component: str) -> None:
        """Account for a call measured earlier by :meth:`window`, as if it ran again now."""
        self.peak = max(self.peak, self.live + window.peak_delta)
        if window.largest > self.largest:
            self.largest, self.largest_op, self.largest_component = (
                window.largest,
                window.largest_op,
                component,
            )

    def transient(self, nbytes: int, *, buffer: int, op: str) -> None:
        """Memory held only during one call (``nbytes`` in all, the largest piece ``buffer``): raises
        the peak, not the live total."""
        self.peak = max(self.peak, self.live + nbytes)
        self._note_buffer(buffer, op)

    def _note_buffer(self, nbytes: int, op: str) -> None:
        if nbytes > self.largest:
            self.largest, self.largest_op, self.largest_component = nbytes, op, self.component

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                if self._paused:
                    self._alias(_payload(value))
                else:
                    self._track(_payload(value), func)
        return out

    def _alias(self, t: torch.Tensor) -> None:
        key = storage_key(t)
        if key in self._refs or key in self.excluded:
            return
        count = self._aliases.get(key, 0)
        self._aliases[key] = count + 1
        self.excluded.add(key)
        weakref.finalize(t, self._release_alias, key)

    def _release_alias(self, key: int) -> None:
        count = self._aliases.pop(key, 1) - 1
        if count > 0:
            self._aliases[key] = count
        else:
            self.excluded.discard(key)

    def _track(self, t: torch.Tensor, func: Any) -> None:
        ident = id(t)
        if ident in self._tracked:
            return  # an in-place op returned its input
        try:
            storage = t.untyped_storage()
        except Exception:  # sparse or other storage-less layouts: nothing to count
            return
        key = int(storage._cdata)
        if key in self.excluded:
            return
        self._tracked.add(ident)
        count = self._refs.get(key, 0)
        self._refs[key] = count + 1
        if count == 0:
            size = storage.nbytes()
            self._sizes[key] = size
            self.live += size
            if self.live > self.peak:
                self.peak = self.live
            self._note_buffer(size, str(func))
        weakref.finalize(t, self._release, ident, key)

    def _release(self, ident: int, key: int) -> None:
        self._tracked.discard(ident)
        count = self._refs.get(key, 0) - 1
        if count > 0:
            self._refs[key] = count
            return
        self._refs.pop(key, None)
        self.live -= self._sizes.pop(key, 0)


@contextlib.contextmanager
def sdpa_transients(tracker: LiveBytes) -> Iterator[None]:
    """Count the score matrix of every ``scaled_dot_product_attention`` call as transient memory.

    Diffusers and Transformers look the function up on ``torch.nn.functional`` at each call, so the
    attribute is swapped for the block (and restored); the real function still runs.
    """
    from pytest_mps.emulation.rules import attention_scores_bytes

    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def scaled_dot_product_attention(query: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        scores = attention_scores_bytes(query.shape, key.shape, query.dtype)
        tracker.transient(2 * scores, buffer=scores, op="scaled_dot_product_attention scores")
        return original(query, key, *args, **kwargs)

    functional.scaled_dot_product_attention = scaled_dot_product_attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original
