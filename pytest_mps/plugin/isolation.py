"""Crash isolation for a project's own tests (``--mps-isolate``, ini ``mps_isolate``): every test that
uses the device (``mps_pipeline``, ``mps_device``, ``mps_device_lock`` or the ``mps`` marker: see
:func:`pytest_mps.plugin.xdist.uses_device`) runs in a worker process, a pytest session of its own in a
fresh interpreter (:mod:`pytest_mps.isolation.session_worker`); the other tests run here as usual.

One worker serves consecutive device tests (its session-scoped state, such as the ``mps_pipeline``
cache, stays warm) until one kills it: a signal (a Metal assertion's SIGABRT, a segfault), an exit, or a
hang past ``--mps-timeout``. That test then fails, naming the signal and quoting the worker's stderr (the
assertion line), and the session goes on with a fresh worker. The worker's reports are logged here as
if the test had run here, so the terminal, JUnit XML and pytest-mps's tables and reports see every
result; the results travel in the reports' ``user_properties``.

The bundled suite (``mps_suite``) is not isolated twice: with ``--mps-isolate`` its checks already run
in one worker per pipeline (:mod:`pytest_mps.isolation.runner`). Under pytest-xdist each xdist worker
isolates its own device tests the same way.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.activation import ISOLATION_KEY
from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.isolation.session_client import RunOutcome, SessionWorker

__all__ = ["ProjectIsolation", "isolates", "worker_emulation_notes", "worker_reference_stats"]

#: The user properties a crashed test's report carries (JUnit XML shows them).
CRASH_PROPERTY = "mps:crash"
STDERR_PROPERTY = "mps:worker_stderr"


def isolates(item: pytest.Item) -> bool:
    """Whether ``--mps-isolate`` runs this test in a worker: it uses the device and is not one of the
    bundled suite's (whose checks have their own workers)."""
    from pytest_mps.plugin.xdist import uses_device

    return uses_device(item) and "mps_suite_pipeline" not in getattr(item, "fixturenames", ())


