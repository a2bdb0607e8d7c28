"""The checks behind an MPS badge verdict. Each maps to a failure class in the Diffusers MPS guide:

- :func:`assert_cpu_parity`: silent kernel bugs (diffusers #1398, pytorch #133520) - nobody else
  compares MPS output with CPU output (Diffusers' ``test_to_device`` checks for NaN only);
- :func:`assert_batch_consistency`: batched prompts give noise where iterating works (#363, #1519);
- :func:`assert_attention_slicing_parity`: slicing gave NaN/black images (#11229, #14438);
- :func:`assert_deterministic`: first-pass drift without warm-up on torch 1.13 (#372, #3037);
- :func:`assert_float16_parity`: float16 NaN, noise and black images (#2521, #4480, #7426);
- :func:`assert_schedulers_compatible`: float64 timesteps in schedulers (#1169, #2241, #6365, #10549).

Every check takes a pipeline already on the target, optional inputs (default:
:func:`pytest_mps.default_inputs`) and tolerances; it returns a :class:`~pytest_mps.results.CheckResult`
and raises ``AssertionError`` with a readable report when it fails.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pytest_mps.context import CheckContext, current_context
from pytest_mps.inputs import default_inputs, fresh_inputs, split_batch
from pytest_mps.metrics import Comparison, compare, defects
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.running import Run, moved, noise_in_float32, run_pipeline, training_modules
from pytest_mps.tolerances import Tolerance, resolve_tolerance
from pytest_mps.warnings import TrainingModeWarning

if TYPE_CHECKING:
    import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "assert_attention_slicing_parity",
    "assert_batch_consistency",
    "assert_cpu_parity",
    "assert_deterministic",
    "assert_float16_parity",
    "assert_schedulers_compatible",
    "cpu_reference",
]


# --- shared machinery --------------------------------------------------------------------------


def _tolerance(ctx: CheckContext, check: str, arguments: dict[str, float | None]) -> Tolerance:
    return resolve_tolerance(check, arguments=arguments, marker=ctx.marker_tolerance, ini=ctx.ini_tolerance)


def _warn_if_training(pipe: Any) -> None:
    training = training_modules(pipe)
    if training:
        shown = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3 else "")
        warnings.warn(
            TrainingModeWarning(
                f"modules in training mode: {shown}. Dropout and label dropping draw from the device RNG, "
                "so target and CPU outputs diverge for reasons unrelated to the device: call .eval() "
                "(the mps_pipeline fixture does)"
            ),
            stacklevel=3,
        )


def _new_result(ctx: CheckContext, check: str, pipe: Any, tolerance: Tolerance | None) -> CheckResult:
    return CheckResult(
        check=check,
        passed=True,
        target=ctx.target.label,
        real_mps=ctx.target.is_real_mps,
        pipeline=type(pipe).__name__,
        tolerance=tolerance,
        nodeid=ctx.nodeid,
    )


def _finish(ctx: CheckContext, result: CheckResult) -> CheckResult:
    __tracebackhide__ = True
    result.passed = not result.failures
    if ctx.record is not None:
        ctx.record(result)
    if not result.passed:
        raise AssertionError(result.report())
    return result


def judge(
    target: np.ndarray,
    reference: np.ndarray,
    tolerance: Tolerance,
    *,
    what: str = "target",
    against: str = "CPU reference",
    target_dtype: str | None = None,
    reference_dtype: str | None = None,
) -> tuple[Comparison | None, list[str]]:
    """Compare two outputs: non-finite values, emptiness and shape/dtype mismatches fail first and by
    name; then each figure is held against its threshold. Returns the comparison and the failures."""
    import numpy as np

    failures = [d for d in (defects(target, what), defects(reference, against)) if d]
    if failures:
        return None, failures
    if target.shape != reference.shape:
        return None, [f"shape mismatch: {what} {tuple(target.shape)} vs {against} {tuple(reference.shape)}"]
    if target_dtype and reference_dtype and target_dtype != reference_dtype:
        return None, [f"dtype mismatch: {what} {target_dtype} vs {against} {reference_dtype}"]
    comparison = compare(target, reference)
    if tolerance.atol is not None:
        allowed = tolerance.atol + tolerance.rtol * np.abs(reference.astype(np.float64))
        outside = int(np.sum(np.abs(target.astype(np.float64) - reference) > allowed))
        if outside:
            limit = f"atol {format_figure(tolerance.atol)}"
            if tolerance.rtol:
                limit += f" + rtol {format_figure(tolerance.rtol)} x |reference|"
            failures.append(
                f"max |diff| {format_figure(comparison.max_abs)} exceeds {limit}: {outside} of "
                f"{target.size} values outside, worst at {comparison.where()} "
                f"({what} {comparison.worst_target:.6g} vs {against} {comparison.worst_reference:.6g})"
            )
    checks = (
        ("cosine distance", comparison.cosine_distance, tolerance.max_cosine_distance, "<="),
        ("PSNR", comparison.psnr, tolerance.min_psnr, ">="),
        ("RMS (0-255)", comparison.rms_255, tolerance.max_rms, "<="),
        ("share of pixels off by >1 level", comparison.pixel_fraction, tolerance.max_pixel_fraction, "<="),
    )
    for label, value, limit, sense in checks:
        if limit is None:
            continue
        bad = value > limit if sense == "<=" else value < limit
        if bad:
            failures.append(
                f"{label} {format_figure(value)} is outside the limit {sense} {format_figure(limit)}"
            )
    return comparison, failures


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def cpu_reference(
    pipe: Any, inputs: dict[str, Any], *, dtype: Any = None, ctx: CheckContext | None = None
) -> tuple[Run, str]:
    """The pipeline's output on the CPU for ``inputs`` (optionally in ``dtype``), computed once per
    session for the same weights, configs, scheduler and inputs. Returns the run and its origin
    (``memory``, ``disk`` or ``computed``)."""
    from pytest_mps.keys import inputs_fingerprint, pipeline_fingerprint, session_fingerprint
    from pytest_mps.references import ReferenceKey, shared_cache

    ctx = ctx or current_context(pipe)
    cache = ctx.references or shared_cache()
    first = next((p for c in pipe.components.values() for p in getattr(c, "parameters", list)()), None)
    run_dtype = dtype or (first.dtype if first is not None else None)
    # A stored reference needs a content key (weights hashed, once per state); a session-only cache
    # does with an identity key that reads no weights.
    key = ReferenceKey(
        pipeline=pipeline_fingerprint(pipe) if cache.store is not None else session_fingerprint(pipe),
        inputs=inputs_fingerprint(inputs),
        dtype=_dtype_name(run_dtype),
        output_type=str(inputs.get("output_type", "default")),
    )

    convert = dtype if dtype is not None and first is not None and first.dtype != dtype else None

    def compute() -> Run:
        from pytest_mps.emulated_target import cpu_arithmetic

        with moved(pipe, "cpu", convert), cpu_arithmetic():
            return run_pipeline(pipe, inputs)

    return cache.get_or_compute(key, compute)


def _inputs(pipe: Any, inputs: dict[str, Any] | None, **defaults: Any) -> dict[str, Any]:
    return fresh_inputs(inputs) if inputs is not None else default_inputs(pipe, **defaults)


def _records_errors(check: str) -> Callable[[F], F]:
    """A check that raises (an MPS ``TypeError`` for float64, ``NotImplementedError`` for a missing
    kernel, an emulated Metal abort...) still leaves a failed result in the session table and the
    reports; the exception itself propagates unchanged, as on a Mac."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            try:
                return function(pipe, *args, **kwargs)
            except (AssertionError, ValueError):
                raise  # a failed check (already recorded) or a usage error
            except Exception as exc:
                ctx = current_context(pipe)
                result = _new_result(ctx, check, pipe, None)
                result.failures.append(f"raised {type(exc).__name__}: {_first_line(exc)}")
                result.summary = result.failures[0]
                result.passed = False
                if ctx.record is not None:
                    ctx.record(result)
                raise

        return cast(F, wrapper)

    return decorate


