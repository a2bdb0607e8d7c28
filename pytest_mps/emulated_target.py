"""Glue between the session's target and the MPS emulation engine (``pytest_mps.emulation``)."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = [
    "EMULATION_NOTES",
    "cannot_load_reason",
    "emulated_device",
    "emulation_active",
    "emulation_unavailable_reason",
    "note_counts",
    "note_lines",
    "start_emulation",
]


def emulation_unavailable_reason() -> str | None:
    """Why ``--mps-device emulated`` cannot be used, or None when it can.

    Where torch is imported already, the emulation engine is imported (importing it is the test).
    Where it is not, the answer comes without importing it (a process that only hands the work to a
    worker, such as ``pytest-mps check``'s, then never imports torch): whether torch is installed at
    all. The engine's own import proves the rest where the emulation starts, and an ``ImportError``
    there fails the work that needed it, never passes it.
    """
    import sys

    if "torch" not in sys.modules:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "torch is not installed here (the emulation runs on torch's CPU kernels); install torch"
        return None
    try:
        import pytest_mps.emulation.emulator  # noqa: F401 - importing it is the test
    except ImportError as exc:  # e.g. a torch too old for wrapper subclasses
        return cannot_load_reason(exc)
    return None


def cannot_load_reason(exc: ImportError) -> str:
    """The one line that says the emulation engine failed to import, and what to use instead."""
    return f"the MPS emulation cannot load here ({exc}); use --mps-device cpu or cuda"


def emulated_device() -> contextlib.AbstractContextManager[Any]:
    """A new (not yet entered) ``EmulatedMPS``.

    Raises:
        TargetError: the emulation engine cannot be imported here (the reason, in one line).
    """
    try:
        from pytest_mps.emulation import EmulatedMPS
    except ImportError as exc:
        from pytest_mps.target import TargetError

        raise TargetError(f"--mps-device emulated: {cannot_load_reason(exc)}") from exc
    return EmulatedMPS()


def start_emulation() -> contextlib.AbstractContextManager[Any]:
    """Enter the emulated MPS device for a whole session; the returned object is exited at its end
    (:class:`~pytest_mps.target.TargetError` where the engine cannot be imported)."""
    emulation = emulated_device()
    emulation.__enter__()
    return emulation


def emulation_active() -> bool:
    """True while the emulated MPS target is active in this process."""
    import sys

    emulation = sys.modules.get("pytest_mps.emulation")
    is_active = getattr(emulation, "is_active", None)
    return bool(is_active and is_active())


def cpu_arithmetic() -> contextlib.AbstractContextManager[None]:
    """A context in which code runs as plain CPU code: the emulation, if active, is suspended (so a
    CPU reference takes the CPU branches, as on a machine without MPS)."""
    import sys

    emulation = sys.modules.get("pytest_mps.emulation")
    suspended = getattr(emulation, "suspended", None)
    if suspended is not None and emulation_active():
        return suspended()
    return contextlib.nullcontext()


#: ``details`` key of a result's emulated-device notes (line -> count): those of a device entered for that
#: check alone (an isolated worker's), which the run's summary adds to the session's.
EMULATION_NOTES = "emulation_notes"


def note_counts(findings: Any) -> dict[str, int]:
    """The emulated device's notes among ``findings``: warnings and CPU fallbacks (they do not raise on
    a Mac either, but cost speed or portability), one line each with how often it was seen."""
    counts: dict[str, int] = {}
    for finding in findings:
        if finding.severity in ("warning", "fallback"):
            where = " in ".join(p for p in (finding.module, finding.source) if p) or "unknown location"
            line = f"{finding.severity}: {finding.kind} {finding.op} at {where}"
            counts[line] = counts.get(line, 0) + getattr(finding, "count", 1)
    return counts


def note_lines(counts: dict[str, int]) -> list[str]:
    """:func:`note_counts` as lines, repeats folded ("... (x3)")."""
    return [f"{line} (x{count})" if count > 1 else line for line, count in counts.items()]


def audit_hazards(pipe: Any, inputs: dict[str, Any]) -> list[str]:
    """Run the emulated-MPS hazard audit on ``pipe`` with ``inputs`` and return one line per finding
    of severity ``abort`` or ``error`` (empty when MPS would run it)."""
    from pytest_mps.hazard_audit import audit

    report = audit(pipe, inputs)
    lines: list[str] = []
    for finding in report.findings:
        if finding.severity not in ("abort", "error"):
            continue
        where = " in ".join(p for p in (finding.module, finding.source) if p) or "unknown location"
        line = f"emulated-MPS audit: {finding.kind} ({finding.severity}) at {where}: {finding.message}"
        if line not in lines:
            lines.append(line)
    return lines
