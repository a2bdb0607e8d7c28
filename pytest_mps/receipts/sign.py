"""Writing a signed receipt: :func:`write_receipt` (called by ``pytest-mps check --receipt``) and the
``pytest-mps sign-receipt REPORT.json`` command, which signs the JSON report of any pytest run.

The receipt goes to ``FILE`` and its detached SSH signature to ``FILE.sig``. A sidecar rather than an
embedded signature: the signed bytes are the file's bytes, so anyone can check a receipt with OpenSSH
alone (``ssh-keygen -Y verify ... -s FILE.sig < FILE``), and no step removes a signature field and
re-serialises before verifying (where signer and verifier could disagree).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_mps.command_line import CommandParser
from pytest_mps.receipts.document import (
    FINGERPRINT_ALGORITHM,
    FORMAT,
    NAMESPACE,
    RECEIPT_VERSION,
    ReceiptError,
    canonical_bytes,
    verdict_of,
)
from pytest_mps.receipts.fingerprint import (
    FingerprintError,
    pipeline_fingerprint,
    signing_environment,
    source_fingerprint,
    source_root,
)
from pytest_mps.receipts.ssh import SSHInputError, sign_bytes

__all__ = [
    "SIGNATURE_SUFFIX",
    "ReceiptFiles",
    "build_receipt",
    "default_signing_key",
    "describe_written",
    "main",
    "signature_path",
    "write_receipt",
]

SIGNATURE_SUFFIX = ".sig"
_PROG = "pytest-mps sign-receipt"
#: Where ``ssh-keygen`` and ``git`` users usually keep a signing key, in the order tried.
_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


@dataclass(frozen=True)
class ReceiptFiles:
    """The files a signing wrote, and what the receipt states."""

    receipt: Path
    signature: Path
    verdict: dict[str, Any]


def signature_path(receipt: str | os.PathLike[str]) -> Path:
    """Where the signature of ``receipt`` lives: ``receipt`` plus ``.sig``."""
    path = Path(receipt)
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def default_signing_key() -> Path | None:
    """The key git signs with (``git config user.signingkey`` when it names a file), else the first of
    ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa`` that exists; None when there is none."""
    try:
        out = subprocess.run(
            ["git", "config", "--get", "user.signingkey"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        configured = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        configured = ""
    if configured and Path(configured).expanduser().is_file():
        return Path(configured).expanduser()
    for name in _DEFAULT_KEYS:
        candidate = Path.home() / ".ssh" / name
        if candidate.is_file():
            return candidate
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _generator() -> str:
    from pytest_mps import __version__

    return f"pytest-mps {__version__}"


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def build_receipt(
    report: Mapping[str, Any],
    *,
    pipelines: Sequence[str | os.PathLike[str]] = (),
    source: str | os.PathLike[str] | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
    environment: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The receipt document for ``report`` (unsigned): see :mod:`pytest_mps.receipts.document`.

    Args:
        pipelines: the pipeline folders the run checked (their files are fingerprinted).
        source: the project's folder (default: the git work tree holding the current folder, else the
            current folder).
        exclude: files or folders left out of the source fingerprint (the receipt itself, reports the
            run wrote); paths outside the source are ignored.
        environment: the signing machine (default:
            :func:`~pytest_mps.receipts.fingerprint.signing_environment`).
    """
    from pytest_mps.reports.model import ReportError, plain_json, validate_report

    try:
        validate_report(report)
    except ReportError as exc:
        raise ReceiptError(f"cannot sign: {exc}") from None
    root = source_root(source) if source is None else Path(source).resolve()
    excluded = sorted({rel for p in exclude if (rel := _relative(Path(p), root)) is not None})
    try:
        fingerprint = {
            "algorithm": FINGERPRINT_ALGORITHM,
            "source": source_fingerprint(root, exclude=excluded, signing=True),
            "pipelines": [pipeline_fingerprint(p, root=root) for p in pipelines],
        }
    except FingerprintError as exc:
        raise ReceiptError(f"cannot sign: {exc}") from None
    report_data = plain_json(report)
    return {
        "format": FORMAT,
        "receipt_version": RECEIPT_VERSION,
        "generator": _generator(),
        "created": created or _now(),
        "verdict": verdict_of(report_data),
        "environment": plain_json(dict(environment) if environment is not None else signing_environment()),
        "fingerprint": fingerprint,
        "report": report_data,
    }


