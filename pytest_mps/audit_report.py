"""The record an MPS hazard audit returns (:class:`AuditReport`) and its readable table. The audit itself is
:mod:`pytest_mps.hazard_audit`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_mps.emulation.findings import SEVERITIES, Finding

__all__ = ["AuditReport"]


@dataclass(frozen=True)
class AuditReport:
    """What an audit found.

    Attributes:
        findings: merged findings (repeats folded into ``count``), in the order first met.
        target_label: the target the audit ran on (always a stand-in: the emulated MPS device).
        subject: what was audited (pipeline or module class, with its name).
        completed: False when the run stopped early (an abort, or an exception).
        stopped_by: ``ExceptionType: message`` of what stopped it, or None.
        seconds: wall time of the audited run.
        call: the call's arguments, summarised (JSON-able).
        output: the run's output (``output_type="np"`` images for pipelines; meta-backed emulated tensors
            for module traces; None for a traced pipeline, whose values were not computed); not part of
            ``to_dict()``.
        traced: True when the pipeline's models were traced on meta tensors instead of computed.
        memory: for a traced pipeline, the estimated peak device memory
            (:class:`~pytest_mps.plan.memory.MemoryEstimate`).
    """

    findings: tuple[Finding, ...]
    target_label: str
    subject: str = ""
    completed: bool = True
    stopped_by: str | None = None
    seconds: float = 0.0
    call: Mapping[str, Any] = field(default_factory=dict)
    output: Any = field(default=None, compare=False, repr=False)
    traced: bool = False
    memory: Any = None

    def with_severity(self, *severities: str) -> tuple[Finding, ...]:
        """Findings of the given severities."""
        return tuple(f for f in self.findings if f.severity in severities)

    @property
    def aborts(self) -> tuple[Finding, ...]:
        """Findings that kill the process on a Mac."""
        return self.with_severity("abort")

    @property
    def errors(self) -> tuple[Finding, ...]:
        """Findings that make MPS raise (an abort is worse than an error and is not counted here)."""
        return self.with_severity("error")

    @property
    def fallbacks(self) -> tuple[Finding, ...]:
        """Ops that run on the CPU instead of MPS."""
        return self.with_severity("fallback")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """Portability hazards that work with the installed torch on a supported macOS."""
        return self.with_severity("warning")

    @property
    def ok(self) -> bool:
        """True when nothing would abort, raise or fall back on MPS and the run completed."""
        return self.completed and not (self.aborts or self.errors or self.fallbacks)

    def kinds(self) -> dict[str, int]:
        """Occurrences per finding kind."""
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + f.count
        return out

    def format(self) -> str:
        """A readable table: one row per finding, worst severity first."""
        head = f"MPS hazard audit of {self.subject or '?'} on {self.target_label}"
        status = "completed" if self.completed else f"STOPPED: {self.stopped_by}"
        lines = [head, f"run {status} in {self.seconds:.2f}s; {_summary(self)}"]
        if self.traced:
            lines.append(
                "traced: the models ran on meta tensors (shapes and dtypes at full size, no values), so "
                "size, dtype and kernel hazards are reported, numerical ones are not"
            )
            if self.memory is not None:
                lines.append(
                    f"estimated peak memory {_bytes(self.memory.peak_bytes)} "
                    f"(weights {_bytes(self.memory.weights_bytes)}; see pytest-mps plan)"
                )
        if not self.findings:
            lines.append("no MPS hazards found")
            return "\n".join(lines)
        rows = [("severity", "kind", "op", "dtypes/shapes", "bytes", "count", "module", "source")]
        for f in sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity)):
            tensors = ", ".join(f"{d}{list(s)}" for d, s in zip(f.dtypes, f.shapes, strict=False)) or "-"
            rows.append(
                (
                    f.severity,
                    f.kind,
                    f.op,
                    _clip(tensors, 48),
                    _bytes(f.nbytes),
                    str(f.count),
                    f.module or "-",
                    f.source or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("messages:")
        seen: set[str] = set()
        for f in self.findings:
            if f.message not in seen:
                seen.add(f.message)
                lines.append(f"  [{f.kind}] {f.message}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no output)."""
        return {
            "target_label": self.target_label,
            "subject": self.subject,
            "completed": self.completed,
            "stopped_by": self.stopped_by,
            "seconds": round(self.seconds, 4),
            "ok": self.ok,
            "counts": {s: len(self.with_severity(s)) for s in SEVERITIES},
            "call": dict(self.call),
            "traced": self.traced,
            "memory": self.memory.to_dict() if self.memory is not None else None,
            "findings": [f.to_dict() for f in self.findings],
        }


def _summary(report: AuditReport) -> str:
    counts = [f"{len(report.with_severity(s))} {s}" for s in SEVERITIES]
    return ", ".join(counts)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
