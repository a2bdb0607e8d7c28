"""The MPS hazard audit: run a pipeline (or trace a module at production size) on the emulated MPS target
and report every hazard, with the aten op, dtypes, shapes, bytes, owning module and source line.

``audit(pipe)`` runs the pipeline for real on the emulated target, collecting instead of raising, so one
run lists every float64, complex tensor, missing kernel, CPU fallback, oversized buffer and oversized
attention score matrix. Above :data:`TRACE_ABOVE_PIXELS` output pixels per call it traces the pipeline's
models on meta tensors instead (:mod:`pytest_mps.plan.trace`), so ``audit(pipe, height=4096, width=4096)``
returns in seconds with the same size findings. ``audit_module(unet, spec(2, 4, 128, 128), ...)`` checks
one module at production sizes without allocating them. ``assert_no_mps_hazards`` turns a report into a
test assertion.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pytest_mps.audit_report import AuditReport
from pytest_mps.emulation.findings import SEVERITIES, Finding, merge_findings

if TYPE_CHECKING:
    from pytest_mps.emulation.shape_trace import TensorSpec, spec

__all__ = [
    "TRACE_ABOVE_PIXELS",
    "AuditReport",
    "TensorSpec",
    "assert_no_mps_hazards",
    "audit",
    "audit_module",
    "output_pixels",
    "spec",
]


def __getattr__(name: str) -> Any:
    # spec()/TensorSpec describe audit_module's example inputs; imported on use (they import torch).
    if name in ("spec", "TensorSpec"):
        from pytest_mps.emulation import shape_trace

        return getattr(shape_trace, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LABEL = "emulated mps (stand-in: MPS rules, CPU arithmetic)"
_TRACE_LABEL = "emulated mps, meta trace (stand-in: MPS rules, shapes only, nothing allocated)"
_TRACED_PIPELINE_LABEL = (
    "emulated mps, models traced on meta tensors (stand-in: MPS rules at full size, shapes only; "
    "the models' outputs were not computed)"
)

#: ``audit()`` traces the models instead of running them above this many output pixels per call
#: (height x width x images): a real CPU run that large takes minutes and gigabytes (the tiny SD pipeline
#: at 4096x4096 had not finished after 10 minutes), a traced one seconds. 512x512 is Stable Diffusion
#: 1.5's native size.
TRACE_ABOVE_PIXELS = 512 * 512


# -- inputs -------------------------------------------------------------------------------------------
def _default_inputs(pipe: Any) -> dict[str, Any]:
    try:
        from pytest_mps.inputs import default_inputs
    except ImportError:
        return _fallback_inputs(pipe)
    return dict(default_inputs(pipe))


def _fallback_inputs(pipe: Any) -> dict[str, Any]:
    """Minimal call arguments for text-to-image, unconditional and class-conditional pipelines."""
    import inspect

    import torch

    params = inspect.signature(pipe.__call__).parameters
    inputs: dict[str, Any] = {"generator": torch.Generator("cpu").manual_seed(0)}
    if "num_inference_steps" in params:
        inputs["num_inference_steps"] = 2
    if "prompt" in params:
        inputs["prompt"] = "a photo of an astronaut riding a horse on mars"
    if "class_labels" in params:
        inputs["class_labels"] = [1]
    return inputs


def _fresh(value: Any) -> Any:
    """Copy generators (so the caller's are not consumed) and containers; leave everything else."""
    import torch

    if isinstance(value, torch.Generator):
        from pytest_mps.emulation.patches import EmulatedGenerator

        mps = value.device.type == "mps"  # an emulated generator, possibly from an earlier emulation
        clone = EmulatedGenerator("mps") if mps else torch.Generator(value.device)
        clone.set_state(value.get_state())
        return clone
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def _summarise_call(call: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in call.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[key] = list(value)
        else:
            shape = getattr(value, "shape", None)
            out[key] = f"<{type(value).__name__}{list(shape) if shape is not None else ''}>"
    return out


def _pipeline_modules(pipe: Any) -> dict[str, Any]:
    components = getattr(pipe, "components", None)
    if isinstance(components, Mapping):
        return {k: v for k, v in components.items() if v is not None}
    return {}


def _exception_finding(exc: BaseException) -> Finding:
    from pytest_mps.emulation.provenance import format_frame, is_internal_file

    source = None
    for frame, _lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if not is_internal_file(frame.f_code.co_filename):
            source = format_frame(frame)
            break
    return Finding(
        kind="exception",
        severity="error",
        op=type(exc).__name__,
        source=source,
        message=f"{type(exc).__name__}: {exc}",
    )


# -- the audits ---------------------------------------------------------------------------------------
def audit(
    pipe: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    trace: bool | None = None,
    **call_overrides: Any,
) -> AuditReport:
    """Run ``pipe`` once on the emulated MPS target, collecting every MPS hazard instead of raising.

    Args:
        pipe: a Diffusers pipeline (anything with ``.to(device)``, ``.components`` and ``__call__``).
            It is moved to the emulated device for the run and back to its device afterwards (parameters
            become new ``Parameter`` objects over the same memory).
        inputs: call arguments; default: ``pytest_mps.inputs.default_inputs(pipe)``. Generators are
            copied, so the caller's are not consumed.
        trace: trace the models on meta tensors (True), compute them (False), or decide by size (None:
            traced above :data:`TRACE_ABOVE_PIXELS` output pixels, and for a pipeline with meta weights
            such as :func:`pytest_mps.plan.meta_pipeline.load_meta_pipeline` builds). A traced report
            says so (``report.traced``, its label and ``format()``), has no output, and adds the
            estimated peak memory.
        call_overrides: extra call arguments (``height=1024``, ``num_inference_steps=4``...).
            ``output_type`` defaults to ``"np"``.

    Returns:
        An :class:`AuditReport`; an abort (or any exception) ends the run and is reported, never raised.
    """
    import torch

    from pytest_mps.emulation.emulator import EmulatedMPS
    from pytest_mps.emulation.errors import MPSAbortError

    call = {**(_default_inputs(pipe) if inputs is None else dict(inputs)), **call_overrides}
    call.setdefault("output_type", "np")
    call = _fresh(call)
    if trace if trace is not None else _heavy(pipe, call):
        return _traced_audit(pipe, call)
    emulation = EmulatedMPS(collect=True)
    extra: list[Finding] = []
    output: Any = None
    stopped_by: str | None = None
    start = time.perf_counter()
    with emulation:
        emulation.name_modules(_pipeline_modules(pipe))
        original = _device_of(pipe)
        try:
            pipe.to("mps")
            output = pipe(**call)
        except MPSAbortError as exc:  # already recorded as a finding by the rule that raised it
            stopped_by = f"MPSAbortError: {exc.assertion}"
        except Exception as exc:
            stopped_by = f"{type(exc).__name__}: {exc}"
            extra.append(_exception_finding(exc))
        finally:
            if original is not None and original.type != "mps":
                with torch.no_grad():
                    pipe.to(original)
    seconds = time.perf_counter() - start
    images = getattr(output, "images", output)
    return AuditReport(
        findings=merge_findings([*emulation.findings, *extra]),
        target_label=_LABEL,
        subject=type(pipe).__name__,
        completed=stopped_by is None,
        stopped_by=stopped_by,
        seconds=seconds,
        call=_summarise_call(call),
        output=images,
    )


def output_pixels(call: Mapping[str, Any]) -> int:
    """Pixels a call asks for: height x width x images (prompts or labels or ``batch_size``, times
    ``num_images_per_prompt``); 0 when the call names no size."""
    height, width = call.get("height"), call.get("width")
    if not isinstance(height, int) or not isinstance(width, int):
        return 0
    items = 1
    for key in ("prompt", "class_labels", "image"):
        value = call.get(key)
        if isinstance(value, list | tuple):
            items = max(items, len(value))
    if isinstance(call.get("batch_size"), int):
        items = max(items, call["batch_size"])
    per_prompt = call.get("num_images_per_prompt")
    return height * width * items * (per_prompt if isinstance(per_prompt, int) and per_prompt > 0 else 1)


def _heavy(pipe: Any, call: Mapping[str, Any]) -> bool:
    """A real run would be heavy (above :data:`TRACE_ABOVE_PIXELS`), or impossible (meta weights)."""
    from pytest_mps.plan.trace import has_meta_weights

    return output_pixels(call) > TRACE_ABOVE_PIXELS or has_meta_weights(pipe)


def _traced_audit(pipe: Any, call: dict[str, Any]) -> AuditReport:
    from pytest_mps.emulation.errors import MPSAbortError
    from pytest_mps.plan.trace import traced_call

    run = traced_call(pipe, call, memory=True)
    extra: list[Finding] = []
    stopped_by = None
    if isinstance(run.error, MPSAbortError):
        stopped_by = f"MPSAbortError: {run.error.assertion}"
    elif run.error is not None:
        stopped_by = f"{type(run.error).__name__}: {run.error}"
        extra.append(_exception_finding(run.error))
    return AuditReport(
        findings=merge_findings([*run.findings, *extra]),
        target_label=_TRACED_PIPELINE_LABEL,
        subject=type(pipe).__name__,
        completed=run.error is None,
        stopped_by=stopped_by,
        seconds=run.seconds,
        call=_summarise_call(call),
        output=None,
        traced=True,
        memory=run.memory,
    )


def _device_of(pipe: Any) -> Any:
    try:
        return pipe.device
    except Exception:
        return None


def audit_module(
    module: Any,
    *example_inputs: Any,
    module_name: str | None = None,
    **example_kwargs: Any,
) -> AuditReport:
    """Trace ``module(*example_inputs, **example_kwargs)`` on the emulated MPS device with meta payloads:
    production sizes (1024x1024 and beyond) are checked without allocating them.

    Example inputs are :func:`pytest_mps.emulation.shape_trace.spec` shapes, tensors (only shape and dtype
    are used) or plain values::

        audit_module(unet, spec(2, 4, 128, 128), 999, encoder_hidden_states=spec(2, 77, 2048),
                     added_cond_kwargs={"text_embeds": spec(2, 1280), "time_ids": spec(2, 6)},
                     module_name="unet")
    """
    from pytest_mps.emulation.shape_trace import trace_module

    name = module_name or type(module).__name__
    start = time.perf_counter()
    result = trace_module(module, example_inputs, example_kwargs, module_name=name)
    seconds = time.perf_counter() - start
    extra = [_exception_finding(result.error)] if result.error is not None else []
    extra += _state_findings(module, name)
    stopped_by = f"{type(result.error).__name__}: {result.error}" if result.error is not None else None
    call = _summarise_call({f"arg{i}": _describe_spec(v) for i, v in enumerate(example_inputs)})
    call.update(_summarise_call({k: _describe_spec(v) for k, v in example_kwargs.items()}))
    return AuditReport(
        findings=merge_findings([*result.emulation.findings, *extra]),
        target_label=_TRACE_LABEL,
        subject=f"{type(module).__name__} ({name})",
        completed=result.error is None,
        stopped_by=stopped_by,
        seconds=seconds,
        call=call,
        output=result.output,
    )


def _state_findings(module: Any, name: str) -> list[Any]:
    """Hazards of the module's own parameters and buffers (a float64 RoPE table stored as a buffer,
    say): on a Mac ``module.to("mps")`` raises on them before any forward runs. The meta trace swaps
    them for meta payloads and would not see them."""
    from pytest_mps.emulation.findings import Finding
    from pytest_mps.emulation.rules import dtype_name, tensor_hazards

    findings = []
    for kind, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for tensor_name, tensor in tensors:
            payload = getattr(tensor, "_payload", tensor)
            hazards = tensor_hazards(payload.detach().to("meta")) or []
            for hazard in hazards:
                owner, _, attr = f"{name}.{tensor_name}".rpartition(".")
                findings.append(
                    Finding(
                        kind=hazard.kind,
                        severity=hazard.severity,
                        op="torch.nn.Module.to",
                        dtypes=(dtype_name(tensor.dtype),),
                        shapes=(tuple(tensor.shape),),
                        nbytes=hazard.nbytes,
                        module=owner,
                        source=f"{kind} {attr!r} of {type(module).__name__}",
                        message=hazard.message,
                    )
                )
    return findings


def _describe_spec(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype = str(getattr(value, "dtype", "")).rpartition(".")[2]
        return f"{dtype}{list(shape)}"
    if isinstance(value, Mapping):
        return {k: _describe_spec(v) for k, v in value.items()}
    return value


def assert_no_mps_hazards(
    pipe: Any,
    inputs: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    *,
    fail_on: Iterable[str] = SEVERITIES,
    trace: bool | None = None,
    **call_overrides: Any,
) -> AuditReport:
    """Audit ``pipe`` (see :func:`audit`, also for ``trace``) and raise ``AssertionError`` with the
    report's table when any finding remains.

    Args:
        allow: finding kinds (``"complex"``, ``"fallback"``...) or ops (``"aten::_fft_r2c"``,
            ``"torch.Tensor.to"``) to tolerate.
        fail_on: severities that fail (default: all of them; pass ``("abort", "error")`` to tolerate
            fallbacks and portability warnings).

    Returns:
        The report, when the assertion holds.
    """
    report = audit(pipe, inputs, trace=trace, **call_overrides)
    tolerated = set(allow)
    failing = set(fail_on)
    bad = [
        f
        for f in report.findings
        if f.severity in failing and f.kind not in tolerated and f.op not in tolerated
    ]
    if bad or not report.completed:
        raise AssertionError(
            f"{len(bad)} MPS hazard(s) in {report.subject}"
            + ("" if report.completed else f"; the run stopped: {report.stopped_by}")
            + "\n"
            + report.format()
        )
    return report
