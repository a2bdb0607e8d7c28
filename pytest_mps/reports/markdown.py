"""The Markdown report (``--mps-report-md PATH``): a short verdict fit for a pull-request comment or
``$GITHUB_STEP_SUMMARY``, with Diffusers' MPS badge for each pipeline that earned it on real MPS.

Every text from a test (names, ids, messages) is HTML-escaped and has its Markdown punctuation
escaped, so it renders as text: GitHub renders inline HTML in Markdown.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_mps.reports.atomic import atomic_write

__all__ = ["BADGE", "md_text", "render_markdown", "write_markdown"]

#: The badge markup of Diffusers' documentation, verbatim.
BADGE = (
    '<img alt="MPS" src="https://img.shields.io/badge/MPS-000000?style=flat&logo=apple&logoColor=white%22">'
)
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")
_BLOCK_START = re.compile(r"^(\d*)([-+#>=.)])")
_MAX_FAILURE = 600


def md_text(value: Any) -> str:
    """``value`` as inert Markdown text: one line, HTML-escaped, with the Markdown punctuation that
    could format it (emphasis, code, links, table pipes, a list or heading at its start) escaped."""
    text = " ".join(str(value).split())
    text = _BLOCK_START.sub(r"\1\\\2", _MARKDOWN_PUNCTUATION.sub(r"\\\1", text))
    return html.escape(text, quote=False)


def _target_cell(check: Mapping[str, Any]) -> str:
    label = md_text(check.get("target", ""))
    return label if check.get("real_mps") else f"{label} *(stand-in)*"


def _environment_line(source: Mapping[str, Any]) -> str:
    env = source.get("environment") or {}
    target = source.get("target") or {}
    parts = [f"**{md_text(source.get('name', 'run'))}**"]
    kind = "real MPS" if target.get("real_mps") else "stand-in, not an MPS verdict"
    parts.append(f"target {md_text(target.get('label', 'unknown'))} ({kind})")
    system = f"macOS {env['macos_version']}" if env.get("macos_version") else env.get("os_name")
    for label, value in (
        ("", system),
        ("", env.get("machine_arch")),
        ("Python ", env.get("python_version")),
        ("torch ", env.get("torch_version")),
        ("diffusers ", env.get("diffusers_version")),
    ):
        if value:
            parts.append(md_text(f"{label}{value}"))
    return " · ".join(parts)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown text of ``report`` (see :mod:`pytest_mps.reports.model`)."""
    totals = report["totals"]
    checks = report["checks"]
    lines = [f"## pytest-mps: {totals['passed']} of {totals['checks']} checks passed", ""]
    if totals["standin"]:
        scope = "All results come" if not totals["real_mps"] else f"{totals['standin']} results come"
        lines += [
            "> [!WARNING]",
            f"> **Stand-in results are not an MPS verdict.** {scope} from a stand-in target (not Apple's "
            "MPS backend); they never earn the MPS badge.",
            "",
        ]
    lines += [f"- {_environment_line(source)}" for source in report["sources"]]
    lines += ["", "| Pipeline | MPS | Checks | Verdict |", "| --- | --- | --- | --- |"]
    for row in report["pipelines"]:
        badge = BADGE if row["badge"] else ("stand-in" if not row["real_mps_checks"] else "—")
        counts = f"{row['passed']}/{row['checks']} passed"
        if row["standin_checks"]:
            counts += f" ({row['standin_checks']} on stand-ins)"
        lines.append(f"| {md_text(row['pipeline'])} | {badge} | {counts} | {md_text(row['verdict'])} |")
    lines += [
        "",
        f"<details><summary>All checks ({len(checks)})</summary>",
        "",
        "| | Pipeline | Check | Target | Key figure | Test |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for check in checks:
        mark = "✅" if check["outcome"] == "passed" else "❌"
        lines.append(
            f"| {mark} | {md_text(check['pipeline'])} | {md_text(check['check'])} | {_target_cell(check)} "
            f"| {md_text(check.get('summary') or '')} | {md_text(check.get('nodeid') or '')} |"
        )
    lines += ["", "</details>", ""]
    failed = [c for c in checks if c["outcome"] != "passed"]
    if failed:
        lines += ["### Failures", ""]
        for check in failed:
            lines.append(
                f"- **{md_text(check['pipeline'])} · {md_text(check['check'])}** on {_target_cell(check)}: "
                f"{md_text(check.get('nodeid') or '')}"
            )
            for failure in check.get("failures") or []:
                text = str(failure)
                if len(text) > _MAX_FAILURE:
                    text = text[:_MAX_FAILURE] + "…"
                lines.append(f"  - {md_text(text)}")
        lines.append("")
    return "\n".join(lines)


def write_markdown(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the Markdown report. When ``path`` is ``$GITHUB_STEP_SUMMARY`` the report is appended, as
    GitHub expects of every step; any other file is replaced atomically."""
    target = Path(path)
    text = render_markdown(report)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and Path(summary).resolve() == target.resolve():
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
        return target
    return atomic_write(target, text)
