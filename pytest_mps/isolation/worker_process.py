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
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_mps.isolation.death import Death, crash_quote, python_frames
from pytest_mps.worker import PARENT_VARIABLE

__all__ = ["Death", "Worker", "WorkerPool", "crash_quote", "python_frames"]

#: How long a fresh worker may take to import torch and diffusers before it counts as dead.
STARTUP_TIMEOUT_S = 300.0
#: The most stderr kept per worker (the most recent bytes are kept).
STDERR_LIMIT = 8 * 2**20


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
        module: the worker's module (``python -m MODULE``): :mod:`pytest_mps.worker` for the bundled
            suite's checks, :mod:`pytest_mps.isolation.session_worker` for a project's tests.
        cwd: the worker's working folder (default: this process's).
        echo: also copy the worker's stderr to this process's stderr as it arrives (``-s``).
    """

    def __init__(
        self,
        *,
        preload: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        module: str = "pytest_mps.worker",
        cwd: str | os.PathLike[str] | None = None,
        echo: bool = False,
    ) -> None:
        command: Sequence[str] = [sys.executable, "-m", module, *(["--preload"] if preload else [])]
        self.startup_timeout = startup_timeout
        self._echo = echo
        self.started = time.perf_counter()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_environment(env),
            cwd=cwd,
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
        self._leaving = False

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
            if self._echo:
                with contextlib.suppress(OSError):
                    os.write(2, chunk)

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
        death = self.send(payload, doing=doing)
        if death is not None:
            return death
        return self.receive(timeout=timeout, doing=doing, start=start)

    def send(self, payload: Mapping[str, Any], *, doing: str) -> Death | None:
        """Send ``payload`` once the worker is ready, without waiting for an answer (read them with
        :meth:`receive`); the worker's :class:`Death` when it cannot take it."""
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
        return None

    def receive(self, *, timeout: float | None, doing: str, start: float) -> dict[str, Any] | Death:
        """The worker's next message, waiting until ``timeout`` seconds after ``start`` (a
        ``time.perf_counter()`` value; None: forever); a :class:`Death` when it died, or hung past
        the limit (it is then killed)."""
        wait = None if timeout is None else max(0.0, start + timeout - time.perf_counter())
        return self._next(wait, doing, start, limit=timeout)

    def _next(
        self, wait: float | None, doing: str, start: float, *, limit: float | None = None
    ) -> dict[str, Any] | Death:
        try:
            line = self._answers.get(timeout=wait)
        except queue.Empty:
            return self._hung(doing, start, wait if limit is None else limit)
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

    def ask_to_exit(self) -> None:
        """Ask a ready worker to finish and exit, without waiting for it (:meth:`close` waits)."""
        if self._proc.poll() is None and self.ready is not None and self.death is None and not self._leaving:
            self._leaving = True
            with contextlib.suppress(BrokenPipeError, OSError, AssertionError):
                assert self._proc.stdin is not None
                self._proc.stdin.write(b'{"op": "exit"}\n')
                self._proc.stdin.flush()

    def close(self, *, graceful: bool = True, wait: float = 10.0) -> None:
        """End the worker: ask it to exit and wait up to ``wait`` seconds (if ``graceful`` and it is
        ready), else (or then) kill it."""
        if self._proc.poll() is None:
            if graceful:
                self.ask_to_exit()
            if self._leaving:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=wait)
            if self._proc.poll() is None:
                self._proc.kill()
        self._settle()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            with contextlib.suppress(OSError, AttributeError):
                stream.close()  # type: ignore[union-attr]


class WorkerPool:
    """Hands out workers: one given back alive after a pipeline (:meth:`give_back`) serves the next, so
    torch and diffusers are imported once per run, not once per pipeline; a worker that died is never
    reused, and :meth:`prewarm` starts a fresh one ahead of need (after a crash)."""

    def __init__(self, *, preload: bool = True, env: Mapping[str, str] | None = None) -> None:
        self.preload = preload
        self.env = dict(env or {})
        self._spare: Worker | None = None
        self.started = 0
        #: workers handed out again after serving a pipeline
        self.reused = 0
        #: the latest reference-store counts of each (worker pid, pipeline label)
        self.reference_stats: dict[tuple[int, str], dict[str, Any]] = {}
        self._used: weakref.WeakSet[Worker] = weakref.WeakSet()

    def _new(self) -> Worker:
        self.started += 1
        return Worker(preload=self.preload, env=self.env)

    def take(self) -> Worker:
        """A worker: the spare if one is up (fresh or given back), else a new one."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive:
            if spare in self._used:
                self.reused += 1
            return spare
        if spare is not None:
            spare.close(graceful=False)
        return self._new()

    def spare(self) -> Worker | None:
        """The worker the next :meth:`take` hands out, if one is up (it stays in the pool)."""
        return self._spare if self._spare is not None and self._spare.alive else None

    def give_back(self, worker: Worker) -> None:
        """Keep ``worker`` for the next pipeline when it is alive and no spare is up; else stop it."""
        if worker.alive and (self._spare is None or not self._spare.alive):
            if self._spare is not None:
                self._spare.close(graceful=False)
            self._used.add(worker)
            self._spare = worker
        else:
            worker.close()

    def prewarm(self) -> None:
        """Start a spare worker now, unless one is up."""
        if self._spare is None or not self._spare.alive:
            self._spare = self._new()

    def close(self) -> None:
        """Stop the spare."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close(graceful=False)


#: A pool started before the pytest session that will use it (see :func:`start_early_worker`).
_EARLY: WorkerPool | None = None


def start_early_worker() -> None:
    """Start a worker now, for the pytest session this process runs next to take
    (:func:`take_early_pool`): ``pytest-mps check`` does so before it validates the pipeline folders,
    so the worker's torch and diffusers imports overlap the parent's own."""
    global _EARLY
    if _EARLY is None:
        _EARLY = WorkerPool()
        _EARLY.prewarm()


def early_worker() -> Worker | None:
    """The worker :func:`start_early_worker` started, while it is up and nobody took its pool."""
    return _EARLY.spare() if _EARLY is not None else None


def take_early_pool() -> WorkerPool | None:
    """The pool :func:`start_early_worker` started (its owner is now the caller), or None."""
    global _EARLY
    pool, _EARLY = _EARLY, None
    return pool


def discard_early_pool() -> None:
    """Stop an early worker nobody took (a run that ended before it needed one)."""
    pool = take_early_pool()
    if pool is not None:
        pool.close()
