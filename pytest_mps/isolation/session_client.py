"""A project's test worker seen from the parent (``--mps-isolate``): :class:`SessionWorker` starts
:mod:`pytest_mps.isolation.session_worker` (a pytest session in a fresh interpreter, never a fork),
asks it to run one test at a time and hands each report back as it arrives; a worker that dies or hangs
ends the test with a :class:`~pytest_mps.isolation.death.Death`, and :func:`crash_lines` says what
happened in the words a test failure needs. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_mps.isolation.death import Death, python_frames, signal_meaning
from pytest_mps.isolation.session_worker import SPEC_VARIABLE
from pytest_mps.isolation.worker_process import STARTUP_TIMEOUT_S, Worker

__all__ = ["RunOutcome", "SessionWorker", "crash_lines"]

#: Handles one message of a running test (a report, a warning, the test's properties).
Handler = Callable[[dict[str, Any]], None]


@dataclass
class RunOutcome:
    """What came back from one test run in a worker.

    Attributes:
        phases: the outcome of each phase whose report arrived (``setup``, ``call``, ``teardown``).
        properties: the test's user properties as last sent (results recorded before a crash).
        death: how the worker died or hung during the test, else None.
        error: why the worker could not run the test (it was not collected there), else None.
        stderr: what the worker wrote to stderr during the test.
        references: the worker's reference-store counts so far.
        emulation_notes: the worker's emulated-device notes so far (line -> count), else None.
        images: the HTML report's images of the test's results (base64 PNGs).
        seconds: how long the run took, as seen from here.
        running: the check that started and has not recorded its result yet (its id, pipeline and
            class), when there is one: the check a dead worker was running.
    """

    phases: dict[str, str] = field(default_factory=dict)
    properties: list[Any] = field(default_factory=list)
    death: Death | None = None
    error: str | None = None
    stderr: str = ""
    references: dict[str, Any] | None = None
    emulation_notes: dict[str, int] | None = None
    images: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    running: dict[str, Any] | None = None

    def unfinished_phase(self) -> str | None:
        """The phase a worker that died was in: ``setup`` before any report, ``call`` after a passed
        setup, ``teardown`` after the call (or after a setup that did not pass); None when every report
        of the test had arrived."""
        if "teardown" in self.phases:
            return None
        if "setup" not in self.phases:
            return "setup"
        if "call" in self.phases or self.phases["setup"] != "passed":
            return "teardown"
        return "call"


class SessionWorker:
    """One worker process running a project's tests (see the module docstring).

    Args:
        args: the parent's pytest arguments (``config.invocation_params.args``) and overrides.
        cwd: the parent's invocation folder.
        basetemp: the worker's own ``--basetemp`` (under the parent's, never the parent's itself).
        images: send the images of the results (the parent writes an HTML report).
        echo: copy the worker's stderr to this process's as it arrives (``-s``: output not captured).
        preload: modules the worker imports before it is ready (``torch``, ``diffusers``).
        env: extra environment variables.
        startup_timeout: seconds the worker may take to start and collect.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: str | os.PathLike[str],
        basetemp: str | None,
        images: bool = False,
        echo: bool = False,
        preload: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        spec = {
            "args": [str(a) for a in args],
            "basetemp": basetemp,
            "images": images,
            "preload": list(preload),
        }
        self.worker = Worker(
            preload=False,
            module="pytest_mps.isolation.session_worker",
            env={**(env or {}), SPEC_VARIABLE: json.dumps(spec)},
            cwd=cwd,
            startup_timeout=startup_timeout,
            echo=echo,
        )
        self.tests = 0

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.worker.pid

    @property
    def alive(self) -> bool:
        """True while the worker can take tests."""
        return self.worker.alive

    def run(
        self, nodeid: str, next_nodeid: str | None, *, timeout: float | None, on_message: Handler
    ) -> RunOutcome:
        """Run test ``nodeid`` (``next_nodeid``: the next test this worker will run, or None) and pass
        each report, warning and properties message to ``on_message`` as it arrives; at most
        ``timeout`` seconds for the whole test (None: no limit)."""
        outcome = RunOutcome()
        start = time.perf_counter()
        if not self.worker.wait_ready():
            assert self.worker.death is not None
            outcome.death = self.worker.death
            outcome.stderr = self.worker.stderr_since()
            outcome.seconds = time.perf_counter() - start
            return outcome
        self.tests += 1
        mark = self.worker.stderr_mark()
        start = time.perf_counter()
        death = self.worker.send({"op": "run", "nodeid": nodeid, "next": next_nodeid}, doing=nodeid)
        while death is None:
            got = self.worker.receive(timeout=timeout, doing=nodeid, start=start)
            if isinstance(got, Death):
                death = got
                break
            event = got.get("event")
            if event == "report":
                data = got.get("data") or {}
                outcome.phases[str(data.get("when"))] = str(data.get("outcome"))
                outcome.properties = list(data.get("user_properties") or outcome.properties)
            elif event == "properties":
                outcome.properties = list(got.get("data") or [])
                outcome.running = None  # the check that ran recorded its result
            elif event == "started":
                outcome.running = {k: got.get(k) for k in ("check", "pipeline", "pipeline_class")}
                continue
            if event in ("report", "warning", "properties"):
                on_message(got)
                continue
            if "error" in got:
                outcome.error = str(got["error"])
            outcome.references = got.get("references")
            notes = got.get("emulation_notes")
            outcome.emulation_notes = dict(notes) if isinstance(notes, dict) else None
            outcome.images = dict(got.get("images") or {})
            break
        if death is not None:
            outcome.death = death
            self.worker.close(graceful=False)
        outcome.stderr = self.worker.stderr_since(mark)
        outcome.seconds = time.perf_counter() - start
        return outcome

    def ask_to_exit(self) -> None:
        """Ask the worker to end its session (its remaining fixtures are torn down) and exit, without
        waiting: it finishes while the parent writes its reports."""
        self.worker.ask_to_exit()

    def close(self) -> None:
        """End the worker's session and wait for it (30 s at most), or kill it."""
        self.worker.close(wait=30.0)


def crash_lines(death: Death, *, when: str | None) -> list[str]:
    """What a test whose worker died or hung says: the signal and what it usually means (``CRASH: the
    test process was killed by SIGABRT (signal 6): an abort (how a failed Metal/MPS assertion ends a
    process)``), where it died, the assertion quoted from its stderr and the last Python frames."""
    where = f" during the test's {when}" if when else " after the test's last report"
    if death.doing == "starting":
        where = " while it started (collecting the session), before running the test"
    if death.kind == "crash":
        number = -(death.returncode or 0)
        head = f"CRASH: the test process was killed by {death.signal} (signal {number}): "
        head += signal_meaning(death.signal)
    elif death.kind == "hang":
        head = (
            f"HANG: the test did not finish within {death.timeout:g}s (--mps-timeout); its process was killed"
        )
    elif death.kind == "exit":
        head = f"CRASH: the test process exited with status {death.returncode} without finishing the test"
    else:
        head = "CRASH: the test process wrote something that is not pytest-mps's protocol; it was stopped"
    lines = [head, f"it happened{where} (pid {death.pid}, {death.seconds:.1f}s in)"]
    if death.quote:
        lines.append(f"stderr says: {death.quote}")
    frames = python_frames(death.stderr)
    if frames:
        lines.append(
            f"{'where it hung' if death.kind == 'hang' else 'last Python frames'}: {' < '.join(frames)}"
        )
    lines.append("the session goes on: the next test that uses the device runs in a fresh process")
    return lines
