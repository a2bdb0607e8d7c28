"""What every check shares: the guarded run that turns the pipeline's exceptions into failed results,
the CPU cross-check, the comparison against tolerances, the shared CPU reference and the assertion
wrapper.

A check's compute function has the signature ``compute(pipe, ctx, **options) -> CheckResult`` and never
raises for a failed comparison. :func:`run_check` calls it: an exception raised by the pipeline becomes a
failed result carrying it (an emulated Metal abort a crashed one), a failure on the target is re-run on
the CPU (:func:`cross_check`), and the final result is recorded with the running test. The public
``assert_*`` functions are :func:`asserting` wrappers of the ``check_*`` ones.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pytest_mps.context import CheckContext
from pytest_mps.identity import pipeline_label
from pytest_mps.metrics import Comparison, compare, defects
from pytest_mps.registry import get
from pytest_mps.results import CheckResult, format_figure
from pytest_mps.running import Run, moved, run_pipeline, training_modules
from pytest_mps.tolerances import Tolerance, resolve_tolerance
from pytest_mps.verdict import Status
from pytest_mps.warnings import TrainingModeWarning

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CALL_RAISED",
    "asserting",
    "cpu_reference",
    "cross_check_call",
    "first_line",
    "judge",
    "new_result",
    "raises_on_cpu",
    "run_check",
    "tolerance_for",
    "warn_if_training",
]

F = TypeVar("F", bound=Callable[..., CheckResult])
Compute = Callable[..., CheckResult]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tolerance_for(ctx: CheckContext, check: str, arguments: dict[str, float | None]) -> Tolerance:
    """The tolerance of ``check`` for the running test (argument > marker > ini > default; the
    default for the target: real MPS or a stand-in). A bad value is a ``ValueError``: a usage error."""
    return resolve_tolerance(
        check,
        arguments=arguments,
        marker=ctx.marker_tolerance,
        ini=ctx.ini_tolerance,
        real_mps=ctx.target.is_real_mps,
    )


def warn_if_training(pipe: Any) -> None:
    """Warn when modules are in training mode: dropout and label dropping draw from the device RNG,
    so target and CPU diverge for reasons unrelated to the device."""
    training = training_modules(pipe)
    if training:
        shown = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3 else "")
        warnings.warn(
            TrainingModeWarning(
                f"modules in training mode: {shown}. Dropout and label dropping draw from the device RNG, "
                "so target and CPU outputs diverge for reasons unrelated to the device: call .eval() "
                "(the mps_pipeline fixture does)"
            ),
            stacklevel=4,
        )


def new_result(ctx: CheckContext, check: str, pipe: Any, tolerance: Tolerance | None = None) -> CheckResult:
    """An empty (passing) result of ``check`` for ``pipe`` on the context's target."""
    return CheckResult(
        check=check,
        target=ctx.target.label,
        real_mps=ctx.target.is_real_mps,
        pipeline=pipeline_label(pipe),
        pipeline_class=type(pipe).__name__,
        tolerance=tolerance,
        nodeid=ctx.nodeid,
    )


