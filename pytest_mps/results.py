"""The record every check returns, and its readable report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pytest_mps.metrics import Comparison
    from pytest_mps.tolerances import Tolerance

__all__ = ["CheckResult", "format_figure"]


def format_figure(value: float | None) -> str:
    """A metric in a short, readable form (``2.1e-06``, ``0.0312``, ``inf``)."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    if abs(value) >= 1e-2 and abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


_JUDGED = (
    # (comparison field, tolerance field, "<=" or ">=", label)
    ("max_abs", "atol", "<=", "max |diff|"),
    ("cosine_distance", "max_cosine_distance", "<=", "cosine distance"),
    ("psnr", "min_psnr", ">=", "PSNR dB"),
    ("rms_255", "max_rms", "<=", "RMS (0-255)"),
    ("pixel_fraction", "max_pixel_fraction", "<=", "pixels off >1 level"),
)


@dataclass
class CheckResult:
    """The outcome of one check on one pipeline.

    Attributes:
        check: the check's name (``cpu_parity``, ``batch_consistency``, ...).
        passed: whether every judged figure is within its tolerance.
        target: the target's label (stand-ins say so).
        real_mps: True only when the target was Apple's MPS backend on Apple hardware.
        pipeline: the pipeline's class name.
        summary: the key figure in a few words, for tables.
        failures: one line per reason the check failed.
        comparisons: what was compared with what (``"target vs cpu"``, ``"item 1"``...).
        tolerance: the thresholds used and where each came from.
        timings: seconds per run (``target``, ``cpu``, ...).
        details: check-specific facts (memory, schedulers, reference origin...).
        images: arrays for visual reports (``cpu``, ``target``); not serialised to JSON.
    """

    check: str
    passed: bool
    target: str
    real_mps: bool
    pipeline: str
    summary: str = ""
    failures: list[str] = field(default_factory=list)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    nodeid: str | None = None

    @property
    def outcome(self) -> str:
        """``passed`` or ``failed``."""
        return "passed" if self.passed else "failed"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images, JSON-ready."""
        return {
            "check": self.check,
            "outcome": self.outcome,
            "target": self.target,
            "real_mps": self.real_mps,
            "pipeline": self.pipeline,
            "summary": self.summary,
            "failures": list(self.failures),
            "metrics": {name: c.to_dict() for name, c in self.comparisons.items()},
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "timings": dict(self.timings),
            "details": _plain(self.details),
            "nodeid": self.nodeid,
        }

    def report(self) -> str:
        """A readable multi-line report: verdict, failures, then each comparison against thresholds."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"{self.check} {verdict} on {self.target} for {self.pipeline}: {self.summary}"]
        lines += [f"  - {failure}" for failure in self.failures]
        lines += [f"  {line}" for line in self.details.get("lines", ())]
        for name, comparison in self.comparisons.items():
            lines.append(f"  {name}: shape {comparison.shape}")
            for figure, limit, sense, label in _JUDGED:
                value = getattr(comparison, figure)
                threshold = getattr(self.tolerance, limit, None) if self.tolerance else None
                judged = f" (limit {sense} {format_figure(threshold)})" if threshold is not None else ""
                lines.append(f"    {label:<22} {format_figure(value)}{judged}")
            lines.append(f"    {'mean |diff|':<22} {format_figure(comparison.mean_abs)}")
            lines.append(
                f"    worst at {comparison.where()}: target {comparison.worst_target:.6g}"
                f" vs reference {comparison.worst_reference:.6g}"
            )
        if self.timings:
            lines.append("  timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in self.timings.items()))
        if not self.real_mps:
            lines.append(f"  note: {self.target} is a stand-in; this is not an MPS verdict")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value
