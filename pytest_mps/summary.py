"""The end-of-session table: each pipeline and check with its outcome and key figure."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_mps.results import CheckResult
from pytest_mps.target import Target

__all__ = ["summary_lines"]


def summary_lines(results: Sequence[CheckResult], target: Target | None = None) -> list[str]:
    """Rows ``pipeline | check | outcome | key figure``, headed by the target (stand-ins say so)."""
    labels = sorted({r.target for r in results})
    real = all(r.real_mps for r in results)
    head = f"target: {', '.join(labels)}" + ("" if real else "  [stand-in: not an MPS verdict]")
    rows = [("pipeline", "check", "outcome", "key figure")]
    rows += [(r.pipeline, r.check, r.outcome, r.summary) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    return lines
