"""The bundled MPS compatibility suite: which checks it runs, and how each runs on a loaded pipeline.

The same code runs in the pytest process (``--no-mps-isolate``) and in a worker process
(``pytest_mps.worker``, with ``--mps-isolate``): :func:`load_for_suite` loads a pipeline onto the
target and :func:`run_check` runs one check on it, returning an :class:`Outcome` that never raises for
a failed check (the result says it failed) and crosses a process boundary as JSON.

The pytest side (parametrisation, options, the verdict table) is ``pytest_mps.check_plugin``; the
tests themselves are ``pytest_mps/suite/test_compat.py``. Importing this package imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult
    from pytest_mps.target import Target

__all__ = [
    "CHECKS",
    "DEFAULT_TIMEOUT_S",
    "REQUIRED",
    "InProcessRunner",
    "Loaded",
    "Outcome",
    "PipelineSpec",
    "SuiteSettings",
    "cell",
    "default_target_name",
    "load_for_suite",
    "pipeline_specs",
    "run_check",
    "skip_reason",
    "split_list",
    "unknown_checks",
    "validate_schedulers",
]

#: The checks, in the order they run and appear in the verdict table, with what each proves.
CHECKS: dict[str, str] = {
    "load": "the folder loads from safetensors and moves to the target",
    "inference": "a call on the target gives finite, non-constant output",
    "cpu_parity": "the target's output equals the CPU's for the same inputs",
    "batch": "each item of a batch equals the single call with its seed",
    "attention_slicing": "attention slicing on equals slicing off",
    "determinism": "repeated calls with one seed agree",
    "float16": "float16 on the target stays close to float32 on the CPU",
    "schedulers": "every compatible scheduler runs and matches the CPU",
    "audit": "the emulated-MPS hazard audit finds nothing that aborts or raises (emulated target only)",
    "speed": "the target is faster than the CPU on the same inputs (judged on real MPS only)",
}

#: Checks that must all pass on a real MPS target for the badge (the audit runs on the emulation only).
REQUIRED: tuple[str, ...] = tuple(name for name in CHECKS if name != "audit")

#: What the figure in each check's table cell means.
FIGURES: dict[str, str] = {
    "load": "seconds",
    "inference": "output std",
    "cpu_parity": "max |diff|",
    "batch": "max |diff|",
    "attention_slicing": "max |diff|",
    "determinism": "max |diff|",
    "float16": "cosine distance to float32 CPU",
    "schedulers": "passing/tried",
    "audit": "hazards",
    "speed": "CPU time / target time",
}

#: Timed calls per device in the speed check, and the time after which it stops repeating.
SPEED_REPEATS = 3
SPEED_BUDGET_S = 10.0


#: Seconds a suite check may run in a worker before it is killed as hung.
DEFAULT_TIMEOUT_S = 600.0


def default_target_name() -> str:
    """The suite's default target: ``mps`` where it is usable, else ``emulated`` where the emulation
    is available, else ``cpu`` (a dry run). Imports torch only on macOS."""
    from pytest_mps.emulated_target import emulation_unavailable_reason
    from pytest_mps.environment import detect_environment

    if detect_environment(probe_torch=True).usable:
        return "mps"
    if emulation_unavailable_reason() is None:
        return "emulated"
    return "cpu"


def split_list(value: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def unknown_checks(names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are not checks of the suite."""
    return [name for name in names if name not in CHECKS]


def validate_schedulers(names: Sequence[str]) -> None:
    """Raise ``ValueError`` (one line, with close matches) for a name that is no Diffusers scheduler.

    Imports diffusers, so call it only when scheduler names were given.
    """
    import difflib

    import diffusers

    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
    for name in names:
        cls = getattr(diffusers, name, None) if name in known else None
        if cls is None or not hasattr(cls, "from_config"):
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown scheduler {name!r}; {hint}pass Diffusers scheduler class names (e.g. "
                "DDIMScheduler,EulerDiscreteScheduler) or 'compatible'"
            )


# --- what to run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline folder to check: its path and the label that names it in test ids and the table."""

    path: str
    label: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"path": self.path, "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineSpec:
        """The inverse of :meth:`to_dict`."""
        return cls(path=str(data["path"]), label=str(data["label"]))


