"""``pytest-mps merge REPORT.json ... [--md OUT] [--html DIR] [--json OUT]``: join the JSON reports of
CI shards or runners (``--mps-report-json``) into one report, rendered as Markdown, HTML and/or JSON.

Each input keeps its own source entry (environment, target, references), so a merged report says which
runner produced each check; badges are decided on the merged checks (a pipeline earns the MPS badge only
from real-MPS results). Images referenced by an input (written with ``--mps-report-html``) are found
relative to that input's folder and copied into the merged HTML folder.

Bad input is a one-line error and exit status 2: a missing file, a file that is not JSON, or not a
pytest-mps report, or one of another schema version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pytest_mps.reports.model import ReportError, build_report, load_report

__all__ = ["main", "merge_reports"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PROG = "pytest-mps merge"


def _read_png(path: Path) -> bytes | None:
    """The bytes of a PNG that an input report points at; anything else is ignored."""
    if path.suffix.lower() != ".png":
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG_SIGNATURE) else None


ImageFiles = dict[str, Any]  # image name -> absolute path, plus the heatmap's numbers


def _image_files(check: dict[str, Any], folder: Path) -> ImageFiles | None:
    """The PNG files an input check points at (relative to its report's folder) that exist."""
    images = check.get("images")
    if not isinstance(images, dict):
        return None
    found: ImageFiles = {}
    for name, value in images.items():
        if isinstance(value, str):
            path = (folder / value).resolve()
            if _read_png(path) is not None:
                found[name] = str(path)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[name] = float(value)
    return found if any(isinstance(v, str) for v in found.values()) else None


def merge_reports(inputs: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], dict[int, ImageFiles]]:
    """One report from ``(path, report)`` pairs, and the image files of its checks (by check index)."""
    sources: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    images: dict[int, ImageFiles] = {}
    for path, report in inputs:
        offset = len(sources)
        many = len(report["sources"]) > 1
        for source in report["sources"]:
            entry = dict(source)
            name = str(entry.get("name") or "session")
            entry["name"] = f"{path.name}: {name}" if many else (path.name if name == "session" else name)
            sources.append(entry)
        for check in report["checks"]:
            found = _image_files(check, path.parent)
            if found is not None:
                images[len(checks)] = found
            checks.append({**check, "source": check["source"] + offset, "images": None})
    return build_report(checks, sources), images


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run ``pytest-mps merge``; returns the exit status (0 merged, 2 bad input or usage)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Join pytest-mps JSON reports (--mps-report-json) of CI shards or runners into one.",
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="JSON reports to join")
    parser.add_argument("--md", metavar="OUT", help="write the merged Markdown report here")
    parser.add_argument("--html", metavar="DIR", help="write the merged HTML report (and images) here")
    parser.add_argument("--json", metavar="OUT", help="write the merged JSON report here")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not (args.md or args.html or args.json):
        return _error("nothing to write: pass --md OUT, --html DIR and/or --json OUT")
    seen: dict[Path, str] = {}
    inputs = []
    try:
        for name in args.reports:
            path = Path(name)
            resolved = path.resolve()
            if resolved in seen:
                raise ReportError(f"{name}: given twice (also as {seen[resolved]})")
            seen[resolved] = name
            inputs.append((path, load_report(path)))
        report, images = merge_reports(inputs)
    except ReportError as exc:
        return _error(str(exc))
    return _write(report, images, args)


def _write(report: dict[str, Any], images: dict[int, ImageFiles], args: Any) -> int:
    from pytest_mps.reports.html import place_images, write_html
    from pytest_mps.reports.json_report import write_json
    from pytest_mps.reports.markdown import write_markdown

    written = []
    try:
        if args.html:
            encoded = {}
            for index, files in images.items():
                pngs = {k: _read_png(Path(v)) for k, v in files.items() if isinstance(v, str)}
                info = {k: v for k, v in files.items() if not isinstance(v, str)}
                encoded[index] = ({k: v for k, v in pngs.items() if v is not None}, info)
            place_images(report, args.html, encoded)
            written.append(str(write_html(report, args.html)))
        elif args.json:  # no HTML folder: the merged JSON points at the inputs' own images
            for index, files in images.items():
                report["checks"][index]["images"] = dict(files)
        if args.json:
            root = args.html if args.html else Path.cwd()
            written.append(str(write_json(report, args.json, images_root=root)))
        if args.md:
            written.append(str(write_markdown(report, args.md)))
    except OSError as exc:
        return _error(f"cannot write {exc.filename or ''}: {exc.strerror or exc}")
    totals = report["totals"]
    print(
        f"merged {len(report['sources'])} run(s): {totals['checks']} checks, {totals['passed']} passed, "
        f"{totals['failed']} failed ({totals['real_mps']} on real MPS); wrote {', '.join(written)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
