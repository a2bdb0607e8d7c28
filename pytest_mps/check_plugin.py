"""The pytest side of the bundled compatibility suite (``pytest_mps/suite/test_compat.py``): its
options, the parametrisation by pipeline folder, crash isolation, and the verdict table.

``pytest-mps check PATH ...`` runs the suite through this plugin; so does a project's own pytest::

    pytest --pyargs pytest_mps.suite --mps-pipelines fixtures/tiny-sd -k parity

The table has one row per pipeline and one column per check; each cell is the outcome and its key
figure; the last column is the verdict. Only a real MPS target where every required check passed and
MPS beat the CPU "earns the MPS badge"; any other target gives a "pre-check" verdict that names the
stand-in. Imported at every pytest start-up: it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.suite import (
    CHECKS,
    DEFAULT_TIMEOUT_S,
    FIGURES,
    REQUIRED,
    Outcome,
    PipelineSpec,
    SuiteSettings,
    cell,
    default_target_name,
    pipeline_specs,
    skip_reason,
    split_list,
    unknown_checks,
    validate_schedulers,
)

if TYPE_CHECKING:
    from pytest_mps.isolation import WorkerPool
    from pytest_mps.target import Target

__all__ = ["SuiteCheck", "verdict_lines"]

_FIXTURE = "mps_suite_pipeline"
_SUITE_PROPERTY = "mps_suite"
_CELL_PROPERTY = "mps_suite_cell"
_BAD_STATES = ("FAIL", "CRASH", "HANG", "EXIT", "ERROR")
_STANDIN_KIND = {
    "emulated": "emulated",
    "cuda": "cuda stand-in",
    "xpu": "xpu stand-in",
    "cpu": "cpu stand-in",
}


# --- options -------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mps", "pytest-mps: Diffusers pipelines on Apple's MPS backend")
    group.addoption(
        "--mps-pipelines",
        dest="mps_pipelines",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATH",
        help="pipeline folders for the bundled suite (pytest --pyargs pytest_mps.suite); ini mps_pipelines",
    )
    group.addoption(
        "--mps-isolate",
        dest="mps_isolate",
        action="store_true",
        default=None,
        help="run each pipeline's suite checks in a worker process, so a crash or hang fails one check "
        "(default in pytest-mps check)",
    )
    group.addoption(
        "--no-mps-isolate",
        dest="mps_isolate",
        action="store_false",
        help="run the suite's checks in the pytest process (default in plain pytest)",
    )
    group.addoption(
        "--mps-timeout",
        dest="mps_timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="with --mps-isolate: a suite check running longer is killed as hung "
        f"(default {DEFAULT_TIMEOUT_S:g}; 0: none)",
    )
    group.addoption(
        "--mps-steps",
        dest="mps_steps",
        type=int,
        default=2,
        metavar="N",
        help="inference steps of the suite's calls (default 2)",
    )
    group.addoption(
        "--mps-size",
        dest="mps_size",
        type=int,
        default=None,
        metavar="PX",
        help="output side of the suite's calls (default: the smallest valid; "
        "the speed check: the pipeline's own)",
    )
    group.addoption(
        "--mps-schedulers",
        dest="mps_schedulers",
        default="compatible",
        metavar="LIST",
        help="schedulers the suite sweeps: 'compatible' (default) or comma-separated class names",
    )
    group.addoption(
        "--mps-checks",
        dest="mps_checks",
        default=None,
        metavar="LIST",
        help=f"comma-separated suite checks to run (default all: {', '.join(CHECKS)})",
    )
    group.addoption(
        "--mps-allow-pickle",
        dest="mps_allow_pickle",
        action="store_true",
        default=False,
        help="let the suite load pickled .bin weights (unpickling can run code)",
    )
    parser.addini("mps_pipelines", "pipeline folders the bundled suite checks", type="paths", default=[])


# --- session state -------------------------------------------------------------------------------


@dataclass
class Cell:
    """One verdict-table cell: its state (``ok``, ``FAIL``, ``CRASH SIGABRT``...), figure and note."""

    state: str
    figure: str = ""
    note: str = ""

    @property
    def bad(self) -> bool:
        """True for failures, crashes, hangs and errors."""
        return self.state.split(" ")[0] in _BAD_STATES

    def text(self) -> str:
        """The cell as printed."""
        return f"{self.state} {self.figure}".strip()


@dataclass
class SuiteState:
    """The suite's per-session state (in ``config.stash``)."""

    specs: list[PipelineSpec]
    isolate: bool
    timeout: float | None
    checks: list[str]
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    load_reported: set[str] = field(default_factory=set)
    pool: WorkerPool | None = None
    settings: SuiteSettings | None = None

    def worker_pool(self) -> WorkerPool:
        """The session's worker pool (started on first need)."""
        if self.pool is None:
            from pytest_mps.isolation import WorkerPool

            self.pool = WorkerPool()
        return self.pool

    def prewarm_after(self, label: str) -> None:
        """Start a spare worker when another pipeline comes after ``label``."""
        if label in self.order and self.order.index(label) < len(self.order) - 1:
            self.worker_pool().prewarm()


