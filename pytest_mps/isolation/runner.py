"""Runs one pipeline's suite checks in a worker process: the worker loads the pipeline once and serves
every check until one crashes or hangs; the next check then gets a fresh worker, which loads the
pipeline again. A worker still alive at the end goes back to the pool for the next pipeline. A dead
worker's check becomes a ``crashed`` or ``hung`` result naming the signal and quoting the worker's
stderr. Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pytest_mps.isolation.worker_process import Death, Worker, WorkerPool, python_frames
from pytest_mps.suite.runner import Outcome, skipped
from pytest_mps.suite.settings import PipelineSpec, SuiteSettings

if TYPE_CHECKING:
    from pytest_mps.target import Target

__all__ = ["IsolatedRunner", "death_result"]


def death_result(
    name: str, death: Death, *, target: Target, pipeline: str, nodeid: str | None, more: bool = True
) -> Outcome:
    """The outcome of check ``name`` whose worker died: ``crashed`` (a signal, or an exit without an
    answer), ``hung`` (killed after the time limit) or ``error`` (it answered something that is not
    JSON), with the signal, the quoted assertion and the last Python frames."""
    from pytest_mps.results import CheckResult
    from pytest_mps.verdict import Status

    lines = death.lines()
    if more and name != "load":
        lines.append("this pipeline's other checks go on in a fresh worker")
    lines.append("the worker's full stderr is attached to this test's report (worker stderr)")
    status = {"crash": Status.CRASHED, "exit": Status.CRASHED, "hang": Status.HUNG}.get(
        death.kind, Status.ERROR
    )
    cell = death.cell()
    result = CheckResult(
        check=name,
        status=status,
        target=target.label,
        real_mps=target.is_real_mps,
        pipeline=pipeline,
        summary=lines[0],
        figure_text=cell.split(" ", 1)[1] if " " in cell else "",
        failures=lines[1:] if len(lines) > 1 else [],
        details={
            "death": {
                "kind": death.kind,
                "signal": death.signal,
                "returncode": death.returncode,
                "pid": death.pid,
                "seconds": round(death.seconds, 3),
                "timeout": death.timeout,
                "quote": death.quote,
                "frames": python_frames(death.stderr),
                "cell": cell,
            },
        },
        timings={name: death.seconds},
        nodeid=nodeid,
    )
    return Outcome(result, stderr=death.stderr)


class IsolatedRunner:
    """Runs one pipeline's checks in a worker process (see the module docstring).

    Args:
        spec, settings: what to load and how to run.
        target: the session's target (for labelling crash reports).
        timeout: seconds each request may take (None: no limit).
        pool: where workers come from.
        on_worker: called each time a worker is taken (the plugin uses it to start a spare early).
    """

    isolated = True

    def __init__(
        self,
        spec: PipelineSpec,
        settings: SuiteSettings,
        *,
        target: Target,
        timeout: float | None,
        pool: WorkerPool,
        on_worker: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.target = target
        self.timeout = timeout
        self.pool = pool
        self.on_worker = on_worker
        self.deaths: list[Death] = []
        self.workers = 0
        self._worker: Worker | None = None
        self._first: Outcome | None = None
        self._broken: str | None = None

    def _died(self, name: str, death: Death, nodeid: str | None) -> Outcome:
        return death_result(name, death, target=self.target, pipeline=self.spec.label, nodeid=nodeid)

    def _start(self, nodeid: str | None) -> Outcome:
        worker = self.pool.take()
        self.workers += 1
        if self.on_worker is not None:
            self.on_worker()
        if self.deaths:  # a pipeline that crashed a worker may crash the next: have a spare ready
            self.pool.prewarm()
        mark = worker.stderr_mark()
        payload = {
            "op": "load",
            "spec": self.spec.to_dict(),
            "settings": self.settings.to_dict(),
            "nodeid": nodeid,
        }
        got = worker.request(payload, timeout=self.timeout, doing="load")
        if isinstance(got, Death):
            self.deaths.append(got)
            worker.close(graceful=False)
            return self._died("load", got, nodeid)
        outcome = self._answer(got, "load", nodeid)
        outcome.stderr = worker.stderr_since(mark)
        self._keep_stats(worker, got)
        if outcome.passed:
            self._worker = worker
        else:
            worker.close()
        return outcome

    def _answer(self, got: Mapping[str, Any], name: str, nodeid: str | None) -> Outcome:
        if "outcome" in got:
            return Outcome.from_dict(got["outcome"])
        from pytest_mps.results import CheckResult
        from pytest_mps.verdict import Status

        error = str(got.get("error", got))
        last = next((line.strip() for line in reversed(error.splitlines()) if line.strip()), "unknown error")
        result = CheckResult(
            check=name,
            status=Status.ERROR,
            target=self.target.label,
            real_mps=self.target.is_real_mps,
            pipeline=self.spec.label,
            summary=f"the worker could not run {name}: {last}",
            details={"traceback": error},
            nodeid=nodeid,
        )
        return Outcome(result)

    def load(self, nodeid: str | None = None) -> Outcome:
        """Start a worker and load the pipeline in it, on the first call; later calls return the
        first load's outcome."""
        if self._first is None:
            self._first = self._start(nodeid)
        return self._first

    def check(self, name: str, nodeid: str | None = None) -> Outcome:
        """Run check ``name`` in the worker (a fresh one after a crash)."""
        first = self.load()
        if not first.passed:
            reason = f"{self.spec.label} did not load: {first.result.summary}"
            return skipped(name, self.spec, self.target, reason, nodeid)
        if self._broken:
            return skipped(name, self.spec, self.target, self._broken, nodeid)
        if self._worker is None or not self._worker.alive:
            again = self._start(nodeid)
            if not again.passed:
                self._broken = (
                    f"after a crash, a fresh worker could not load {self.spec.label} again: "
                    f"{again.result.summary}"
                )
                again.result.check = name
                again.result.failures.insert(0, self._broken)
                return again
        worker = self._worker
        assert worker is not None
        mark = worker.stderr_mark()
        got = worker.request(
            {"op": "check", "name": name, "nodeid": nodeid}, timeout=self.timeout, doing=name
        )
        if isinstance(got, Death):
            self.deaths.append(got)
            self._worker = None
            worker.close(graceful=False)
            return self._died(name, got, nodeid)
        outcome = self._answer(got, name, nodeid)
        outcome.stderr = worker.stderr_since(mark)
        self._keep_stats(worker, got)
        return outcome

    def _keep_stats(self, worker: Worker, got: Mapping[str, Any]) -> None:
        if isinstance(got.get("references"), dict):
            # each load has its own store: a reused worker reports one per pipeline
            self.pool.reference_stats[(worker.pid, self.spec.label)] = got["references"]

    def close(self) -> None:
        """Give the worker back to the pool (it serves the next pipeline if it is alive)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self.pool.give_back(worker)
