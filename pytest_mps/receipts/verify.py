"""Verifying a receipt: :func:`verify_receipt` and the ``pytest-mps verify-receipt`` command, meant for
ordinary (Linux, CPU-only) CI.

A receipt is accepted as evidence of a real-MPS run only when, in this order:

1. it is a readable receipt of this version, with its ``.sig`` beside it (else exit status 2);
2. the signature is good, in the ``pytest-mps-receipt`` namespace, by a key in the allowed-signers
   file (OpenSSH's format, which the project commits and reviews like code);
3. the file is in canonical form, its report is a valid pytest-mps report, and its stated verdict is
   the one the report's checks give (:func:`pytest_mps.receipts.document.verdict_of`);
4. the run was on real MPS: the report has real-MPS checks, from sources whose environment is a
   usable MPS device on macOS (a stand-in can be signed, never accepted), and every pipeline earns
   the badge;
5. the source tree and every pipeline folder hash to what was signed.

Any refusal is one line and exit status 1; unreadable input is one line and exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_mps.command_line import CommandParser
from pytest_mps.receipts.document import (
    NAMESPACE,
    ReceiptError,
    ReceiptRefused,
    canonical_bytes,
    parse_receipt,
    verdict_of,
)
from pytest_mps.receipts.fingerprint import (
    FingerprintError,
    describe_difference,
    pipeline_fingerprint,
    source_fingerprint,
)
from pytest_mps.receipts.sign import signature_path
from pytest_mps.receipts.ssh import Signer, SSHInputError, SSHRefusal, verify_bytes

__all__ = ["Verified", "main", "verify_receipt"]

_PROG = "pytest-mps verify-receipt"


@dataclass(frozen=True)
class Verified:
    """An accepted receipt: who signed it, and what it states."""

    receipt: Path
    signer: Signer
    document: dict[str, Any]

    def summary(self) -> str:
        """One line: the signer, the machine, the pipelines that earned the badge, the source."""
        env = _real_mps_environment(self.document["report"])
        machine = ", ".join(
            x
            for x in (
                f"macOS {env.get('macos_version')}" if env.get("macos_version") else None,
                str(self.document["environment"].get("chip") or env.get("machine_arch") or ""),
                f"torch {env.get('torch_version')}" if env.get("torch_version") else None,
                f"diffusers {env.get('diffusers_version')}" if env.get("diffusers_version") else None,
            )
            if x
        )
        pipelines = ", ".join(p["pipeline"] for p in self.document["verdict"]["pipelines"])
        source = self.document["fingerprint"]["source"]
        commit = f" at {source['commit'][:12]}" if source.get("commit") else ""
        folders = len(self.document["fingerprint"]["pipelines"])
        return (
            f"{self.receipt}: signed by {self.signer.principal}; real MPS ({machine}); the MPS badge "
            f"earned by {pipelines}; source ({source['kind']}{commit}, {len(source['files'])} files) and "
            f"{folders} pipeline folder(s) match"
        )


def _real_mps_environment(report: Mapping[str, Any]) -> dict[str, Any]:
    sources = report.get("sources") or []
    used = sorted({c.get("source") for c in report.get("checks") or [] if c.get("real_mps")}, key=str)
    for index in used:
        if isinstance(index, int) and 0 <= index < len(sources):
            env = sources[index].get("environment")
            if isinstance(env, dict):
                return env
    return {}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ReceiptError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ReceiptError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise ReceiptError(f"cannot read {what} {path} ({exc.strerror or type(exc).__name__})") from None


def _check_content(document: dict[str, Any], data: bytes, where: str) -> None:
    """Step 3: canonical form, a valid report, a stated verdict that matches the checks."""
    from pytest_mps.reports.model import ReportError, validate_report

    if canonical_bytes(document) != data:
        raise ReceiptRefused(f"{where}: not in canonical form (edited after it was written?)")
    try:
        validate_report(document["report"], where="its report")
    except ReportError as exc:
        raise ReceiptRefused(f"{where}: {exc}") from None
    if verdict_of(document["report"]) != document["verdict"]:
        raise ReceiptRefused(f"{where}: the stated verdict does not match the report's checks")


def _check_real_mps(document: dict[str, Any], where: str) -> None:
    """Step 4: real MPS, on a Mac whose MPS device was usable, and every pipeline earns the badge."""
    verdict = document["verdict"]
    report = document["report"]
    if not verdict["real_mps"]:
        targets = sorted({str(c.get("target")) for c in report["checks"]})
        ran = f" ({'; '.join(targets)})" if targets else ""
        raise ReceiptRefused(
            f"{where}: a stand-in run{ran}: it is signed, but a stand-in is never evidence of MPS; "
            "sign a run on a Mac with --device mps"
        )
    sources = report["sources"]
    for index in sorted({c["source"] for c in report["checks"] if c.get("real_mps")}):
        env = sources[index].get("environment") or {}
        if env.get("os_name") != "Darwin" or env.get("usable") is not True:
            raise ReceiptRefused(
                f"{where}: its real-MPS checks come from a run whose environment is not a usable MPS "
                f"device on macOS ({env.get('os_name') or 'unknown OS'}, usable={env.get('usable')})"
            )
    failing = [p for p in verdict["pipelines"] if not p["badge"]]
    if not verdict["pipelines"]:
        raise ReceiptRefused(f"{where}: its report has no checks")
    if failing:
        named = "; ".join(f"{p['pipeline']}: {p['verdict']}" for p in failing)
        raise ReceiptRefused(f"{where}: not every pipeline earns the MPS badge ({named})")


def _pipeline_folders(
    signed: list[dict[str, Any]], given: Sequence[Path], source: Path
) -> list[tuple[dict[str, Any], Path]]:
    by_name: dict[str, Path] = {}
    for folder in given:
        name = folder.resolve().name
        if name in by_name:
            raise ReceiptError(f"--pipeline {folder}: two folders named {name!r} given")
        by_name[name] = folder
    names = [p["name"] for p in signed]
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise ReceiptError(
            f"--pipeline {by_name[unknown[0]]}: the receipt names no pipeline folder {unknown[0]!r} "
            f"(it names: {', '.join(names) or 'none'})"
        )
    out = []
    for entry in signed:
        folder = by_name.get(entry["name"])
        if folder is None and isinstance(entry.get("path"), str):
            folder = source / entry["path"]
        if folder is None:
            raise ReceiptError(
                f"the receipt's pipeline folder {entry['name']!r} was outside the source tree when signed; "
                f"give it with --pipeline DIR"
            )
        if not folder.is_dir():
            raise ReceiptError(
                f"pipeline folder {folder} (for {entry['name']!r}) does not exist; "
                "give it with --pipeline DIR"
            )
        out.append((entry, folder))
    return out


def _check_fingerprint(
    document: dict[str, Any], receipt: Path, signature: Path, source: Path, pipelines: Sequence[Path]
) -> None:
    """Step 5: the checkout and the pipeline folders hash to what was signed."""
    where = str(receipt)
    signed = document["fingerprint"]
    folders = _pipeline_folders(signed["pipelines"], pipelines, source)  # bad input first: exit 2
    here = [rel for p in (receipt, signature) if (rel := _relative(p, source)) is not None]
    excluded = sorted({*(str(e) for e in signed["source"]["excluded"]), *here})
    try:
        now = source_fingerprint(source, exclude=excluded, kind=signed["source"]["kind"], signing=False)
    except FingerprintError as exc:
        raise ReceiptError(str(exc)) from None
    difference = describe_difference(signed["source"]["files"], now["files"])
    if difference is not None:
        raise ReceiptRefused(
            f"{where}: the source tree {source} is not the one that was checked ({difference}); "
            "run the check again on this code and sign a new receipt"
        )
    for entry, folder in folders:
        try:
            files = pipeline_fingerprint(folder)["files"]
        except FingerprintError as exc:
            raise ReceiptError(str(exc)) from None
        difference = describe_difference(entry["files"], files)
        if difference is not None:
            raise ReceiptRefused(
                f"{where}: pipeline folder {folder} is not the one that was checked as {entry['name']!r} "
                f"({difference})"
            )


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def verify_receipt(
    receipt: str | os.PathLike[str],
    allowed_signers: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] = ".",
    pipelines: Sequence[str | os.PathLike[str]] = (),
    signature: str | os.PathLike[str] | None = None,
) -> Verified:
    """Accept ``receipt`` as signed evidence of a real-MPS badge run of this source tree and these
    pipeline folders, or raise: :class:`~pytest_mps.receipts.document.ReceiptRefused` (exit status 1)
    for a receipt that is not accepted, :class:`~pytest_mps.receipts.document.ReceiptError` (status 2)
    for input that cannot be read. See the module docstring for the steps."""
    path = Path(receipt)
    sig = Path(signature) if signature is not None else signature_path(path)
    data = _read(path, "receipt")
    document = parse_receipt(data, where=str(path))
    _read(sig, "signature")
    try:
        signer = verify_bytes(data, sig, Path(allowed_signers), NAMESPACE)
    except SSHInputError as exc:
        raise ReceiptError(str(exc)) from None
    except SSHRefusal as exc:
        raise ReceiptRefused(f"{path}: {exc}") from None
    _check_content(document, data, str(path))
    _check_real_mps(document, str(path))
    root = Path(source)
    if not root.is_dir():
        raise ReceiptError(f"source folder {root} does not exist; pass the checkout with --source DIR")
    _check_fingerprint(document, path, sig, root, [Path(p) for p in pipelines])
    return Verified(receipt=path, signer=signer, document=document)


def main(argv: Sequence[str] | None = None) -> int:
    """``pytest-mps verify-receipt FILE --allowed-signers FILE [--source DIR] [--pipeline DIR ...]
    [--signature SIG]``. Exit status 0: verified evidence of a real-MPS badge run; 1: refused; 2: bad
    input."""
    parser = CommandParser(
        "verify-receipt",
        description="Check a signed pytest-mps receipt (pytest-mps check --receipt) in CI without a Mac: "
        "the signature, the source tree and pipeline folders it fingerprinted, and that it records a "
        "real-MPS run whose every pipeline earns the MPS badge.",
        exits="0 verified, 1 refused (changed, wrong signer, stand-in or failing run), "
        "2 bad input (a missing or unreadable file).",
        epilog="example: pytest-mps verify-receipt mps-receipt.json "
        "--allowed-signers .github/allowed_signers",
        error=ReceiptError,
    )
    parser.add_argument("receipt", metavar="FILE", help="the receipt (its signature is FILE.sig)")
    parser.add_argument(
        "--allowed-signers",
        required=True,
        metavar="FILE",
        help="OpenSSH allowed-signers file: one 'principal key-type key' line per trusted key",
    )
    parser.add_argument("--source", default=".", metavar="DIR", help="the checkout to compare (default: .)")
    parser.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="DIR",
        help="a pipeline folder the receipt names (matched by folder name; needed for folders outside "
        "the source tree)",
    )
    parser.add_argument("--signature", metavar="SIG", help="the signature file (default: FILE.sig)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        verified = verify_receipt(
            args.receipt,
            args.allowed_signers,
            source=args.source,
            pipelines=args.pipeline,
            signature=args.signature,
        )
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except ReceiptRefused as exc:
        print(f"{_PROG}: refused: {exc}", file=sys.stderr)
        return exc.status
    except ReceiptError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return exc.status
    print(f"{_PROG}: verified: {verified.summary()}")
    return 0