_STATE = pytest.StashKey[SuiteState]()


def _state(config: pytest.Config) -> SuiteState | None:
    return config.stash.get(_STATE, None)


def _requested_paths(config: pytest.Config) -> list[str]:
    given = config.getoption("mps_pipelines") or []
    if given:
        return [str(p) for p in given]
    return [str(p) for p in config.getini("mps_pipelines") or []]


def _nothing_requested(config: pytest.Config) -> bool:
    from pytest_mps.target import ENV_VARIABLE

    return not (config.getoption("mps_device") or os.environ.get(ENV_VARIABLE) or config.getini("mps_device"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Validate the suite's options (one-line usage errors) and pick the suite's default target
    before pytest-mps resolves the session's target."""
    from pytest_mps.pipelines import PipelineLoadError, _check_folder

    checks = split_list(config.getoption("mps_checks")) or list(CHECKS)
    unknown = unknown_checks(checks)
    if unknown:
        raise pytest.UsageError(
            f"--mps-checks: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}"
        )
    steps, size, timeout = (config.getoption(n) for n in ("mps_steps", "mps_size", "mps_timeout"))
    if steps < 1:
        raise pytest.UsageError(f"--mps-steps {steps}: needs at least 1 step")
    if size is not None and size < 8:
        raise pytest.UsageError(f"--mps-size {size}: give a side of at least 8 pixels")
    if timeout < 0:
        raise pytest.UsageError(f"--mps-timeout {timeout:g}: give seconds, or 0 for no limit")
    schedulers = config.getoption("mps_schedulers")
    if schedulers and schedulers != "compatible":
        try:
            validate_schedulers(split_list(schedulers))
        except ValueError as exc:
            raise pytest.UsageError(f"--mps-schedulers: {exc}") from None
    paths = _requested_paths(config)
    for path in paths:
        try:
            # A missing folder or one without model_index.json is bad input; pickle-only weights and
            # corrupt files are the load check's verdict (they show in the table).
            _check_folder(Path(path).expanduser(), allow_pickle=True)
        except PipelineLoadError as exc:
            raise pytest.UsageError(str(exc)) from None
    if config.getoption("mps_pipelines") and _nothing_requested(config):
        # Asking for the suite on the command line with no target in mind: the check command's
        # default (mps, else emulated, else cpu) instead of "auto", which would skip every check where
        # there is no MPS. Pipelines from ini alone leave a project's target as it is.
        config.option.mps_device = default_target_name()
    state = SuiteState(
        specs=pipeline_specs(paths),
        isolate=bool(config.getoption("mps_isolate")),
        timeout=timeout or None,
        checks=[name for name in CHECKS if name in checks],
    )
    config.stash[_STATE] = state
    config.pluginmanager.register(_TableRecorder(state), "mps-suite-table")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = _state(config)
    if state is not None and state.pool is not None:
        state.pool.close()


def _target(config: pytest.Config) -> Target:
    from pytest_mps.plugin import session_of

    return session_of(config).target


def _settings(config: pytest.Config, state: SuiteState) -> SuiteSettings:
    if state.settings is None:
        from pytest_mps.plugin import session_of

        state.settings = SuiteSettings(
            device=_target(config).name,
            steps=config.getoption("mps_steps"),
            size=config.getoption("mps_size"),
            schedulers=tuple(s for s in split_list(config.getoption("mps_schedulers")) if s != "compatible"),
            allow_pickle=bool(config.getoption("mps_allow_pickle")),
            ini_tolerance=dict(session_of(config).ini_tolerance),
        )
    return state.settings


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = _state(config)
    if state is None or not state.specs:
        return None
    target = _target(config)
    if not target.available:
        where = f"no target ({target.reason})"
    elif target.is_real_mps:
        where = "target mps (a real MPS verdict)"
    else:
        where = f"target {target.label}: a pre-check, never an MPS verdict"
    size = config.getoption("mps_size")
    isolation = (
        f"crash isolation on (a worker process per pipeline; {state.timeout:g}s limit per check)"
        if state.isolate and state.timeout
        else "crash isolation on (a worker process per pipeline; no time limit)"
        if state.isolate
        else "crash isolation off (a crash on the target ends the session)"
    )
    return [
        f"mps check: {len(state.specs)} pipeline(s): {', '.join(s.label for s in state.specs)} | {where}",
        f"mps check: {isolation} | {config.getoption('mps_steps')} steps, "
        f"{f'{size} px' if size else 'smallest valid size'}, schedulers {config.getoption('mps_schedulers')}",
    ]


# --- collection ----------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _FIXTURE not in metafunc.fixturenames:
        return
    state = _state(metafunc.config)
    specs: Sequence[PipelineSpec | None] = state.specs if state and state.specs else [None]
    metafunc.parametrize(
        _FIXTURE,
        specs,
        ids=[s.label if s else "no-pipelines" for s in specs],
        scope="module",
        indirect=True,
    )


def _suite_key(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get(_FIXTURE) if callspec is not None else None
    name = getattr(item, "originalname", "")
    check = name[len("test_") :] if name.startswith("test_") else ""
    if not isinstance(spec, PipelineSpec) or check not in CHECKS:
        return None
    return spec.label, check


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    if state is None:
        return
    kept, dropped = [], []
    for item in items:
        key = _suite_key(item)
        if key is not None and key[1] not in state.checks:
            dropped.append(item)
            continue
        if key is not None:
            item.user_properties.append((_SUITE_PROPERTY, f"{key[0]}::{key[1]}"))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state(session.config)
    if state is None:
        return
    for item in session.items:
        key = _suite_key(item)
        if key is not None and key[0] not in state.order:
            state.order.append(key[0])


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mps_suite_pipeline(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The runner of one pipeline's suite checks (a worker process with ``--mps-isolate``)."""
    spec = getattr(request, "param", None)
    if spec is None:
        pytest.skip("no pipelines to check: pass --mps-pipelines PATH [PATH ...] (or ini mps_pipelines)")
    config = request.config
    state = _state(config)
    assert state is not None
    target = _target(config)
    if not target.available:
        pytest.skip(f"no target device: {target.reason}")
    settings = _settings(config, state)
    runner: Any
    if state.isolate:
        from pytest_mps.isolation import IsolatedRunner

        runner = IsolatedRunner(
            spec,
            settings,
            target=target,
            timeout=state.timeout,
            pool=state.worker_pool(),
            on_worker=lambda: state.prewarm_after(spec.label),
        )
    else:
        from pytest_mps.plugin import session_of
        from pytest_mps.suite import InProcessRunner

        runner = InProcessRunner(spec, settings, references=session_of(config).references)
    try:
        yield runner
    finally:
        runner.close()


class SuiteCheck:
    """What a suite test calls: ``mps_suite.check("cpu_parity")`` runs the check on the test's
    pipeline, records its result with pytest-mps, and passes, fails or skips the test."""

    def __init__(self, item: pytest.Item, runner: Any) -> None:
        self.item = item
        self.runner = runner

    def check(self, name: str) -> None:
        """Run check ``name`` and turn its outcome into the test's."""
        __tracebackhide__ = True
        config = self.item.config
        state = _state(config)
        assert state is not None
        label = self.runner.spec.label
        reason = skip_reason(name, _target(config))
        if reason:
            pytest.skip(reason)
        first = self.runner.load(self.item.nodeid if name == "load" else None)
        if name == "load":
            state.load_reported.add(label)
            outcome = first
        elif not first.passed and label in state.load_reported:
            pytest.skip(f"{label} did not load (see its load check)")
        elif not first.passed:
            outcome = _as_check(first, name)
        else:
            outcome = self.runner.check(name, self.item.nodeid)
        self._conclude(name, outcome)

    def _conclude(self, name: str, outcome: Outcome) -> None:
        __tracebackhide__ = True
        item = self.item
        if outcome.stderr.strip():
            item.add_report_section("call", "worker stderr", outcome.stderr)
        for caught in outcome.warnings:
            _reemit(caught)
        if outcome.skip:
            pytest.skip(outcome.skip)
        result = outcome.result
        assert result is not None
        from pytest_mps.plugin import session_of

        session_of(item.config).record(item, result)
        data = result.to_dict()
        death = data["details"].get("death")
        if death:
            state, figure = death["cell"], ""
            item.user_properties.append(("mps:worker_stderr", outcome.stderr[-65536:]))
        else:
            state, figure = cell(name, data)
        note = "" if result.passed else (result.failures or [result.summary])[0]
        if death:
            note = result.summary + (f"; {death['quote']}" if death.get("quote") else "")
        item.user_properties.append(
            (
                _CELL_PROPERTY,
                json.dumps({"state": state, "figure": figure, "note": note.splitlines()[0] if note else ""}),
            )
        )
        if not result.passed:
            pytest.fail(result.report(), pytrace=False)


def _as_check(load: Outcome, name: str) -> Outcome:
    """A failed load reported as check ``name`` (when the load check itself was not selected)."""
    import copy

    result = copy.copy(load.result)
    assert result is not None
    result.check = name
    result.details = {**result.details, "suite_check": name}
    result.failures = [f"the pipeline did not load: {result.summary}"]
    return Outcome(result, stderr=load.stderr, warnings=load.warnings)


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


# --- the verdict table ---------------------------------------------------------------------------


class _TableRecorder:
    """Fills the verdict table from test reports (also those pytest-xdist workers send back)."""

    def __init__(self, state: SuiteState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        key = props.get(_SUITE_PROPERTY)
        if not key:
            return
        label, check = str(key).split("::", 1)
        row = self.state.cells.setdefault(label, {})
        if report.when == "call" or (report.when == "setup" and not report.passed):
            row[check] = _cell_of(report, props)
        elif report.when == "teardown" and report.failed and check not in row:
            row[check] = Cell("ERROR", note="teardown failed")


def _cell_of(report: pytest.TestReport, props: dict[str, Any]) -> Cell:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return Cell("skip", note=str(reason).removeprefix("Skipped: "))
    raw = props.get(_CELL_PROPERTY) if report.when == "call" else None
    if raw:
        data = json.loads(raw)
        return Cell(data["state"], data.get("figure", ""), data.get("note", ""))
    text = str(report.longrepr or "").strip().splitlines()
    return Cell("ERROR", note=text[-1] if text else "error")


def _verdict(cells: dict[str, Cell], target: Target) -> str:
    failed = [name for name in CHECKS if name in cells and cells[name].bad]
    speed = cells.get("speed")
    pace = f"{speed.figure} the CPU's speed" if speed is not None and speed.figure else ""
    if failed:
        return "fails: " + ", ".join(failed) + (f" ({pace})" if "speed" in failed and pace else "")
    ran = [name for name in CHECKS if name in cells and cells[name].state != "skip"]
    if not ran:
        skipped = [c.note for c in cells.values() if c.note]
        return "not run" + (f": {skipped[0]}" if skipped else "")
    missing = [name for name in REQUIRED if name not in ran]
    if target.is_real_mps:
        if missing:
            return f"no badge yet: {', '.join(missing)} not run (the badge needs every required check)"
        return f"earns the MPS badge ({speed.figure if speed else '?'} faster than the CPU)"
    text = f"pre-check passed ({_STANDIN_KIND.get(target.name, target.name + ' stand-in')})"
    if missing:
        text += f"; not run: {', '.join(missing)}"
    return text


def verdict_lines(state: SuiteState, target: Target) -> list[str]:
    """The verdict table: a header naming the target, one row per pipeline, notes below."""
    columns = [name for name in CHECKS if any(name in row for row in state.cells.values())]
    labels = [spec.label for spec in state.specs]
    if target.is_real_mps:
        head = "target: mps (Apple's MPS backend on this Mac): an MPS verdict"
    elif target.available:
        head = f"target: {target.label}: a pre-check on a stand-in, not an MPS verdict; no badge is awarded"
    else:
        head = f"target: none ({target.reason})"
    rows = [["pipeline", *columns, "verdict"]]
    for label in labels:
        cells = state.cells.get(label, {})
        rows.append(
            [label, *(cells[c].text() if c in cells else "-" for c in columns), _verdict(cells, target)]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [head]
    for n, row in enumerate(rows):
        lines.append("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip())
        if n == 0:
            lines.append("  ".join([*("-" * w for w in widths), "-" * 7]))
    if columns:
        meanings: dict[str, list[str]] = {}
        for name in columns:
            meanings.setdefault(FIGURES[name], []).append(name)
        lines.append("figures: " + "; ".join(f"{'/'.join(names)} {m}" for m, names in meanings.items()))
        if "speed" in columns and not target.is_real_mps:
            lines.append("speed is information only on a stand-in: only real MPS is judged against the CPU")
    notes = _notes(state, labels, columns)
    return lines + notes


def _notes(state: SuiteState, labels: list[str], columns: list[str]) -> list[str]:
    """One line per distinct failure of a pipeline (naming its checks), then the skip reasons."""
    failures: dict[tuple[str, str], list[str]] = {}
    skips: dict[str, list[tuple[str, str]]] = {}
    for label in labels:
        for name in columns:
            c = state.cells.get(label, {}).get(name)
            if c is None or not c.note:
                continue
            if c.bad:
                failures.setdefault((label, c.note), []).append(name)
            elif c.state == "skip":
                skips.setdefault(c.note, []).append((label, name))
    lines = [f"{label} {', '.join(names)}: {note}" for (label, note), names in failures.items()]
    for note, where in skips.items():
        checks = sorted({name for _, name in where}, key=columns.index)
        owners = sorted({label for label, _ in where}, key=labels.index)
        lines.append(f"skipped {', '.join(checks)} ({', '.join(owners)}): {note}")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _state(config)
    if state is None or not state.specs or not state.cells:
        return
    terminalreporter.section("pytest-mps verdict")
    for line in verdict_lines(state, _target(config)):
        terminalreporter.write_line(line)
