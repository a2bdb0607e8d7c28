"""pytest-mps's pytest entry point: options, ini keys, markers, the header line and fixtures.

This module is imported at every pytest start-up, so it imports nothing heavy: torch, diffusers and
numpy are imported inside the fixtures and checks that need them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.environment import MPSEnvironment, detect_environment
from pytest_mps.gating import decide
from pytest_mps.markers import MARKER_LINES, MarkerError, Parsed, parse_marker
from pytest_mps.target import (
    ENV_VARIABLE,
    TARGET_CHOICES,
    Target,
    TargetError,
    requested_from,
    resolve_target,
)

if TYPE_CHECKING:
    import torch

__all__ = ["MPSSession", "session_of"]


class MPSSession:
    """The plugin's per-session state: the requested target, resolved on first need, and the
    environment. Lives in ``config.stash``; nothing is kept in module globals."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.requested = requested_from(config.getoption("mps_device"), config.getini("mps_device"))
        self._target: Target | None = None
        self._environment: MPSEnvironment | None = None

    def validate(self) -> None:
        """Reject bad target names at once; resolve explicit targets eagerly so their errors are
        usage errors rather than failures deep inside a test."""
        if self.requested.strip().lower() not in TARGET_CHOICES:
            resolve_target(self.requested)  # raises TargetError with the list of choices
        if self.requested.strip().lower() not in ("auto", "cpu"):
            self.target  # noqa: B018 - resolving is the point: it raises TargetError early

    @property
    def environment(self) -> MPSEnvironment:
        """The full environment (imports torch on macOS to ask MPS)."""
        if self._environment is None or not self._environment.probed:
            self._environment = detect_environment(probe_torch=True)
        return self._environment

    def cheap_environment(self) -> MPSEnvironment:
        """The environment without importing torch (for the header)."""
        return self._environment or detect_environment()

    @property
    def target(self) -> Target:
        """The resolved target (``auto`` is resolved here, on first need)."""
        if self._target is None:
            self._target = resolve_target(self.requested, environment=lambda: self.environment)
        return self._target

    def target_if_cheap(self) -> Target | None:
        """The target, unless resolving it now would import torch for nothing but the header."""
        if self._target is not None:
            return self._target
        env = self.cheap_environment()
        if self.requested == "cpu" or env.probed:
            return self.target
        return None


_SESSION_KEY = pytest.StashKey[MPSSession]()
_PARSED_KEY = pytest.StashKey[tuple[Parsed, ...]]()


def session_of(config: pytest.Config) -> MPSSession:
    """The :class:`MPSSession` of a pytest run (for other pytest-mps modules and conftest files)."""
    return config.stash[_SESSION_KEY]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mps", "pytest-mps: Diffusers pipelines on Apple's MPS backend")
    group.addoption(
        "--mps-device",
        dest="mps_device",
        default=None,
        choices=TARGET_CHOICES,
        metavar="TARGET",
        help=(
            "target device: auto (default: mps where available, else none), mps, emulated, cuda, xpu "
            f"or cpu. Anything but mps is a stand-in. Also ini mps_device and ${ENV_VARIABLE}."
        ),
    )
    parser.addini("mps_device", "default target device for --mps-device", default="")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKER_LINES.values():
        config.addinivalue_line("markers", line)
    session = MPSSession(config)
    try:
        session.validate()
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SESSION_KEY] = session


def pytest_report_header(config: pytest.Config) -> str:
    session = session_of(config)
    target = session.target_if_cheap()
    if target is None:
        target_text = f"target {session.requested} (resolved on first use)"
    elif target.available:
        target_text = f"target {target.label}"
    else:
        target_text = "target none"
    return f"mps: {target_text} | {session.cheap_environment().summary()}"


def _parse_item_markers(item: pytest.Item) -> tuple[Parsed, ...]:
    parsed: list[Parsed] = []
    for mark in item.iter_markers():
        if mark.name in MARKER_LINES:
            parsed.append(parse_marker(mark.name, mark.args, mark.kwargs))
    return tuple(parsed)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Parse every collected test's pytest-mps markers here, so a malformed marker is a collection
    error that names the test, not a failure at run time."""
    report = yield
    if report.passed and report.result:
        problems = []
        for node in report.result:
            if isinstance(node, pytest.Item):
                try:
                    node.stash[_PARSED_KEY] = _parse_item_markers(node)
                except MarkerError as exc:
                    problems.append(f"{node.nodeid}: {exc}")
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    parsed = item.stash.get(_PARSED_KEY, None)
    if parsed is None:  # items made outside normal collection
        parsed = _parse_item_markers(item)
    if not parsed:
        return
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


@pytest.fixture(scope="session")
def mps_environment(request: pytest.FixtureRequest) -> MPSEnvironment:
    """This machine's MPS facts (:class:`pytest_mps.MPSEnvironment`): versions, memory, and why MPS
    is unusable when it is."""
    return session_of(request.config).environment


@pytest.fixture(scope="session")
def mps_target(request: pytest.FixtureRequest) -> Target:
    """The session's resolved target device (:class:`pytest_mps.Target`); may be ``none``."""
    return session_of(request.config).target


@pytest.fixture
def mps_device(mps_target: Target) -> Iterator[torch.device]:
    """A ``torch.device`` for the target; skips the test (with the reason) when there is none."""
    if not mps_target.available:
        pytest.skip(f"needs an MPS target: {mps_target.reason}")
    yield mps_target.torch_device()
