"""The bundled MPS compatibility suite: one test per check of :mod:`pytest_mps.registry`, parametrised by
pipeline folder (``pytest-mps check PATH ...``, or ``pytest --pyargs pytest_mps.suite --mps-pipelines
PATH``).

- :mod:`pytest_mps.suite.settings`: what to check and how (pipeline specs, settings, default target);
- :mod:`pytest_mps.suite.runner`: loading a pipeline and running one check on it, in the pytest
  process or in a worker (:mod:`pytest_mps.isolation`);
- :mod:`pytest_mps.suite.suite_checks`: the suite's own checks (inference, audit, speed);
- ``test_compat.py``: the tests; the pytest side is :mod:`pytest_mps.plugin.suite`.

Importing this package imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_mps.suite.runner import InProcessRunner, Loaded, Outcome, load_for_suite, run_suite_check
    from pytest_mps.suite.settings import (
        DEFAULT_TIMEOUT_S,
        PipelineSpec,
        SuiteSettings,
        default_target_name,
        pipeline_specs,
    )

# Loaded on first use: the plugin imports ``pytest_mps.suite.settings`` at every start-up, and the
# runner is needed only when the suite runs.
_EXPORTS = {
    "DEFAULT_TIMEOUT_S": "pytest_mps.suite.settings",
    "InProcessRunner": "pytest_mps.suite.runner",
    "Loaded": "pytest_mps.suite.runner",
    "Outcome": "pytest_mps.suite.runner",
    "PipelineSpec": "pytest_mps.suite.settings",
    "SuiteSettings": "pytest_mps.suite.settings",
    "default_target_name": "pytest_mps.suite.settings",
    "load_for_suite": "pytest_mps.suite.runner",
    "pipeline_specs": "pytest_mps.suite.settings",
    "run_suite_check": "pytest_mps.suite.runner",
}

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "InProcessRunner",
    "Loaded",
    "Outcome",
    "PipelineSpec",
    "SuiteSettings",
    "default_target_name",
    "load_for_suite",
    "pipeline_specs",
    "run_suite_check",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_mps.suite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
