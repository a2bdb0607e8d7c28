"""The terminal tables, rendered from result dicts (``CheckResult.to_dict()``), so a serial run, a
pytest-xdist run and ``pytest-mps check`` print the same thing:

- :func:`verdict_table`: the bundled suite's table, one row per pipeline, one column per check, and the
  verdict (:func:`pytest_mps.verdict.pipeline_verdict`);
- :func:`session_table`: the checks a project's own tests called, one row per check, then each
  pipeline's verdict.

Every table is headed by its target; stand-ins say they are not an MPS verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_mps.registry import CHECKS, canonical
from pytest_mps.verdict import Status, pipeline_verdict, status_of

__all__ = ["cell_text", "session_table", "target_heading", "verdict_table"]

Result = Mapping[str, Any]


def target_heading(labels: Sequence[str], *, real_mps: bool, available: bool = True, reason: str = "") -> str:
    """The line above a table: which target, and whether this is an MPS verdict."""
    if not available:
        return f"target: none ({reason})"
    shown = ", ".join(dict.fromkeys(labels)) or "none"
    if real_mps:
        return f"target: {shown}: an MPS verdict"
    return f"target: {shown}: a pre-check on a stand-in, not an MPS verdict; no badge is awarded"


def _worst(results: Sequence[Result]) -> Result:
    from pytest_mps.verdict import combined_statuses

    status = combined_statuses(results)[canonical(str(results[0].get("check")))]
    return next(r for r in results if status_of(r) is status)


def cell_text(result: Result) -> str:
    """A table cell: the outcome in a few letters and the key figure (``ok 2.1e-06``, ``FAIL NaN``,
    ``CRASH SIGABRT``, ``info 0.47x`` for the speed on a stand-in)."""
    status = status_of(result)
    label = status.cell
    if status is Status.PASSED and (result.get("details") or {}).get("judged") is False:
        label = "info"
    figure = str(result.get("figure_text") or "")
    return f"{label} {figure}".strip()


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip())
        if n == 0:
            lines.append("  ".join([*("-" * w for w in widths), "-" * max(7, len(row[-1]))]))
    return lines


def _note(result: Result) -> str:
    death = (result.get("details") or {}).get("death") or {}
    if death:
        return str(result.get("summary", "")) + (f"; {death['quote']}" if death.get("quote") else "")
    failures = result.get("failures") or []
    text = str(failures[0]) if failures else str(result.get("summary") or "")
    return text.splitlines()[0] if text else ""


def verdict_table(
    labels: Sequence[str],
    results: Mapping[str, Sequence[Result]],
    *,
    skips: Mapping[str, Mapping[str, str]] | None = None,
    errors: Mapping[str, Mapping[str, str]] | None = None,
    heading: str,
    target_name: str | None = None,
) -> list[str]:
    """The suite's table: ``labels`` in order, each pipeline's ``results`` (by label), the checks that
    were skipped (label -> check -> reason) or broke without a result (label -> check -> error)."""
    skips = skips or {}
    errors = errors or {}
    by_check: dict[str, dict[str, list[Result]]] = {}
    for label in labels:
        for result in results.get(label, ()):
            by_check.setdefault(label, {}).setdefault(canonical(str(result.get("check"))), []).append(result)
    present = {
        c
        for label in labels
        for c in (*by_check.get(label, {}), *skips.get(label, {}), *errors.get(label, {}))
    }
    columns = [c for c in CHECKS if c in present]
    rows = [["pipeline", *columns, "verdict"]]
    notes: dict[tuple[str, str], list[str]] = {}
    skipped: dict[str, list[tuple[str, str]]] = {}
    for label in labels:
        cells = []
        for check in columns:
            found = by_check.get(label, {}).get(check)
            if found:
                worst = _worst(found)
                cells.append(cell_text(worst))
                if not status_of(worst).ok:
                    notes.setdefault((label, _note(worst)), []).append(check)
            elif check in errors.get(label, {}):
                cells.append("ERROR")
                notes.setdefault((label, errors[label][check]), []).append(check)
            elif check in skips.get(label, {}):
                cells.append("skip")
                skipped.setdefault(skips[label][check], []).append((label, check))
            else:
                cells.append("-")
        error_results = [
            {"check": c, "status": "error", "summary": e, "target": ""}
            for c, e in errors.get(label, {}).items()
        ]
        verdict = pipeline_verdict(
            [*results.get(label, ()), *error_results],
            target_name=target_name,
            skip_reasons=skips.get(label, {}).values(),
        )
        rows.append([label, *cells, verdict.text])
    lines = [heading, *_aligned(rows)]
    if columns:
        meanings: dict[str, list[str]] = {}
        for name in columns:
            meanings.setdefault(CHECKS[name].figure, []).append(name)
        lines.append("figures: " + "; ".join(f"{'/'.join(names)} {m}" for m, names in meanings.items()))
    lines += [f"{label} {', '.join(checks)}: {note}" for (label, note), checks in notes.items() if note]
    for note, where in skipped.items():
        checks = sorted({c for _, c in where}, key=columns.index)
        owners = sorted({label for label, _ in where}, key=list(labels).index)
        lines.append(f"skipped {', '.join(checks)} ({', '.join(owners)}): {note}")
    return lines


def _pipeline_title(result: Result) -> str:
    name, cls = str(result.get("pipeline", "")), str(result.get("pipeline_class") or "")
    return f"{name} ({cls})" if cls and cls != name else name


def session_table(results: Sequence[Result], *, heading: str) -> list[str]:
    """The checks a project's tests called: ``pipeline | check | outcome | key figure`` in the order
    they ran (stand-in rows marked where real-MPS and stand-in results mix), then each pipeline's
    verdict."""
    real = [bool(r.get("real_mps")) for r in results]
    mixed = any(real) and not all(real)
    rows = [["pipeline", "check", "outcome", "key figure"]]
    for result, on_mps in zip(results, real, strict=True):
        status = status_of(result)
        figure = str(result.get("summary", "")) + (" [stand-in]" if mixed and not on_mps else "")
        rows.append(
            [_pipeline_title(result), str(result.get("check")), status.value.replace("_", " "), figure]
        )
    lines = [heading, *_aligned(rows)]
    pipelines: dict[str, list[Result]] = {}
    for result in results:
        pipelines.setdefault(str(result.get("pipeline", "")), []).append(result)
    lines.append("verdicts:")
    for name, group in pipelines.items():
        lines.append(f"  {name}: {pipeline_verdict(group).text}")
    return lines
