"""The record every check returns (:class:`CheckResult`), its JSON form both ways, and its report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_mps.verdict import Status

if TYPE_CHECKING:
    import numpy as np

    from pytest_mps.metrics import Comparison
    from pytest_mps.tolerances import Tolerance

__all__ = ["CheckResult", "Status", "format_figure"]


def _accepts_passed(cls: type) -> type:
    """``CheckResult(passed=...)`` (0.1) still works for one release, with a DeprecationWarning:
    results now carry a :class:`Status`."""
    init = cls.__init__

    def __init__(self: Any, *args: Any, passed: bool | None = None, **kwargs: Any) -> None:
        if passed is not None:
            import warnings

            warnings.warn(
                "CheckResult(passed=...) is deprecated; pass status=Status.PASSED or Status.FAILED",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs.setdefault("status", Status.PASSED if passed else Status.FAILED)
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def format_figure(value: float | None) -> str:
    """A metric in a short, readable form (``2.1e-06``, ``0.0312``, ``inf``): 4 significant digits
    between 0.01 and 10000, scientific notation outside."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4:
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

_HEADINGS = {
    Status.PASSED: "PASSED",
    Status.FAILED: "FAILED",
    Status.CPU_TOO: "FAILED (on the CPU too: not an MPS problem)",
    Status.NOT_APPLICABLE: "NOT APPLICABLE",
    Status.SKIPPED: "SKIPPED",
    Status.CRASHED: "CRASHED",
    Status.HUNG: "HUNG",
    Status.ERROR: "COULD NOT RUN",
}


@_accepts_passed
@dataclass
class CheckResult:
    """The outcome of one check on one pipeline.

    Attributes:
        check: the check's id (:data:`pytest_mps.registry.CHECKS`: ``cpu_parity``, ``batch``...).
        status: what happened (:class:`~pytest_mps.verdict.Status`).
        target: the target's label (stand-ins say so).
        real_mps: True only when the target was Apple's MPS backend on Apple hardware.
        pipeline: which pipeline: its source (folder name, hub id, factory name), so two pipelines of
            one class stay apart.
        pipeline_class: the pipeline's class name.
        summary: the key figure in a few words, for tables.
        figure: the key figure as a number (its meaning: the registry's ``figure``), or None.
        figure_text: the key figure as a table cell shows it (``12/12``, ``cos 1.7e-06``); by default
            :func:`format_figure` of ``figure``.
        failures: one line per reason the check failed.
        comparisons: what was compared with what (``"target vs cpu"``, ``"item 1"``...).
        tolerance: the thresholds used and where each came from.
        timings: seconds per run (``target``, ``cpu``, ...).
        details: check-specific facts (memory, schedulers, reference origin, the CPU cross-check...).
        images: arrays for visual reports (``cpu``, ``target``); not serialised.
        nodeid: the pytest test that ran the check.
        exception: the exception the pipeline raised, when that is why it failed; not serialised.
    """

    check: str
    status: Status = Status.PASSED
    target: str = ""
    real_mps: bool = False
    pipeline: str = ""
    pipeline_class: str = ""
    summary: str = ""
    figure: float | None = None
    figure_text: str = ""
    failures: list[str] = field(default_factory=list)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    nodeid: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """True when the check did not fail (passed, or not applicable)."""
        return self.status.ok

    @passed.setter
    def passed(self, value: bool) -> None:  # deprecated: set ``status``
        self.status = Status.PASSED if value else Status.FAILED

    @property
    def outcome(self) -> str:
        """``passed`` or ``failed`` (``skipped`` for a skip): the binary outcome of reports."""
        return self.status.outcome

    def settle(self) -> CheckResult:
        """Set ``status`` from ``failures`` for a finished comparison (passed when there is none), and
        the summary from the first failure when none was written. Returns ``self``."""
        if self.status in (Status.PASSED, Status.FAILED):
            self.status = Status.FAILED if self.failures else Status.PASSED
        if not self.summary and self.failures:
            self.summary = self.failures[0]
        if self.figure is None and not self.figure_text and any("NaN/Inf" in f for f in self.failures):
            self.figure_text = "NaN"
        return self

    @property
    def figure_cell(self) -> str:
        """The key figure as a table cell shows it ("" when there is none)."""
        if self.figure_text:
            return self.figure_text
        return format_figure(self.figure) if self.figure is not None else ""

    @property
    def title(self) -> str:
        """``tiny-sd (StableDiffusionPipeline)``, or just the name when they agree."""
        if self.pipeline_class and self.pipeline_class != self.pipeline:
            return f"{self.pipeline} ({self.pipeline_class})"
        return self.pipeline

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images and the exception object, as strict JSON data."""
        from pytest_mps.jsonable import plain_json

        return {
            "check": self.check,
            "status": self.status.value,
            "outcome": self.outcome,
            "target": self.target,
            "real_mps": self.real_mps,
            "pipeline": self.pipeline,
            "pipeline_class": self.pipeline_class,
            "summary": self.summary,
            "figure": plain_json(self.figure),
            "figure_text": self.figure_cell,
            "failures": list(self.failures),
            "metrics": {name: plain_json(c.to_dict()) for name, c in self.comparisons.items()},
            "tolerance": plain_json(self.tolerance.to_dict()) if self.tolerance else None,
            "timings": plain_json(self.timings),
            "details": plain_json(self.details),
            "nodeid": self.nodeid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        """The inverse of :meth:`to_dict` (images and the exception object are not restored)."""
        from pytest_mps.metrics import Comparison
        from pytest_mps.tolerances import Tolerance
        from pytest_mps.verdict import status_of

        tolerance = data.get("tolerance")
        figure = data.get("figure")
        return cls(
            check=str(data["check"]),
            status=status_of(data),
            target=str(data.get("target", "")),
            real_mps=bool(data.get("real_mps")),
            pipeline=str(data.get("pipeline", "")),
            pipeline_class=str(data.get("pipeline_class") or ""),
            summary=str(data.get("summary", "")),
            figure=float(figure)
            if isinstance(figure, int | float) and not isinstance(figure, bool)
            else None,
            figure_text=str(data.get("figure_text") or ""),
            failures=[str(f) for f in data.get("failures") or []],
            comparisons={
                str(label): Comparison.from_dict(m) for label, m in (data.get("metrics") or {}).items()
            },
            tolerance=Tolerance.from_dict(tolerance) if isinstance(tolerance, Mapping) else None,
            timings={str(k): float(v) for k, v in (data.get("timings") or {}).items() if v is not None},
            details=dict(data.get("details") or {}),
            nodeid=data.get("nodeid"),
        )

    def report(self) -> str:
        """A readable multi-line report: verdict, failures, then each comparison against thresholds."""
        lines = [f"{self.check} {_HEADINGS[self.status]} on {self.target} for {self.title}: {self.summary}"]
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
