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
from pytest_mps.localization.tensors import Difference, copy_off_device, difference, nbytes, tensors_in

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
    source: Any = None  # the module that made the call (in the reference's configuration then)


@dataclass(frozen=True)
class Entry:
    """One comparison of the reference run: a call's inputs or output (or the latents)."""

    key: Key
    step: int | None
    part: str
    diff: Difference


class Comparing:
    """A :class:`Listener` for the reference run: compares each call's inputs and output with the
    target's record as it goes, and stops the run at the first comparison beyond the threshold.

    Where the divergence starts is the *onset*: walking back from that comparison over the ones
    before it while each is at least a tenth of the next (an unbroken rise, not a jump out of
    rounding noise; sizes compared as the RMS of the difference over the RMS of the reference), the
    earliest. So a difference that a later step amplifies past the threshold is traced to where it
    appeared (a call's output, or a scheduler step between calls), not to the call that amplified
    it. With ``stop_at``, the run is only stopped after that call, to capture it.
    """

    #: How much smaller than the next comparison an earlier one may be and still belong to its rise.
    DROP = 10.0

    def __init__(
        self,
        recording: Recording,
        *,
        rtol: float,
        atol: float,
        copy_module: Callable[[Any], Any] | None = None,
        stop_at: Key | None = None,
        keep_bytes: int = 256 << 20,
    ) -> None:
        self.recording = recording
        self.rtol, self.atol = rtol, atol
        self.copy_module = copy_module
        self.stop_at = stop_at
        self.keep_bytes = keep_bytes
        self.stopped = False
        self.entries: list[Entry] = []
        self.outputs: dict[Key, Difference] = {}
        # the latest module calls as the reference made them, up to ``keep_bytes`` (top-level inputs
        # are latent-sized: every call of a run usually fits)
        self.captures: dict[Key, Captured] = {}
        self._kept: dict[Key, int] = {}
        self._pending: Captured | None = None

    @property
    def compared(self) -> int:
        """Calls compared so far."""
        return len(self.outputs)

    def largest(self) -> float:
        """The largest ratio to the threshold of any call's output (0 when none was compared)."""
        return max((d.ratio for d in self.outputs.values()), default=0.0)

    def call_difference(self, entry: Entry) -> CallDifference:
        """An entry as a :class:`CallDifference` (steps belong to calls made during denoising)."""
        phase = self.recording.phase(entry.key)
        diff = entry.diff
        return CallDifference(
            where=entry.key[0],
            call=entry.key[1],
            step=entry.step if phase == "denoising" else None,
            phase=phase,
            part=entry.part,
            max_abs=diff.max_abs,
            relative=diff.relative,
            ratio=diff.ratio,
            nonfinite=diff.nonfinite,
        )

    def onset(self) -> Entry | None:
        """Where the divergence starts: the earliest comparison of the rise that ends at the first
        comparison beyond the threshold (or, for a run that ended, at the largest)."""
        if not self.entries:
            return None
        index = (
            len(self.entries) - 1
            if self.stopped
            else max(range(len(self.entries)), key=lambda i: self.entries[i].diff.ratio)
        )
        while index > 0:
            # Spreads, not ratios: a tensor's outliers set its threshold, not the size of its error.
            earlier, later = self.entries[index - 1].diff.spread, self.entries[index].diff.spread
            if earlier <= 0 or earlier < later / self.DROP:
                break
            index -= 1
        return self.entries[index]

    def _note(self, entry: Entry) -> None:
        self.entries.append(entry)
        if entry.diff.differs and self.stop_at is None:
            self._stop()

    def _stop(self) -> None:
        self.stopped = True
        onset = self.onset()
        if onset is not None:
            self._copy(self.captures.get(onset.key))
        raise StopRun

    def _copy(self, captured: Captured | None) -> None:
        import torch

        if captured is not None and self.copy_module is not None and captured.module is None:
            # Copied now, while the pipeline is in the reference's configuration: no second move.
            with torch.inference_mode(False):
                captured.module = self.copy_module(captured.source)

    def start(self, key: Key, step: int | None, args: Any, kwargs: Any) -> None:
        import torch

        if key[0] == "latents":  # not a call: only its output (the latents) is compared
            return
        record = self.recording.records.get(key)
        if record is None:  # the target never made this call: its control flow differs
            self._note(
                Entry(
                    key,
                    step,
                    "inputs",
                    Difference(float("inf"), 0.0, float("inf"), problem="no such call", spread=float("inf")),
                )
            )
            raise StopRun
        inputs = copy_off_device((args, kwargs))
        diff = difference(record.inputs, tensors_in(inputs), rtol=self.rtol, atol=self.atol)
        self._note(Entry(key, step, "inputs", diff))
        self._pending = Captured(key, *inputs, [], torch.get_rng_state())

    def end(self, key: Key, step: int | None, output: Any, module: Any) -> None:
        import torch

        record = self.recording.records[key]
        outputs = copy_off_device(tensors_in(output))
        diff = difference(record.outputs, outputs, rtol=self.rtol, atol=self.atol)
        self.outputs[key] = diff
        pending, self._pending = self._pending, None
        if pending is not None and pending.key == key and key[0] != "latents":
            pending.outputs = outputs
            pending.drew = not torch.equal(pending.rng, torch.get_rng_state())
            pending.source = module
            self.captures[key] = pending
            self._kept[key] = nbytes((pending.args, pending.kwargs, pending.outputs))
            while len(self.captures) > 1 and sum(self._kept.values()) > self.keep_bytes:
                oldest = next(iter(self.captures))
                del self.captures[oldest], self._kept[oldest]
        self._note(Entry(key, step, "output", diff))
        if key == self.stop_at:
            self._copy(self.captures.get(key))
            raise StopRun
