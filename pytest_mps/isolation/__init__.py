"""Crash isolation: checks and device tests run in worker processes, so a crash on the target (a Metal
assertion that aborts, a segfault in a kernel, a hang) fails one check or test instead of ending the
session.

- :mod:`pytest_mps.isolation.death`: how a worker died (:class:`Death`: the signal, the quoted
  assertion, the last Python frames);
- :mod:`pytest_mps.isolation.worker_process`: one worker seen from the parent (:class:`Worker`,
  :class:`WorkerPool`);
- :mod:`pytest_mps.isolation.runner`: one pipeline's suite checks served by a worker
  (:class:`IsolatedRunner`);
- :mod:`pytest_mps.isolation.session_client` and :mod:`pytest_mps.isolation.session_worker`: a
  project's device tests run by a worker that is a pytest session of its own (both sides; the pytest
  hooks are :mod:`pytest_mps.plugin.isolation`).

The suite worker's own side is :mod:`pytest_mps.worker`. Results cross the boundary as JSON
(:meth:`CheckResult.to_dict` / :meth:`CheckResult.from_dict`). Importing this package imports nothing
heavy: the pytest process of an isolated run never imports torch for the checks.
"""

from __future__ import annotations

from pytest_mps.isolation.runner import IsolatedRunner, death_result
from pytest_mps.isolation.worker_process import Death, Worker, WorkerPool, crash_quote, python_frames

__all__ = ["Death", "IsolatedRunner", "Worker", "WorkerPool", "crash_quote", "death_result", "python_frames"]
