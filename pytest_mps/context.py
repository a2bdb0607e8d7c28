"""What a check needs to know about the test that runs it: the target, the tolerances set by marker
and ini, the shared CPU references, and where to record its result.

Inside a pytest run the plugin provides the running test's :class:`CheckContext` (built on a check's
first call in that test); :func:`using_context` sets one explicitly; a check called outside pytest gets
one derived from the pipeline's device.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult
    from pytest_mps.target import Target

__all__ = ["CheckContext", "current_context", "pop_provider", "push_provider", "using_context"]


@dataclass
class CheckContext:
    """Per-test settings and sinks for the checks.

    Attributes:
        target: where the checks run.
        marker_tolerance, ini_tolerance: the tolerance layers of the running test.
        references: the CPU references shared in the session.
        record: where each finished result goes (the plugin's session table and reports).
        nodeid: the running test.
        cross_check: re-run a failing check on the CPU to tell MPS problems from the pipeline's own.
        localize: after a failing parity check, say where the divergence starts.
        on_start: called with the check's id and the pipeline as a check starts (crash isolation names
            the check a dead worker was running).
    """

    target: Target
    marker_tolerance: Mapping[str, float] = field(default_factory=dict)
    ini_tolerance: Mapping[str, float] = field(default_factory=dict)
    references: ReferenceCache | None = None
    record: Callable[[CheckResult], None] | None = None
    nodeid: str | None = None
    cross_check: bool = True
    localize: bool = True
    on_start: Callable[[str, Any], None] | None = None


class _Lazy:
    """Builds the context on first use: resolving the target may import torch, which a test that
    calls no check must not pay for."""

    def __init__(self, make: Callable[[], CheckContext]) -> None:
        self._make = make
        self._value: CheckContext | None = None

    def get(self) -> CheckContext:
        if self._value is None:
            self._value = self._make()
        return self._value


_CURRENT: contextvars.ContextVar[_Lazy | None] = contextvars.ContextVar("pytest_mps_check", default=None)


@contextlib.contextmanager
def using_context(context: CheckContext | Callable[[], CheckContext]) -> Iterator[None]:
    """Make ``context`` (or the context a zero-argument callable builds on first use) the one checks
    see inside the ``with`` block."""
    lazy = _Lazy(context if callable(context) else (lambda: context))
    token = _CURRENT.set(lazy)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _target_from_device(device: Any) -> Target:
    from pytest_mps.target import Target

    kind = getattr(device, "type", str(device))
    if kind == "mps":
        from pytest_mps.emulated_target import emulation_active

        return Target("emulated" if emulation_active() else "mps", "inferred")
    if kind in ("cuda", "xpu", "cpu"):
        return Target(kind, "inferred")
    return Target("none", "inferred", f"unsupported device {kind!r}")


def _providers() -> list[Callable[[], CheckContext | None]]:
    """The providers of the running tests' contexts: the pytest plugin's, where it is loaded (a check
    called outside pytest does not import pytest for them)."""
    markers = sys.modules.get("pytest_mps.plugin.markers")
    return markers.PROVIDERS if markers is not None else []


def push_provider(provider: Callable[[], CheckContext | None]) -> None:
    """Make ``provider`` the source of the running test's context (the plugin does this once per pytest
    session, instead of wrapping every test)."""
    from pytest_mps.plugin.markers import PROVIDERS

    PROVIDERS.append(provider)


def pop_provider(provider: Callable[[], CheckContext | None]) -> None:
    """Remove ``provider`` (the end of its session)."""
    from pytest_mps.plugin.markers import PROVIDERS

    if provider in PROVIDERS:
        PROVIDERS.remove(provider)


def current_context(pipe: Any = None) -> CheckContext:
    """The running test's context, or one inferred from ``pipe``'s device outside pytest."""
    lazy = _CURRENT.get()
    device = getattr(pipe, "device", "cpu")
    if lazy is not None:
        context = lazy.get()
    else:
        providers = _providers()
        context = providers[-1]() if providers else None
    if context is not None:
        kind = getattr(device, "type", str(device))
        if pipe is not None and (not context.target.available or context.target.device_type != kind):
            # The label must name where the work ran: a pipeline on another device than the
            # session's target is judged as a stand-in run on its own device.
            return dataclasses.replace(context, target=_target_from_device(device))
        return context
    from pytest_mps.references import shared_cache

    return CheckContext(target=_target_from_device(device), references=shared_cache())
