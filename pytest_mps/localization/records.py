"""What a localisation found: the first call that differs, the module that introduces the error, and
a ranking of the modules that introduce the most. Frozen records with JSON round trips."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pytest_mps.results import format_figure

__all__ = ["VERDICTS", "CallDifference", "Localization", "ModuleError"]

#: Every verdict a :class:`Localization` can carry.
VERDICTS: tuple[str, ...] = (
    "no divergence",  # every call and the output agree
    "module",  # a module introduces the error: ``culprit``
    "between calls",  # a call's inputs differ while every earlier call agreed: scheduler or pipeline code
    "not reproduced",  # a call differs, but replaying it on the target with the reference's inputs does not
    "gradual",  # the output differs though no call exceeds the threshold: the largest local errors
    "raised",  # the target run raised
    "not applicable",  # nothing to compare (attention slicing changes no processor)
)

#: What a module-by-module replay cannot see, said in every report.
BLIND_SPOTS = (
    "error made inside one module's own code (a fused kernel, functional ops between its submodules) is "
    "named at that module, not split further",
    "random draws are flagged (the reference call advanced the global RNG), not reproduced: a device's RNG "
    "stream differs from the CPU's",
)

_INF_FIELDS = ("max_abs", "relative", "ratio")


def _encode(record: Any) -> dict[str, Any]:
    """``asdict`` with non-finite figures as ``None`` (JSON has no infinity) and tuples as lists."""
    data = asdict(record)
    for name in _INF_FIELDS:
        if name in data and isinstance(data[name], float) and not math.isfinite(data[name]):
            data[name] = None
    for key, value in data.items():
        if isinstance(value, tuple):
            data[key] = list(value)
    return data


def _decode_figures(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for name in _INF_FIELDS:
        if name in out and out[name] is None:
            out[name] = math.inf
    return out


@dataclass(frozen=True)
class ModuleError:
    """The error one module introduces: its output on the target, given the reference's inputs to it,
    against the reference's output (so error inherited from upstream does not count).

    Attributes:
        path: dotted path in the pipeline, e.g. ``unet.up_blocks.1.resnets.0``.
        module_class: the module's class name.
        max_abs: local max |diff| (``inf`` when the target gives NaN/Inf where the reference does not).
        relative: ``max_abs`` over the reference output's largest magnitude.
        ratio: ``max_abs`` over the threshold ``atol + rtol * max |reference|``; above 1 the module
            introduces error.
        shape: shape of the output tensor with the worst error.
        dtype: its dtype on the target.
        calls: calls of the module examined within the searched call (the worst is reported).
        nonfinite: NaN/Inf values on the target where the reference is finite.
        draws_random: its reference call advanced the global RNG (dropout or label dropping in
            training mode): its output depends on which device draws.
        introduces: the error starts here: the module differs (or draws random numbers) and none of
            its submodules explains it.
        depth: 0 for the call searched, 1 for its submodules, and so on.
        note: why it could not be judged (its replay raised), or how the error arises in it.
    """

    path: str
    module_class: str
    max_abs: float
    relative: float
    ratio: float
    shape: tuple[int, ...] = ()
    dtype: str = ""
    calls: int = 1
    nonfinite: int = 0
    draws_random: bool = False
    introduces: bool = False
    depth: int = 0
    note: str = ""

    @property
    def differs(self) -> bool:
        """True when its local error is beyond the threshold."""
        return self.ratio > 1.0

    def figure(self) -> str:
        """The local error in words: ``0.12``, ``inf (32 NaN/Inf)``, ``0 (draws random numbers)``."""
        text = _figure(self.max_abs, self.nonfinite)
        return f"{text} (draws random numbers)" if self.draws_random else text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite figures become ``None``)."""
        return _encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModuleError:
        """The inverse of :meth:`to_dict`."""
        values = _decode_figures(data)
        values["shape"] = tuple(values.get("shape", ()))
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass(frozen=True)
class CallDifference:
    """One top-level call of the pipeline (a component or one of its direct children, the latents
    after a step, or the final output) compared between the two runs.

    Attributes:
        where: ``unet``, ``vae.decoder``, ``text_encoder``; ``latents`` (after a step) or ``output``.
        call: which call of it (0 first).
        step: the denoising step it belongs to; None before and after denoising.
        phase: ``before denoising``, ``denoising`` or ``after denoising``.
        part: ``inputs`` or ``output``: what differs.
        max_abs, relative, ratio, nonfinite: as in :class:`ModuleError`.
    """

    where: str
    call: int
    step: int | None
    phase: str
    part: str
    max_abs: float
    relative: float
    ratio: float
    nonfinite: int = 0

    def when(self) -> str:
        """``at step 3``, ``before denoising`` or ``after denoising``."""
        return f"at step {self.step}" if self.phase == "denoising" and self.step is not None else self.phase

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite figures become ``None``)."""
        return _encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallDifference:
        """The inverse of :meth:`to_dict`."""
        values = _decode_figures(data)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def _figure(value: float, nonfinite: int = 0) -> str:
    if nonfinite:
        return f"inf ({nonfinite} NaN/Inf)"
    return format_figure(value)


def _times(ratio: float) -> str:
    return "beyond any threshold" if math.isinf(ratio) else f"{format_figure(ratio)}x the threshold"


@dataclass(frozen=True)
class Localization:
    """Where the target starts to diverge from its reference for one check.

    Attributes:
        check: ``cpu_parity``, ``float16`` or ``attention_slicing``.
        target: the target's label (stand-ins say so).
        verdict: one of :data:`VERDICTS`.
        first: the first call that differs (None when none does).
        culprit: the first module, in execution order, that introduces error.
        chain: the modules searched from ``first``'s call down to ``culprit``, with their local errors.
        ranking: the modules that introduce error, most first (by ratio to the threshold).
        rtol, atol: the local threshold, ``atol + rtol * max |reference|``.
        calls_compared: top-level calls compared between the runs.
        modules_examined: module calls replayed on the target.
        capture_bytes: the most bytes of submodule inputs and outputs the search held at once (the
            memory it needs beyond the pipeline's own, bounded by ``localize(capture_bytes=...)``).
        output_max_abs: max |diff| of the final outputs (None when the run stopped early or an output
            is not finite).
        seconds: wall time of the localisation; ``timings`` splits it.
        error: the target run's exception (verdict ``raised``).
        notes: further facts (modules in training mode, search limits reached, shared classes).
    """

    check: str
    target: str
    verdict: str
    first: CallDifference | None = None
    culprit: ModuleError | None = None
    chain: tuple[ModuleError, ...] = ()
    ranking: tuple[ModuleError, ...] = ()
    rtol: float = 0.0
    atol: float = 0.0
    calls_compared: int = 0
    modules_examined: int = 0
    capture_bytes: int = 0
    output_max_abs: float | None = None
    seconds: float = 0.0
    timings: Mapping[str, float] = field(default_factory=dict)
    error: str = ""
    notes: tuple[str, ...] = ()

    @property
    def diverged(self) -> bool:
        """True when the target diverges from its reference (or its run raised)."""
        return self.verdict not in ("no divergence", "not applicable")

    def headline(self) -> str:
        """One line for a failure message, e.g. ``divergence starts at step 0 in
        unet.up_blocks.1.resnets.0 (ResnetBlock2D): local max |diff| 0.12``."""
        first, culprit = self.first, self.culprit
        if self.verdict == "module" and first is not None and culprit is not None:
            cause = f"local max |diff| {_figure(culprit.max_abs, culprit.nonfinite)}"
            if culprit.draws_random:
                cause = "draws random numbers (a module in training mode?)" + (
                    f", {cause}" if culprit.max_abs > 0 else ""
                )
            return f"divergence starts {first.when()} in {culprit.path} ({culprit.module_class}): {cause}"
        if self.verdict == "between calls" and first is not None:
            figure = _figure(first.max_abs, first.nonfinite)
            if first.where == "latents":
                return (
                    f"divergence starts {first.when()} in the scheduler step: the latents after it differ "
                    f"(max |diff| {figure}) while the denoiser's output agreed"
                )
            if first.where == "output":
                return "divergence starts after the last module call: only the pipeline's output differs"
            return (
                f"divergence starts {first.when()} between module calls: the inputs of {first.where} differ "
                f"(max |diff| {figure}) while every earlier call agreed (scheduler step or pipeline code)"
            )
        if self.verdict == "not reproduced" and first is not None:
            return (
                f"divergence starts {first.when()} in {first.where}, but its replay on the target with the "
                "reference's inputs agrees: the cause lies outside its inputs (global RNG, state kept "
                "between calls)"
            )
        if self.verdict == "gradual":
            text = "the output differs but no single call exceeds the local threshold: the error grows"
            if culprit is not None:
                text += (
                    f"; largest local error in {culprit.path} ({culprit.module_class}): {culprit.figure()}"
                )
            return text
        if self.verdict == "raised":
            place = f" {first.when()} in {first.where}" if first is not None else ""
            return f"the target run raised{place}: {self.error}"
        if self.verdict == "not applicable":
            return "localisation not applicable: " + (self.notes[0] if self.notes else "nothing to compare")
        return f"no divergence: {self.calls_compared} calls and the output agree within the local threshold"

    def lines(self) -> list[str]:
        """The headline and the evidence, for a failure message (indented after the first line)."""
        lines = [self.headline()]
        first = self.first
        if first is not None and self.verdict in ("module", "not reproduced", "gradual"):
            lines.append(
                f"  first call that differs: {first.where} (call {first.call}) {first.when()}: {first.part} "
                f"max |diff| {_figure(first.max_abs, first.nonfinite)}, {_times(first.ratio)}"
            )
        if len(self.chain) > 1:
            lines.append("  path: " + " > ".join(f"{m.path} {m.figure()}" for m in self.chain))
        if self.ranking:
            lines.append(
                "  modules that introduce error (their output on the target, given the reference's inputs):"
            )
            width = max(len(m.path) for m in self.ranking[:5])
            for rank, m in enumerate(self.ranking[:5], 1):
                note = f"; {m.note}" if m.note else ""
                lines.append(
                    f"    {rank}. {m.path:<{width}}  {m.module_class} {m.shape} {m.dtype}: local max |diff| "
                    f"{m.figure()}, rel {format_figure(m.relative)}{note}"
                )
            if len(self.ranking) > 5:
                lines.append(f"    ... and {len(self.ranking) - 5} more")
        lines += [f"  note: {note}" for note in self.notes]
        if self.diverged and self.verdict != "raised":
            lines.append(
                f"  threshold: {format_figure(self.rtol)} x max |reference| + {format_figure(self.atol)}; "
                f"{self.calls_compared} calls compared, {self.modules_examined} module calls replayed, "
                f"{self.seconds:.2f} s"
            )
            lines.append("  cannot see: " + "; ".join(BLIND_SPOTS))
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite figures become ``None``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["first"] = self.first.to_dict() if self.first is not None else None
        data["culprit"] = self.culprit.to_dict() if self.culprit is not None else None
        data["chain"] = [m.to_dict() for m in self.chain]
        data["ranking"] = [m.to_dict() for m in self.ranking]
        data["timings"] = dict(self.timings)
        data["notes"] = list(self.notes)
        data["diverged"] = self.diverged
        data["headline"] = self.headline()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Localization:
        """The inverse of :meth:`to_dict` (``diverged`` and ``headline`` are derived, not read)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if values.get("verdict") not in VERDICTS:
            raise ValueError(
                f"unknown localisation verdict {values.get('verdict')!r}; expected one of {VERDICTS}"
            )
        first, culprit = values.get("first"), values.get("culprit")
        values["first"] = CallDifference.from_dict(first) if first is not None else None
        values["culprit"] = ModuleError.from_dict(culprit) if culprit is not None else None
        values["chain"] = tuple(ModuleError.from_dict(m) for m in values.get("chain", ()))
        values["ranking"] = tuple(ModuleError.from_dict(m) for m in values.get("ranking", ()))
        values["timings"] = dict(values.get("timings", {}))
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)
