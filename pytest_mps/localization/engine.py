"""``localize``: where a pipeline's target run starts to diverge from its reference.

1. The target run is recorded call by call (each component and its direct children, plus the latents
   after each step where the pipeline takes ``callback_on_step_end``).
2. The reference run is compared with that record as it goes, and stopped at the first call whose
   inputs or output differ beyond ``atol + rtol * max |reference|``: that gives the step.
3. Below that call, the module search (:mod:`pytest_mps.localization.search`) names the first module,
   in execution order, whose output on the target given the reference's inputs to it differs.

The default thresholds (:data:`LOCAL_TOLERANCES`) are relative to each tensor's own scale, since
latents, hidden states and images differ in range; they sit well above honest rounding (float32
between backends ~1e-6 relative, TF32 convolutions ~1e-3, float16 ~1e-3 per module) and below the
errors that fail a check.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pytest_mps.localization.records import CallDifference, Localization, ModuleError
from pytest_mps.localization.search import Call, Limits, Search
from pytest_mps.localization.sides import Side, check_name, make_side
from pytest_mps.localization.trace import Captured, Comparing, Recording, StopRun, Trace, component

__all__ = ["LOCAL_TOLERANCES", "localize"]

#: check -> (rtol, atol) of the local threshold ``atol + rtol * max |reference|``.
LOCAL_TOLERANCES: dict[str, tuple[float, float]] = {
    "cpu_parity": (1e-2, 1e-6),
    "float16": (5e-2, 1e-3),
    "attention_slicing": (1e-2, 1e-6),
}

#: When no call's output reaches this share of the threshold while the final output fails the check,
#: post-processing (pipeline code after the last call) changed the output.
_SHARE = 0.1


def _threshold(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"localize: {name}={value!r} must be a finite, non-negative number")
    return float(value)


def localize(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
    check: str = "cpu_parity",
    *,
    target: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerance: Any = None,
    slice_size: int | str = 1,
    max_expansions: int = 24,
    max_depth: int = 12,
    capture_bytes: int = 1 << 30,
    time_budget: float | None = None,
) -> Localization:
    """Find where ``pipe`` on its target starts to diverge from the reference of ``check``: the first
    denoising step, the first module (in execution order) that introduces the error at that step, and
    a ranking of the modules that introduce the most.

    Args:
        pipe: a Diffusers pipeline already on the target (as the checks take it).
        inputs: call arguments (default: :func:`pytest_mps.default_inputs`).
        check: ``cpu_parity`` (target against CPU), ``float16`` or ``float16_parity`` (float16 on the
            target against float32 on the CPU), ``attention_slicing`` (sliced against unsliced).
        target: the :class:`~pytest_mps.Target` (default: the running test's, or the pipeline's device).
        rtol, atol: the local threshold ``atol + rtol * max |reference|`` for calls and modules
            (default: :data:`LOCAL_TOLERANCES`).
        tolerance: the check's :class:`~pytest_mps.Tolerance` for the final output (default: resolved
            as the check resolves it).
        slice_size: for ``attention_slicing``, as ``pipe.enable_attention_slicing`` takes it.
        max_expansions, max_depth: bounds on the module search.
        capture_bytes: the most bytes of one call's submodule inputs and outputs held at once.
        time_budget: seconds, counted from the start of the call, after which the module search stops
            descending (it reports where it stopped); the failing check's own time x 2 keeps the whole
            localisation near 3x the check.

    Returns a :class:`~pytest_mps.localization.Localization`; it never raises for a divergence, only
    for bad arguments (``ValueError``, one line).
    """
    started = time.perf_counter()
    name = check_name(check)
    rtol = _threshold("rtol", rtol, LOCAL_TOLERANCES[name][0])
    atol = _threshold("atol", atol, LOCAL_TOLERANCES[name][1])
    if max_expansions < 1 or max_depth < 1 or capture_bytes < 1:
        raise ValueError("localize: max_expansions, max_depth and capture_bytes must be at least 1")
    from pytest_mps.context import current_context
    from pytest_mps.inputs import default_inputs, fresh_inputs

    ctx = current_context(pipe)
    target = target or ctx.target
    if tolerance is None:
        from pytest_mps.tolerances import resolve_tolerance

        tolerance = resolve_tolerance(name, marker=ctx.marker_tolerance, ini=ctx.ini_tolerance)
    call = fresh_inputs(inputs) if inputs is not None else default_inputs(pipe)
    side = make_side(name, pipe, target, slice_size=slice_size)
    base = {"check": name, "target": target.label, "rtol": rtol, "atol": atol}
    if not side.applicable:
        return Localization(verdict="not applicable", notes=(side.reason,), **base)
    notes = _training_note(pipe)
    trace = Trace(pipe)
    call = trace.prepare(call)
    timings: dict[str, float] = {}

    def finish(verdict: str, **fields: Any) -> Localization:
        fields["notes"] = tuple(fields.get("notes", ())) + notes
        return Localization(
            verdict=verdict, seconds=time.perf_counter() - started, timings=dict(timings), **base, **fields
        )

    # 1. the target run, recorded whole
    recording = Recording(_denoiser_name(pipe))
    clock = time.perf_counter()
    with trace.listening(recording):
        try:
            target_run = side.run_target(call)
        except Exception as exc:
            timings["target run"] = time.perf_counter() - clock
            return finish(
                "raised", first=_raised_at(trace, recording), error=f"{type(exc).__name__}: {_first(exc)}"
            )
    timings["target run"] = time.perf_counter() - clock

    # 2. the reference run, compared as it goes
    comparing = Comparing(recording, rtol=rtol, atol=atol, copy_module=side.reference_copy)
    reference_array = _reference_run(trace, side, call, comparing, timings)
    common: dict[str, Any] = {"calls_compared": comparing.compared}
    gradual = not comparing.stopped  # no call exceeds the threshold: the output alone may fail
    if gradual:
        assert reference_array is not None
        output_max_abs, failures = _judge_output(target_run.array, reference_array, tolerance)
        common["output_max_abs"] = output_max_abs
        if not failures:
            return finish("no divergence", **common)
        if comparing.largest() < _SHARE:
            first = CallDifference(
                "output", 0, None, "after denoising", "output", output_max_abs or math.inf, math.inf, math.inf
            )
            note = (
                f"the output fails the check ({failures[0]}) while every module call agrees: post-processing "
                "(pipeline code after the last module call)"
            )
            return finish("between calls", first=first, notes=(note,), **common)
    onset = comparing.onset()
    assert onset is not None
    first = comparing.call_difference(onset)
    if onset.part == "inputs" or onset.key[0] == "latents":
        return finish("between calls", first=first, **common)
    captured = comparing.captures.get(onset.key)
    if captured is None:  # an onset older than the calls kept: run the reference again up to it
        comparing = Comparing(
            recording, rtol=rtol, atol=atol, copy_module=side.reference_copy, stop_at=onset.key
        )
        _reference_run(trace, side, call, comparing, timings, "reference rerun")
        captured = comparing.captures[onset.key]

    # 3. the module search below that call
    clock = time.perf_counter()
    deadline = started + time_budget if time_budget is not None else None
    limits = Limits(max_expansions, max_depth, capture_bytes, deadline)
    with side.roots(component(pipe, first.where), captured.module) as (reference_root, target_root):
        search = Search(side, reference_root, target_root, first.where, rtol=rtol, atol=atol, limits=limits)
        found = search.run(
            _root_call(captured, recording),
            gradual=gradual or not first.ratio > 1,
            observed=_observed(first, component(pipe, first.where), captured.drew),
        )
    timings["search"] = time.perf_counter() - clock
    ranking = _ranking(found.culprits)
    culprit = found.first
    verdict = "gradual" if gradual else "module" if culprit is not None else "not reproduced"
    return finish(
        verdict,
        first=first,
        culprit=culprit,
        chain=tuple(found.chain) if culprit is not None else (),
        ranking=ranking,
        modules_examined=found.examined,
        capture_bytes=found.peak_bytes,
        notes=tuple(found.notes) + _shared_class_note(ranking),
        **common,
    )


def _observed(first: CallDifference, module: Any, drew: bool) -> ModuleError | None:
    """The onset call's difference as the two runs saw it, standing in for its replay: at the onset
    its inputs differ at most a tenth as much as its output (see ``Comparing.onset``)."""
    if first.part != "output" or not first.ratio > 1:
        return None
    return ModuleError(
        first.where,
        type(module).__name__,
        first.max_abs,
        first.relative,
        first.ratio,
        nonfinite=first.nonfinite,
        draws_random=drew,
    )


def _root_call(captured: Captured, recording: Recording) -> Call:
    """The search's starting call: a top-level call as the reference made it, with the dtypes the
    target run gave its inputs (a float16 replay casts exactly those)."""
    record = recording.records[captured.key]
    dtypes = [t.dtype for t in record.inputs]
    return Call(
        "", captured.args, captured.kwargs, captured.outputs, captured.rng, captured.drew, dtypes=dtypes
    )


def _reference_run(
    trace: Trace,
    side: Side,
    call: dict[str, Any],
    comparing: Comparing,
    timings: dict[str, float],
    label: str = "reference run",
) -> Any:
    """Run the reference side under ``comparing``; its output array, or None when it was stopped."""
    clock = time.perf_counter()
    with trace.listening(comparing):
        try:
            return side.run_reference(call).array
        except StopRun:
            return None
        finally:
            timings[label] = time.perf_counter() - clock


def _judge_output(target: Any, reference: Any, tolerance: Any) -> tuple[float | None, list[str]]:
    from pytest_mps.checks import judge

    comparison, failures = judge(target, reference, tolerance)
    if comparison is None or not math.isfinite(comparison.max_abs):
        return None, failures
    return comparison.max_abs, failures


def _ranking(culprits: list[ModuleError]) -> tuple[ModuleError, ...]:
    """Culprits, one per module (a module reached along two call paths counts once, at its worst),
    most error first; among equals, those drawing random numbers first."""
    worst: dict[str, ModuleError] = {}
    for figure in culprits:
        if figure.path not in worst or figure.ratio > worst[figure.path].ratio:
            worst[figure.path] = figure
    return tuple(sorted(worst.values(), key=lambda f: (-f.ratio, -float(f.draws_random), f.depth)))


def _denoiser_name(pipe: Any) -> str | None:
    for name in ("unet", "transformer", "prior", "decoder"):
        if getattr(pipe, name, None) is not None:
            return name
    return None


def _raised_at(trace: Trace, recording: Recording) -> CallDifference | None:
    now = trace.where_now()
    if now is None:
        return None
    key, step = now
    return CallDifference(key[0], key[1], step, recording.phase(key), "raised", math.inf, math.inf, math.inf)


def _training_note(pipe: Any) -> tuple[str, ...]:
    from pytest_mps.running import training_modules

    training = training_modules(pipe)
    if not training:
        return ()
    shown = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3 else "")
    return (
        f"modules in training mode: {shown}; dropout and label dropping draw from the device's RNG, whose "
        "stream differs from the CPU's on a real device: call .eval()",
    )


def _shared_class_note(ranking: tuple[ModuleError, ...]) -> tuple[str, ...]:
    classes = {m.module_class for m in ranking if m.differs}
    count = sum(1 for m in ranking if m.differs)
    if count >= 3 and len(classes) == 1:
        (shared,) = classes
        return (
            f"all {count} modules that introduce error are {shared}: suspect that class's kernels "
            "on the target",
        )
    return ()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
