"""The pytest side of the bundled compatibility suite (``pytest_mps/suite/test_compat.py``): the
parametrisation by pipeline folder, the selection of checks, the runner of each pipeline's checks (a
worker process with ``--mps-isolate``) and the ``mps_suite`` fixture that turns a check's result into
the test's outcome. ``pytest-mps check PATH ...`` runs the suite through this; so does a project::

    pytest --pyargs pytest_mps.suite --mps-pipelines fixtures/tiny-sd -k parity
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.activation import SUITE_KEY
from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.isolation import WorkerPool
    from pytest_mps.options import Settings
    from pytest_mps.suite.runner import Outcome
    from pytest_mps.suite.settings import PipelineSpec, SuiteSettings
    from pytest_mps.target import Target

__all__ = ["SUITE_PROPERTY", "SuiteCheck", "mps_suite", "mps_suite_pipeline"]

_FIXTURE = "mps_suite_pipeline"
#: The user property naming a bundled-suite test's pipeline and check (``label::check``).
SUITE_PROPERTY = "mps_suite"


@dataclass
class SuiteState:
    """The suite's per-run state (in ``config.stash``)."""

    specs: list[PipelineSpec]
    #: the selected checks (None until a suite test is collected: a project's own run never needs them)
    checks: tuple[str, ...] | None = None
    order: list[str] = field(default_factory=list)
    load_reported: set[str] = field(default_factory=set)
    pool: WorkerPool | None = None

    def worker_pool(self) -> WorkerPool:
        """The run's worker pool (started on first need)."""
        if self.pool is None:
            from pytest_mps.isolation.worker_process import WorkerPool, take_early_pool

            self.pool = take_early_pool() or WorkerPool()  # pytest-mps check starts one early
        return self.pool


