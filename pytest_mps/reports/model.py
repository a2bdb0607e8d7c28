"""The report dictionary every writer renders, and the rules it carries (badges, totals, validation).

A report (schema: ``pytest_mps/reports/schema.json``, version :data:`SCHEMA_VERSION`) is::

    {"schema_version": 1, "generator": "pytest-mps 0.1.0", "created": "...",
     "sources": [{"name", "created", "duration", "exitstatus", "target", "environment",
                  "xdist_workers", "references"}, ...],
     "checks": [{"source": 0, "nodeid", "check", "outcome", "target", "real_mps", "pipeline",
                 "summary", "failures", "metrics", "tolerance", "timings", "details", "images"}, ...],
     "pipelines": [{"pipeline", "checks", "passed", "failed", "real_mps_checks", "standin_checks",
                    "targets", "badge", "verdict"}, ...],
     "totals": {"checks", "passed", "failed", "real_mps", "standin"}}

One pytest session gives one source; ``pytest-mps merge`` concatenates sources and checks (each check
names its source by index), so a merged report has the same shape and can be merged again.

Each pipeline row's ``badge``, ``kind`` and ``verdict`` come from :func:`pytest_mps.verdict.pipeline_verdict`,
the one badge rule (every required check passed on real MPS, and MPS faster than the CPU). Stand-in
results never earn a badge and are labelled as stand-ins everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_mps.jsonable import plain_json
from pytest_mps.reports.validate import ReportError, load_report, validate_report

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "VOLATILE",
    "ReportError",
    "build_report",
    "comparable",
    "load_report",
    "pipeline_rows",
    "plain_json",
    "totals",
    "validate_report",
]

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema.json")

#: Fields that differ between two runs of the same suite on the same machine: wall-clock facts, and
#: where each CPU reference came from (memory, disk or computed depends on test order and workers).
VOLATILE = (
    "created",
    "sources[].created",
    "sources[].duration",
    "sources[].xdist_workers",
    "sources[].references",
    "checks[].timings",
    "checks[].details.reference",
    "checks[].details.localization",
    "checks[].details.lines",
    "checks[].images",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _generator() -> str:
    from pytest_mps import __version__

    return f"pytest-mps {__version__}"


def totals(checks: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many checks there are, passed, failed, on real MPS and on stand-ins."""
    passed = sum(1 for c in checks if c.get("outcome") == "passed")
    real = sum(1 for c in checks if c.get("real_mps"))
    return {
        "checks": len(checks),
        "passed": passed,
        "failed": len(checks) - passed,
        "real_mps": real,
        "standin": len(checks) - real,
    }


def pipeline_rows(checks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per pipeline (in order of first appearance) with its counts, targets and verdict (from
    :func:`pytest_mps.verdict.pipeline_verdict`: the one badge rule)."""
    from pytest_mps.verdict import pipeline_verdict

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for check in checks:
        groups.setdefault(str(check.get("pipeline")), []).append(check)
    rows = []
    for name, group in groups.items():
        verdict = pipeline_verdict(group)
        passed = sum(1 for c in group if c.get("outcome") == "passed")
        real = sum(1 for c in group if c.get("real_mps"))
        rows.append(
            {
                "pipeline": name,
                "classes": sorted({str(c["pipeline_class"]) for c in group if c.get("pipeline_class")}),
                "checks": len(group),
                "passed": passed,
                "failed": len(group) - passed,
                "real_mps_checks": real,
                "standin_checks": len(group) - real,
                "targets": sorted({str(c.get("target")) for c in group}),
                "badge": verdict.badge,
                "kind": verdict.kind,
                "verdict": verdict.text,
            }
        )
    return rows


def build_report(
    checks: Iterable[Mapping[str, Any]], sources: Sequence[Mapping[str, Any]], *, created: str | None = None
) -> dict[str, Any]:
    """A complete report from check records (each with a ``source`` index) and their sources."""
    rows = [plain_json(c) for c in checks]
    for row in rows:
        row.setdefault("source", 0)
        row.setdefault("images", None)
        if not 0 <= row["source"] < len(sources):
            raise ReportError(f"check {row.get('nodeid')!r} names source {row['source']}, which is missing")
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": _generator(),
        "created": created or _now(),
        "sources": [plain_json(s) for s in sources],
        "checks": rows,
        "pipelines": pipeline_rows(rows),
        "totals": totals(rows),
    }


def comparable(report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` without its :data:`VOLATILE` fields: equal for equal runs (serial or pytest-xdist)."""
    out = json.loads(json.dumps(report))
    out.pop("created", None)
    for source in out.get("sources", []):
        for name in ("created", "duration", "xdist_workers", "references"):
            source.pop(name, None)
    for check in out.get("checks", []):
        check.pop("timings", None)
        check.pop("images", None)
        if isinstance(check.get("details"), dict):
            check["details"].pop("reference", None)
            check["details"].pop("localization", None)  # its search is bounded by time
            check["details"].pop("lines", None)
    return out
