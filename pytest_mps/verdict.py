"""Outcomes of checks, and the one verdict: does a pipeline earn the MPS badge?

:class:`Status` is what one check's result says; :func:`pipeline_verdict` turns a pipeline's results into
its :class:`Verdict`. The terminal tables, ``pytest-mps check``, the JSON, Markdown and HTML reports,
``pytest-mps merge`` and signed receipts all ask :func:`pipeline_verdict`; no other code decides a badge.

**The badge rule.** A pipeline earns Diffusers' MPS badge only when every check the badge requires
(:func:`pytest_mps.registry.required_checks`) ran on real MPS (Apple's MPS backend on a Mac) and passed
(or did not apply), and the target was faster than the CPU (the badge promises "faster inference").
A result from a stand-in target (the emulated device, CUDA, XPU, the CPU) never counts toward it.

Importing this module is cheap (no torch, no numpy).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_mps.registry import canonical, get, required_checks

__all__ = ["Status", "Verdict", "combined_statuses", "pipeline_verdict", "status_of"]


class Status(str, enum.Enum):
    """The outcome of one check."""

    #: Every judged figure is within its tolerance.
    PASSED = "passed"
    #: It fails on the target and not on the CPU: an MPS (or stand-in) problem.
    FAILED = "failed"
    #: It fails on the CPU too: a problem of the pipeline or its inputs, not of MPS.
    CPU_TOO = "cpu_too"
    #: Nothing to check here (a pipeline without attention has no attention slicing).
    NOT_APPLICABLE = "not_applicable"
    #: It did not run (a stand-in-only check on real MPS, a pipeline that did not load).
    SKIPPED = "skipped"
    #: The process running it died from a signal (a Metal assertion aborts the process).
    CRASHED = "crashed"
    #: It did not finish within the time limit and was killed.
    HUNG = "hung"
    #: The harness could not run it (not a verdict on the pipeline).
    ERROR = "error"

    @property
    def ok(self) -> bool:
        """True when the check did not fail (passed or not applicable)."""
        return self in (Status.PASSED, Status.NOT_APPLICABLE)

    @property
    def against_target(self) -> bool:
        """True when the outcome counts against the target: failed, crashed or hung."""
        return self in (Status.FAILED, Status.CRASHED, Status.HUNG)

    @property
    def outcome(self) -> str:
        """The binary outcome of reports and pytest: ``passed`` or ``failed`` (``skipped`` for skips)."""
        if self is Status.SKIPPED:
            return "skipped"
        return "passed" if self.ok else "failed"

    @property
    def cell(self) -> str:
        """The few letters of a table cell (``ok``, ``FAIL``, ``cpu-too``...)."""
        return _CELLS[self]


_CELLS = {
    Status.PASSED: "ok",
    Status.FAILED: "FAIL",
    Status.CPU_TOO: "cpu-too",
    Status.NOT_APPLICABLE: "n/a",
    Status.SKIPPED: "skip",
    Status.CRASHED: "CRASH",
    Status.HUNG: "HANG",
    Status.ERROR: "ERROR",
}

#: Which status wins when a check ran several times for one pipeline (worst first).
_SEVERITY = (
    Status.CRASHED,
    Status.HUNG,
    Status.FAILED,
    Status.ERROR,
    Status.CPU_TOO,
    Status.PASSED,
    Status.NOT_APPLICABLE,
    Status.SKIPPED,
)


def status_of(result: Mapping[str, Any]) -> Status:
    """The :class:`Status` of a result dict (``CheckResult.to_dict()``); reports written before the
    ``status`` field existed give ``outcome`` only."""
    raw = result.get("status")
    if raw is not None:
        try:
            return Status(raw)
        except ValueError:
            return Status.ERROR
    return Status.PASSED if result.get("outcome") == "passed" else Status.FAILED


def combined_statuses(
    results: Iterable[Mapping[str, Any]], *, real_mps_only: bool = False
) -> dict[str, Status]:
    """The worst status of each check (by id) over ``results``; only real-MPS results with
    ``real_mps_only``."""
    out: dict[str, Status] = {}
    for result in results:
        if real_mps_only and not result.get("real_mps"):
            continue
        check = canonical(str(result.get("check")))
        status = status_of(result)
        current = out.get(check)
        if current is None or _SEVERITY.index(status) < _SEVERITY.index(current):
            out[check] = status
    return out


@dataclass(frozen=True)
class Verdict:
    """A pipeline's verdict.

    Attributes:
        kind: ``badge`` (earns the MPS badge), ``passed`` (a stand-in pre-check passed), ``incomplete``
            (real MPS, but required checks did not run), ``failed``, ``cpu_too`` (only failures that
            happen on the CPU too), ``error`` (the harness could not run a check) or ``not_run``.
        text: the verdict in words, as every output prints it.
        badge: True only for ``kind == "badge"``.
        real_mps: whether any result came from real MPS.
        failed, cpu_too, missing, errors: the checks behind the verdict.
        speedup: CPU time / target time, when the speed check ran.
    """

    kind: str
    text: str
    badge: bool = False
    real_mps: bool = False
    failed: tuple[str, ...] = ()
    cpu_too: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    speedup: float | None = None


#: How the verdict names each stand-in target.
_STANDIN_KIND = {
    "emulated": "emulated",
    "cuda": "cuda stand-in",
    "xpu": "xpu stand-in",
    "cpu": "cpu stand-in",
}


def _speedup(results: Iterable[Mapping[str, Any]], *, real_mps_only: bool) -> float | None:
    for result in results:
        if canonical(str(result.get("check"))) != "speed" or (real_mps_only and not result.get("real_mps")):
            continue
        figure = result.get("figure")
        if isinstance(figure, int | float) and not isinstance(figure, bool):
            return float(figure)
    return None


def _in_order(names: Iterable[str]) -> tuple[str, ...]:
    from pytest_mps.registry import CHECKS

    chosen = set(names)
    known = [n for n in CHECKS if n in chosen]
    return (*known, *sorted(chosen - set(known)))


def _cpu_too_clause(checks: tuple[str, ...]) -> str:
    return (
        f"{', '.join(checks)} {'fails' if len(checks) == 1 else 'fail'} on the CPU too (not an MPS problem)"
    )


def pipeline_verdict(
    results: Iterable[Mapping[str, Any]],
    *,
    target_name: str | None = None,
    skip_reasons: Iterable[str] = (),
) -> Verdict:
    """The verdict for one pipeline's results (``CheckResult.to_dict()`` form, any targets).

    Args:
        results: every result recorded for the pipeline (a check may appear several times: the worst
            outcome counts).
        target_name: the stand-in's name (``emulated``, ``cuda``...) for the pre-check wording; by
            default read from the results' target labels.
        skip_reasons: why checks were skipped, for a verdict that nothing ran.
    """
    from pytest_mps.labels import target_name_of

    rows = [r for r in results if status_of(r) is not Status.SKIPPED]
    statuses = combined_statuses(rows)
    if not statuses:
        reasons = [r for r in skip_reasons if r]
        return Verdict("not_run", "not run" + (f": {reasons[0]}" if reasons else ""))
    real = any(r.get("real_mps") for r in rows)
    failed = _in_order(c for c, s in statuses.items() if s.against_target)
    cpu_too = _in_order(c for c, s in statuses.items() if s is Status.CPU_TOO)
    errors = _in_order(c for c, s in statuses.items() if s is Status.ERROR)
    speedup = _speedup(rows, real_mps_only=real)
    if failed:
        text = "fails: " + ", ".join(failed)
        if "speed" in failed and speedup is not None:
            text += f" ({speedup:.2f}x the CPU's speed)"
        if cpu_too:
            text += "; " + _cpu_too_clause(cpu_too)
        return Verdict("failed", text, real_mps=real, failed=failed, cpu_too=cpu_too, speedup=speedup)
    if errors:
        text = f"not judged: {', '.join(errors)} could not run (see the errors)"
        return Verdict("error", text, real_mps=real, cpu_too=cpu_too, errors=errors, speedup=speedup)
    if real:
        # The badge rule: every required check ran on real MPS without failing, and MPS beat the CPU.
        on_mps = combined_statuses(rows, real_mps_only=True)
        missing = tuple(c for c in required_checks() if c not in on_mps)
        if cpu_too:
            text = "no badge: " + _cpu_too_clause(cpu_too)
            return Verdict("cpu_too", text, real_mps=True, cpu_too=cpu_too, missing=missing, speedup=speedup)
        if missing:
            text = f"no badge yet: {', '.join(missing)} not run on MPS (the badge needs every required check)"
            return Verdict("incomplete", text, real_mps=True, missing=missing, speedup=speedup)
        if speedup is None or speedup <= 1.0:
            shown = "unknown" if speedup is None else f"{speedup:.2f}x"
            text = f"no badge: MPS is not faster than the CPU ({shown})"
            return Verdict("failed", text, real_mps=True, failed=("speed",), speedup=speedup)
        text = f"earns the MPS badge ({speedup:.2f}x faster than the CPU)"
        return Verdict("badge", text, badge=True, real_mps=True, speedup=speedup)
    name = target_name or next(
        (target_name_of(str(r.get("target"))) for r in rows if r.get("target")), "stand-in"
    )
    missing = tuple(c for c in required_checks() if c not in statuses and get(c).runs_on(name))
    not_run = f"; not run: {', '.join(missing)}" if missing else ""
    kind = _STANDIN_KIND.get(name, f"{name} stand-in")
    if cpu_too:
        text = f"{_cpu_too_clause(cpu_too)}; no MPS-specific failure ({kind})"
        return Verdict("cpu_too", text + not_run, cpu_too=cpu_too, missing=missing, speedup=speedup)
    text = f"pre-check passed ({kind})" + not_run
    return Verdict("passed", text, missing=missing, speedup=speedup)
