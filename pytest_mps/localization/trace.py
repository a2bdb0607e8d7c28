"""Following a pipeline run call by call: hooks on its top-level modules (each component and its
direct children, so ``vae.decoder`` is seen though pipelines call ``vae.decode``), the denoising
step each call belongs to, and the latents after each step where the pipeline offers
``callback_on_step_end``.

The target run is recorded whole (top-level inputs and outputs are latent-sized); the reference run
is compared with that record as it goes and stopped at the first call that differs, keeping that
call's inputs for the module search.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_mps.localization.records import CallDifference
from pytest_mps.localization.tensors import Difference, copy_off_device, difference, tensors_in

if TYPE_CHECKING:
    import torch

__all__ = ["Captured", "Comparing", "Recording", "StopRun", "Trace", "component"]

Key = tuple[str, int]


class StopRun(Exception):
    """Raised from a hook to end the reference run once the call that matters has been seen."""


class Listener(Protocol):
    """What a :class:`Trace` reports to."""

    def start(self, key: Key, step: int | None, args: Any, kwargs: Any) -> None: ...

    def end(self, key: Key, step: int | None, output: Any, module: Any) -> None: ...


def _denoiser(pipe: Any) -> Any:
    for name in ("unet", "transformer", "prior", "decoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def component(pipe: Any, where: str) -> torch.nn.Module:
    """The module a top-level path names: ``unet`` or ``vae.decoder``."""
    head, _, rest = where.partition(".")
    module = pipe.components[head]
    return module.get_submodule(rest) if rest else module


class Trace:
    """Hooks on ``pipe``'s top-level modules that report each outermost call to a listener."""

    def __init__(self, pipe: Any) -> None:
        import torch

        self.pipe = pipe
        self.denoiser = _denoiser(pipe)
        self.units: dict[Any, str] = {}
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                self.units.setdefault(module, name)
                for child, sub in module.named_children():
                    self.units.setdefault(sub, f"{name}.{child}")
        self.listener: Listener | None = None
        self.current: tuple[Key, int | None] | None = None
        self.uses_callback = False
        self._reset()

    def _reset(self) -> None:
        self.depth = 0
        self.counts: Counter[str] = Counter()
        self.steps_done = 0
        self.denoiser_calls = 0
        self.current = None

    def prepare(self, call: dict[str, Any]) -> dict[str, Any]:
        """``call`` with a step-end callback that reports the latents, where the pipeline takes one
        and the caller has not set their own."""
        params = inspect.signature(self.pipe.__call__).parameters
        tensors = getattr(self.pipe, "_callback_tensor_inputs", ["latents"])
        if (
            "callback_on_step_end" in params
            and "latents" in tensors
            and call.get("callback_on_step_end") is None
        ):
            self.uses_callback = True
            return {
                **call,
                "callback_on_step_end": self._step_end,
                "callback_on_step_end_tensor_inputs": ["latents"],
            }
        return call

    def _step_end(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.listener is not None and "latents" in kwargs:
            key = ("latents", self.steps_done)
            self.listener.start(key, self.steps_done, (), {})
            self.listener.end(key, self.steps_done, kwargs["latents"], None)
        self.steps_done += 1
        return {}  # changes nothing: the pipeline pops what it finds

    def _step_now(self, module: Any) -> int | None:
        if self.denoiser is None:
            return None
        return self.steps_done if self.uses_callback else self.denoiser_calls

    def _pre(self, module: Any, args: Any, kwargs: Any) -> None:
        where = self.units.get(module)
        if where is None:  # a copy of a hooked module (deepcopy keeps hooks): not part of this run
            return
        if self.depth == 0 and self.listener is not None:
            key = (where, self.counts[where])
            self.counts[where] += 1
            self.current = (key, self._step_now(module))
            self.listener.start(key, self.current[1], args, kwargs)
        self.depth += 1

    def _post(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if module not in self.units:
            return
        self.depth -= 1
        if self.depth == 0 and self.listener is not None and self.current is not None:
            key, step = self.current
            if module is self.denoiser:
                self.denoiser_calls += 1
            self.current = None
            self.listener.end(key, step, output, module)

    @contextmanager
    def listening(self, listener: Listener) -> Iterator[Trace]:
        """Report calls to ``listener`` for the ``with`` block (one run), then remove every hook."""
        self._reset()
        self.listener = listener
        handles = []
        try:
            # Plain functions, not bound methods: a deepcopy of a hooked module shares them instead of
            # copying this Trace (and the pipeline with it).
            def pre(module: Any, args: Any, kwargs: Any) -> None:
                self._pre(module, args, kwargs)

            def post(module: Any, args: Any, kwargs: Any, output: Any) -> None:
                self._post(module, args, kwargs, output)

            for module in self.units:
                # Inputs before any user pre-hook, outputs after every user hook: a replay through
                # __call__ runs those hooks again, as the pipeline did.
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
                handles.append(module.register_forward_hook(post, with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.listener = None

    def where_now(self) -> tuple[Key, int | None] | None:
        """The outermost call in progress (after an exception: the call that raised)."""
        return self.current


@dataclass
class Record:
    """One top-level call of the target run: its tensors, copied to the CPU."""

    step: int | None
    inputs: list[Any]
    outputs: list[Any] = field(default_factory=list)


class Recording:
    """A :class:`Listener` that keeps every top-level call of the target run, in order."""

    def __init__(self, denoiser_name: str | None) -> None:
        self.records: dict[Key, Record] = {}
        self.order: list[Key] = []
        self.denoiser_name = denoiser_name

    def start(self, key: Key, step: int | None, args: Any, kwargs: Any) -> None:
        self.records[key] = Record(step, copy_off_device(tensors_in((args, kwargs))))
        self.order.append(key)

    def end(self, key: Key, step: int | None, output: Any, module: Any) -> None:
        self.records[key].outputs = copy_off_device(tensors_in(output))

    def phase(self, key: Key) -> str:
        """``before denoising``, ``denoising`` or ``after denoising`` for a recorded call."""
        steps = [i for i, k in enumerate(self.order) if k[0] in (self.denoiser_name, "latents")]
        if not steps or key not in self.records:
            return "denoising" if key[0] in (self.denoiser_name, "latents") else "before denoising"
        index = self.order.index(key)
        if index < steps[0]:
            return "before denoising"
        return "after denoising" if index > steps[-1] else "denoising"


@dataclass
class Captured:
    """The reference's copy of one top-level call: what the module search starts from."""

    key: Key
    args: Any
    kwargs: Any
    outputs: list[Any]
    rng: Any
    drew: bool = False
    module: Any = None  # the reference's own copy of the module, where the side makes one


class Comparing:
    """A :class:`Listener` for the reference run: compares each call with the target's record and
    stops the run at the first call that differs (or at ``stop_at``), capturing its inputs."""

    def __init__(
        self,
        recording: Recording,
        *,
        rtol: float,
        atol: float,
        stop_at: Key | None = None,
        copy_module: Callable[[Any], Any] | None = None,
    ) -> None:
        self.recording = recording
        self.copy_module = copy_module
        self.rtol, self.atol = rtol, atol
        self.stop_at = stop_at
        self.first: CallDifference | None = None
        self.captured: Captured | None = None
        self.outputs: dict[Key, Difference] = {}
        self._pending: Captured | None = None

    @property
    def compared(self) -> int:
        """Calls compared so far."""
        return len(self.outputs)

    def _call_difference(self, key: Key, step: int | None, part: str, diff: Difference) -> CallDifference:
        return CallDifference(
            where=key[0],
            call=key[1],
            step=step,
            phase=self.recording.phase(key),
            part=part,
            max_abs=diff.max_abs,
            relative=diff.relative,
            ratio=diff.ratio,
            nonfinite=diff.nonfinite,
        )

    def start(self, key: Key, step: int | None, args: Any, kwargs: Any) -> None:
        import torch

        record = self.recording.records.get(key)
        if record is None:  # the target never made this call: its control flow differs
            missing = Difference(float("inf"), 0.0, float("inf"), problem="the target made no such call")
            self.first = self._call_difference(key, step, "inputs", missing)
            raise StopRun
        if self.stop_at is None:
            inputs = copy_off_device(tensors_in((args, kwargs)))
            diff = difference(record.inputs, inputs, rtol=self.rtol, atol=self.atol)
            if diff.differs:
                self.first = self._call_difference(key, step, "inputs", diff)
                raise StopRun
        if self.stop_at in (None, key):
            self._pending = Captured(key, *copy_off_device((args, kwargs)), [], torch.get_rng_state())

    def end(self, key: Key, step: int | None, output: Any, module: Any) -> None:
        import torch

        record = self.recording.records[key]
        outputs = copy_off_device(tensors_in(output))
        diff = difference(record.outputs, outputs, rtol=self.rtol, atol=self.atol)
        self.outputs[key] = diff
        pending, self._pending = self._pending, None
        hit = key == self.stop_at or (self.stop_at is None and diff.differs)
        if not hit:
            return
        if self.stop_at is None:
            self.first = self._call_difference(key, step, "output", diff)
        if pending is not None and pending.key == key:
            pending.outputs = outputs
            pending.drew = not torch.equal(pending.rng, torch.get_rng_state())
            if self.copy_module is not None and module is not None:
                # Copied now, while the pipeline is in the reference's configuration: no second move.
                pending.module = self.copy_module(module)
            self.captured = pending
        raise StopRun

    def largest(self) -> Key | None:
        """The module call whose output differs most (by ratio to the threshold)."""
        calls = {k: d for k, d in self.outputs.items() if k[0] != "latents"}
        return max(calls, key=lambda k: calls[k].ratio, default=None)
