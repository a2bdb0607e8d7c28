"""Loaded at start-up by the worker processes of pytest-mps's own isolation tests (this folder is put on
their ``PYTHONPATH``): wraps the suite runner so that a worker crashes as ``$PYTEST_MPS_CRASH_PROBE`` asks
(see ``crash_probe.py``). Never part of the installed package."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_MPS_CRASH_PROBE"):
    import functools

    import crash_probe

    from pytest_mps.suite import runner

    def _probed(point_of, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            crash_probe.maybe_crash(point_of(*args, **kwargs))
            return function(*args, **kwargs)

        return wrapper

    def _with_fallback(function):
        @functools.wraps(function)
        def wrapper(name, loaded, *args, **kwargs):
            if crash_probe.planned().get(name) != "fallback" or loaded.pipe is None:
                return function(name, loaded, *args, **kwargs)
            handle = crash_probe.plant_fallback(loaded.pipe)
            try:
                return function(name, loaded, *args, **kwargs)
            finally:
                handle.remove()

        return wrapper

    runner.load_for_suite = _probed(lambda *a, **k: "load", runner.load_for_suite)
    runner.run_suite_check = _with_fallback(_probed(lambda name, *a, **k: name, runner.run_suite_check))
