"""The running test, as the checks it calls and its crashes see it: its check context (built on a
check's first call in it), the reason an applying ``xfail_mps`` marker gives, whether a crash of an
isolated test is its expected failure, and the note an emulated Metal abort leaves in its report.
Loaded on first need (:mod:`.markers` is the start-up side)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.activation import CONTEXT_KEY
from pytest_mps.plugin.markers import parsed_markers
from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.context import CheckContext

__all__ = ["context_for", "expected_crash_reason", "note_crash", "running_context", "xfail_mps_reason"]


def running_context(config: pytest.Config) -> CheckContext | None:
    """The context of the test running now (from its setup to its teardown), built on first need: the
    provider :mod:`.markers` registers for each session."""
    from pytest_mps.plugin.reports import reads_test_reports

    session = session_of(config)
    item = session.current_item
    running = os.environ.get("PYTEST_CURRENT_TEST", "")
    if item is not None and not reads_test_reports(config) and not running.startswith(f"{item.nodeid} ("):
        # No report was read yet (the first recorded result starts the reading, see
        # MPSSession.record): nothing cleared the test at its teardown, and it is no longer running.
        session.current_item = item = None
    if item is None:
        # A run that was dormant until this check (no per-test hook noted the test): the test pytest
        # says is running.
        from pytest_mps.plugin.activation import collected_item

        item = collected_item(config, running.rpartition(" (")[0]) if running else None
        if item is None:
            return None
        session.current_item = item
    context = item.stash.get(CONTEXT_KEY, None)
    if context is None:
        context = item.stash[CONTEXT_KEY] = context_for(item)
    return context


def xfail_mps_reason(mark: Any, target: Any) -> str:
    """The xfail reason an applying ``xfail_mps`` marker gives its test."""
    return f"[xfail_mps] {mark.reason or f'expected to fail on {target.label}'}"


def expected_crash_reason(item: pytest.Item) -> str | None:
    """Why a crash (or hang) of ``item``'s call, in an isolated worker, is its expected failure: an
    applying xfail mark (pytest's, or ``xfail_mps`` as the target and environment decide) that runs the
    test and names no ``raises=`` (a crash is no exception type). None when the crash is a failure."""
    from _pytest.skipping import evaluate_xfail_marks

    xfailed = evaluate_xfail_marks(item)
    if xfailed is not None and xfailed.run and xfailed.raises is None:
        return xfailed.reason
    parsed = parsed_markers(item)
    if not parsed:
        return None
    from pytest_mps.gating import decide

    session = session_of(item.config)
    decision = decide(parsed, session.target, session.environment)
    mark = decision.xfail
    if decision.skip_reason or mark is None or mark.raises is not None:
        return None
    return xfail_mps_reason(mark, session.target)


def context_for(item: pytest.Item) -> CheckContext:
    """The check context of a test: the target, its tolerance marker, the ini tolerances, the shared
    references, and a sink that records each result with the test."""
    from pytest_mps.context import CheckContext
    from pytest_mps.markers import MpsTolerance

    session = session_of(item.config)
    marker = next((m.values for m in parsed_markers(item) if isinstance(m, MpsTolerance)), {})
    return CheckContext(
        target=session.target,
        marker_tolerance=marker,
        ini_tolerance=session.settings.ini_tolerance,
        references=session.references,
        record=lambda result: session.record(item, result),
        nodeid=item.nodeid,
        localize=session.settings.localize,
        on_start=lambda check, pipe: session.check_started(item, check, pipe),
    )


def note_crash(report: pytest.TestReport) -> None:
    """An emulated Metal abort (a buffer of 2**32 bytes or more) is a crash on a Mac: say so in the
    failed report (a section and the ``mps:crash`` property). Called with every failed call report, in
    the plugin's report hook: no wrapper around every test."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = str(getattr(crash, "message", "") or "")
    kind, _, text = message.partition(":")
    if kind.rsplit(".", 1)[-1].strip() != "MPSAbortError":
        return
    if any(name == "mps:crash" for name, _ in report.user_properties):
        return  # noted already (in the pytest-xdist worker that ran it)
    text = text.strip().splitlines()[0] if text.strip() else "MPSAbortError"
    report.sections.append(
        ("pytest-mps crash", f"CRASH: on a Mac this aborts the whole process (SIGABRT): {text}")
    )
    report.user_properties.append(("mps:crash", text))
