"""Where checks called without an explicit context find the running test's: a stack of providers.

The plugin pushes one provider per pytest session (nested sessions, as pytester runs them, stack) and
pops it at the session's end. A provider returns the running test's
:class:`~pytest_mps.context.CheckContext`, or None between tests. A leaf module, cheap to import at
pytest start-up; :mod:`pytest_mps.context` reads the stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_mps.context import CheckContext

__all__ = ["PROVIDERS", "pop_provider", "push_provider"]

#: The providers, innermost session last.
PROVIDERS: list[Callable[[], CheckContext | None]] = []


def push_provider(provider: Callable[[], CheckContext | None]) -> None:
    """Make ``provider`` the source of the running test's context (a pytest session's plugin does
    this once, instead of wrapping every test)."""
    PROVIDERS.append(provider)


def pop_provider(provider: Callable[[], CheckContext | None]) -> None:
    """Remove ``provider`` (the end of its session)."""
    if provider in PROVIDERS:
        PROVIDERS.remove(provider)
