"""Run ``pytest-mps check`` on a saved zoo entry in a fresh process and read which checks failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["REPO", "CheckRunError", "check_statuses", "failed_checks", "run_check"]

#: The repository root (the checking process runs there, with it first on ``PYTHONPATH``).
REPO = Path(__file__).resolve().parents[2]


class CheckRunError(RuntimeError):
    """``pytest-mps check`` wrote no report; the message is one line with its exit status and last line."""


def failed_checks(report: dict[str, Any], label: str) -> dict[str, list[str]]:
    """The failed suite checks of pipeline ``label`` in a ``--mps-report-json`` report: check name ->
    failure lines."""
    failed: dict[str, list[str]] = {}
    for row in report["checks"]:
        if row["pipeline"] == label and row["outcome"] == "failed":
            failed[row["check"]] = list(row["failures"]) or [row.get("summary") or "failed"]
    return failed


def check_statuses(report: dict[str, Any], label: str) -> dict[str, str]:
    """Every suite check's result status (``passed``, ``failed``, ``cpu_too``...) of pipeline ``label``
    in a ``--mps-report-json`` report."""
    return {row["check"]: row["status"] for row in report["checks"] if row["pipeline"] == label}


def run_check(
    folder: Path, report: Path, *, device: str = "emulated", timeout: float = 1800
) -> dict[str, Any]:
    """``python -m pytest_mps check --device DEVICE FOLDER`` in a fresh process; its JSON report.

    One intra-op thread (``OMP_NUM_THREADS=1``): tiny pipelines gain nothing from more, and on a busy
    small machine OpenMP's spinning threads make every call several times slower.
    """
    command = [
        sys.executable,
        "-m",
        "pytest_mps",
        "check",
        "--device",
        device,
        str(folder),
        f"--mps-report-json={report}",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(REPO), *paths]))}
    env.setdefault("OMP_NUM_THREADS", "1")
    report.unlink(missing_ok=True)
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    if not report.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise CheckRunError(f"pytest-mps check wrote no report (exit {done.returncode}): {tail[0]}")
    return json.loads(report.read_text())