def pipeline_specs(paths: Sequence[str | os.PathLike[str]]) -> list[PipelineSpec]:
    """Specs for ``paths`` labelled by folder name (``tiny-sd``; ``tiny-sd-2`` for a second one)."""
    specs: list[PipelineSpec] = []
    seen: dict[str, int] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        base = path.resolve().name or str(raw)
        count = seen.get(base, 0) + 1
        seen[base] = count
        specs.append(PipelineSpec(str(path.resolve()), base if count == 1 else f"{base}-{count}"))
    return specs


@dataclass(frozen=True)
class SuiteSettings:
    """How the suite runs: the target name, call size, schedulers and tolerances from ini."""

    device: str
    steps: int = 2
    size: int | None = None
    schedulers: tuple[str, ...] = ()
    allow_pickle: bool = False
    ini_tolerance: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (sent to worker processes)."""
        return {
            "device": self.device,
            "steps": self.steps,
            "size": self.size,
            "schedulers": list(self.schedulers),
            "allow_pickle": self.allow_pickle,
            "ini_tolerance": dict(self.ini_tolerance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteSettings:
        """The inverse of :meth:`to_dict`."""
        return cls(
            device=str(data["device"]),
            steps=int(data.get("steps", 2)),
            size=data.get("size"),
            schedulers=tuple(data.get("schedulers", ())),
            allow_pickle=bool(data.get("allow_pickle", False)),
            ini_tolerance=dict(data.get("ini_tolerance", {})),
        )


@dataclass
class Outcome:
    """What running one check gave: a result, or a reason it was skipped; plus the warnings it raised
    and (from a worker) its stderr. Crosses the worker boundary as JSON."""

    result: CheckResult | None = None
    skip: str | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def passed(self) -> bool:
        """True when the check ran and passed."""
        return self.result is not None and self.result.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the result as :meth:`CheckResult.to_dict`; images are dropped)."""
        return {
            "result": self.result.to_dict() if self.result is not None else None,
            "skip": self.skip,
            "warnings": list(self.warnings),
        }


def skip_reason(name: str, target: Target) -> str | None:
    """Why check ``name`` does not run on ``target`` at all (None when it does)."""
    if name == "audit" and target.name != "emulated":
        where = (
            "on real MPS the hazards happen for real"
            if target.is_real_mps
            else f"this run's target is {target.label}"
        )
        return f"the hazard audit runs on the emulated target only ({where})"
    return None


# --- loading --------------------------------------------------------------------------------------


@contextlib.contextmanager
def target_scope(target: Target) -> Iterator[None]:
    """Activate the emulated MPS device around work on an ``emulated`` target (unless it is active
    already); a no-op for every other target."""
    if target.name == "emulated":
        from pytest_mps.emulated_target import emulation_active

        if not emulation_active():
            from pytest_mps.emulation import EmulatedMPS

            with EmulatedMPS():
                yield
            return
    yield


@dataclass
class Loaded:
    """A pipeline loaded for the suite, on its target, with the inputs every check shares."""

    spec: PipelineSpec
    settings: SuiteSettings
    target: Target | None
    load: Outcome
    pipe: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    references: ReferenceCache | None = None


def _result(name: str, target: Target | None, pipeline: str, nodeid: str | None) -> CheckResult:
    from pytest_mps.results import CheckResult

    return CheckResult(
        check=name,
        passed=True,
        target=target.label if target is not None else "none",
        real_mps=bool(target is not None and target.is_real_mps),
        pipeline=pipeline,
        nodeid=nodeid,
    )


