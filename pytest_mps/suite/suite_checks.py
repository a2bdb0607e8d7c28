"""The bundled suite's own checks (beside the public ones of :mod:`pytest_mps.checks`): inference on the
target, the emulated-MPS hazard audit and speed against the CPU. Each is declared in
:mod:`pytest_mps.registry` and has the same form as the public checks."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_mps.checks.common import CALL_RAISED, new_result, run_check
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, InputSpec, call_inputs
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure

__all__ = [
    "COLD_CPU_MIN_S",
    "PROBE_BUDGET_S",
    "PROBE_STEPS",
    "SHORT_CALL_S",
    "SPEED_REPEATS",
    "check_audit",
    "check_inference",
    "check_speed",
]

#: Calls per device the speed check times itself (at most), and the time after which it stops repeating
#: a probe.
SPEED_REPEATS = 3
PROBE_BUDGET_S = 1.0
#: Denoising steps of the speed probe (when the session has no timing of the full call to reuse).
PROBE_STEPS = 1
#: A CPU reference computed cold (the CPU's first call of its size) is used as a timing from this long:
#: its one-time costs are then a few per cent of it.
COLD_CPU_MIN_S = 1.0
#: Calls shorter than this are timed :data:`SPEED_REPEATS` times (a single short call is noisy).
SHORT_CALL_S = 0.25


def _inference(pipe: Any, ctx: CheckContext, *, inputs: Inputs) -> CheckResult:
    import numpy as np

    from pytest_mps.metrics import defects
    from pytest_mps.run_cache import run_on_target

    result = new_result(ctx, "inference", pipe)
    run = run_on_target(pipe, call_inputs(pipe, inputs), ctx).run
    array = run.array
    result.timings["target"] = run.seconds
    problem = defects(array, "target")
    if problem is None:
        low, high = float(array.min()), float(array.max())
        std = float(np.std(array.astype(np.float64)))
        result.details.update({"shape": list(array.shape), "min": low, "max": high, "std": std})
        result.figure = std
        result.figure_text = f"std {format_figure(std)}"
        if low == high:
            problem = f"target output is constant (every value {low:.6g}): a blank image, not an image"
            result.figure_text = "constant"
        else:
            result.summary = (
                f"shape {tuple(array.shape)}, range [{format_figure(low)}, {format_figure(high)}], "
                f"std {format_figure(std)}, {run.seconds:.3f}s"
            )
    else:
        result.figure_text = "NaN" if "NaN" in problem else ""
    if problem:
        result.failures.append(problem)
    return result


def check_inference(pipe: Pipeline, inputs: Inputs = None) -> CheckResult:
    """A call on the target gives finite output that is not constant."""
    ctx = current_context(pipe)
    return run_check("inference", _inference, pipe, ctx, inputs=inputs)


def _audit(pipe: Any, ctx: CheckContext, *, inputs: Inputs) -> CheckResult:
    from pytest_mps.hazard_audit import audit

    result = new_result(ctx, "audit", pipe)
    report = audit(pipe, call_inputs(pipe, inputs))
    bad = report.with_severity("abort", "error")
    counts = {s: len(report.with_severity(s)) for s in ("abort", "error", "fallback", "warning")}
    result.failures += [f"[{f.severity}] {f.message}" for f in bad]
    if bad and all(f.kind == "exception" for f in bad):
        # Only the call's own exception, no MPS rule broken before it: run_check asks the CPU.
        result.details[CALL_RAISED] = True
    if not report.completed and not bad:
        result.failures.append(f"the audited run stopped: {report.stopped_by}")
    result.details.update(
        {"counts": counts, "audit": report.to_dict(), "lines": report.format().splitlines()}
    )
    result.timings["audit"] = report.seconds
    result.figure = float(len(bad))
    result.figure_text = f"{len(bad)} hazards"
    others = counts["fallback"] + counts["warning"]
    result.summary = (
        f"{len(bad)} hazard(s) that abort or raise on MPS"
        if bad
        else "no hazard that aborts or raises on MPS"
    ) + (f"; {others} fallback/portability note(s)" if others else "")
    return result


def check_audit(pipe: Pipeline, inputs: Inputs = None) -> CheckResult:
    """The emulated-MPS hazard audit finds nothing that aborts or raises (see :func:`pytest_mps.audit`)."""
    ctx = current_context(pipe)
    return run_check("audit", _audit, pipe, ctx, inputs=inputs)


def _default_size(pipe: Any) -> int | None:
    """The pipeline's own default output side (denoiser sample size times the VAE factor)."""
    from pytest_mps.inputs import _denoiser, _vae_scale_factor

    sample = getattr(getattr(_denoiser(pipe), "config", None), "sample_size", None)
    if isinstance(sample, list | tuple):
        sample = max(sample)
    return sample * _vae_scale_factor(pipe) if isinstance(sample, int) else None


