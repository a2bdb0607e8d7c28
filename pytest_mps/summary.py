"""The end-of-session table: each pipeline and check with its outcome and key figure.

Rows come from :class:`~pytest_mps.results.CheckResult` objects (a serial run) or from their
``to_dict()`` form (what pytest-xdist workers send the controller); both give the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_mps.results import CheckResult
from pytest_mps.target import Target

__all__ = ["summary_lines"]

_STANDIN_NOTE = "  [stand-in: not an MPS verdict]"


def _fields(result: CheckResult | Mapping[str, Any]) -> tuple[str, str, str, str, str, bool]:
    if isinstance(result, Mapping):
        return (
            str(result.get("pipeline", "")),
            str(result.get("check", "")),
            str(result.get("outcome", "")),
            str(result.get("summary", "")),
            str(result.get("target", "")),
            bool(result.get("real_mps")),
        )
    return (result.pipeline, result.check, result.outcome, result.summary, result.target, result.real_mps)


def summary_lines(
    results: Sequence[CheckResult | Mapping[str, Any]], target: Target | None = None
) -> list[str]:
    """Rows ``pipeline | check | outcome | key figure``, headed by the target (stand-ins say so). When
    real-MPS and stand-in results mix, each stand-in row is marked too."""
    fields = [_fields(r) for r in results]
    labels = sorted({f[4] for f in fields})
    real = all(f[5] for f in fields)
    mixed = not real and any(f[5] for f in fields)
    head = f"target: {', '.join(labels)}" + ("" if real else _STANDIN_NOTE)
    rows = [("pipeline", "check", "outcome", "key figure")]
    rows += [(p, c, o, s + (" [stand-in]" if mixed and not mps else "")) for p, c, o, s, _, mps in fields]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    return lines