def judge(
    target: np.ndarray,
    reference: np.ndarray,
    tolerance: Tolerance,
    *,
    what: str = "target",
    against: str = "CPU reference",
    target_dtype: str | None = None,
    reference_dtype: str | None = None,
    item: int = 0,
) -> tuple[Comparison | None, list[str]]:
    """Compare two outputs: non-finite values, emptiness and shape/dtype mismatches fail first and by
    name; then each figure is held against its threshold. ``item``: the batch index of the compared
    slice, so the worst element is named where it is in the batch. Returns the comparison and the
    failures."""
    import numpy as np

    failures = [d for d in (defects(target, what), defects(reference, against)) if d]
    if failures:
        return None, failures
    if target.shape != reference.shape:
        return None, [f"shape mismatch: {what} {tuple(target.shape)} vs {against} {tuple(reference.shape)}"]
    if target_dtype and reference_dtype and target_dtype != reference_dtype:
        return None, [f"dtype mismatch: {what} {target_dtype} vs {against} {reference_dtype}"]
    comparison = compare(target, reference)
    if item and comparison.worst_index:
        comparison = dataclasses.replace(comparison, worst_index=(item, *comparison.worst_index[1:]))
    if tolerance.atol is not None:
        scale = output_scale(reference)
        allowed = tolerance.atol * scale + tolerance.rtol * np.abs(reference.astype(np.float64))
        outside = int(np.sum(np.abs(target.astype(np.float64) - reference) > allowed))
        if outside:
            limit = f"atol {format_figure(tolerance.atol)}"
            if scale != 1.0:
                limit += f" x max |reference| {format_figure(scale)} (not a 0-1 image)"
            if tolerance.rtol:
                limit += f" + rtol {format_figure(tolerance.rtol)} x |reference|"
            failures.append(
                f"max |diff| {format_figure(comparison.max_abs)} exceeds {limit}: {outside} of "
                f"{target.size} values outside, worst at {comparison.where()} "
                f"({what} {comparison.worst_target:.6g} vs {against} {comparison.worst_reference:.6g})"
            )
    limits = (
        ("cosine distance", comparison.cosine_distance, tolerance.max_cosine_distance, "<="),
        ("PSNR", comparison.psnr, tolerance.min_psnr, ">="),
        ("RMS (0-255)", comparison.rms_255, tolerance.max_rms, "<="),
        ("share of pixels off by >1 level", comparison.pixel_fraction, tolerance.max_pixel_fraction, "<="),
    )
    for label, value, limit, sense in limits:
        if limit is None:
            continue
        if value > limit if sense == "<=" else value < limit:
            failures.append(
                f"{label} {format_figure(value)} is outside the limit {sense} {format_figure(limit)}"
            )
    return comparison, failures


def output_scale(reference: np.ndarray) -> float:
    """What an absolute tolerance is measured in: 1 for images (values in [0, 1], as Diffusers returns
    them with ``output_type="np"``), else the reference's largest magnitude, so the same limit means
    the same for audio (amplitudes ~1e-6 on a tiny model) and embeddings (magnitudes ~10) as for images:
    never a blind pass on small outputs nor a false failure on large ones."""
    import numpy as np

    if reference.size == 0:
        return 1.0
    low, high = float(np.min(reference)), float(np.max(reference))
    image = reference.ndim >= 3 and reference.shape[-1] in (1, 3, 4)  # (N,) H, W, C or frames
    if image and low >= -0.01 and high <= 1.01:
        return 1.0
    largest = max(abs(low), abs(high))
    return largest if largest > 0 else 1.0


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def cpu_reference(
    pipe: Any, inputs: dict[str, Any], *, ctx: CheckContext, dtype: Any = None, check: str = ""
) -> tuple[Run, str]:
    """The pipeline's output on the CPU for ``inputs`` (optionally in ``dtype``), computed once per
    session for the same weights, configs, scheduler and inputs, whichever check asks (cpu_parity,
    float16's float32 reference of a float32 pipeline, the scheduler sweep's own scheduler: one key).
    Returns the run and its origin (``memory``, ``disk`` or ``computed``). A reference computed here in
    the pipeline's own dtype has its timing noted for the speed check."""
    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.keys import inputs_fingerprint, pipeline_fingerprint
    from pytest_mps.references import ReferenceKey, shared_cache
    from pytest_mps.run_cache import timed_cpu_reference
    from pytest_mps.state_key import pipeline_state

    cache = ctx.references or shared_cache()
    store = cache.store
    if store is not None and ctx.nodeid and hasattr(store, "current_nodeid"):
        store.current_nodeid = ctx.nodeid  # the test that writes a reference is recorded in its file
    first = next((p for c in pipe.components.values() for p in getattr(c, "parameters", list)()), None)
    run_dtype = dtype or (first.dtype if first is not None else None)
    # A stored reference needs a content key (weights hashed, once per state); a session-only cache
    # does with a key valid in this process that reads no more than a sample of the weights.
    state = None if store is not None else pipeline_state(pipe)
    key = ReferenceKey(
        pipeline=pipeline_fingerprint(pipe) if state is None else state,
        inputs=inputs_fingerprint(inputs),
        dtype=_dtype_name(run_dtype),
        output_type=str(inputs.get("output_type", "default")),
        label=pipeline_label(pipe),
        check=check,
    )
    convert = dtype if dtype is not None and first is not None and first.dtype != dtype else None

    def compute() -> Run:
        with moved(pipe, "cpu", convert), cpu_arithmetic():
            return run_pipeline(pipe, inputs)

    return cache.get_or_compute(
        key,
        compute if convert is not None else timed_cpu_reference(pipe, inputs, ctx, compute, state=state),
    )


