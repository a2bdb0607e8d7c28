"""The worker process of crash isolation: ``python -m pytest_mps.worker [--preload]``.

It loads a pipeline and runs checks on it, one request at a time; a later ``load`` replaces the pipeline
(a worker that survived one pipeline serves the next). Requests arrive on stdin and each
answer leaves on the protocol channel, one JSON object per line. The protocol channel is the original
stdout: file descriptor 1 is pointed at stderr at start-up, so whatever a pipeline prints cannot corrupt
it. faulthandler is on, so a segfault or an abort leaves the Python stack on stderr, and ``SIGUSR1``
dumps every thread's stack (the parent sends it before killing a hung worker).

Requests and answers:

- on start: ``{"event": "ready", "pid": ..., "seconds": ...}`` (after ``--preload`` imports torch and
  diffusers, so a spare worker can be started ahead of need);
- ``{"op": "validate", "path": ..., "allow_pickle": ...}`` -> ``{"valid": true}`` or ``{"invalid": "<one
  line>"}`` (the deep folder check of ``pytest-mps check``);
- ``{"op": "load", "spec": ..., "settings": ..., "nodeid": ...}`` -> ``{"outcome": ...}``;
- ``{"op": "check", "name": ..., "nodeid": ...}`` -> ``{"outcome": ...}``;
- ``{"op": "exit"}`` -> ``{"event": "bye"}``, then the process exits;
- a request the worker cannot serve -> ``{"error": "<traceback>"}``.

Outcomes are :meth:`pytest_mps.suite.Outcome.to_dict` data. The worker is started with ``spawn``
semantics (a fresh interpreter, never a fork: forking after Metal is initialised is unsafe on macOS).
It leaves as soon as its parent is gone (``$PYTEST_MPS_PARENT_PID``), even in the middle of a check, so
killing the parent (``kill -9``) leaves no orphan.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["main", "send", "start_worker_side"]

#: The variable that tells a worker its parent's pid (see :mod:`pytest_mps.isolation.worker_process`).
PARENT_VARIABLE = "PYTEST_MPS_PARENT_PID"


def start_worker_side() -> IO[str]:
    """What every worker process does first (this one and a project's test worker,
    :mod:`pytest_mps.isolation.session_worker`): leave as soon as the parent is gone, keep the real
    stdout as the protocol channel (returned) with file descriptor 1 pointed at stderr, and turn
    faulthandler on (``SIGUSR1`` dumps every thread's stack)."""
    parent = os.environ.get(PARENT_VARIABLE, "")
    if parent.isdigit():
        _leave_with_parent(int(parent))
    channel = _protocol_channel()
    faulthandler.enable(all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    return channel


def _protocol_channel() -> IO[str]:
    """Keep the real stdout for answers and send everything else written to fd 1 to stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")


def send(channel: IO[str], message: dict[str, Any]) -> None:
    """Write one protocol message (a JSON object on one line, :func:`pytest_mps.jsonable.plain_json`)."""
    from pytest_mps.jsonable import plain_json

    channel.write(json.dumps(plain_json(message)) + "\n")
    channel.flush()


def _preload() -> None:
    """Import what every load needs, so that a spare worker is ready when a pipeline needs it."""
    try:
        import diffusers
        import torch  # noqa: F401

        diffusers.DiffusionPipeline  # noqa: B018 - the lazy import is the point
        import pytest_mps.checks
        import pytest_mps.pipelines
        import pytest_mps.suite.suite_checks  # noqa: F401
    except Exception:  # a broken installation is reported by the load request, with its message
        traceback.print_exc()


def _serve(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    # Looked up on the module at each request (not imported by name), so a test can wrap them.
    from pytest_mps.suite import runner
    from pytest_mps.suite.settings import PipelineSpec, SuiteSettings

    op = request.get("op")
    if op == "validate":  # pytest-mps check's deep folder check, so that its own process imports no torch
        from pathlib import Path

        from pytest_mps.pipeline_folder import PipelineLoadError, check_folder

        try:
            check_folder(
                Path(request["path"]),
                allow_pickle=bool(request.get("allow_pickle")),
                verify_safetensors=True,
                deep=True,
            )
        except PipelineLoadError as exc:
            return {"invalid": str(exc)}
        return {"valid": True}
    if op == "load":
        # A worker serves one pipeline at a time: the previous one (a reused worker) goes first.
        runner.release(state.pop("loaded", None))
        loaded = runner.load_for_suite(
            PipelineSpec.from_dict(request["spec"]),
            SuiteSettings.from_dict(request["settings"]),
            nodeid=request.get("nodeid"),
        )
        state["loaded"] = loaded
        return {"outcome": loaded.load.to_dict(), "references": _store_stats(loaded)}
    if op == "check":
        name = str(request["name"])
        current = state.get("loaded")
        if current is None:
            raise RuntimeError("check requested before load")
        outcome = runner.run_suite_check(name, current, nodeid=request.get("nodeid"))
        return {"outcome": outcome.to_dict(), "references": _store_stats(current)}
    raise ValueError(f"unknown request {op!r}")


def _store_stats(loaded: Any) -> dict[str, Any] | None:
    """The worker's reference store counts so far (the parent adds them to the session's)."""
    store = getattr(getattr(loaded, "references", None), "store", None)
    return store.stats() if store is not None else None


def _leave_with_parent(parent: int, interval: float = 0.5) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (it died, or was killed)."""

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="pytest-mps-parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve requests from stdin until ``exit`` or end of input."""
    args = list(sys.argv[1:] if argv is None else argv)
    channel = start_worker_side()
    start = time.perf_counter()
    if "--preload" in args:
        _preload()
    send(channel, {"event": "ready", "pid": os.getpid(), "seconds": time.perf_counter() - start})
    state: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "exit":
                send(channel, {"event": "bye"})
                break
            answer = _serve(request, state)
        except Exception:
            answer = {"error": traceback.format_exc()}
        send(channel, answer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
