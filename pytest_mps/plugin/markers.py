"""The pytest side of the markers (:mod:`pytest_mps.markers` parses them, :mod:`pytest_mps.gating`
decides): parsing at collection, so a malformed marker is a collection error that names the test; the
skip or expected failure each test gets; the check context each test runs in; and the crash note of an
emulated Metal abort."""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.markers import MARKER_LINES, MarkerError, MpsTolerance, Parsed, parse_marker
from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.context import CheckContext

__all__ = ["PARSED_KEY", "expected_crash_reason", "xfail_mps_reason"]

PARSED_KEY = pytest.StashKey[tuple[Parsed, ...]]()
_CONTEXT_KEY = pytest.StashKey["CheckContext"]()
_PROVIDER_KEY = pytest.StashKey[Callable[[], "CheckContext | None"]]()


def register(config: pytest.Config) -> None:
    """Register every marker with its one-line description (``--strict-markers`` passes), and provide
    the running test's check context to the checks it calls."""
    for line in MARKER_LINES.values():
        config.addinivalue_line("markers", line)
    from pytest_mps.context import push_provider

    provider = functools.partial(_running_context, config)
    config.stash[_PROVIDER_KEY] = provider
    push_provider(provider)


def unregister(config: pytest.Config) -> None:
    """The end of the session: its tests' contexts are no longer provided."""
    provider = config.stash.get(_PROVIDER_KEY, None)
    if provider is not None:
        from pytest_mps.context import pop_provider

        pop_provider(provider)


def _running_context(config: pytest.Config) -> CheckContext | None:
    """The context of the test running now (from its setup to its teardown), built on first need."""
    item = session_of(config).current_item
    if item is None:
        return None
    context = item.stash.get(_CONTEXT_KEY, None)
    if context is None:
        context = item.stash[_CONTEXT_KEY] = context_for(item)
    return context


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
    """The test starts (its checks see its context until its teardown is reported); skip or expect
    failure as its markers, the target and the environment decide."""
    session_of(item.config).current_item = item
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
        kwargs: dict[str, Any] = {"reason": xfail_mps_reason(mark, session.target), "strict": mark.strict}
        if mark.raises is not None:
            kwargs["raises"] = mark.raises
        item.add_marker(pytest.mark.xfail(**kwargs))


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