def _median_while(call: Callable[[], float], budget_s: float, *, repeats: int = SPEED_REPEATS) -> list[float]:
    """Time ``call`` up to ``repeats`` times, stopping once ``budget_s`` is spent (at least once)."""
    seconds: list[float] = []
    start = time.perf_counter()
    while len(seconds) < repeats and (not seconds or time.perf_counter() - start < budget_s):
        seconds.append(call())
    return seconds


def _probe_call(call: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The probe: the same call with :data:`PROBE_STEPS` denoising steps (the call itself when it
    takes no step count or has no more steps than that); and the probe's step count."""
    steps = call.get("num_inference_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= PROBE_STEPS:
        return call, steps if isinstance(steps, int) else None
    return {**call, "num_inference_steps": PROBE_STEPS}, PROBE_STEPS


def _small(pipe: Any, call: dict[str, Any]) -> dict[str, Any]:
    """``call`` at the pipeline's smallest valid size (a cheap CPU warm-up)."""
    from pytest_mps.inputs import smallest_size

    side = smallest_size(pipe)
    if side is None or "height" not in call:
        return call
    return {**call, "height": side, "width": side}


@dataclass
class _Timed:
    """The per-call times the speed check judges by, and how they were obtained."""

    target: float
    cpu: float
    timing: str  # session (calls made by earlier checks), measured (some timed now), probe
    target_runs: list[float]
    cpu_runs: list[float]
    probe_steps: int | None = None
    estimate: str = ""
    how: str = ""

    @property
    def estimated(self) -> bool:
        return bool(self.estimate)


def _probe(pipe: Any, ctx: CheckContext, call: dict[str, Any], warm_target: list[float]) -> _Timed:
    """Time a short call (:data:`PROBE_STEPS` steps) on both devices, each warmed up and synchronised,
    and extrapolate to the full call."""
    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.run_cache import device_label, fresh_on_target, runs_of
    from pytest_mps.running import moved, run_pipeline

    runs = runs_of(ctx)
    probe, probe_steps = _probe_call(call)
    if not runs.is_warm(pipe, device_label(pipe), probe):
        fresh_on_target(pipe, probe, ctx, global_seed=0)
    on_target = _median_while(
        lambda: fresh_on_target(pipe, probe, ctx, global_seed=0).seconds, PROBE_BUDGET_S
    )
    with cpu_arithmetic(), moved(pipe, "cpu"):
        if not runs.is_warm(pipe, "cpu", probe):
            # At the smallest size: the CPU's one-time costs, not a second full-size call. A courtesy:
            # when it fails, the timed call below says what fails.
            with contextlib.suppress(Exception):
                run_pipeline(pipe, _small(pipe, probe))
        on_cpu = _median_while(lambda: run_pipeline(pipe, probe).seconds, PROBE_BUDGET_S)
        runs.mark_warm(pipe, "cpu", probe)
    t_target, t_cpu = statistics.median(on_target), statistics.median(on_cpu)
    steps = call.get("num_inference_steps")
    if probe is call:  # no step count to shorten: the probe was the full call
        return _Timed(t_target, t_cpu, "measured", on_target, on_cpu, how="both times: timed now")
    ratio = t_cpu / t_target if t_target > 0 else float("inf")
    if warm_target:
        full = statistics.median(warm_target)
        return _Timed(
            full,
            ratio * full,
            "probe",
            on_target,
            on_cpu,
            probe_steps,
            f"CPU time = this session's target call x the {probe_steps}-step probe's CPU/target ratio",
        )
    factor = steps / probe_steps
    return _Timed(
        t_target * factor,
        t_cpu * factor,
        "probe",
        on_target,
        on_cpu,
        probe_steps,
        f"both = the {probe_steps}-step probe x {factor:g} (fixed costs such as decoding counted per step)",
    )


def _cpu_call_times(pipe: Any, call: dict[str, Any], *, repeats: int = SPEED_REPEATS) -> list[float]:
    """Time the full call on the CPU (it has run there: warm), up to ``repeats`` times within
    :data:`PROBE_BUDGET_S`."""
    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.running import moved, run_pipeline

    with cpu_arithmetic(), moved(pipe, "cpu"):
        return _median_while(lambda: run_pipeline(pipe, call).seconds, PROBE_BUDGET_S, repeats=repeats)


def _top_up(times: list[float], call: Callable[[], float]) -> bool:
    """Add timings to ``times`` while there are fewer than :data:`SPEED_REPEATS` and the call is short
    (median under :data:`SHORT_CALL_S`): cheap, and a single short call is noisy. True if any was
    added."""
    added = False
    while len(times) < SPEED_REPEATS and statistics.median(times) < SHORT_CALL_S:
        times.append(call())
        added = True
    return added


def _timings(pipe: Any, ctx: CheckContext, call: dict[str, Any]) -> _Timed:
    """The target's and the CPU's time per call: from calls this session already made when it has them
    (warm target calls; a CPU reference computed here), else from a short probe."""
    from pytest_mps.run_cache import device_label, fresh_on_target, runs_of, session_timings

    on_target, on_cpu = session_timings(pipe, call, ctx)
    warm_target = [t.seconds for t in on_target if t.warm]
    # A cold CPU reference (the CPU's first call of its size) carries one-time costs: from
    # COLD_CPU_MIN_S they are a few per cent of it and it is used; a shorter one is timed again, warm,
    # which costs less than a second. Without any (a stored reference: timed on another machine, or
    # another size), the probe.
    cpu = [t.seconds for t in on_cpu if t.warm or t.seconds >= COLD_CPU_MIN_S]
    cpu_source = "this session's CPU reference"
    if not cpu and on_cpu:
        cpu, cpu_source = _cpu_call_times(pipe, call), "timed now"
    if not cpu:
        return _probe(pipe, ctx, call, warm_target)
    target_source = "this session's calls"
    if not warm_target:
        if not runs_of(ctx).is_warm(pipe, device_label(pipe), call):
            fresh_on_target(pipe, call, ctx, global_seed=0)
        warm_target = [fresh_on_target(pipe, call, ctx, global_seed=0).seconds]
        target_source = "timed now"
    # Short calls are noisy and cheap: time a few more, so each figure is a median of SPEED_REPEATS.
    if _top_up(warm_target, lambda: fresh_on_target(pipe, call, ctx, global_seed=0).seconds):
        target_source += " and timed again now"
    if _top_up(cpu, lambda: _cpu_call_times(pipe, call, repeats=1)[0]):
        cpu_source += " and timed again now"
    return _Timed(
        statistics.median(warm_target),
        statistics.median(cpu),
        "measured" if "timed" in target_source + cpu_source else "session",
        warm_target,
        cpu,
        how=f"target time: {target_source}; CPU time: {cpu_source}",
    )


def _speed(pipe: Any, ctx: CheckContext, *, inputs: Inputs) -> CheckResult:
    target = ctx.target
    result = new_result(ctx, "speed", pipe)
    if inputs is None or isinstance(inputs, InputSpec):
        spec = inputs or InputSpec()
        size = spec.height or _default_size(pipe)
        call = spec.build(pipe, height=size, width=size)
    else:
        call = call_inputs(pipe, inputs)
    timed = _timings(pipe, ctx, call)
    t_target, t_cpu = timed.target, timed.cpu
    ratio = t_cpu / t_target if t_target > 0 else float("inf")
    result.timings = {"target": t_target, "cpu": t_cpu}
    result.figure = ratio
    result.figure_text = f"{ratio:.2f}x" + (" (probe)" if timed.estimated else "")
    how = (
        f"estimated from a {timed.probe_steps}-step probe on both devices: {timed.estimate}"
        if timed.estimated
        else timed.how
    )
    result.details.update(
        {
            "speedup": ratio,
            "judged": target.is_real_mps,
            "size": call.get("height"),
            "steps": call.get("num_inference_steps"),
            "timing": timed.timing,
            "estimated": timed.estimated,
            "how": how,
            "probe_steps": timed.probe_steps,
            "target_runs": timed.target_runs,
            "cpu_runs": timed.cpu_runs,
        }
    )
    at = f"{call['height']} px, " if call.get("height") else ""
    steps = call.get("num_inference_steps", "?")
    about = "~" if timed.estimated else ""
    per_call = f"target {about}{t_target:.3f}s vs CPU {about}{t_cpu:.3f}s per call ({at}{steps} steps)"
    label = f" (estimated from a {timed.probe_steps}-step probe)" if timed.estimated else ""
    result.details["lines"] = [f"timing: {how}"]
    if not target.is_real_mps:
        result.summary = f"{ratio:.2f}x the CPU's speed{label}, {per_call}; information only on a stand-in"
    elif ratio > 1.0:
        result.summary = f"{ratio:.2f}x faster than the CPU{label}, {per_call}"
    else:
        result.failures.append(
            f"MPS is no faster than the CPU: {ratio:.2f}x{label}, {per_call}; the badge promises faster "
            "inference (try a realistic size: --mps-size)"
        )
        result.summary = f"{ratio:.2f}x the CPU's speed{label}: no faster"
    return result


def check_speed(pipe: Pipeline, inputs: Inputs = None) -> CheckResult:
    """The target is faster than the CPU on the same inputs (judged on real MPS only, information on a
    stand-in). With an :class:`InputSpec` without a size, the pipeline's own default size is timed.

    The times are those of calls the session already made when it has them (warm, synchronised target
    calls; the CPU reference when it was computed in this session, on this machine); otherwise a short
    probe (:data:`PROBE_STEPS` steps on both devices, warmed up and synchronised) is timed and
    extrapolated to the full call, and the summary and details say so. A CPU reference loaded from a
    stored file is never used for timing (it was timed on another machine), and no full CPU call is
    made for it."""
    ctx = current_context(pipe)
    return run_check("speed", _speed, pipe, ctx, inputs=inputs)