def pytest_configure(config: pytest.Config) -> None:
    install(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    close(config)


def install(config: pytest.Config) -> None:
    """Check the suite's pipeline folders (a missing one, or one without ``model_index.json``, is a
    usage error; pickle-only weights and corrupt files are the load check's verdict) and set up."""
    settings = session_of(config).settings
    if not settings.pipelines:  # a project's own run (or the suite without pipelines): no folder to check
        config.stash[SUITE_KEY] = SuiteState(specs=[])
        return
    from pytest_mps.pipelines import PipelineLoadError, check_folder
    from pytest_mps.suite.settings import pipeline_specs

    for path in settings.pipelines:
        try:
            check_folder(Path(path).expanduser(), allow_pickle=True)
        except PipelineLoadError as exc:
            raise pytest.UsageError(str(exc)) from None
    specs = pipeline_specs(settings.pipelines)
    config.stash[SUITE_KEY] = SuiteState(specs=specs, checks=selected_checks(settings))


def selected_checks(settings: Settings) -> tuple[str, ...]:
    """The suite checks a run selects: ``--mps-checks`` (or every check), without ``explore`` unless it
    is named or ``--mps-explore`` is on."""
    from pytest_mps.registry import check_ids

    checks = settings.checks or check_ids()
    if not settings.explore and not (settings.checks and "explore" in settings.checks):
        checks = tuple(c for c in checks if c != "explore")  # exploration is off unless asked for
    return checks


def _state(config: pytest.Config) -> SuiteState:
    return config.stash[SUITE_KEY]


def suite_settings(config: pytest.Config) -> SuiteSettings:
    """How the suite's checks run, from the run's settings."""
    from pytest_mps.plugin.references import reference_setup
    from pytest_mps.suite.settings import SuiteSettings

    session = session_of(config)
    settings = session.settings
    schedulers = () if settings.schedulers == "compatible" else tuple(settings.schedulers.split(","))
    store = reference_setup(config).store
    return SuiteSettings(
        device=session.target.name,
        steps=settings.steps,
        size=settings.size,
        schedulers=schedulers,
        allow_pickle=settings.allow_pickle,
        ini_tolerance=settings.ini_tolerance,
        # Worker processes open their own store on the session's folder.
        references=str(store.folder) if store is not None and settings.isolate else None,
        update_references=settings.update_references,
        localize=settings.localize,
        explore=settings.explore,
        explore_database=_explore_database(config) if settings.explore else None,
    )


def _explore_database(config: pytest.Config) -> str | None:
    """Hypothesis's example database for the exploration check, in pytest's cache folder (a failure
    found once replays first next time); none without the cache."""
    cache = getattr(config, "cache", None)
    return str(cache.mkdir("pytest-mps-explore")) if cache is not None else None


def plan_lines(labels: Sequence[str], target: Target, settings: Settings) -> list[str]:
    """What a run of the suite will do: the pipelines, the target (and whether it is an MPS verdict),
    isolation, steps, size and schedulers (the header of a run, and of ``pytest-mps check``)."""
    if not target.available:
        where = f"no target ({target.reason})"
    elif target.is_real_mps:
        where = "target mps (a real MPS verdict)"
    else:
        where = f"target {target.label}: a pre-check, never an MPS verdict"
    if settings.isolate:
        limit = f"{settings.timeout:g}s limit per check" if settings.timeout else "no time limit"
        isolation = f"crash isolation on (a worker process, a fresh one after a crash; {limit})"
    else:
        isolation = "crash isolation off (a crash on the target ends the session)"
    size = f"{settings.size} px" if settings.size else "smallest valid size"
    return [
        f"mps check: {len(labels)} pipeline(s): {', '.join(labels)} | {where}",
        f"mps check: {isolation} | {settings.steps} steps, {size}, schedulers {settings.schedulers}",
    ]


def suite_header(config: pytest.Config) -> list[str]:
    """The header lines of a run that checks pipelines."""
    state = config.stash.get(SUITE_KEY, None)
    if state is None or not state.specs:
        return []
    session = session_of(config)
    return plan_lines([s.label for s in state.specs], session.target, session.settings)


# --- collection ----------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _FIXTURE not in metafunc.fixturenames:
        return
    state = metafunc.config.stash.get(SUITE_KEY, None)
    specs: Sequence[PipelineSpec | None] = state.specs if state and state.specs else [None]
    metafunc.parametrize(
        _FIXTURE, specs, ids=[s.label if s else "no-pipelines" for s in specs], scope="module", indirect=True
    )


def _suite_check(item: pytest.Item) -> str | None:
    """The check a bundled-suite test runs (None for any other test)."""
    from pytest_mps.registry import CHECKS

    name = getattr(item, "originalname", "")
    check = name[len("test_") :] if name.startswith("test_") else ""
    return check if _FIXTURE in getattr(item, "fixturenames", ()) and check in CHECKS else None


def _suite_key(item: pytest.Item) -> tuple[str, str] | None:
    """(pipeline label, check) of a bundled-suite test with a pipeline."""
    from pytest_mps.suite.settings import PipelineSpec

    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get(_FIXTURE) if callspec is not None else None
    check = _suite_check(item)
    return (spec.label, check) if isinstance(spec, PipelineSpec) and check else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(SUITE_KEY, None)
    if state is None:
        return
    kept, dropped = [], []
    for item in items:
        if _FIXTURE not in getattr(item, "fixturenames", ()):  # most tests of a project's own run
            kept.append(item)
            continue
        check = _suite_check(item)
        if check is not None:
            if state.checks is None:
                state.checks = selected_checks(session_of(config).settings)
            if check not in state.checks:
                dropped.append(item)
                continue
        key = _suite_key(item)
        if key is not None:
            item.user_properties.append((SUITE_PROPERTY, f"{key[0]}::{key[1]}"))
            if key[0] not in state.order:
                state.order.append(key[0])
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mps_suite_pipeline(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The runner of one pipeline's suite checks (a worker process with ``--mps-isolate``)."""
    spec = getattr(request, "param", None)
    if spec is None:
        pytest.skip("no pipelines to check: pass --mps-pipelines PATH [PATH ...] (or ini mps_pipelines)")
    config = request.config
    session = session_of(config)
    state = _state(config)
    target = session.target
    if not target.available:
        pytest.skip(f"no target device: {target.reason}")
    settings = suite_settings(config)
    runner: Any
    if session.settings.isolate:
        from pytest_mps.isolation import IsolatedRunner

        runner = IsolatedRunner(
            spec,
            settings,
            target=target,
            timeout=session.settings.timeout_or_none,
            pool=state.worker_pool(),  # one worker serves pipeline after pipeline until one dies
        )
    else:
        from pytest_mps.suite.runner import InProcessRunner

        runner = InProcessRunner(spec, settings, references=session.references)
    try:
        yield runner
    finally:
        runner.close()


class SuiteCheck:
    """What a suite test calls: ``mps_suite.check("cpu_parity")`` runs the check on the test's
    pipeline, records its result with pytest-mps, and passes, fails, skips or x-fails the test."""

    def __init__(self, item: pytest.Item, runner: Any) -> None:
        self.item = item
        self.runner = runner

    def check(self, name: str) -> None:
        """Run check ``name`` and turn its outcome into the test's."""
        __tracebackhide__ = True
        state = _state(self.item.config)
        label = self.runner.spec.label
        first = self.runner.load(self.item.nodeid if name == "load" else None)
        if name == "load":
            state.load_reported.add(label)
            outcome = first
        elif not first.passed and label in state.load_reported:
            pytest.skip(f"{label} did not load (see its load check)")
        elif not first.passed:  # the load check is not selected: its failure is this check's
            outcome = _as_check(first, name)
        else:
            outcome = self.runner.check(name, self.item.nodeid)
        self._conclude(outcome)

    def _conclude(self, outcome: Outcome) -> None:
        from pytest_mps.verdict import Status

        __tracebackhide__ = True
        item = self.item
        if outcome.stderr.strip():
            item.add_report_section("call", "worker stderr", outcome.stderr)
        session = session_of(item.config)
        for caught in outcome.warnings:
            if caught.get("library"):
                session.note_library_warning(caught)
            else:
                _reemit(caught)
        result = outcome.result
        if result.status is Status.SKIPPED:
            pytest.skip(result.summary)
        if (result.details or {}).get("death"):
            item.user_properties.append(("mps:worker_stderr", outcome.stderr[-65536:]))
        session.record(item, result)
        if not result.passed:  # a failure on the CPU too fails the test as well: the report says why
            pytest.fail(result.report(), pytrace=False)


def _as_check(load: Outcome, name: str) -> Outcome:
    """A failed load reported as check ``name`` (when the load check itself was not selected)."""
    import dataclasses

    result = dataclasses.replace(
        load.result, check=name, failures=[f"the pipeline did not load: {load.result.summary}"]
    )
    return dataclasses.replace(load, result=result)


def _reemit(caught: dict[str, Any]) -> None:
    """Raise a warning a worker caught, here, so pytest reports it with the test."""
    import builtins
    import importlib
    import sys

    module, _, name = str(caught.get("category", "")).rpartition(".")
    category: Any = getattr(builtins, name, None) if module == "builtins" else None
    if category is None and module and (module in sys.modules or module.startswith("pytest_mps")):
        try:
            category = getattr(importlib.import_module(module), name, None)
        except ImportError:
            category = None
    message = str(caught.get("message", ""))
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category, message = UserWarning, f"[{caught.get('category')}] {message}"
    warnings.warn_explicit(message, category, str(caught.get("filename", "?")), int(caught.get("lineno", 0)))


@pytest.fixture
def mps_suite(request: pytest.FixtureRequest, mps_suite_pipeline: Any) -> SuiteCheck:
    """Runs a suite check on the test's pipeline: ``mps_suite.check("cpu_parity")``."""
    return SuiteCheck(request.node, mps_suite_pipeline)


def worker_reference_stats(config: pytest.Config) -> list[dict[str, Any]]:
    """The reference-store counts of the run's worker processes."""
    state = config.stash.get(SUITE_KEY, None)
    return list(state.pool.reference_stats.values()) if state is not None and state.pool is not None else []


def close(config: pytest.Config) -> None:
    """Stop the spare worker at the end of the run."""
    state = config.stash.get(SUITE_KEY, None)
    if state is not None and state.pool is not None:
        state.pool.close()
