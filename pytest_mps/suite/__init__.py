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

from pytest_mps.suite.runner import InProcessRunner, Loaded, Outcome, load_for_suite, run_suite_check
from pytest_mps.suite.settings import (
    DEFAULT_TIMEOUT_S,
    PipelineSpec,
    SuiteSettings,
    default_target_name,
    pipeline_specs,
)

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
