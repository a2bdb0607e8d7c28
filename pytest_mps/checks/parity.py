"""Output parity with the CPU: the same weights, scheduler and inputs on the target and on the CPU
(:func:`check_cpu_parity`), and float16 on the target against float32 on the CPU
(:func:`check_float16_parity`)."""

from __future__ import annotations

from typing import Any

from pytest_mps.checks.common import (
    cpu_reference,
    judge,
    new_result,
    run_check,
    tolerance_for,
    warn_if_training,
)
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, call_inputs
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.run_cache import run_on_target
from pytest_mps.running import moved, noise_in_float32, run_pipeline
from pytest_mps.tolerances import Tolerance

__all__ = ["check_cpu_parity", "check_float16_parity"]


def _cpu_parity(pipe: Any, ctx: CheckContext, *, inputs: Inputs, tolerance: Tolerance) -> CheckResult:
    call = call_inputs(pipe, inputs)
    result = new_result(ctx, "cpu_parity", pipe, tolerance)
    served = run_on_target(pipe, call, ctx)
    target_run = served.run
    reference, origin = cpu_reference(pipe, call, ctx=ctx, check="cpu_parity")
    comparison, failures = judge(
        target_run.array,
        reference.array,
        tolerance,
        target_dtype=target_run.dtype,
        reference_dtype=reference.dtype,
    )
    result.failures += failures
    result.timings = {"target": target_run.seconds, "cpu": reference.seconds}
    result.details["reference"] = origin
    result.details["target_run"] = "reused" if served.reused else "fresh"
    result.images = {"cpu": reference.array, "target": target_run.array}
    if comparison is not None:
        result.comparisons["target vs cpu"] = comparison
        result.figure = comparison.max_abs
        result.summary = (
            f"max |diff| {format_figure(comparison.max_abs)}, cos {format_figure(comparison.cosine_distance)}"
        )
    return result


def check_cpu_parity(
    pipe: Pipeline,
    inputs: Inputs = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    max_cosine_distance: float | None = None,
    min_psnr: float | None = None,
    max_rms: float | None = None,
    max_pixel_fraction: float | None = None,
) -> CheckResult:
    """The target's output equals the CPU's for the same weights, scheduler and inputs.

    Non-finite values and shape or dtype mismatches fail first and by name ("target output contains
    NaN ...: black image"); then max/mean absolute difference, RMS on the 0-255 scale, Diffusers'
    cosine distance, PSNR and the share of pixels off by more than one level are reported, and those
    with a threshold are judged. The CPU reference is computed once per session for the same pipeline
    state and inputs. Guards against silent kernel bugs (diffusers #1398, pytorch #133520): Diffusers'
    own ``test_to_device`` checks MPS output for NaN only.
    """
    ctx = current_context(pipe)
    tolerance = tolerance_for(
        ctx,
        "cpu_parity",
        {
            "atol": atol,
            "rtol": rtol,
            "max_cosine_distance": max_cosine_distance,
            "min_psnr": min_psnr,
            "max_rms": max_rms,
            "max_pixel_fraction": max_pixel_fraction,
        },
    )
    warn_if_training(pipe)
    return run_check("cpu_parity", _cpu_parity, pipe, ctx, inputs=inputs, tolerance=tolerance)


def _float16(pipe: Any, ctx: CheckContext, *, inputs: Inputs, tolerance: Tolerance) -> CheckResult:
    import torch

    call = call_inputs(pipe, inputs)
    result = new_result(ctx, "float16", pipe, tolerance)
    reference, origin = cpu_reference(pipe, call, dtype=torch.float32, ctx=ctx, check="float16")
    with moved(pipe, dtype=torch.float16), noise_in_float32():
        half = run_pipeline(pipe, call, ctx.target)
    comparison, failures = judge(
        half.array, reference.array, tolerance, what="float16 target", against="float32 CPU"
    )
    result.failures += failures
    result.timings = {"float16 target": half.seconds, "float32 cpu": reference.seconds}
    result.details["reference"] = origin
    result.images = {"cpu": reference.array, "target": half.array}
    if comparison is not None:
        result.comparisons["float16 target vs float32 cpu"] = comparison
        result.figure = comparison.cosine_distance
        result.figure_text = f"cos {format_figure(comparison.cosine_distance)}"
        result.summary = result.figure_text + f", max |diff| {format_figure(comparison.max_abs)}"
    return result


def check_float16_parity(
    pipe: Pipeline,
    inputs: Inputs = None,
    *,
    max_cosine_distance: float | None = None,
    atol: float | None = None,
) -> CheckResult:
    """float16 on the target is finite and within a cosine distance of 5e-2 (Diffusers' float16
    threshold) of float32 on the CPU; on real MPS also within ``atol`` 0.1 (on a stand-in, float16
    arithmetic is not Metal's, so the absolute limit is reported but not judged). The pipeline's
    weights are restored exactly afterwards. Guards against float16 NaN and black images (diffusers
    #2521, #4480, #7426)."""
    ctx = current_context(pipe)
    tolerance = tolerance_for(ctx, "float16", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    warn_if_training(pipe)
    return run_check("float16", _float16, pipe, ctx, inputs=inputs, tolerance=tolerance)