def write_receipt(
    report: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    pipelines: Sequence[str | os.PathLike[str]] = (),
    key: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
    environment: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> ReceiptFiles:
    """Fingerprint, sign with an SSH key and write a receipt of ``report`` (a pytest-mps JSON report
    dictionary) to ``path`` and its signature to ``path.sig``; returns both paths and the verdict.

    Any run can be signed (a stand-in or a failed run too); only a real-MPS run whose every pipeline
    earns the badge verifies as MPS evidence. ``key``: an SSH private key, or a ``.pub`` whose private
    half is in ssh-agent (default :func:`default_signing_key`). The receipt and its signature are left
    out of the source fingerprint, as are ``exclude``. Raises :class:`ReceiptError` (one line).
    """
    target = Path(path)
    sig = signature_path(target)
    signing_key = Path(key).expanduser() if key is not None else default_signing_key()
    if signing_key is None:
        raise ReceiptError(
            "no SSH key to sign with: pass --receipt-key ~/.ssh/id_ed25519 "
            "(make one with ssh-keygen -t ed25519)"
        )
    document = build_receipt(
        report,
        pipelines=pipelines,
        source=source,
        exclude=[target, sig, *exclude],
        environment=environment,
        created=created,
    )
    data = canonical_bytes(document)
    try:
        signature = sign_bytes(data, signing_key, NAMESPACE)
    except SSHInputError as exc:
        raise ReceiptError(str(exc)) from None
    from pytest_mps.reports.atomic import atomic_write

    try:
        atomic_write(target, data)
        atomic_write(sig, signature)
    except OSError as exc:
        raise ReceiptError(f"cannot write {exc.filename or target}: {exc.strerror or exc}") from None
    return ReceiptFiles(receipt=target, signature=sig, verdict=document["verdict"])


def describe_written(files: ReceiptFiles) -> str:
    """One line saying what was signed and whether it can verify as MPS evidence."""
    verdict = files.verdict
    if verdict["badge"]:
        state = "real MPS, every pipeline earns the badge"
    elif not verdict["real_mps"]:
        state = "a stand-in run: it will never verify as MPS evidence"
    else:
        failing = [p["pipeline"] for p in verdict["pipelines"] if not p["badge"]]
        state = f"real MPS, but {', '.join(failing)} did not earn the badge: it will not verify"
    return f"receipt: {files.receipt} (signature {files.signature}); {state}"


def main(argv: Sequence[str] | None = None) -> int:
    """``pytest-mps sign-receipt REPORT.json --receipt FILE [--key KEY] [--pipeline DIR ...]
    [--source DIR] [--exclude PATH ...]``: sign the JSON report of a finished run (``pytest
    --mps-report-json``). Exit status 0 when written, 2 for bad input."""
    from pytest_mps.reports.model import ReportError, load_report

    parser = CommandParser(
        "sign-receipt",
        description="Sign the JSON report of a pytest-mps run (--mps-report-json) with your SSH key, "
        "fingerprinting the pipeline folders and the project's source tree. Verify it with "
        "pytest-mps verify-receipt.",
        exits="0 written, 2 bad input (an unreadable report, no key to sign with).",
        epilog="example: pytest-mps sign-receipt report.json --receipt mps-receipt.json "
        "--pipeline fixtures/tiny-sd",
        error=ReceiptError,
    )
    parser.add_argument("report", metavar="REPORT.json", help="the run's JSON report")
    parser.add_argument(
        "--receipt", required=True, metavar="FILE", help="write the receipt here (and FILE.sig)"
    )
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="SSH private key, or a .pub in ssh-agent (default: git's user.signingkey, "
        "else ~/.ssh/id_ed25519, id_ecdsa, id_rsa)",
    )
    parser.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="DIR",
        help="a pipeline folder the run checked (repeat)",
    )
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="the project's folder (default: the git checkout holding the current folder)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATH",
        help="leave this file or folder out of the source fingerprint (repeat); the report is left "
        "out already",
    )
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        report = load_report(args.report)
        written = write_receipt(
            report,
            args.receipt,
            pipelines=args.pipeline,
            key=args.key,
            source=args.source,
            exclude=[args.report, *args.exclude],
        )
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except (ReceiptError, ReportError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(describe_written(written))
    return 0
