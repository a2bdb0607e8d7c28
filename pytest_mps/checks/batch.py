"""Batch against single calls (the MPS guide: batched prompts can crash or give noise where iterating
works; diffusers #363, #1519, #941)."""

from __future__ import annotations

from typing import Any

from pytest_mps.checks.common import judge, new_result, run_check, tolerance_for, warn_if_training
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, call_inputs
from pytest_mps.inputs import split_batch
from pytest_mps.metrics import Comparison
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.run_cache import run_on_target
from pytest_mps.tolerances import Tolerance

__all__ = ["check_batch_consistency"]


def _batch(
    pipe: Any, ctx: CheckContext, *, inputs: Inputs, batch_size: int, tolerance: Tolerance
) -> CheckResult:
    batch = call_inputs(pipe, inputs, batch_size=batch_size)
    result = new_result(ctx, "batch", pipe, tolerance)
    batched = run_on_target(pipe, batch, ctx).run
    result.timings["batched"] = batched.seconds
    if batched.array.shape[:1] != (batch_size,):
        result.failures.append(
            f"batched call returned {batched.array.shape[:1]} items for a batch of {batch_size} (shape "
            f"{tuple(batched.array.shape)})"
        )
        return result
    worst: tuple[int, Comparison] | None = None
    reused = []
    for i, single_inputs in enumerate(split_batch(batch, batch_size)):
        # A single call with the inputs of an earlier check (item 0 of the default batch is the default
        # single call) is that check's run; the other items differ in prompt and seed, so run fresh.
        served = run_on_target(pipe, single_inputs, ctx)
        single = served.run
        if served.reused:
            reused.append(i)
        result.timings[f"single {i}"] = single.seconds
        comparison, failures = judge(
            batched.array[i : i + 1],
            single.array,
            tolerance,
            what=f"batch item {i}",
            against=f"single call {i}",
            item=i,
        )
        result.failures += failures
        if comparison is not None:
            result.comparisons[f"item {i}: batched vs single"] = comparison
            if worst is None or comparison.max_abs > worst[1].max_abs:
                worst = (i, comparison)
    result.details["reused_singles"] = reused
    if worst is not None:
        result.figure = worst[1].max_abs
        result.summary = f"worst item ({worst[0]}) max |diff| {format_figure(worst[1].max_abs)}"
    return result


def check_batch_consistency(
    pipe: Pipeline,
    inputs: Inputs = None,
    *,
    batch_size: int = 2,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Each item of a batched call equals the single call with that item's generator and prompt (the
    MPS guide: batched prompts can crash or give noise where iterating works). Single-item ``inputs``
    are expanded to ``batch_size`` items, item ``i`` seeded ``seed + i``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 to test batching, got {batch_size!r}")
    ctx = current_context(pipe)
    tolerance = tolerance_for(ctx, "batch", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    warn_if_training(pipe)
    return run_check("batch", _batch, pipe, ctx, inputs=inputs, batch_size=batch_size, tolerance=tolerance)