def load_for_suite(
    spec: PipelineSpec,
    settings: SuiteSettings,
    *,
    nodeid: str | None = None,
    references: ReferenceCache | None = None,
) -> Loaded:
    """Load ``spec`` (safetensors only unless ``allow_pickle``), put it in eval mode, move it to the
    target and build the shared inputs. A failure is a failed ``load`` result with one line, never an
    exception."""
    from pytest_mps.pipelines import PipelineLoadError, load_pipeline, prepare_pipeline
    from pytest_mps.references import ReferenceCache
    from pytest_mps.target import TargetError, resolve_target

    result = _result("load", None, spec.label, nodeid)
    loaded = Loaded(spec, settings, None, Outcome(result), references=references or ReferenceCache())
    captured: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        with _warnings_into(captured):
            target = resolve_target(settings.device)
            loaded.target = target
            result.target, result.real_mps = target.label, target.is_real_mps
            with target_scope(target):
                pipe = prepare_pipeline(load_pipeline(spec.path, allow_pickle=settings.allow_pickle))
                result.pipeline = type(pipe).__name__
                pipe.to(target.torch_device())
                target.synchronize()
            loaded.pipe = pipe
            loaded.inputs = _inputs(pipe, settings)
    except (PipelineLoadError, TargetError) as exc:
        result.failures.append(str(exc))
    except Exception as exc:
        result.failures.append(f"loading {spec.label} raised {type(exc).__name__}: {_first_line(exc)}")
        result.details["traceback"] = traceback.format_exc()
    seconds = time.perf_counter() - start
    result.passed = not result.failures
    result.timings["load"] = seconds
    if result.passed and loaded.target is not None:
        result.summary = f"{result.pipeline} loaded and moved to {loaded.target.name} in {seconds:.2f}s"
    else:
        result.summary = result.failures[0]
        loaded.pipe = None
    _label(result, loaded, "load", nodeid)
    loaded.load.warnings = captured
    return loaded


def _inputs(pipe: Any, settings: SuiteSettings, **overrides: Any) -> dict[str, Any]:
    from pytest_mps.inputs import default_inputs

    kwargs: dict[str, Any] = {"steps": settings.steps, "height": settings.size, "width": settings.size}
    kwargs.update(overrides)
    return default_inputs(pipe, **kwargs)


# --- running one check ----------------------------------------------------------------------------


def run_check(name: str, loaded: Loaded, *, nodeid: str | None = None) -> Outcome:
    """Run check ``name`` on ``loaded``: a failed check is a failed result (never an exception), an
    unexpected exception is a failed result naming it, with its traceback in ``details``."""
    from pytest_mps.context import CheckContext, using_context

    if name == "load":
        return loaded.load
    if name not in CHECKS:
        raise ValueError(f"unknown check {name!r}; choose from {', '.join(CHECKS)}")
    if loaded.pipe is None or loaded.target is None:
        why = loaded.load.result.summary if loaded.load.result else "?"
        return Outcome(skip=f"{loaded.spec.label} did not load: {why}")
    reason = skip_reason(name, loaded.target)
    if reason:
        return Outcome(skip=reason)
    captured: list[CheckResult] = []
    caught: list[dict[str, Any]] = []
    ctx = CheckContext(
        target=loaded.target,
        ini_tolerance=dict(loaded.settings.ini_tolerance),
        references=loaded.references,
        record=captured.append,
        nodeid=nodeid,
    )
    result: CheckResult | None = None
    try:
        with _warnings_into(caught), using_context(ctx), target_scope(loaded.target):
            result = _RUNNERS[name](loaded, nodeid)
    except AssertionError as exc:
        result = captured[-1] if captured else _failed(name, loaded, nodeid, str(exc))
    except Exception as exc:
        result = _failed(name, loaded, nodeid, f"raised {type(exc).__name__}: {_first_line(exc)}")
        result.summary = f"raised {type(exc).__name__}"
        result.details["traceback"] = traceback.format_exc()
    _label(result, loaded, name, nodeid)
    return Outcome(result, warnings=caught)


def _label(result: CheckResult, loaded: Loaded, name: str, nodeid: str | None) -> None:
    """Suite results name their pipeline by folder label (two folders of one class stay apart in the
    table and in reports); the class goes to ``details``."""
    if result.pipeline != loaded.spec.label:
        result.details.setdefault("pipeline_class", result.pipeline)
    result.pipeline = loaded.spec.label
    result.nodeid = nodeid
    result.details["suite_check"] = name


def _failed(name: str, loaded: Loaded, nodeid: str | None, message: str) -> CheckResult:
    result = _result(name, loaded.target, type(loaded.pipe).__name__, nodeid)
    result.passed = False
    result.failures.append(message)
    result.summary = message.splitlines()[0] if message else "failed"
    return result