class ProjectIsolation:
    """The run's isolation state: the plan (which tests run where, in what order), the current
    worker, and what the workers reported besides tests (reference counts)."""

    def __init__(self, config: pytest.Config) -> None:
        from pytest_mps.plugin.activation import is_worker

        self.config = config
        self.timeout = session_of(config).settings.timeout_or_none
        #: under pytest-xdist the run order is the scheduler's, not the collection's
        self.in_order = not is_worker(config)
        self.items: list[pytest.Item] = []
        self.position: dict[int, int] = {}
        self.isolated: list[bool] = []
        self.worker: SessionWorker | None = None
        self.workers = 0
        self.broken: str | None = None
        self.failed_starts = 0
        self.reference_stats: dict[int, dict[str, Any]] = {}
        #: each worker's emulated-device notes so far (line -> count), by process id
        self.emulation_notes: dict[int, dict[str, int]] = {}
        self.preload: list[str] = []

    # -- the plan -----------------------------------------------------------------------------------

    def plan(self, items: Sequence[pytest.Item]) -> None:
        """Note the collected tests; start a worker now when some will need one (its start-up and
        collection then overlap the tests that run here). Under pytest-xdist a worker starts on first
        need: an xdist worker may never be given a device test."""
        self.items = list(items)
        self.position = {id(item): i for i, item in enumerate(self.items)}
        self.isolated = [isolates(item) for item in self.items]
        self.preload = _preload(
            [item for item, isolated in zip(self.items, self.isolated, strict=True) if isolated]
        )
        if self.in_order and any(self.isolated):
            self._worker()

    def _is_isolated(self, item: pytest.Item) -> bool:
        index = self.position.get(id(item))
        return self.isolated[index] if index is not None else isolates(item)

    def _following(
        self, item: pytest.Item, nextitem: pytest.Item | None, *, isolated: bool
    ) -> pytest.Item | None:
        """The next test after ``item`` that runs on the same side (here, or in the worker), when the
        run follows collection order; else ``nextitem`` if it runs on that side, else None (the side
        then tears everything down, which is always correct)."""
        index = self.position.get(id(item))
        count = len(self.items)
        if self.in_order and index is not None and index + 1 < count and self.items[index + 1] is nextitem:
            found = next((i for i in range(index + 1, count) if self.isolated[i] == isolated), None)
            return None if found is None else self.items[found]
        if nextitem is not None and self._is_isolated(nextitem) == isolated:
            return nextitem
        return None

    # -- running ------------------------------------------------------------------------------------

    def protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """Run ``item``: in the worker when it uses the device; here with the next test that runs here
        as its successor when the next one is isolated; else leave it to pytest (None)."""
        if self._is_isolated(item):
            self._run_isolated(item, self._following(item, nextitem, isolated=True))
            return True
        if nextitem is not None and self._is_isolated(nextitem):
            from _pytest.runner import runtestprotocol

            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            runtestprotocol(item, nextitem=self._following(item, nextitem, isolated=False))
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        return None

    def _worker(self) -> SessionWorker:
        if self.worker is None or not self.worker.alive:
            from pytest_mps.isolation.session_client import SessionWorker

            self.workers += 1
            params = self.config.invocation_params
            settings = session_of(self.config).settings
            self.worker = SessionWorker(
                _worker_arguments(self.config),
                cwd=params.dir,
                basetemp=_worker_basetemp(self.config, self.workers),
                images=settings.report_html is not None,
                echo=getattr(self.config.option, "capture", "fd") == "no",
                preload=self.preload,
            )
        return self.worker

    def _run_isolated(self, item: pytest.Item, following: pytest.Item | None) -> None:
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        if self.broken is not None:
            self._log_failure(item, "setup", [self.broken], "", [])
        else:
            worker = self._worker()
            outcome = worker.run(
                item.nodeid,
                following.nodeid if following is not None else None,
                timeout=self.timeout,
                on_message=lambda message: self._relay(item, message),
            )
            self._conclude(item, worker, outcome, following)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _relay(self, item: pytest.Item, message: dict[str, Any]) -> None:
        """Log a worker's report or warning here, as if the test had run here."""
        event = message.get("event")
        if event == "report":
            data = _with_tuples(message["data"])
            report = self.config.hook.pytest_report_from_serializable(config=self.config, data=data)
            item.ihook.pytest_runtest_logreport(report=report)
        elif event == "warning":
            _rewarn(self.config, message)

    def _conclude(
        self, item: pytest.Item, worker: SessionWorker, outcome: RunOutcome, following: pytest.Item | None
    ) -> None:
        if outcome.references is not None:
            self.reference_stats[worker.pid] = outcome.references
        if outcome.emulation_notes:
            self.emulation_notes[worker.pid] = outcome.emulation_notes
        if outcome.images:
            from pytest_mps.plugin.reports import collector_of

            images = collector_of(self.config).images
            for key, (pngs, facts) in outcome.images.items():
                images[key] = ({name: base64.b64decode(data) for name, data in pngs.items()}, facts)
        if outcome.error is not None:
            self._log_failure(item, "setup", [outcome.error], outcome.stderr, outcome.properties)
            return
        death = outcome.death
        if death is None:
            return
        from pytest_mps.isolation.session_client import crash_lines

        self.failed_starts = self.failed_starts + 1 if death.doing == "starting" else 0
        if self.failed_starts >= 2:  # twice in a row: it will not start for the next test either
            self.broken = (
                f"no isolated worker: two in a row could not start; {crash_lines(death, when=None)[0]}"
            )
        when = outcome.unfinished_phase() or "teardown"
        lines = crash_lines(death, when=outcome.unfinished_phase())
        lines.append(f"the test process's stderr is attached (Captured stderr {when})")
        properties = [
            *outcome.properties,
            (CRASH_PROPERTY, death.cell()),
            (STDERR_PROPERTY, death.stderr[-65536:]),
        ]
        if outcome.running is not None:  # the check it died in: a crashed (or hung) result of it
            properties.append(_crashed_result(self.config, item, outcome.running, death, lines))
        expected = None
        if when == "call":  # a crash is the test's failure: an xfail test expected it
            from pytest_mps.plugin.running_test import expected_crash_reason

            expected = expected_crash_reason(item)
        self._log_failure(item, when, lines, outcome.stderr or death.stderr, properties, xfail=expected)
        if following is not None:
            self._worker()  # the replacement starts now, while this process carries on

    def _log_failure(
        self,
        item: pytest.Item,
        when: str,
        lines: list[str],
        stderr: str,
        properties: Sequence[Any],
        *,
        xfail: str | None = None,
    ) -> None:
        """Log a failed ``when`` report that says ``lines`` (then a passed teardown after a failed
        setup or call, as pytest always reports a teardown); with ``xfail`` (the reason), the call's
        failure is the expected one: an xfailed report, as pytest makes for an xfail test that raised."""
        from _pytest.reports import TestReport

        keywords = {name: 1 for name in item.keywords}
        common = {"keywords": keywords, "user_properties": [tuple(p) for p in properties]}
        report = TestReport(
            item.nodeid,
            item.location,
            outcome="skipped" if xfail is not None else "failed",
            longrepr="\n".join(lines),
            when=when,  # type: ignore[arg-type]
            sections=[(f"Captured stderr {when}", stderr)] if stderr.strip() else [],
            **common,
        )
        if xfail is not None:
            report.wasxfail = f"{xfail} ({lines[0]})" if xfail else lines[0]
        item.ihook.pytest_runtest_logreport(report=report)
        if when != "teardown":
            closing = TestReport(
                item.nodeid, item.location, outcome="passed", longrepr=None, when="teardown", **common
            )
            item.ihook.pytest_runtest_logreport(report=closing)

    def finish(self) -> None:
        """Ask the worker to end (it tears down what it still holds) while this session ends too."""
        if self.worker is not None:
            self.worker.ask_to_exit()

    def close(self) -> None:
        """Wait for the worker to end (or kill it)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()


def _preload(items: Sequence[pytest.Item]) -> list[str]:
    """What a worker imports before it says it is ready, so that ``--mps-timeout`` times the tests and
    not the first import: torch for tests that reach the device through ``mps_device``,
    ``mps_pipeline`` or the ``mps`` marker, Diffusers too for ``mps_pipeline``."""
    names = {name for item in items for name in getattr(item, "fixturenames", ())}
    marked = any(item.get_closest_marker("mps") is not None for item in items)
    torch = marked or bool(names & {"mps_device", "mps_pipeline"})
    return [*(["torch"] if torch else []), *(["diffusers"] if "mps_pipeline" in names else [])]


def _with_tuples(data: dict[str, Any]) -> dict[str, Any]:
    """A serialised report with the tuples JSON turned into lists made tuples again (a skip's
    ``longrepr`` must be one, and plugins unpack the others)."""
    data = dict(data)
    for name in ("location", "longrepr"):
        if isinstance(data.get(name), list):
            data[name] = tuple(data[name])
    for name in ("sections", "user_properties"):
        data[name] = [tuple(entry) for entry in data.get(name) or ()]
    return data


def _worker_arguments(config: pytest.Config) -> list[str]:
    """The worker's pytest arguments: the parent's, with output captured as ``tee-sys`` (what a test
    writes to ``sys.stderr`` also reaches the stderr the parent quotes; ``-s`` stays ``-s``). The
    other overrides are made in the worker, on the parsed options."""
    args = [str(a) for a in config.invocation_params.args]
    capture = getattr(config.option, "capture", "fd")
    return [*args, "--capture=no" if capture == "no" else "--capture=tee-sys"]


def _worker_basetemp(config: pytest.Config, number: int) -> str | None:
    """A temporary-files root of the worker's own, under this session's (pytest empties a given
    ``--basetemp`` at start: it must never be this session's)."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    return str(Path(factory.getbasetemp(), f"mps-isolated-{number}"))


def _rewarn(config: pytest.Config, message: dict[str, Any]) -> None:
    """Record a warning a worker's test raised, for this session's warnings summary."""
    import builtins
    import importlib

    module, _, name = str(message.get("category", "")).rpartition(".")
    category: Any = getattr(builtins, name, None) if module == "builtins" else None
    if category is None and module:
        try:
            category = getattr(importlib.import_module(module), name, None)
        except ImportError:
            category = None
    text = str(message.get("message", ""))
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category, text = UserWarning, f"[{message.get('category')}] {text}"
    recorded = warnings.WarningMessage(
        category(text), category, str(message.get("filename", "?")), int(message.get("lineno") or 0)
    )
    config.hook.pytest_warning_recorded.call_historic(
        kwargs={
            "warning_message": recorded,
            "when": "runtest",
            "nodeid": message.get("nodeid", ""),
            "location": None,
        }
    )


def worker_emulation_notes(config: pytest.Config) -> list[dict[str, int]]:
    """The emulated-device notes of the run's isolated test workers (line -> count, one per worker)."""
    state = config.stash.get(ISOLATION_KEY, None)
    return list(state.emulation_notes.values()) if state is not None else []


def worker_reference_stats(config: pytest.Config) -> list[dict[str, Any]]:
    """The reference-store counts of the run's isolated test workers (one entry per worker)."""
    state = config.stash.get(ISOLATION_KEY, None)
    return list(state.reference_stats.values()) if state is not None else []


# --- hooks ---------------------------------------------------------------------------------------


class _ProtocolHook:
    """The per-test hook of an isolated run, registered only when isolation is on (a plain run pays
    nothing per test)."""

    def __init__(self, state: ProjectIsolation) -> None:
        self.state = state

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        return self.state.protocol(item, nextitem)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    planning = any(getattr(option, name, False) for name in ("collectonly", "setuponly", "setupplan"))
    if session_of(config).settings.isolate and not planning:  # nothing runs when only planning
        state = config.stash[ISOLATION_KEY] = ProjectIsolation(config)
        config.pluginmanager.register(_ProtocolHook(state), "pytest-mps-isolation-protocol")


def pytest_report_header(config: pytest.Config) -> list[str]:
    from pytest_mps.plugin.suite import suite_header

    settings = session_of(config).settings
    if not settings.isolate or suite_header(config):
        return []
    limit = f"{settings.timeout:g}s limit per test" if settings.timeout else "no time limit"
    return [f"mps: crash isolation on: each test that uses the device runs in a worker process ({limit})"]


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash.get(ISOLATION_KEY, None)
    if state is not None:
        state.plan(session.items)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(ISOLATION_KEY, None)
    if state is not None:
        state.finish()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(ISOLATION_KEY, None)
    if state is not None:
        state.close()


def _crashed_result(
    config: pytest.Config, item: pytest.Item, running: dict[str, Any], death: Any, lines: list[str]
) -> tuple[str, str]:
    """The result property of the check a worker died in: ``crashed`` (a signal or an exit) or ``hung``,
    with the death's facts, so the tables and reports list it like a check that failed."""
    import json

    from pytest_mps.plugin.session import RESULT_PROPERTY, session_of
    from pytest_mps.results import CheckResult
    from pytest_mps.verdict import Status

    target = session_of(config).target
    cell = death.cell()
    result = CheckResult(
        check=str(running.get("check")),
        status=Status.HUNG if death.kind == "hang" else Status.CRASHED,
        target=target.label,
        real_mps=target.is_real_mps,
        pipeline=str(running.get("pipeline") or ""),
        pipeline_class=str(running.get("pipeline_class") or ""),
        summary=lines[0],
        figure_text=cell.split(" ", 1)[1] if " " in cell else "",
        failures=lines[1:],
        details={"death": {"kind": death.kind, "signal": death.signal, "quote": death.quote, "cell": cell}},
        nodeid=item.nodeid,
    )
    return (RESULT_PROPERTY, json.dumps(result.to_dict()))
