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
    "checks[].images",
)


class ReportError(ValueError):
    """A file is not a usable pytest-mps report; the message is one line."""


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
    return out


_TOP = {
    "schema_version": int,
    "generator": str,
    "created": str,
    "sources": list,
    "checks": list,
    "pipelines": list,
    "totals": dict,
}
_CHECK = {
    "source": int,
    "check": str,
    "outcome": str,
    "target": str,
    "real_mps": bool,
    "pipeline": str,
    "failures": list,
    "metrics": dict,
}


def validate_report(data: Any, *, where: str = "report") -> None:
    """Raise :class:`ReportError` (one line) unless ``data`` is a report this version can read. The
    structural subset of ``schema.json`` that merging relies on; the tests check the full schema."""
    if not isinstance(data, dict):
        raise ReportError(f"{where}: not a pytest-mps report (a JSON {type(data).__name__}, not an object)")
    if "schema_version" not in data:
        raise ReportError(f"{where}: not a pytest-mps report (no schema_version)")
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"{where}: schema_version {version!r} is not supported (this pytest-mps reads {SCHEMA_VERSION})"
        )
    for name, kind in _TOP.items():
        if not isinstance(data.get(name), kind):
            raise ReportError(f"{where}: field {name!r} is missing or not a {kind.__name__}")
    for i, check in enumerate(data["checks"]):
        if not isinstance(check, dict):
            raise ReportError(f"{where}: checks[{i}] is not an object")
        for name, kind in _CHECK.items():
            if not isinstance(check.get(name), kind) or (kind is int and isinstance(check.get(name), bool)):
                raise ReportError(f"{where}: checks[{i}].{name} is missing or not a {kind.__name__}")
        if not 0 <= check["source"] < len(data["sources"]):
            raise ReportError(f"{where}: checks[{i}].source {check['source']} names no source")
        if check["outcome"] not in ("passed", "failed"):
            raise ReportError(f"{where}: checks[{i}].outcome {check['outcome']!r} is not passed/failed")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a JSON report; every problem is a one-line :class:`ReportError`."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ReportError(f"{where}: is a folder, not a JSON report") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{where}: cannot be read ({type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReportError(f"{where}: not JSON ({exc})") from None
    validate_report(data, where=where)
    return data
