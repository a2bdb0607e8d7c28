"""Repeated runs with equal generators agree on the target (first-pass drift without warm-up on torch
1.13: diffusers #372, #1630, #3037)."""

from __future__ import annotations

from typing import Any

from pytest_mps.checks.common import judge, new_result, run_check, tolerance_for, warn_if_training
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, call_inputs
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.run_cache import fresh_on_target, run_on_target
from pytest_mps.tolerances import Tolerance

__all__ = ["check_deterministic"]


def _determinism(
    pipe: Any, ctx: CheckContext, *, inputs: Inputs, runs: int, tolerance: Tolerance
) -> CheckResult:
    call = call_inputs(pipe, inputs)
    result = new_result(ctx, "determinism", pipe, tolerance)
    # Run 0 is the session's first run with these inputs when an earlier check made one (it IS the first
    # call, so first-pass drift shows); every later run is fresh. Run k draws the global RNG from seed k,
    # so a module that draws unseeded noise (on any device's global RNG) differs between runs.
    first = run_on_target(pipe, call, ctx, global_seed=0)
    outputs = [first.run] + [fresh_on_target(pipe, call, ctx, global_seed=k) for k in range(1, runs)]
    result.timings = {f"run {i}": r.seconds for i, r in enumerate(outputs)}
    result.details["first_run"] = "reused" if first.reused else "fresh"
    drifted = False
    for k in range(1, runs):
        comparison, failures = judge(
            outputs[k].array, outputs[0].array, tolerance, what=f"run {k}", against="run 0"
        )
        if comparison is not None:
            result.comparisons[f"run {k} vs run 0"] = comparison
        if failures:
            drifted = True
            result.failures += failures
    if drifted and runs >= 3:
        _, later = judge(outputs[2].array, outputs[1].array, tolerance, what="run 2", against="run 1")
        if not later:
            result.failures.insert(
                0,
                "the first run differs from later runs, which agree with each other: first-pass drift "
                "(diffusers #372; torch 1.13 needs a 1-step warm-up: mps_pipeline(..., warmup='on'))",
            )
    worst = max(result.comparisons.values(), key=lambda c: c.max_abs, default=None)
    if worst is not None:
        result.figure = worst.max_abs
        result.summary = f"{runs} runs, max |diff| {format_figure(worst.max_abs)}"
    return result


def check_deterministic(
    pipe: Pipeline,
    inputs: Inputs = None,
    *,
    runs: int = 2,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Repeated runs with equal generators agree on the target. The first run is compared with each
    later one, so first-pass drift (torch 1.13 without warm-up, diffusers #372) is named as such."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
        raise ValueError(f"runs must be at least 2, got {runs!r}")
    ctx = current_context(pipe)
    tolerance = tolerance_for(ctx, "determinism", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    warn_if_training(pipe)
    return run_check("determinism", _determinism, pipe, ctx, inputs=inputs, runs=runs, tolerance=tolerance)