# --- the checks ----------------------------------------------------------------------------------


@_records_errors("cpu_parity")
def assert_cpu_parity(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
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
    state and inputs.
    """
    __tracebackhide__ = True
    ctx = current_context(pipe)
    tolerance = _tolerance(
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
    _warn_if_training(pipe)
    call = _inputs(pipe, inputs)
    result = _new_result(ctx, "cpu_parity", pipe, tolerance)
    target_run = run_pipeline(pipe, call, ctx.target)
    reference, origin = cpu_reference(pipe, call, ctx=ctx)
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
    result.images = {"cpu": reference.array, "target": target_run.array}
    if comparison is not None:
        result.comparisons["target vs cpu"] = comparison
        result.summary = (
            f"max |diff| {format_figure(comparison.max_abs)}, cos {format_figure(comparison.cosine_distance)}"
        )
    else:
        result.summary = failures[0]
    return _finish(ctx, result)


def _batched(pipe: Any, inputs: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Turn single-item inputs into a batch of ``batch_size`` (one generator per item)."""
    import torch

    out = fresh_inputs(inputs)
    for key in ("prompt", "negative_prompt", "class_labels", "image", "mask_image"):
        value = out.get(key)
        if value is not None and not isinstance(value, list):
            out[key] = [value] * batch_size
        elif isinstance(value, list) and len(value) == 1:  # DiT's one-item class_labels
            out[key] = value * batch_size
    if "batch_size" in out:
        out["batch_size"] = batch_size
    generator = out.get("generator")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, torch.Generator):
        seed = generator.initial_seed()
        out["generator"] = [
            torch.Generator(generator.device).manual_seed(seed + i) for i in range(batch_size)
        ]
    return out


