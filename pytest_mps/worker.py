"""The worker process of crash isolation: ``python -m pytest_mps.worker [--preload]``.

It loads one pipeline and runs checks on it, one request at a time. Requests arrive on stdin and each
answer leaves on the protocol channel, one JSON object per line. The protocol channel is the original
stdout: file descriptor 1 is pointed at stderr at start-up, so whatever a pipeline prints cannot corrupt
it. faulthandler is on, so a segfault or an abort leaves the Python stack on stderr, and ``SIGUSR1``
dumps every thread's stack (the parent sends it before killing a hung worker).

Requests and answers:

- on start: ``{"event": "ready", "pid": ..., "seconds": ...}`` (after ``--preload`` imports torch and
  diffusers, so a spare worker can be started ahead of need);
- ``{"op": "load", "spec": ..., "settings": ..., "nodeid": ...}`` -> ``{"outcome": ...}``;
- ``{"op": "check", "name": ..., "nodeid": ...}`` -> ``{"outcome": ...}``;
- ``{"op": "exit"}`` -> ``{"event": "bye"}``, then the process exits;
- a request the worker cannot serve -> ``{"error": "<traceback>"}``.

Outcomes are :meth:`pytest_mps.suite.Outcome.to_dict` data. The worker is started with ``spawn``
semantics (a fresh interpreter, never a fork: forking after Metal is initialised is unsafe on macOS).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["main"]


def _protocol_channel() -> IO[str]:
    """Keep the real stdout for answers and send everything else written to fd 1 to stderr."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """numpy scalars as Python numbers; anything else JSON cannot take as its text."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def _send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message, default=_jsonable) + "\n")
    channel.flush()


def _preload() -> None:
    """Import what every load needs, so that a spare worker is ready when a pipeline needs it."""
    try:
        import diffusers
        import torch  # noqa: F401

        diffusers.DiffusionPipeline  # noqa: B018 - the lazy import is the point
        import pytest_mps.checks
        import pytest_mps.pipelines  # noqa: F401
    except Exception:  # a broken installation is reported by the load request, with its message
        traceback.print_exc()


def _serve(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    from pytest_mps import crash_probe

    op = request.get("op")
    if op == "load":
        from pytest_mps.suite import PipelineSpec, SuiteSettings, load_for_suite

        crash_probe.maybe_crash("load")
        loaded = load_for_suite(
            PipelineSpec.from_dict(request["spec"]),
            SuiteSettings.from_dict(request["settings"]),
            nodeid=request.get("nodeid"),
        )
        state["loaded"] = loaded
        return {"outcome": loaded.load.to_dict()}
    if op == "check":
        from pytest_mps.suite import run_check

        name = str(request["name"])
        current = state.get("loaded")
        if current is None:
            raise RuntimeError("check requested before load")
        crash_probe.maybe_crash(name)
        return {"outcome": run_check(name, current, nodeid=request.get("nodeid")).to_dict()}
    raise ValueError(f"unknown request {op!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve requests from stdin until ``exit`` or end of input."""
    args = list(sys.argv[1:] if argv is None else argv)
    channel = _protocol_channel()
    faulthandler.enable(all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    start = time.perf_counter()
    if "--preload" in args:
        _preload()
    _send(channel, {"event": "ready", "pid": os.getpid(), "seconds": time.perf_counter() - start})
    state: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "exit":
                _send(channel, {"event": "bye"})
                break
            answer = _serve(request, state)
        except Exception:
            answer = {"error": traceback.format_exc()}
        _send(channel, answer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
