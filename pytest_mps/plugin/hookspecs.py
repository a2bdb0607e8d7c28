"""pytest-mps's own hooks, for projects and plugins that want its results (registered with
``pytest_addhooks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_mps.results import CheckResult

__all__ = ["pytest_mps_check_started", "pytest_mps_result_recorded"]


@pytest.hookspec
def pytest_mps_check_started(
    config: pytest.Config, item: pytest.Item, check: str, pipeline: str, pipeline_class: str
) -> None:
    """Called as a test's ``check_*``/``assert_*`` call starts a check (its id, and the pipeline's name
    and class). Crash isolation uses it to say which check a worker died in."""


@pytest.hookspec
def pytest_mps_result_recorded(config: pytest.Config, item: pytest.Item | None, result: CheckResult) -> None:
    """Called each time a check's result is recorded in this process (a test's ``check_*``/``assert_*``
    call, or a bundled-suite check), with the test that ran it (``None`` outside a test). The result is
    final: read it, do not change it. Under pytest-xdist it is called in the worker that ran the check.
    """