@_records_errors("batch_consistency")
def assert_batch_consistency(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
    *,
    batch_size: int = 2,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Each item of a batched call equals the single call with that item's generator and prompt (the
    MPS guide: batched prompts can crash or give noise where iterating works)."""
    __tracebackhide__ = True
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 to test batching, got {batch_size}")
    ctx = current_context(pipe)
    tolerance = _tolerance(
        ctx, "batch_consistency", {"atol": atol, "max_cosine_distance": max_cosine_distance}
    )
    _warn_if_training(pipe)
    batch = (
        _batched(pipe, inputs, batch_size)
        if inputs is not None
        else default_inputs(pipe, batch_size=batch_size)
    )
    result = _new_result(ctx, "batch_consistency", pipe, tolerance)
    batched = run_pipeline(pipe, batch, ctx.target)
    result.timings["batched"] = batched.seconds
    if batched.array.shape[:1] != (batch_size,):
        result.failures.append(
            f"batched call returned {batched.array.shape[:1]} items for a batch of {batch_size} (shape "
            f"{tuple(batched.array.shape)})"
        )
    worst: Comparison | None = None
    for i, single_inputs in enumerate(split_batch(batch, batch_size)):
        single = run_pipeline(pipe, single_inputs, ctx.target)
        result.timings[f"single {i}"] = single.seconds
        if result.failures and worst is None and batched.array.shape[:1] != (batch_size,):
            break
        comparison, failures = judge(
            batched.array[i : i + 1],
            single.array,
            tolerance,
            what=f"batch item {i}",
            against=f"single call {i}",
        )
        result.failures += failures
        if comparison is not None:
            result.comparisons[f"item {i}: batched vs single"] = comparison
            if worst is None or comparison.max_abs > worst.max_abs:
                worst = comparison
    result.summary = (
        f"worst item max |diff| {format_figure(worst.max_abs)}"
        if worst is not None
        else (result.failures or ["n/a"])[0]
    )
    return _finish(ctx, result)


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


@_records_errors("attention_slicing")
def assert_attention_slicing_parity(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
    *,
    slice_size: int | str = 1,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Output with attention slicing on equals output with it off, on the target (slicing has given
    NaN and black images on MPS: diffusers #11229, #14438). Reports the peak target memory of both
    where the backend keeps one. The pipeline's attention processors are restored afterwards."""
    __tracebackhide__ = True
    ctx = current_context(pipe)
    tolerance = _tolerance(
        ctx, "attention_slicing", {"atol": atol, "max_cosine_distance": max_cosine_distance}
    )
    _warn_if_training(pipe)
    call = _inputs(pipe, inputs)
    result = _new_result(ctx, "attention_slicing", pipe, tolerance)
    modules = _attention_modules(pipe)
    saved = [getattr(m, "processor", None) for m in modules]
    if not modules:
        result.summary = "n/a: no attention modules"
        result.details["applicable"] = False
        return _finish(ctx, result)
    target = ctx.target
    try:
        target.reset_peak_memory()
        plain = run_pipeline(pipe, call, target)
        memory_off = target.memory_bytes()
        pipe.enable_attention_slicing(slice_size)
        changed = sum(getattr(m, "processor", None) is not p for m, p in zip(modules, saved, strict=True))
        if not changed:
            # As on a Mac: the pipeline's components expose no set_attention_slice, so the call is a
            # no-op there too. Nothing to compare; say so rather than report a vacuous pass.
            result.summary = "n/a: enable_attention_slicing() changes no attention processor here"
            result.details["applicable"] = False
            return _finish(ctx, result)
        target.reset_peak_memory()
        sliced = run_pipeline(pipe, call, target)
        memory_on = target.memory_bytes()
    finally:
        for module, processor in zip(modules, saved, strict=True):
            if processor is not None and getattr(module, "processor", None) is not processor:
                _set_processor(module, processor)
    result.details["sliced_modules"] = changed
    comparison, failures = judge(sliced.array, plain.array, tolerance, what="sliced", against="unsliced")
    result.failures += failures
    result.timings = {"unsliced": plain.seconds, "sliced": sliced.seconds}
    result.details.update(
        {
            "applicable": True,
            "slice_size": slice_size,
            "memory_bytes_unsliced": memory_off,
            "memory_bytes_sliced": memory_on,
        }
    )
    if comparison is not None:
        result.comparisons["sliced vs unsliced"] = comparison
        result.summary = f"max |diff| {format_figure(comparison.max_abs)}"
    else:
        result.summary = failures[0]
    if memory_off is not None and memory_on is not None:
        result.summary += f", peak {memory_on / 2**20:.1f} vs {memory_off / 2**20:.1f} MiB"
    return _finish(ctx, result)


