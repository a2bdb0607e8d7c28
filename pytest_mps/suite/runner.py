"""Loading a pipeline for the suite and running one check on it: the same code runs in the pytest
process (``--no-mps-isolate``) and in a worker process (``pytest_mps.worker``, with ``--mps-isolate``).

:func:`load_for_suite` loads a pipeline onto the target; :func:`run_suite_check` runs one check of the
registry on it. Both return an :class:`Outcome` that never raises: a failed check is a failed result, a
check that does not run here a skipped one.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_mps.suite.settings import PipelineSpec, SuiteSettings

if TYPE_CHECKING:
    from pytest_mps.input_spec import InputSpec
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult
    from pytest_mps.target import Target

__all__ = ["InProcessRunner", "Loaded", "Outcome", "load_for_suite", "run_suite_check", "target_scope"]


@dataclass
class Outcome:
    """What running one check gave: its result (a skip is a result with status ``skipped``), the
    warnings it raised and (from a worker) its stderr. Crosses the worker boundary as JSON."""

    result: CheckResult
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def passed(self) -> bool:
        """True when the check ran and did not fail."""
        return self.result.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the result as :meth:`CheckResult.to_dict`; images are dropped)."""
        return {"result": self.result.to_dict(), "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, data: Any) -> Outcome:
        """The inverse of :meth:`to_dict`."""
        from pytest_mps.results import CheckResult

        return cls(CheckResult.from_dict(data["result"]), warnings=list(data.get("warnings") or []))


def skipped(name: str, spec: PipelineSpec, target: Target | None, reason: str, nodeid: str | None) -> Outcome:
    """An outcome saying check ``name`` did not run, and why."""
    from pytest_mps.results import CheckResult
    from pytest_mps.verdict import Status

    result = CheckResult(
        check=name,
        status=Status.SKIPPED,
        target=target.label if target is not None else "none",
        real_mps=bool(target is not None and target.is_real_mps),
        pipeline=spec.label,
        summary=reason,
        nodeid=nodeid,
    )
    return Outcome(result)


@contextlib.contextmanager
def target_scope(target: Target) -> Iterator[Any]:
    """Activate the emulated MPS device around work on an ``emulated`` target (unless it is active
    already); a no-op for every other target. Yields the emulated device entered here, or None."""
    if target.name == "emulated":
        from pytest_mps.emulated_target import emulated_device, emulation_active

        if not emulation_active():
            with emulated_device() as emulation:
                yield emulation
            return
    yield None


def keep_emulation_notes(result: Any, emulation: Any) -> None:
    """Put the notes of an emulated device entered for this work alone into ``result.details`` (a
    worker's notes reach the parent's summary this way; the session's own device is read there)."""
    if emulation is None:
        return
    from pytest_mps.emulated_target import EMULATION_NOTES, note_counts

    counts = note_counts(emulation.findings)
    if counts:
        result.details[EMULATION_NOTES] = counts


def from_library(filename: str) -> bool:
    """Whether a warning comes from an installed library's code (Diffusers, Transformers, torch,
    numpy...) rather than from pytest-mps or the project under test."""
    path = filename.replace("\\", "/")
    return ("/site-packages/" in path or "/dist-packages/" in path) and "/pytest_mps/" not in path


@contextlib.contextmanager
def warnings_into(sink: list[dict[str, Any]]) -> Iterator[None]:
    """Collect the warnings raised in the block (each distinct one once) as JSON-ready dicts, marked
    ``library`` when an installed library raised them, and re-raise none of them: the pytest side
    re-emits the project's own in the test and lists the libraries' once at the end (so ``-W error``
    does not turn a library's deprecation notice into a failed check)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[tuple[str, str, str, int]] = set()
    for w in caught:
        category = w.category
        key = (f"{category.__module__}.{category.__qualname__}", str(w.message), w.filename, w.lineno)
        if key not in seen:
            seen.add(key)
            sink.append(
                {
                    "category": key[0],
                    "message": key[1],
                    "filename": w.filename,
                    "lineno": w.lineno,
                    "library": from_library(w.filename),
                }
            )


@dataclass
class Loaded:
    """A pipeline loaded for the suite, on its target, with the input spec every check shares."""

    spec: PipelineSpec
    settings: SuiteSettings
    target: Target | None
    load: Outcome
    pipe: Any = None
    inputs: InputSpec | None = None
    references: ReferenceCache | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_for_suite(
    spec: PipelineSpec,
    settings: SuiteSettings,
    *,
    nodeid: str | None = None,
    references: ReferenceCache | None = None,
) -> Loaded:
    """Load ``spec`` on the CPU (safetensors only unless ``allow_pickle``), put it in eval mode and
    move it to the target. A failure is a failed ``load`` result with one line, never an exception: a
    pipeline that does not load on the CPU either "fails on the CPU too"; one that loads but cannot
    move to the target fails on the target (a float64 buffer under the emulated device, say)."""
    from pytest_mps.identity import name_pipeline
    from pytest_mps.input_spec import InputSpec
    from pytest_mps.keys import start_weights_digest
    from pytest_mps.pipelines import PipelineLoadError, load_pipeline, prepare_pipeline
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult
    from pytest_mps.target import TargetError, resolve_target
    from pytest_mps.verdict import Status

    result = CheckResult(check="load", target="none", pipeline=spec.label, nodeid=nodeid)
    if references is None:
        references = ReferenceCache()
        if settings.references:  # a worker process: its own store on the session's folder
            from pytest_mps.reference_store import ReferenceStore

            references.store = ReferenceStore(Path(settings.references), update=settings.update_references)
    loaded = Loaded(spec, settings, None, Outcome(result), references=references)
    captured: list[dict[str, Any]] = []
    start = time.perf_counter()
    stage = "load"
    try:
        with warnings_into(captured):
            target = resolve_target(settings.device)
            loaded.target = target
            result.target, result.real_mps = target.label, target.is_real_mps
            with target_scope(target) as emulation:
                try:
                    pipe = prepare_pipeline(load_pipeline(spec.path, allow_pickle=settings.allow_pickle))
                    name_pipeline(pipe, label=spec.label)
                    result.pipeline_class = type(pipe).__name__
                    if references.has_store and not target.computes_on_cpu:
                        # Stored references are keyed by the weights: hashed from the CPU copy, while
                        # the move runs and the device's first calls leave the CPU idle.
                        start_weights_digest(pipe)
                    stage = "move"
                    pipe.to(target.torch_device())
                    target.synchronize()
                finally:
                    keep_emulation_notes(result, emulation)
            loaded.pipe = pipe
            loaded.inputs = InputSpec(steps=settings.steps, height=settings.size, width=settings.size)
    except TargetError as exc:
        stage = "target"
        result.failures.append(str(exc))
    except PipelineLoadError as exc:
        result.failures.append(str(exc))
    except Exception as exc:
        where = "moving it to the target" if stage == "move" else "loading it"
        result.failures.append(f"{where} raised {type(exc).__name__}: {_first_line(exc)}")
        result.details["traceback"] = traceback.format_exc()
    seconds = time.perf_counter() - start
    result.timings["load"] = seconds
    if not result.failures and loaded.target is not None:
        result.figure = seconds
        result.figure_text = f"{seconds:.2f}s"
        result.summary = f"{result.pipeline_class} loaded and moved to {loaded.target.name} in {seconds:.2f}s"
    else:
        # Loading happens on the CPU; only the move involves the target.
        result.status = {"move": Status.FAILED, "target": Status.ERROR}.get(stage, Status.CPU_TOO)
        result.summary = result.failures[0]
        if result.status is Status.CPU_TOO:
            result.failures.insert(0, "the pipeline does not load on the CPU either: not an MPS problem")
        loaded.pipe = None
    loaded.load.warnings = captured
    return loaded


def run_suite_check(name: str, loaded: Loaded, *, nodeid: str | None = None) -> Outcome:
    """Run check ``name`` (an id of :mod:`pytest_mps.registry`) on ``loaded``. Never raises: a failed
    check is a failed result; one that does not run on this target, or on a pipeline that did not
    load, is a skipped one."""
    from pytest_mps.context import CheckContext, using_context
    from pytest_mps.registry import get, resolve_function

    spec = get(name)
    if spec.id == "load":
        return loaded.load
    if loaded.pipe is None or loaded.target is None:
        why = loaded.load.result.summary
        return skipped(
            spec.id, loaded.spec, loaded.target, f"{loaded.spec.label} did not load: {why}", nodeid
        )
    if not spec.runs_on(loaded.target.name):
        return skipped(spec.id, loaded.spec, loaded.target, _not_here(spec.id, loaded.target), nodeid)
    caught: list[dict[str, Any]] = []
    ctx = CheckContext(
        target=loaded.target,
        ini_tolerance=dict(loaded.settings.ini_tolerance),
        references=loaded.references,
        nodeid=nodeid,
        localize=loaded.settings.localize,
    )
    function = resolve_function(spec)
    from pytest_mps.quiet import quiet_libraries

    scope = target_scope(loaded.target)
    with warnings_into(caught), using_context(ctx), scope as emulation, quiet_libraries():
        result = function(loaded.pipe, loaded.inputs, **loaded.settings.check_options(spec.id))
    keep_emulation_notes(result, emulation)
    result.pipeline = loaded.spec.label
    result.nodeid = nodeid
    return Outcome(result, warnings=caught)


def _not_here(name: str, target: Target) -> str:
    where = (
        "on real MPS the hazards happen for real"
        if target.is_real_mps
        else f"this run's target is {target.label}"
    )
    if name == "audit":
        return f"the hazard audit runs on the emulated target only ({where})"
    return f"{name} does not run on {target.label}"


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
        return run_suite_check(name, self._loaded, nodeid=nodeid)

    def close(self) -> None:
        """Drop the pipeline and return cached target memory."""
        loaded, self._loaded = self._loaded, None
        release(loaded)


def release(loaded: Loaded | None) -> None:
    """Drop a loaded pipeline and return its cached target memory (before the next pipeline loads in
    the same process)."""
    if loaded is not None:
        loaded.pipe = None
        if loaded.target is not None:
            with contextlib.suppress(Exception):
                loaded.target.empty_cache()
