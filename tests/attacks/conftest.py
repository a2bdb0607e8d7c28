"""Shared tools of the attack modules: FIFOs that cannot hang the test run."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class FifoWatch:
    """Plants FIFOs and watches them: if code under test opens one for reading (which blocks until a
    writer comes), a watchdog thread opens it for writing after ``grace`` seconds so the reader gets
    an empty file instead of hanging the run; ``unblocked`` lists the FIFOs it had to release."""

    def __init__(self, grace: float = 3.0) -> None:
        self.grace = grace
        self.fifos: list[Path] = []
        self.unblocked: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def plant(self, path: Path) -> Path:
        if path.exists() or path.is_symlink():
            path.unlink()
        os.mkfifo(path)
        self.fifos.append(path)
        return path

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(0.1):
            if time.monotonic() - started < self.grace:
                continue
            for fifo in list(self.fifos):
                try:  # succeeds only while a reader is blocked in open()
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                os.close(fd)
                self.unblocked.append(fifo.name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def fifos() -> Iterator[FifoWatch]:
    """A :class:`FifoWatch` (skipped where the platform has no FIFOs)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs os.mkfifo")
    watch = FifoWatch()
    yield watch
    watch.stop()
