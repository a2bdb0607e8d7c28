"""The pytest side of the markers (:mod:`pytest_mps.markers` parses them, :mod:`pytest_mps.gating`
decides): parsing at collection, so a malformed marker is a collection error that names the test; the
skip or expected failure each test gets; the check context each test runs in; and the crash note of an
emulated Metal abort."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_mps.context import CheckContext, using_context
from pytest_mps.markers import MARKER_LINES, MarkerError, MpsTolerance, Parsed, parse_marker
from pytest_mps.plugin.session import session_of

__all__ = ["PARSED_KEY"]

PARSED_KEY = pytest.StashKey[tuple[Parsed, ...]]()


def register(config: pytest.Config) -> None:
    """Register every marker with its one-line description (``--strict-markers`` passes)."""
    for line in MARKER_LINES.values():
        config.addinivalue_line("markers", line)


def _parse_item_markers(item: pytest.Item) -> tuple[Parsed, ...]:
    return tuple(
        parse_marker(m.name, m.args, m.kwargs) for m in item.iter_markers() if m.name in MARKER_LINES
    )


def parsed_markers(item: pytest.Item) -> tuple[Parsed, ...]:
    """The test's parsed pytest-mps markers (parsed now for items made outside normal collection)."""
    parsed = item.stash.get(PARSED_KEY, None)
    return parsed if parsed is not None else _parse_item_markers(item)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    """Parse every collected test's markers here, so a malformed marker is a collection error that
    names the test, not a failure at run time."""
    report = yield
    if report.passed and report.result:
        problems = []
        for node in report.result:
            if isinstance(node, pytest.Item):
                try:
                    node.stash[PARSED_KEY] = _parse_item_markers(node)
                except MarkerError as exc:
                    problems.append(f"{node.nodeid}: {exc}")
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip or expect failure as the test's markers, the target and the environment decide."""
    parsed = parsed_markers(item)
    if not parsed:
        return
    from pytest_mps.gating import decide  # here: a test without pytest-mps markers never needs it

    session = session_of(item.config)
    decision = decide(parsed, session.target, session.environment)
    if decision.skip_reason:
        # A skip mark (evaluated by pytest's own skipping plugin right after this hook) reports the
        # test's location, not this file's.
        item.add_marker(pytest.mark.skip(reason=decision.skip_reason))
        return
    if decision.xfail is not None:
        mark = decision.xfail
        reason = mark.reason or f"expected to fail on {session.target.label}"
        kwargs: dict[str, Any] = {"reason": f"[xfail_mps] {reason}", "strict": mark.strict}
        if mark.raises is not None:
            kwargs["raises"] = mark.raises
        item.add_marker(pytest.mark.xfail(**kwargs))


def context_for(item: pytest.Item) -> CheckContext:
    """The check context of a test: the target, its tolerance marker, the ini tolerances, the shared
    references, and a sink that records each result with the test."""
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """Checks called by the test see its target, tolerances and the session's references (built on
    first use: a test that calls no check never resolves the target)."""
    with using_context(lambda: context_for(item)):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """An emulated Metal abort (a buffer of 2**32 bytes or more) is a crash on a Mac: say so."""
    report = yield
    if call.excinfo is not None and call.excinfo.type.__name__ == "MPSAbortError":
        text = str(call.excinfo.value).strip().splitlines()[0]
        report.sections.append(
            ("pytest-mps crash", f"CRASH: on a Mac this aborts the whole process (SIGABRT): {text}")
        )
        report.user_properties.append(("mps:crash", text))
    return report
