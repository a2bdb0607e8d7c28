"""One worker process of crash isolation, seen from the parent: :class:`Worker` starts a child
interpreter (``python -m pytest_mps.worker``: a fresh process, spawn semantics, never a fork), sends it
JSON requests and notices when it dies (the signal, the exit status, the assertion quoted from its
stderr) or stops answering in time (it is then asked for its Python stack and killed): a :class:`Death`.
:class:`WorkerPool` hands out workers and can start a spare ahead of need.

This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["Death", "Worker", "WorkerPool", "crash_quote", "python_frames"]

#: How long a fresh worker may take to import torch and diffusers before it counts as dead.
STARTUP_TIMEOUT_S = 300.0
#: The variable that tells a worker its parent's pid (it exits when that process is gone).
PARENT_VARIABLE = "PYTEST_MPS_PARENT_PID"
#: The most stderr kept per worker (the most recent bytes are kept).
STDERR_LIMIT = 8 * 2**20

_SIGNAL_MEANING = {
    "SIGABRT": "an abort (how a failed Metal/MPS assertion ends a process)",
    "SIGSEGV": "a segmentation fault (an invalid memory access in native code)",
    "SIGBUS": "a bus error (an invalid memory access in native code)",
    "SIGILL": "an illegal instruction",
    "SIGFPE": "a floating-point exception",
    "SIGKILL": "killed from outside (the system's out-of-memory killer, or a user)",
    "SIGTERM": "terminated from outside",
}


# --- reading a dead worker's stderr --------------------------------------------------------------

_QUOTE_PATTERNS = (
    re.compile(r"failed assertion", re.IGNORECASE),  # Metal: "...: failed assertion `... > 2**32'"
    re.compile(r"Assertion .* failed"),  # C assert()
    re.compile(r"what\(\):|terminating due to uncaught exception|terminate called"),  # C++
    re.compile(r"^Fatal Python error"),  # faulthandler
)
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def crash_quote(stderr: str) -> str | None:
    """The line of a crashed process's stderr that says why it died: a Metal failed assertion, a C
    assertion, a C++ exception or faulthandler's ``Fatal Python error``, in that order of preference
    (the last such line); None when there is none."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for pattern in _QUOTE_PATTERNS:
        found = [line for line in lines if pattern.search(line)]
        if found:
            return found[-1][:500]
    return None


