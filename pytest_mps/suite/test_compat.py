"""The bundled MPS compatibility suite: one test per check of :mod:`pytest_mps.registry`, parametrised by
pipeline folder.

Run it with ``pytest-mps check PATH [PATH ...]``, or from a project's own pytest::

    pytest --pyargs pytest_mps.suite --mps-pipelines path/to/pipeline -k parity

The pipelines come from ``--mps-pipelines`` (or ini ``mps_pipelines``); the target from
``--mps-device`` (default here: mps where available, else emulated, else cpu). Each test runs one check
through the ``mps_suite`` fixture (:mod:`pytest_mps.plugin.suite`), in a worker process with
``--mps-isolate``. A test's name is ``test_<check id>``; the tests are made from the registry, so a check
added there is part of the suite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_mps.registry import CHECKS


def _suite_test(check: str, proves: str) -> Callable[[Any], None]:
    def test(mps_suite: Any) -> None:
        mps_suite.check(check)

    test.__name__ = test.__qualname__ = f"test_{check}"
    test.__doc__ = f"{proves[0].upper()}{proves[1:]}."
    return test


for _spec in CHECKS.values():
    globals()[f"test_{_spec.id}"] = _suite_test(_spec.id, _spec.proves)
del _spec
