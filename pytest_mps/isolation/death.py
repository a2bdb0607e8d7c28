"""How a worker process stopped answering, read from its exit status and its stderr: :class:`Death`
(the signal and what it usually means, the assertion line quoted from stderr, the last Python frames).
Used for the bundled suite's workers and for isolated project tests alike. Imports nothing heavy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Death", "crash_quote", "python_frames", "signal_meaning"]

_SIGNAL_MEANING = {
    "SIGABRT": "an abort (how a failed Metal/MPS assertion ends a process)",
    "SIGSEGV": "a segmentation fault (an invalid memory access in native code)",
    "SIGBUS": "a bus error (an invalid memory access in native code)",
    "SIGILL": "an illegal instruction",
    "SIGFPE": "a floating-point exception",
    "SIGKILL": "killed from outside (the system's out-of-memory killer, or a user)",
    "SIGTERM": "terminated from outside",
}


def signal_meaning(name: str | None) -> str:
    """What a fatal signal usually means for a worker (``SIGABRT``: "an abort (how a failed
    Metal/MPS assertion ends a process)")."""
    return _SIGNAL_MEANING.get(name or "", "a fatal signal")


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
            meaning = signal_meaning(self.signal)
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