def python_frames(stderr: str, limit: int = 3) -> list[str]:
    """The innermost Python frames of the thread faulthandler dumped as the current one (or the first
    dumped), as ``func (file:line)``, innermost first."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Current thread ")]
    starts = starts or [i for i, line in enumerate(lines) if line.startswith("Thread ")]
    if not starts:
        return []
    frames = []
    for line in lines[starts[-1] + 1 :]:
        match = _FRAME.match(line)
        if not match:
            break
        frames.append(f"{match['func']} ({_short(match['file'])}:{match['line']})")
    return frames[:limit]


def _short(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("site-packages", "pytest_mps", "diffusers", "torch"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + (anchor == "site-packages") :])
    return path


def _last_line(stderr: str) -> str | None:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


@dataclass(frozen=True)
class Death:
    """How a worker stopped answering a request.

    Attributes:
        kind: ``crash`` (killed by a signal), ``exit`` (left with a status), ``hang`` (no answer in
            time: it was killed) or ``protocol`` (it answered something that is not JSON).
        doing: the request it was serving (``load``, a check name, or ``starting``).
        returncode: the process's exit status (negative: the signal number).
        signal: the signal's name, for crashes and hangs.
        seconds: how long the request had run.
        timeout: the limit that a hang exceeded.
        pid: the worker's process id.
        stderr: everything the worker wrote to stderr (the last 8 MiB).
    """

    kind: str
    doing: str
    returncode: int | None
    signal: str | None
    seconds: float
    timeout: float | None
    pid: int
    stderr: str

    @property
    def quote(self) -> str | None:
        """The line of stderr that says why (see :func:`crash_quote`)."""
        if self.kind == "hang":
            return None
        return crash_quote(self.stderr) or (_last_line(self.stderr) if self.kind == "exit" else None)

    def cell(self) -> str:
        """A few words for the verdict table: ``CRASH SIGABRT``, ``HANG >600s``..."""
        if self.kind == "crash":
            return f"CRASH {self.signal}"
        if self.kind == "hang":
            return f"HANG >{self.timeout:g}s"
        if self.kind == "exit":
            return f"EXIT {self.returncode}"
        return "CRASH"

    def lines(self) -> list[str]:
        """The failure, in lines: what happened, the quoted assertion, the Python frames."""
        if self.kind == "crash":
            meaning = _SIGNAL_MEANING.get(self.signal or "", "a fatal signal")
            number = -(self.returncode or 0)
            head = (
                f"the worker process running {self.doing} was killed by {self.signal} (signal {number}): "
                f"{meaning}"
            )
        elif self.kind == "hang":
            head = (
                f"{self.doing} did not finish within {self.timeout:g}s (--mps-timeout): the worker (pid "
                f"{self.pid}) was killed as hung"
            )
        elif self.kind == "exit":
            head = (
                f"the worker process running {self.doing} exited with status {self.returncode} "
                "without answering"
            )
        else:
            head = (
                f"the worker process running {self.doing} answered something that is not JSON; it was stopped"
            )
        lines = [head]
        if self.quote:
            lines.append(f"stderr says: {self.quote}")
        frames = python_frames(self.stderr)
        if frames:
            where = "where it hung" if self.kind == "hang" else "last Python frames"
            lines.append(f"{where}: {' < '.join(frames)}")
        return lines


# --- one worker ----------------------------------------------------------------------------------


class _StderrBuffer:
    """A worker's stderr as it arrives: the most recent :data:`STDERR_LIMIT` bytes, addressable by
    absolute offset (so one request's share can be cut out)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._dropped = 0
        self._lock = threading.Lock()

    def append(self, chunk: bytes) -> None:
        with self._lock:
            self._data += chunk
            excess = len(self._data) - STDERR_LIMIT
            if excess > 0:
                del self._data[:excess]
                self._dropped += excess

    def mark(self) -> int:
        """The absolute offset of the next byte."""
        with self._lock:
            return self._dropped + len(self._data)

    def text(self, since: int = 0) -> str:
        """What arrived from offset ``since`` on (what is still kept of it)."""
        with self._lock:
            start = max(0, since - self._dropped)
            prefix = (
                f"[... {self._dropped - since} earlier bytes dropped ...]\n" if since < self._dropped else ""
            )
            return prefix + self._data[start:].decode("utf-8", errors="replace")


def _child_environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The parent's environment plus ``extra``, with this copy of pytest_mps first on the path (so the
    worker runs the same code as the parent even from a checkout; a ``PYTHONPATH`` in ``extra`` comes
    next), unbuffered output, and the parent's pid (the worker leaves when the parent is gone)."""
    env = dict(os.environ)
    extra = dict(extra or {})
    root = str(Path(__file__).resolve().parent.parent.parent)
    paths = (root, extra.pop("PYTHONPATH", ""), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    env[PARENT_VARIABLE] = str(os.getpid())
    env.update(extra)
    return env


class Worker:
    """One worker process. :meth:`request` sends a request and waits for its answer; a worker that
    died or hung answers with a :class:`Death` (and stays dead).

    Args:
        preload: import torch and diffusers at start-up, before the first request.
        startup_timeout: seconds the worker may take to get ready.
        env: extra environment variables for the worker.
    """

    def __init__(
        self,
        *,
        preload: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        command = [sys.executable, "-m", "pytest_mps.worker", *(["--preload"] if preload else [])]
        self.startup_timeout = startup_timeout
        self.started = time.perf_counter()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_environment(env),
        )
        self.pid = self._proc.pid
        self._answers: queue.Queue[bytes | None] = queue.Queue()
        self._stderr = _StderrBuffer()
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_answers, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.ready: dict[str, Any] | None = None
        self.death: Death | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    def _read_answers(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._answers.put(line)
        self._answers.put(None)

    def _read_stderr(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._stderr.append(chunk)

    @property
    def alive(self) -> bool:
        """True while the worker can take requests."""
        return self.death is None and self._proc.poll() is None

    def stderr_mark(self) -> int:
        """An offset for :meth:`stderr_since`."""
        return self._stderr.mark()

    def stderr_since(self, mark: int = 0) -> str:
        """The worker's stderr from ``mark`` on."""
        return self._stderr.text(mark)

    # -- requests ---------------------------------------------------------------------------------
    def wait_ready(self) -> bool:
        """Wait (up to ``startup_timeout``) until the worker has started and done its imports; False
        when it died or did not start in time (it is then killed)."""
        if self.ready is None and self.death is None:
            got = self._next(self.startup_timeout, "starting", time.perf_counter())
            if not isinstance(got, Death):
                self.ready = got
        return self.ready is not None and self.death is None

    def request(
        self, payload: Mapping[str, Any], *, timeout: float | None, doing: str
    ) -> dict[str, Any] | Death:
        """Send ``payload`` and wait up to ``timeout`` seconds (None: forever) for the answer."""
        if not self.wait_ready():
            assert self.death is not None
            return self.death
        start = time.perf_counter()
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(dict(payload)).encode("utf-8") + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died(doing, start)
        return self._next(timeout, doing, start)

    def _next(self, timeout: float | None, doing: str, start: float) -> dict[str, Any] | Death:
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            return self._hung(doing, start, timeout)
        if line is None:
            return self._died(doing, start)
        try:
            answer = json.loads(line)
        except ValueError:
            return self._stop("protocol", doing, start, None)
        if not isinstance(answer, dict):
            return self._stop("protocol", doing, start, None)
        return answer

    def _settle(self) -> int | None:
        """Wait for the process to end and its stderr to drain."""
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def _record(self, kind: str, doing: str, start: float, timeout: float | None, code: int | None) -> Death:
        name = None
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                name = signal.Signals(-code).name
        if kind == "exit" and code is not None and code < 0:
            kind = "crash"
        self.death = Death(
            kind=kind,
            doing=doing,
            returncode=code,
            signal=name,
            seconds=time.perf_counter() - start,
            timeout=timeout,
            pid=self.pid,
            stderr=self._stderr.text(),
        )
        return self.death

    def _died(self, doing: str, start: float) -> Death:
        return self._record("exit", doing, start, None, self._settle())

    def _hung(self, doing: str, start: float, timeout: float | None) -> Death:
        usr1 = getattr(signal, "SIGUSR1", None)
        if usr1 is not None and self._proc.poll() is None:
            before = self._stderr.mark()
            with contextlib.suppress(OSError):
                self._proc.send_signal(usr1)  # faulthandler dumps every thread's stack
            deadline = time.perf_counter() + 2.0
            while time.perf_counter() < deadline and self._stderr.mark() == before:
                time.sleep(0.05)
            time.sleep(0.1)
        return self._stop("hang", doing, start, timeout)

    def _stop(self, kind: str, doing: str, start: float, timeout: float | None) -> Death:
        with contextlib.suppress(OSError):
            self._proc.kill()
        self._settle()
        return self._record(kind, doing, start, timeout, self._proc.returncode)

    def close(self, *, graceful: bool = True) -> None:
        """End the worker: ask it to exit (if ``graceful`` and it is ready), else kill it."""
        if self._proc.poll() is None:
            if graceful and self.ready is not None and self.death is None:
                with contextlib.suppress(BrokenPipeError, OSError, AssertionError):
                    assert self._proc.stdin is not None
                    self._proc.stdin.write(b'{"op": "exit"}\n')
                    self._proc.stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=10)
            if self._proc.poll() is None:
                self._proc.kill()
        self._settle()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            with contextlib.suppress(OSError, AttributeError):
                stream.close()  # type: ignore[union-attr]


class WorkerPool:
    """Hands out fresh workers; :meth:`prewarm` starts one ahead of need, so that its torch and
    diffusers imports overlap other work."""

    def __init__(self, *, preload: bool = True, env: Mapping[str, str] | None = None) -> None:
        self.preload = preload
        self.env = dict(env or {})
        self._spare: Worker | None = None
        self.started = 0
        #: each worker's latest reference-store counts, by pid
        self.reference_stats: dict[int, dict[str, Any]] = {}

    def _new(self) -> Worker:
        self.started += 1
        return Worker(preload=self.preload, env=self.env)

    def take(self) -> Worker:
        """A fresh worker: the spare if one is up, else a new one."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive:
            return spare
        if spare is not None:
            spare.close(graceful=False)
        return self._new()

    def prewarm(self) -> None:
        """Start a spare worker now, unless one is up."""
        if self._spare is None or not self._spare.alive:
            self._spare = self._new()

    def close(self) -> None:
        """Stop the spare."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close(graceful=False)
