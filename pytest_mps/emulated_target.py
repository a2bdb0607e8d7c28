"""Glue between the session's target and the MPS emulation engine (``pytest_mps.emulation``)."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["emulation_active", "emulation_unavailable_reason"]


def emulation_unavailable_reason() -> str | None:
    """Why ``--mps-device emulated`` cannot be used, or None when it can."""
    try:
        import pytest_mps.emulation.emulator  # noqa: F401 - importing it is the test
    except ImportError as exc:  # e.g. a torch too old for wrapper subclasses
        return f"the MPS emulation cannot load here ({exc}); use --mps-device cpu or cuda"
    return None


def start_emulation() -> contextlib.AbstractContextManager[Any]:
    """Enter the emulated MPS device for a whole session; the returned object is exited at its end."""
    from pytest_mps.emulation import EmulatedMPS

    emulation = EmulatedMPS()
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
