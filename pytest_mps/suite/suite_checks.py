"""The bundled suite's own checks (beside the public ones of :mod:`pytest_mps.checks`): inference on the
target, the emulated-MPS hazard audit and speed against the CPU. Each is declared in
:mod:`pytest_mps.registry` and has the same form as the public checks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from pytest_mps.checks.common import new_result, run_check
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, InputSpec, call_inputs
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure

__all__ = ["SPEED_BUDGET_S", "SPEED_REPEATS", "check_audit", "check_inference", "check_speed"]

#: Timed calls per device in the speed check, and the time after which it stops repeating.
SPEED_REPEATS = 3
SPEED_BUDGET_S = 10.0


def _inference(pipe: Any, ctx: CheckContext, *, inputs: Inputs) -> CheckResult:
    import numpy as np

    from pytest_mps.metrics import defects
    from pytest_mps.running import run_pipeline

    result = new_result(ctx, "inference", pipe)
    run = run_pipeline(pipe, call_inputs(pipe, inputs), ctx.target)
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


def _timed(call: Callable[[], float], *, warmup: bool) -> list[float]:
    if warmup:
        call()
    seconds: list[float] = []
    start = time.perf_counter()
    while len(seconds) < SPEED_REPEATS and (not seconds or time.perf_counter() - start < SPEED_BUDGET_S):
        seconds.append(call())
    return seconds


def _speed(pipe: Any, ctx: CheckContext, *, inputs: Inputs) -> CheckResult:
    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.running import moved, run_pipeline

    target = ctx.target
    result = new_result(ctx, "speed", pipe)
    if inputs is None or isinstance(inputs, InputSpec):
        spec = inputs or InputSpec()
        size = spec.height or _default_size(pipe)
        call = spec.build(pipe, height=size, width=size)
    else:
        call = call_inputs(pipe, inputs)
    on_target = _timed(lambda: run_pipeline(pipe, call, target).seconds, warmup=True)
    with cpu_arithmetic(), moved(pipe, "cpu"):
        on_cpu = _timed(lambda: run_pipeline(pipe, call).seconds, warmup=False)
    t_target, t_cpu = statistics.median(on_target), statistics.median(on_cpu)
    ratio = t_cpu / t_target if t_target > 0 else float("inf")
    result.timings = {"target": t_target, "cpu": t_cpu}
    result.figure = ratio
    result.figure_text = f"{ratio:.2f}x"
    result.details.update(
        {
            "speedup": ratio,
            "judged": target.is_real_mps,
            "size": call.get("height"),
            "steps": call.get("num_inference_steps"),
            "target_runs": on_target,
            "cpu_runs": on_cpu,
        }
    )
    at = f"{call['height']} px, " if call.get("height") else ""
    steps = call.get("num_inference_steps", "?")
    per_call = f"target {t_target:.3f}s vs CPU {t_cpu:.3f}s per call ({at}{steps} steps)"
    if not target.is_real_mps:
        result.summary = f"{ratio:.2f}x the CPU's speed, {per_call}; information only on a stand-in"
    elif ratio > 1.0:
        result.summary = f"{ratio:.2f}x faster than the CPU, {per_call}"
    else:
        result.failures.append(
            f"MPS is no faster than the CPU: {ratio:.2f}x, {per_call}; the badge promises faster inference "
            "(try a realistic size: --mps-size)"
        )
        result.summary = f"{ratio:.2f}x the CPU's speed: no faster"
    return result


def check_speed(pipe: Pipeline, inputs: Inputs = None) -> CheckResult:
    """The target is faster than the CPU on the same inputs (median of up to 3 warmed, synchronised
    calls each; judged on real MPS only, information on a stand-in). With an :class:`InputSpec`
    without a size, the pipeline's own default size is timed."""
    ctx = current_context(pipe)
    return run_check("speed", _speed, pipe, ctx, inputs=inputs)
