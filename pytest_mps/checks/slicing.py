"""Attention slicing on against off, on the target (slicing has given NaN and black images on MPS:
diffusers #11229, #14438)."""

from __future__ import annotations

from typing import Any

from pytest_mps.checks.common import judge, new_result, run_check, tolerance_for, warn_if_training
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, call_inputs
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.run_cache import run_on_target
from pytest_mps.tolerances import Tolerance
from pytest_mps.verdict import Status

__all__ = ["check_attention_slicing_parity"]


def _attention_modules(pipe: Any) -> list[Any]:
    """Every submodule that carries an attention processor."""
    import torch

    return [
        m
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module)
        for m in c.modules()
        if "processor" in m.__dict__ or hasattr(type(m), "set_processor")
    ]


def _set_processor(module: Any, processor: Any) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def _not_applicable(result: CheckResult, why: str) -> CheckResult:
    result.status = Status.NOT_APPLICABLE
    result.summary = f"n/a: {why}"
    result.figure_text = "no sliceable attention"
    return result


def _slicing(
    pipe: Any, ctx: CheckContext, *, inputs: Inputs, slice_size: int | str, tolerance: Tolerance
) -> CheckResult:
    call = call_inputs(pipe, inputs)
    result = new_result(ctx, "attention_slicing", pipe, tolerance)
    modules = _attention_modules(pipe)
    if not modules:
        return _not_applicable(result, "no attention modules")
    saved = [getattr(m, "processor", None) for m in modules]
    try:
        # The unsliced run is the one earlier checks made with these inputs (with its memory figure).
        unsliced = run_on_target(pipe, call, ctx)
        plain, memory_off = unsliced.run, unsliced.memory_bytes
        pipe.enable_attention_slicing(slice_size)
        changed = sum(getattr(m, "processor", None) is not p for m, p in zip(modules, saved, strict=True))
        if not changed:
            # As on a Mac: the pipeline's components expose no set_attention_slice, so the call is a
            # no-op there too. Nothing to compare; say so rather than report a vacuous pass.
            return _not_applicable(result, "enable_attention_slicing() changes no attention processor here")
        sliced_run = run_on_target(pipe, call, ctx)
        sliced, memory_on = sliced_run.run, sliced_run.memory_bytes
    finally:
        for module, processor in zip(modules, saved, strict=True):
            if processor is not None and getattr(module, "processor", None) is not processor:
                _set_processor(module, processor)
    comparison, failures = judge(sliced.array, plain.array, tolerance, what="sliced", against="unsliced")
    result.failures += failures
    result.timings = {"unsliced": plain.seconds, "sliced": sliced.seconds}
    result.details.update(
        {
            "unsliced_run": "reused" if unsliced.reused else "fresh",
            "sliced_modules": changed,
            "slice_size": slice_size,
            "memory_bytes_unsliced": memory_off,
            "memory_bytes_sliced": memory_on,
        }
    )
    if comparison is not None:
        result.comparisons["sliced vs unsliced"] = comparison
        result.figure = comparison.max_abs
        result.summary = f"max |diff| {format_figure(comparison.max_abs)}"
        if memory_off is not None and memory_on is not None:
            result.summary += f", peak {memory_on / 2**20:.1f} vs {memory_off / 2**20:.1f} MiB"
    return result


def check_attention_slicing_parity(
    pipe: Pipeline,
    inputs: Inputs = None,
    *,
    slice_size: int | str = 1,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Output with attention slicing on equals output with it off, on the target (slicing has given
    NaN and black images on MPS: diffusers #11229, #14438). Reports the peak target memory of both
    where the backend keeps one; "not applicable" for a pipeline whose attention cannot be sliced.
    The pipeline's attention processors are restored afterwards."""
    ctx = current_context(pipe)
    tolerance = tolerance_for(
        ctx, "attention_slicing", {"atol": atol, "max_cosine_distance": max_cosine_distance}
    )
    warn_if_training(pipe)
    return run_check(
        "attention_slicing", _slicing, pipe, ctx, inputs=inputs, slice_size=slice_size, tolerance=tolerance
    )