def _from_exception(ctx: CheckContext, check: str, pipe: Any, exc: Exception) -> CheckResult:
    result = new_result(ctx, check, pipe)
    result.exception = exc
    result.details["traceback"] = traceback.format_exc()
    if type(exc).__name__ == "MPSAbortError":  # an emulated Metal assertion: on a Mac the process dies
        result.status = Status.CRASHED
        result.failures.append(f"on a Mac this aborts the whole process (SIGABRT): {first_line(exc)}")
        result.summary = "would abort the process on a Mac (SIGABRT)"
        result.figure_text = "SIGABRT"
    else:
        result.status = Status.FAILED
        result.failures.append(f"raised {type(exc).__name__}: {first_line(exc)}")
        result.summary = f"raised {type(exc).__name__}"
        result.figure_text = type(exc).__name__
    return result


def _guarded(
    check: str, compute: Compute, pipe: Any, ctx: CheckContext, options: dict[str, Any]
) -> CheckResult:
    try:
        result = compute(pipe, ctx, **options)
    except Exception as exc:  # raised by the pipeline (or a library under it): a failed check
        return _from_exception(ctx, check, pipe, exc)
    return result.settle()


def cross_check(
    check: str, compute: Compute, pipe: Any, ctx: CheckContext, options: dict[str, Any], result: CheckResult
) -> None:
    """Re-run a check that failed on the target on the CPU (same pipeline, inputs and tolerances):
    when it fails there too, the result says "fails on the CPU too: not an MPS problem"."""
    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.target import Target

    cpu_ctx = dataclasses.replace(ctx, target=Target("cpu", "cross-check"), record=None, localize=False)
    with moved(pipe, "cpu"), cpu_arithmetic():
        on_cpu = _guarded(check, compute, pipe, cpu_ctx, options)
    _note_cpu_cross_check(result, on_cpu.status.value, on_cpu.summary, failed=not on_cpu.passed)


def _note_cpu_cross_check(result: CheckResult, status: str, summary: str, *, failed: bool) -> None:
    """Record what the CPU said (``details["cpu_cross_check"]``); when it failed too, the result is
    "fails on the CPU too (<summary>): not an MPS problem"."""
    result.details["cpu_cross_check"] = {"status": status, "summary": summary}
    if failed:
        result.status = Status.CPU_TOO
        result.failures.insert(0, f"fails on the CPU too ({summary}): not an MPS problem")


#: ``details`` key a check sets when its failure is an exception the pipeline's own call raised on the
#: target without the check raising it (the hazard audit records it as a finding): :func:`run_check`
#: then asks whether the call raises on the CPU too.
CALL_RAISED = "call_raised"


def raises_on_cpu(pipe: Any, call: dict[str, Any], ctx: CheckContext, check: str = "") -> str | None:
    """What ``call`` raises on the CPU ("raised NotImplementedError: ..."), or None when it runs there:
    asked of the session's CPU reference (:func:`cpu_reference`), which a later check then reuses."""
    try:
        cpu_reference(pipe, call, ctx=ctx, check=check)
    except Exception as exc:
        return f"raised {type(exc).__name__}: {first_line(exc)}"
    return None


def cross_check_call(
    check: str, pipe: Any, ctx: CheckContext, options: dict[str, Any], result: CheckResult
) -> None:
    """For a check that is not re-run whole on the CPU (the registry's ``cross_check``), whose failure
    is an exception the pipeline's call raised: when the same call (its ``inputs`` option) raises on the
    CPU too, the result says "fails on the CPU too: not an MPS problem"."""
    from pytest_mps.input_spec import call_inputs

    raised = raises_on_cpu(pipe, call_inputs(pipe, options.get("inputs")), ctx, check)
    if raised:
        _note_cpu_cross_check(result, Status.FAILED.value, raised, failed=True)
    else:
        _note_cpu_cross_check(result, Status.PASSED.value, "the call runs on the CPU", failed=False)


