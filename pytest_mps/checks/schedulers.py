"""Every compatible scheduler on the target (float64 timesteps are the most recurrent MPS regression in
Diffusers' tracker: #1169, #2241, #6365, #10549)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pytest_mps.checks.common import (
    cpu_reference,
    first_line,
    judge,
    new_result,
    run_check,
    tolerance_for,
    warn_if_training,
)
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, call_inputs
from pytest_mps.metrics import defects
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.run_cache import run_on_target
from pytest_mps.tolerances import Tolerance
from pytest_mps.verdict import Status

__all__ = ["check_schedulers_compatible", "scheduler_classes"]

_CPU_TOO = "fails on the CPU too"


def scheduler_classes(pipe: Any, schedulers: str | Iterable[Any]) -> list[Any]:
    """The scheduler classes to sweep: ``"compatible"`` (``pipe.scheduler.compatibles`` and its own),
    or classes or their names (an unknown name is a ``ValueError`` listing the compatible ones)."""
    import diffusers

    if schedulers == "compatible":
        classes = list(pipe.scheduler.compatibles)
        if type(pipe.scheduler) not in classes:
            classes.append(type(pipe.scheduler))
        return sorted(classes, key=lambda c: c.__name__)
    out = []
    for item in [schedulers] if isinstance(schedulers, str) else schedulers:
        if isinstance(item, str):
            cls = getattr(diffusers, item, None)
            if cls is None or not hasattr(cls, "from_config"):
                known = ", ".join(sorted(c.__name__ for c in pipe.scheduler.compatibles))
                raise ValueError(f"unknown scheduler {item!r}; compatible with this pipeline: {known}")
            out.append(cls)
        else:
            out.append(item)
    return out


def _one(
    pipe: Any,
    call: dict[str, Any],
    ctx: CheckContext,
    tolerance: Tolerance,
    result: CheckResult,
    name: str,
    *,
    parity: bool,
    audit: bool,
) -> tuple[list[str], str]:
    """Problems of one scheduler on the target, and its key figure."""
    problems: list[str] = []
    figure = ""
    try:
        run = run_on_target(pipe, call, ctx).run  # the pipeline's own scheduler: earlier checks' run
    except Exception as exc:
        raised = f"raised {type(exc).__name__}: {first_line(exc)}"
        try:
            cpu_reference(pipe, call, ctx=ctx, check="schedulers")
        except Exception as cpu_exc:  # the scheduler cannot run these inputs anywhere: not an MPS problem
            return [f"{_CPU_TOO} ({type(cpu_exc).__name__}: {first_line(cpu_exc)})"], ""
        return [raised], ""
    result.timings[name] = run.seconds
    defect = defects(run.array, "target")
    if defect:
        try:
            reference, _ = cpu_reference(pipe, call, ctx=ctx, check="schedulers")
        except Exception as exc:
            return [f"{_CPU_TOO} ({type(exc).__name__}: {first_line(exc)})"], ""
        if defects(reference.array, "CPU"):  # the same broken output on the CPU: not an MPS problem
            return [f"{_CPU_TOO} ({defect})"], ""
        problems.append(defect)
    elif parity:
        try:
            reference, _ = cpu_reference(pipe, call, ctx=ctx, check="schedulers")
        except Exception as exc:  # ran on the target, fails on the CPU: not an MPS problem
            return [f"{_CPU_TOO} ({type(exc).__name__}: {first_line(exc)})"], ""
        comparison, failures = judge(run.array, reference.array, tolerance)
        problems += failures
        if comparison is not None:
            figure = f" (max |diff| {format_figure(comparison.max_abs)})"
            result.details.setdefault("metrics", {})[name] = comparison.to_dict()
    if audit:
        from pytest_mps.emulated_target import audit_hazards

        try:
            problems += audit_hazards(pipe, call)
        except Exception as exc:
            problems.append(f"the emulated-MPS audit raised {type(exc).__name__}: {first_line(exc)}")
    return problems, figure


def _schedulers(
    pipe: Any,
    ctx: CheckContext,
    *,
    inputs: Inputs,
    classes: list[Any],
    parity: bool,
    audit: bool,
    tolerance: Tolerance,
) -> CheckResult:
    call = call_inputs(pipe, inputs)
    result = new_result(ctx, "schedulers", pipe, tolerance)
    original = pipe.scheduler
    outcomes: dict[str, str] = {}
    try:
        for cls in classes:
            name = cls.__name__
            try:
                pipe.scheduler = cls.from_config(original.config)
            except Exception as exc:  # a config this scheduler cannot take: not an MPS failure
                outcomes[name] = f"skipped: cannot be built from this config ({type(exc).__name__}: {exc})"
                continue
            problems, figure = _one(pipe, call, ctx, tolerance, result, name, parity=parity, audit=audit)
            if problems and problems[0].startswith(_CPU_TOO):
                outcomes[name] = f"cpu-too: {problems[0]}"
                continue
            outcomes[name] = ("passed" if not problems else "failed: " + "; ".join(problems)) + figure
            result.failures += [f"{name}: {p}" for p in problems]
    finally:
        pipe.scheduler = original
    result.details["schedulers"] = outcomes
    result.details["lines"] = [f"{n}: {o}" for n, o in outcomes.items()]
    failed = [n for n, o in outcomes.items() if o.startswith("failed")]
    tried = [n for n, o in outcomes.items() if o.startswith(("passed", "failed"))]
    cpu_too = [n for n, o in outcomes.items() if o.startswith("cpu-too")]
    result.figure = float(len(tried) - len(failed))
    result.figure_text = f"{len(tried) - len(failed)}/{len(tried)}"
    result.summary = (
        f"{len(tried) - len(failed)}/{len(tried)} schedulers pass"
        + (f" (failed: {', '.join(failed)})" if failed else "")
        + (f"; {len(cpu_too)} fail on the CPU too" if cpu_too else "")
    )
    if not tried:
        if cpu_too:  # nothing runs these inputs anywhere, the CPU included: not an MPS problem
            result.status = Status.CPU_TOO
            result.failures.append(
                f"every scheduler that could be built fails on the CPU too ({', '.join(cpu_too)})"
            )
        else:  # nothing was tested: that is not a pass
            result.failures.append(
                f"no scheduler could be tested: all {len(outcomes)} were skipped (see below); "
                "check the scheduler list and the inputs"
            )
    return result


def check_schedulers_compatible(
    pipe: Pipeline,
    inputs: Inputs = None,
    schedulers: str | Sequence[Any] = "compatible",
    *,
    parity: bool = True,
    audit: bool | None = None,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Run the pipeline with each scheduler (default: ``pipe.scheduler.compatibles``) on the target
    and report which fail and how: an exception (float64 timesteps raise ``TypeError`` on MPS), NaN,
    divergence from the CPU with the same scheduler, or, on a stand-in target, MPS hazards such as
    float64 found by the emulated-MPS audit. A scheduler that fails on the CPU too is not counted
    against MPS. The original scheduler is restored.

    Args:
        schedulers: ``"compatible"``, or scheduler classes or their names.
        parity: also compare each scheduler's output with the CPU's.
        audit: run the emulated-MPS hazard audit per scheduler; default: on for the cpu, cuda and
            xpu stand-ins (real and emulated MPS raise the errors themselves).
    """
    ctx = current_context(pipe)
    tolerance = tolerance_for(ctx, "schedulers", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    classes = scheduler_classes(pipe, schedulers)
    if audit is None:
        from pytest_mps.emulated_target import emulation_unavailable_reason

        # On real or emulated MPS the run itself raises MPS's errors; other stand-ins need the audit.
        audit = not ctx.target.is_mps_like and emulation_unavailable_reason() is None
    warn_if_training(pipe)
    return run_check(
        "schedulers",
        _schedulers,
        pipe,
        ctx,
        inputs=inputs,
        classes=classes,
        parity=parity,
        audit=audit,
        tolerance=tolerance,
    )
