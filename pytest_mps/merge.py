"""``pytest-mps merge REPORT.json ... [--md OUT] [--html DIR] [--json OUT]``: join the JSON reports of
CI shards or runners (``--mps-report-json``) into one report, rendered as Markdown, HTML and/or JSON.

Each input keeps its own source entry (environment, target, references), so a merged report says which
runner produced each check; badges are decided on the merged checks (a pipeline earns the MPS badge only
from real-MPS results). Images referenced by an input (written with ``--mps-report-html``) are found
relative to that input's folder and copied into the merged HTML folder.

Bad input is a one-line error and exit status 2: a missing file, a file that is not JSON, or not a
pytest-mps report, or one of another schema version, or one that does not validate against
``schema.json`` (:mod:`pytest_mps.reports.validate`). What ``merge`` writes validates too.

Nothing is read or written where it must not be: an input's images are read only from inside that
input's folder (absolute paths, ``..`` and symlinks pointing out are left out, with a warning), image
names are limited to a safe alphabet, and the merged HTML folder's file names are generated here.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

from pytest_mps.command_line import CommandParser
from pytest_mps.reports.model import build_report
from pytest_mps.reports.validate import ReportError, load_report, validate_report

__all__ = ["MAX_IMAGE_BYTES", "confined_path", "main", "merge_reports"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PROG = "pytest-mps merge"
#: An image larger than this is not copied (the report's PNGs are at most 4096 pixels wide: a few MB).
MAX_IMAGE_BYTES = 64 << 20


def _read_png(path: Path) -> bytes | None:
    """The bytes of a PNG that an input report points at: a regular file (a FIFO or device is never
    opened for reading), at most :data:`MAX_IMAGE_BYTES`, that starts with the PNG signature."""
    if path.suffix.lower() != ".png":
        return None
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_BYTES:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, MAX_IMAGE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError:
        return None
    return data if data.startswith(_PNG_SIGNATURE) and len(data) <= MAX_IMAGE_BYTES else None


def confined_path(folder: Path, value: str) -> Path | None:
    """``value`` (a path from a report) resolved inside ``folder``, or None when it is absolute or
    leads outside ``folder`` (``..``, or a symlink pointing out): a crafted report cannot make
    ``merge`` read files elsewhere."""
    if not value or "\0" in value:
        return None
    candidate = Path(value)
    if candidate.is_absolute() or candidate.drive or candidate.root:
        return None
    root = folder.resolve()
    try:
        resolved = (root / candidate).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return resolved if resolved.is_relative_to(root) else None


ImageFiles = dict[str, Any]  # image name -> absolute path, plus the heatmap's numbers


def _image_files(check: dict[str, Any], folder: Path, refused: list[str], index: int) -> ImageFiles | None:
    """The PNG files an input check points at (inside its report's folder) that exist. Paths that lead
    outside the folder are left out and noted in ``refused``."""
    images = check.get("images")
    if not isinstance(images, dict):
        return None
    found: ImageFiles = {}
    for name, value in images.items():
        if isinstance(value, str):
            path = confined_path(folder, value)
            if path is None:
                refused.append(f"checks[{index}].images.{name} = {value[:60]!r}")
            elif _read_png(path) is not None:
                found[name] = str(path)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[name] = float(value)
    return found if any(isinstance(v, str) for v in found.values()) else None


def merge_reports(
    inputs: list[tuple[Path, dict[str, Any]]], *, notes: list[str] | None = None
) -> tuple[dict[str, Any], dict[int, ImageFiles]]:
    """One report from ``(path, report)`` pairs (already validated: :func:`load_report`), and the image
    files of its checks (by check index). ``notes`` collects one line per input whose image paths lead
    outside its folder (they are not used)."""
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
        refused: list[str] = []
        for index, check in enumerate(report["checks"]):
            found = _image_files(check, path.parent, refused, index)
            if found is not None:
                images[len(checks)] = found
            checks.append({**check, "source": check["source"] + offset, "images": None})
        if refused and notes is not None:
            notes.append(
                f"{path}: {len(refused)} image path(s) lead outside the report's folder and are not used "
                f"(first: {refused[0]})"
            )
    return build_report(checks, sources), images


def _error(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run ``pytest-mps merge``; returns the exit status (0 merged, 2 bad input or usage)."""
    parser = CommandParser(
        "merge",
        description="Join pytest-mps JSON reports (--mps-report-json) of CI shards or runners into one "
        "report, written as Markdown, HTML and/or JSON; each check keeps the run it came from.",
        exits="0 merged, 2 bad input (a missing, unreadable or invalid report; nothing to write).",
        epilog="example: pytest-mps merge linux.json mac.json --md summary.md --html merged/",
        error=ReportError,
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="JSON reports to join")
    parser.add_argument("--md", metavar="OUT", help="write the merged Markdown report here")
    parser.add_argument(
        "--html",
        metavar="PATH",
        help="write the merged HTML report: one self-contained FILE.html, or a folder DIR (index.html and "
        "images/)",
    )
    parser.add_argument("--json", metavar="OUT", help="write the merged JSON report here")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except ReportError as exc:
        return _error(str(exc))
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
        notes: list[str] = []
        report, images = merge_reports(inputs, notes=notes)
        validate_report(report, where="the merged report")
    except ReportError as exc:
        return _error(str(exc))
    for note in notes:
        print(f"{_PROG}: warning: {note}", file=sys.stderr)
    return _write(report, images, args)


def _write(report: dict[str, Any], images: dict[int, ImageFiles], args: Any) -> int:
    from pytest_mps.reports.html import single_file, write_html_report
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
            written.append(str(write_html_report(report, args.html, encoded)))
        if args.json and not (args.html and not single_file(args.html)):
            # no HTML folder: the merged JSON points at the inputs' own images
            for index, files in images.items():
                report["checks"][index]["images"] = dict(files)
        if args.json:
            validate_report(report, where="the merged report")
            root = args.html if args.html and not single_file(args.html) else Path.cwd()
            written.append(str(write_json(report, args.json, images_root=root)))
        if args.md:
            written.append(str(write_markdown(report, args.md)))
    except OSError as exc:
        return _error(f"cannot write {exc.filename or ''}: {exc.strerror or exc}")
    except ReportError as exc:  # a bug: a merged report must validate
        return _error(str(exc))
    totals = report["totals"]
    print(
        f"merged {len(report['sources'])} run(s): {totals['checks']} checks, {totals['passed']} passed, "
        f"{totals['failed']} failed ({totals['real_mps']} on real MPS); wrote {', '.join(written)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