@_records_errors("determinism")
def assert_deterministic(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
    *,
    runs: int = 2,
    atol: float | None = None,
    max_cosine_distance: float | None = None,
) -> CheckResult:
    """Repeated runs with equal generators agree on the target. The first run is compared with each
    later one, so first-pass drift (torch 1.13 without warm-up, diffusers #372) is named as such."""
    __tracebackhide__ = True
    if runs < 2:
        raise ValueError(f"runs must be at least 2, got {runs}")
    ctx = current_context(pipe)
    tolerance = _tolerance(ctx, "determinism", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    _warn_if_training(pipe)
    call = _inputs(pipe, inputs)
    result = _new_result(ctx, "determinism", pipe, tolerance)
    # The global RNG is not reseeded between runs: a module drawing unseeded noise is nondeterminism.
    outputs = [run_pipeline(pipe, call, ctx.target, global_seed=None) for _ in range(runs)]
    result.timings = {f"run {i}": r.seconds for i, r in enumerate(outputs)}
    first_bad = []
    for k in range(1, runs):
        comparison, failures = judge(
            outputs[k].array, outputs[0].array, tolerance, what=f"run {k}", against="run 0"
        )
        if comparison is not None:
            result.comparisons[f"run {k} vs run 0"] = comparison
        if failures:
            first_bad.append(k)
            result.failures += failures
    if first_bad and runs >= 3:
        _, later_failures = judge(
            outputs[2].array, outputs[1].array, tolerance, what="run 2", against="run 1"
        )
        if not later_failures:
            result.failures.insert(
                0,
                "the first run differs from later runs, which agree with each other: first-pass drift "
                "(diffusers #372; torch 1.13 needs a 1-step warm-up: mps_pipeline(..., warmup='on'))",
            )
    worst = max(result.comparisons.values(), key=lambda c: c.max_abs, default=None)
    result.summary = (
        f"{runs} runs, max |diff| {format_figure(worst.max_abs)}"
        if worst is not None
        else (result.failures or ["n/a"])[0]
    )
    return _finish(ctx, result)


@_records_errors("float16")
def assert_float16_parity(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
    *,
    max_cosine_distance: float | None = None,
    atol: float | None = None,
) -> CheckResult:
    """float16 on the target is finite and within a cosine distance of 5e-2 (Diffusers' float16
    threshold) of float32 on the CPU. The pipeline's weights are restored exactly afterwards."""
    __tracebackhide__ = True
    import torch

    ctx = current_context(pipe)
    tolerance = _tolerance(ctx, "float16", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    _warn_if_training(pipe)
    call = _inputs(pipe, inputs)
    result = _new_result(ctx, "float16", pipe, tolerance)
    reference, origin = cpu_reference(pipe, call, dtype=torch.float32, ctx=ctx)
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
        result.summary = f"cos {format_figure(comparison.cosine_distance)}"
    else:
        result.summary = failures[0]
    return _finish(ctx, result)


def _scheduler_classes(pipe: Any, schedulers: str | Iterable[Any]) -> list[Any]:
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


@_records_errors("schedulers")
def assert_schedulers_compatible(
    pipe: Any,
    inputs: dict[str, Any] | None = None,
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
    float64 found by the emulated-MPS audit (float64 timesteps are the most recurrent MPS regression in
    Diffusers' tracker: #1169, #2241, #6365, #10549). The original scheduler is restored.

    Args:
        schedulers: ``"compatible"``, or scheduler classes or their names.
        parity: also compare each scheduler's output with the CPU's.
        audit: run the emulated-MPS hazard audit per scheduler; default: on for the cpu, cuda and
            xpu stand-ins (real and emulated MPS raise the errors themselves).
    """
    __tracebackhide__ = True
    ctx = current_context(pipe)
    tolerance = _tolerance(ctx, "schedulers", {"atol": atol, "max_cosine_distance": max_cosine_distance})
    _warn_if_training(pipe)
    call = _inputs(pipe, inputs)
    classes = _scheduler_classes(pipe, schedulers)
    result = _new_result(ctx, "schedulers", pipe, tolerance)
    if audit is None:
        from pytest_mps.emulated_target import emulation_unavailable_reason

        # On real or emulated MPS the run itself raises MPS's errors; other stand-ins need the audit.
        audit = not ctx.target.is_mps_like and emulation_unavailable_reason() is None
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
            problems, figure = _sweep_one(
                pipe, call, ctx, tolerance, result, name, parity=parity, audit=audit
            )
            if problems and problems[0].startswith(_CPU_TOO):
                outcomes[name] = f"skipped: {problems[0]}"
                continue
            outcomes[name] = ("passed" if not problems else "failed: " + "; ".join(problems)) + figure
            result.failures += [f"{name}: {p}" for p in problems]
    finally:
        pipe.scheduler = original
    result.details["schedulers"] = outcomes
    result.details["lines"] = [f"{n}: {o}" for n, o in outcomes.items()]
    failed = [n for n, o in outcomes.items() if o.startswith("failed")]
    tried = [n for n, o in outcomes.items() if not o.startswith("skipped")]
    if not tried:  # nothing was tested: that is not a pass
        result.failures.append(
            f"no scheduler could be tested: all {len(outcomes)} were skipped (see below); "
            "check the scheduler list and the inputs"
        )
    result.summary = f"{len(tried) - len(failed)}/{len(tried)} schedulers pass" + (
        f" (failed: {', '.join(failed)})" if failed else ""
    )
    return _finish(ctx, result)


_CPU_TOO = "fails on the CPU too"


def _sweep_one(
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
    """Problems of one scheduler on the target, and its key figure for the table."""
    problems: list[str] = []
    figure = ""
    try:
        run = run_pipeline(pipe, call, ctx.target)
    except Exception as exc:
        raised = f"raised {type(exc).__name__}: {_first_line(exc)}"
        try:
            cpu_reference(pipe, call, ctx=ctx)
        except Exception as cpu_exc:  # the scheduler cannot run these inputs anywhere: not an MPS problem
            return [f"{_CPU_TOO} ({type(cpu_exc).__name__}: {_first_line(cpu_exc)})"], ""
        return [raised], ""
    result.timings[name] = run.seconds
    defect = defects(run.array, "target")
    if defect:
        problems.append(defect)
    elif parity:
        try:
            reference, _ = cpu_reference(pipe, call, ctx=ctx)
        except Exception as exc:  # ran on the target, fails on the CPU: not an MPS problem
            return [f"{_CPU_TOO} ({type(exc).__name__}: {_first_line(exc)})"], ""
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
            problems.append(f"the emulated-MPS audit raised {type(exc).__name__}: {_first_line(exc)}")
    return problems, figure


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
