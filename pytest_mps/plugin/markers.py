"""The pytest side of the markers (:mod:`pytest_mps.markers` parses them, :mod:`pytest_mps.gating`
decides): their registration, parsing at collection, so a malformed marker is a collection error that
names the test, and the skip or expected failure each test gets. Loaded at every start-up; the running
test's check context and what a crash of it means are :mod:`.running_test`'s, loaded on first need."""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.context import CheckContext
    from pytest_mps.markers import Parsed

__all__ = ["MARKED_KEY", "MARKER_LINES", "PARSED_KEY", "PROVIDERS", "install_setup_hook", "parsed_markers"]

#: The plugin's marker names and their one-line registrations (what ``pytest --markers`` lists); the
#: parser of their arguments (:mod:`pytest_mps.markers`) is imported only when a collected test carries
#: one of them.
MARKER_LINES: dict[str, str] = {
    "mps": "mps: the test needs the target device (--mps-device); skipped with the reason when there is none",
    "skip_mps": "skip_mps(reason=None): skip when the target is MPS (real, or emulated)",
    "mps_requires": (
        'mps_requires(macos=">=13", torch=">=2.0", memory_gb=64): needs the target and these versions '
        "(packaging specifiers); skipped with the unmet requirement. macos applies to real MPS only"
    ),
    "xfail_mps": (
        'xfail_mps(reason=None, macos="<14", torch="<2.1", raises=None, strict=True): expected to fail on '
        "the MPS target, optionally only inside these version ranges"
    ),
    "mps_tolerance": (
        "mps_tolerance(atol=None, rtol=None, max_cosine_distance=None, ...): tolerances for this test's "
        "parity checks (a call argument overrides them)"
    ),
}

#: Where checks called without an explicit context find the running test's
#: (:func:`pytest_mps.context.current_context` reads it): one provider per pytest session, innermost
#: last (nested sessions, as pytester runs them, stack). A provider returns the running test's
#: :class:`~pytest_mps.context.CheckContext`, or None between tests.
PROVIDERS: list[Callable[[], CheckContext | None]] = []

PARSED_KEY = pytest.StashKey["tuple[Parsed, ...]"]()
#: set in a run where some collected test carries a pytest-mps marker
MARKED_KEY = pytest.StashKey[bool]()
_PROVIDER_KEY = pytest.StashKey[Callable[[], "CheckContext | None"]]()


def register(config: pytest.Config) -> None:
    """Register every marker with its one-line description (``--strict-markers`` passes), and provide
    the running test's check context to the checks it calls."""
    for line in MARKER_LINES.values():
        config.addinivalue_line("markers", line)
    provider = functools.partial(_running_context, config)
    config.stash[_PROVIDER_KEY] = provider
    PROVIDERS.append(provider)


def unregister(config: pytest.Config) -> None:
    """The end of the session: its tests' contexts are no longer provided."""
    provider = config.stash.get(_PROVIDER_KEY, None)
    if provider is not None and provider in PROVIDERS:
        PROVIDERS.remove(provider)


def _running_context(config: pytest.Config) -> CheckContext | None:
    """The provider of the running test's check context (see :mod:`.running_test`)."""
    from pytest_mps.plugin.running_test import running_context

    return running_context(config)


def _parse_item_markers(item: pytest.Item) -> tuple[Parsed, ...]:
    from pytest_mps.markers import parse_marker  # here: only tests that carry a marker need the parser

    return tuple(
        parse_marker(m.name, m.args, m.kwargs) for m in item.iter_markers() if m.name in MARKER_LINES
    )


def _marks_mps(markers: list[Any]) -> bool:
    return any(m.name in MARKER_LINES for m in markers)


def parsed_markers(item: pytest.Item) -> tuple[Parsed, ...]:
    """The test's parsed pytest-mps markers (parsed now for items made outside normal collection)."""
    parsed = item.stash.get(PARSED_KEY, None)
    return parsed if parsed is not None else _parse_item_markers(item)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    """Parse every collected test's markers here, so a malformed marker is a collection error that
    names the test, not a failure at run time. A test none of whose nodes carries a pytest-mps marker
    (most tests of a project) costs a look at its own marks: its parents are looked at once."""
    report = yield
    if not (report.passed and report.result):
        return report
    marked = []
    parents: dict[int, bool] = {}  # whether a parent node (or one above it) carries a marker
    for node in report.result:
        if not isinstance(node, pytest.Item):
            continue
        parent = node.parent
        inherited = parents.get(id(parent))
        if inherited is None:
            chain = parent.listchain() if parent is not None else []
            inherited = parents[id(parent)] = _marks_mps([m for n in chain for m in n.own_markers])
        if inherited or _marks_mps(node.own_markers):
            marked.append(node)
        else:
            node.stash[PARSED_KEY] = ()
    if not marked:
        return report
    collector.config.stash[MARKED_KEY] = True
    from pytest_mps.markers import MarkerError

    problems = []
    for node in marked:
        try:
            node.stash[PARSED_KEY] = _parse_item_markers(node)
        except MarkerError as exc:
            problems.append(f"{node.nodeid}: {exc}")
    if problems:
        report.outcome = "failed"
        report.longrepr = "\n".join(problems)
        report.result = []
    return report


class SetupHook:
    """The per-test setup hook, registered when the run wakes (:func:`install_setup_hook`): a dormant
    run, whose tests carry no marker and use no fixture of the plugin's, pays for no per-test hook."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
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
            from pytest_mps.plugin.running_test import xfail_mps_reason

            kwargs: dict[str, Any] = {"reason": xfail_mps_reason(mark, session.target), "strict": mark.strict}
            if mark.raises is not None:
                kwargs["raises"] = mark.raises
            item.add_marker(pytest.mark.xfail(**kwargs))


def install_setup_hook(config: pytest.Config) -> None:
    """Register the per-test setup hook (once per run)."""
    if config.pluginmanager.get_plugin(_SETUP_HOOK) is None:
        config.pluginmanager.register(SetupHook(), _SETUP_HOOK)


_SETUP_HOOK = "pytest-mps-test-setup"