def _check_inference(loaded: Loaded, nodeid: str | None) -> CheckResult:
    import numpy as np

    from pytest_mps.metrics import defects
    from pytest_mps.results import format_figure
    from pytest_mps.running import run_pipeline

    assert loaded.target is not None
    result = _result("inference", loaded.target, type(loaded.pipe).__name__, nodeid)
    run = run_pipeline(loaded.pipe, loaded.inputs, loaded.target)
    array = run.array
    result.timings["target"] = run.seconds
    problem = defects(array, "target")
    if problem is None:
        low, high = float(array.min()), float(array.max())
        std = float(np.std(array.astype(np.float64)))
        result.details.update({"shape": list(array.shape), "min": low, "max": high, "std": std})
        if low == high:
            problem = f"target output is constant (every value {low:.6g}): a blank image, not an image"
        else:
            result.summary = (
                f"shape {tuple(array.shape)}, range [{format_figure(low)}, {format_figure(high)}], "
                f"std {format_figure(std)}, {run.seconds:.3f}s"
            )
    if problem:
        result.failures.append(problem)
        result.summary = problem
    result.passed = not result.failures
    return result


def _check_cpu_parity(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.checks import assert_cpu_parity

    return assert_cpu_parity(loaded.pipe, loaded.inputs)


def _check_batch(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.checks import assert_batch_consistency

    # Batch-shaped inputs: the check then only splits them (it expands single-item inputs itself, but
    # not a one-item class_labels list).
    return assert_batch_consistency(loaded.pipe, _inputs(loaded.pipe, loaded.settings, batch_size=2))


def _check_attention_slicing(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.checks import assert_attention_slicing_parity

    return assert_attention_slicing_parity(loaded.pipe, loaded.inputs)


def _check_determinism(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.checks import assert_deterministic

    return assert_deterministic(loaded.pipe, loaded.inputs)


def _check_float16(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.checks import assert_float16_parity

    return assert_float16_parity(loaded.pipe, loaded.inputs)


def _check_schedulers(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.checks import assert_schedulers_compatible

    schedulers: Any = list(loaded.settings.schedulers) or "compatible"
    return assert_schedulers_compatible(loaded.pipe, loaded.inputs, schedulers)


def _check_audit(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.hazard_audit import audit

    assert loaded.target is not None
    result = _result("audit", loaded.target, type(loaded.pipe).__name__, nodeid)
    report = audit(loaded.pipe, loaded.inputs)
    bad = report.with_severity("abort", "error")
    counts = {s: len(report.with_severity(s)) for s in ("abort", "error", "fallback", "warning")}
    result.failures += [f"[{f.severity}] {f.message}" for f in bad]
    if not report.completed and not bad:
        result.failures.append(f"the audited run stopped: {report.stopped_by}")
    result.details.update(
        {"counts": counts, "audit": report.to_dict(), "lines": report.format().splitlines()}
    )
    result.timings["audit"] = report.seconds
    others = counts["fallback"] + counts["warning"]
    result.summary = (
        f"{len(bad)} hazard(s) that abort or raise on MPS"
        if bad
        else "no hazard that aborts or raises on MPS"
    ) + (f"; {others} fallback/portability note(s)" if others else "")
    result.passed = not result.failures
    return result


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


def _check_speed(loaded: Loaded, nodeid: str | None) -> CheckResult:
    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.running import moved, run_pipeline

    target, pipe = loaded.target, loaded.pipe
    assert target is not None
    result = _result("speed", target, type(pipe).__name__, nodeid)
    size = loaded.settings.size or _default_size(pipe)
    inputs = _inputs(pipe, loaded.settings, height=size, width=size)
    on_target = _timed(lambda: run_pipeline(pipe, inputs, target).seconds, warmup=True)
    with cpu_arithmetic(), moved(pipe, "cpu"):
        on_cpu = _timed(lambda: run_pipeline(pipe, inputs).seconds, warmup=False)
    t_target, t_cpu = statistics.median(on_target), statistics.median(on_cpu)
    ratio = t_cpu / t_target if t_target > 0 else float("inf")
    result.timings = {"target": t_target, "cpu": t_cpu}
    result.details.update(
        {
            "speedup": ratio,
            "judged": target.is_real_mps,
            "size": inputs.get("height"),
            "steps": inputs.get("num_inference_steps"),
            "target_runs": on_target,
            "cpu_runs": on_cpu,
        }
    )
    at = f"{inputs['height']} px, " if inputs.get("height") else ""
    per_call = f"target {t_target:.3f}s vs CPU {t_cpu:.3f}s per call ({at}{loaded.settings.steps} steps)"
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
    result.passed = not result.failures
    return result


_RUNNERS: dict[str, Callable[[Loaded, str | None], CheckResult]] = {
    "inference": _check_inference,
    "cpu_parity": _check_cpu_parity,
    "batch": _check_batch,
    "attention_slicing": _check_attention_slicing,
    "determinism": _check_determinism,
    "float16": _check_float16,
    "schedulers": _check_schedulers,
    "audit": _check_audit,
    "speed": _check_speed,
}


# --- warnings, cells -----------------------------------------------------------------------------


@contextlib.contextmanager
def _warnings_into(sink: list[dict[str, Any]]) -> Iterator[None]:
    """Collect the warnings raised in the block (each distinct one once) as JSON-ready dicts, and
    re-raise none of them: the pytest side re-emits them in the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[tuple[str, str, str, int]] = set()
    for w in caught:
        category = w.category
        key = (f"{category.__module__}.{category.__qualname__}", str(w.message), w.filename, w.lineno)
        if key not in seen:
            seen.add(key)
            sink.append({"category": key[0], "message": key[1], "filename": w.filename, "lineno": w.lineno})


def cell(name: str, result: Mapping[str, Any]) -> tuple[str, str]:
    """The verdict-table cell of check ``name`` from its result dict: (state, figure), state one of
    ``ok``, ``FAIL``, ``n/a``, ``info``."""
    from pytest_mps.results import format_figure

    passed = result.get("outcome") == "passed"
    details = result.get("details") or {}
    metrics = result.get("metrics") or {}
    state = "ok" if passed else "FAIL"
    figure = ""
    failures = result.get("failures") or []
    raised = next((f for f in failures if f.startswith("raised ")), None)
    if raised is not None:
        figure = raised.split()[1].rstrip(":")
    elif any("NaN/Inf" in f for f in failures):
        figure = "NaN"
    elif name == "load":
        figure = f"{(result.get('timings') or {}).get('load', 0.0):.2f}s" if passed else ""
    elif name == "inference":
        figure = f"std {format_figure(details['std'])}" if "std" in details else ""
        if any("constant" in f for f in failures):
            figure = "constant"
    elif name in ("cpu_parity", "batch", "attention_slicing", "determinism"):
        if details.get("applicable") is False:
            return "n/a", "no sliceable attention"
        values = [m["max_abs"] for m in metrics.values() if m.get("max_abs") is not None]
        figure = format_figure(max(values)) if values else ""
    elif name == "float16":
        values = [m["cosine_distance"] for m in metrics.values() if m.get("cosine_distance") is not None]
        figure = f"cos {format_figure(max(values))}" if values else ""
    elif name == "schedulers":
        outcomes = details.get("schedulers") or {}
        tried = [o for o in outcomes.values() if not str(o).startswith("skipped")]
        failed = [o for o in tried if str(o).startswith("failed")]
        figure = f"{len(tried) - len(failed)}/{len(tried)}"
        if not tried and passed:
            state = "n/a"  # no scheduler could run these inputs anywhere, the CPU included
    elif name == "audit":
        counts = details.get("counts") or {}
        figure = f"{counts.get('abort', 0) + counts.get('error', 0)} hazards"
    elif name == "speed" and "speedup" in details:
        figure = f"{details['speedup']:.2f}x"
        if not details.get("judged"):
            state = "info"
    return state, figure


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the in-process runner ------------------------------------------------------------------------


class InProcessRunner:
    """Runs a pipeline's checks in this process (``--no-mps-isolate``): fast, but a crash on the
    target (a Metal assertion, a segfault) ends the whole session."""

    isolated = False

    def __init__(
        self, spec: PipelineSpec, settings: SuiteSettings, *, references: ReferenceCache | None = None
    ) -> None:
        self.spec = spec
        self.settings = settings
        self._references = references
        self._loaded: Loaded | None = None

    def load(self, nodeid: str | None = None) -> Outcome:
        """Load the pipeline on first call; later calls return the same outcome."""
        if self._loaded is None:
            self._loaded = load_for_suite(
                self.spec, self.settings, nodeid=nodeid, references=self._references
            )
        return self._loaded.load

    def check(self, name: str, nodeid: str | None = None) -> Outcome:
        """Run check ``name`` (loading first if needed)."""
        self.load()
        assert self._loaded is not None
        return run_check(name, self._loaded, nodeid=nodeid)

    def close(self) -> None:
        """Drop the pipeline and return cached target memory."""
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.target is not None:
            loaded.pipe = None
            with contextlib.suppress(Exception):
                loaded.target.empty_cache()