#: The least time the localisation of a failure may take (seconds), however fast the check was.
LOCALIZE_MIN_SECONDS = 2.0


def localize_failure(
    check: str, pipe: Any, ctx: CheckContext, options: dict[str, Any], result: CheckResult
) -> None:
    """Say where a divergence on the target starts (:func:`pytest_mps.localize`), within about twice the
    failing check's own time (at least :data:`LOCALIZE_MIN_SECONDS`): the headline and the ranked
    modules go into the failure report and the reports (``details["localization"]``)."""
    from pytest_mps.input_spec import call_inputs
    from pytest_mps.localization import localize

    try:
        found = localize(
            pipe,
            call_inputs(pipe, options.get("inputs")),
            check,
            target=ctx.target,
            tolerance=options.get("tolerance"),
            slice_size=options.get("slice_size", 1),
            # About twice the check's own time (3x in all), but never under 2 s: a tiny pipeline's
            # check takes a tenth of that, and a busy machine would cut the search short.
            time_budget=max(2 * sum(result.timings.values()), LOCALIZE_MIN_SECONDS),
        )
    except Exception as exc:  # localisation is help for a failure, never a failure of its own
        result.details["localization_error"] = f"{type(exc).__name__}: {first_line(exc)}"
        return
    result.details["localization"] = found.to_dict()
    result.details.setdefault("lines", []).extend(found.lines())


def run_check(check: str, compute: Compute, pipe: Any, ctx: CheckContext, **options: Any) -> CheckResult:
    """Run ``compute(pipe, ctx, **options)`` as check ``check``: guarded, cross-checked on the CPU
    when it fails on the target (and the registry says it can be), labelled, and recorded."""
    spec = get(check)
    if ctx.on_start is not None:
        ctx.on_start(check, pipe)
    result = _guarded(check, compute, pipe, ctx, options)
    if (
        result.status is Status.FAILED
        and ctx.cross_check
        and ctx.target.available
        and ctx.target.name != "cpu"
    ):
        if spec.cross_check:
            cross_check(check, compute, pipe, ctx, options, result)
        elif result.exception is not None or result.details.get(CALL_RAISED):
            cross_check_call(check, pipe, ctx, options, result)
    if result.status is Status.FAILED and spec.localizes and ctx.localize and result.exception is None:
        localize_failure(check, pipe, ctx, options, result)
    result.nodeid = result.nodeid or ctx.nodeid
    if ctx.record is not None:
        ctx.record(result)
    return result


def assert_result(result: CheckResult) -> CheckResult:
    """Return a result that did not fail; otherwise raise: the pipeline's own exception when that is
    why it failed (so ``xfail_mps(raises=...)`` and MPS's exception types work as on a Mac), else an
    ``AssertionError`` with the readable report."""
    __tracebackhide__ = True
    if result.passed:
        return result
    if result.exception is not None:
        exc = result.exception
        if hasattr(exc, "add_note"):
            exc.add_note(
                f"pytest-mps: {result.check} {result.status.value} on {result.target}: {result.summary}"
            )
        raise exc
    raise AssertionError(result.report())


def asserting(check_function: F) -> F:
    """The ``assert_*`` form of a ``check_*`` function: same arguments, returns the result when it
    passed, raises as :func:`assert_result` when it did not."""

    @functools.wraps(check_function)
    def wrapper(*args: Any, **kwargs: Any) -> CheckResult:
        __tracebackhide__ = True
        return assert_result(check_function(*args, **kwargs))

    name = check_function.__name__.replace("check_", "assert_", 1)
    wrapper.__name__ = name
    wrapper.__qualname__ = name
    wrapper.__doc__ = (check_function.__doc__ or "") + (
        "\n\n    Raises ``AssertionError`` with a readable report when the check fails (the pipeline's own "
        "exception when it raised one); returns the :class:`~pytest_mps.CheckResult` otherwise.\n"
    )
    return cast(F, wrapper)
