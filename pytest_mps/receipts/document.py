"""The receipt document: its fields, its one canonical serialisation, and reading it back.

A receipt (``receipt_version`` :data:`RECEIPT_VERSION`) is a JSON object::

    {"format": "pytest-mps-receipt", "receipt_version": 1, "generator": "pytest-mps 0.1.0",
     "created": "2026-...Z",
     "verdict": {"real_mps": true, "badge": true,
                 "pipelines": [{"pipeline": "tiny-sd", "badge": true, "verdict": "works on MPS"}, ...]},
     "environment": {...the signing machine: OS, macOS, chip, Python, torch, Diffusers...},
     "fingerprint": {"algorithm": "sha256-files-v1",
                     "source": {"kind": "git", "commit", "dirty", "excluded", "files", "digest"},
                     "pipelines": [{"name", "path", "files", "digest"}, ...]},
     "report": {...the JSON report of the run (checks with their figures)...}}

``verdict`` is what the signing pytest-mps computed from ``report``; a verifier recomputes it and
refuses a receipt where the two disagree.

Canonical form: ``json.dumps(sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)`` plus a
final newline. The signature covers these exact bytes; a reader also refuses a file that is not in
this form or that repeats a key (two JSON parsers could read such a file differently). Indented rather
than on one line so that a receipt committed to a repository reads and diffs like any JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FINGERPRINT_ALGORITHM",
    "FORMAT",
    "NAMESPACE",
    "RECEIPT_VERSION",
    "ReceiptError",
    "ReceiptFormatError",
    "ReceiptRefused",
    "canonical_bytes",
    "parse_receipt",
    "verdict_of",
]

FORMAT = "pytest-mps-receipt"
RECEIPT_VERSION = 1
#: The ``ssh-keygen -Y`` namespace: a signature made for git commits or anything else never verifies
#: as a receipt, and the other way round.
NAMESPACE = "pytest-mps-receipt"
FINGERPRINT_ALGORITHM = "sha256-files-v1"

_TOP: dict[str, type] = {
    "format": str,
    "receipt_version": int,
    "generator": str,
    "created": str,
    "verdict": dict,
    "environment": dict,
    "fingerprint": dict,
    "report": dict,
}


class ReceiptError(ValueError):
    """A receipt cannot be written or read; the message is one line. ``status`` is the exit status a
    command gives for it: 2 for input that cannot be read or used."""

    status = 2


class ReceiptFormatError(ReceiptError):
    """Bytes that are not a receipt this version reads."""


class ReceiptRefused(ReceiptError):
    """A readable receipt that is not accepted as evidence of a real-MPS badge run (exit status 1)."""

    status = 1


def verdict_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict a receipt states, computed from its report's checks by
    :func:`pytest_mps.reports.model.pipeline_rows` (the one badge rule): whether any check ran on real
    MPS, whether every pipeline earned the badge, and each pipeline's verdict."""
    from pytest_mps.reports.model import pipeline_rows

    checks = report.get("checks") or []
    rows = pipeline_rows(checks)
    return {
        "real_mps": any(bool(c.get("real_mps")) for c in checks),
        "badge": bool(rows) and all(bool(r["badge"]) for r in rows),
        "pipelines": [
            {"pipeline": r["pipeline"], "badge": bool(r["badge"]), "verdict": r["verdict"]} for r in rows
        ],
    }


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The one serialisation of ``document`` that is signed and verified."""
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ReceiptFormatError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def parse_receipt(data: bytes, *, where: str = "receipt") -> dict[str, Any]:
    """Read a receipt's bytes: JSON, an object of this format and version with the expected fields.
    Raises :class:`ReceiptFormatError` (one line) otherwise. Whether the bytes are canonical is a
    separate question (:func:`canonical_bytes`): a signed but non-canonical file is a refusal, not
    unreadable input."""
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ReceiptFormatError(f"{where}: not a pytest-mps receipt (not UTF-8 text)") from None
    except ReceiptFormatError as exc:
        raise ReceiptFormatError(f"{where}: not a usable receipt ({exc})") from None
    except ValueError as exc:
        raise ReceiptFormatError(f"{where}: not a pytest-mps receipt (not JSON: {exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ReceiptFormatError(f'{where}: not a pytest-mps receipt (no "format": "{FORMAT}")')
    version = document.get("receipt_version")
    if version != RECEIPT_VERSION:
        raise ReceiptFormatError(
            f"{where}: receipt_version {version!r} is not supported (this pytest-mps reads {RECEIPT_VERSION})"
        )
    for name, kind in _TOP.items():
        if not isinstance(document.get(name), kind):
            raise ReceiptFormatError(f"{where}: field {name!r} is missing or not a {kind.__name__}")
    fingerprint = document["fingerprint"]
    if fingerprint.get("algorithm") != FINGERPRINT_ALGORITHM:
        raise ReceiptFormatError(
            f"{where}: fingerprint algorithm {fingerprint.get('algorithm')!r} is not supported "
            f"(this pytest-mps reads {FINGERPRINT_ALGORITHM})"
        )
    source = fingerprint.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("files"), dict):
        raise ReceiptFormatError(f"{where}: fingerprint.source is missing or has no files")
    if not isinstance(source.get("excluded"), list) or source.get("kind") not in ("git", "tree"):
        raise ReceiptFormatError(f"{where}: fingerprint.source needs kind git/tree and an excluded list")
    pipelines = fingerprint.get("pipelines")
    if not isinstance(pipelines, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("files"), dict)
        for p in pipelines
    ):
        raise ReceiptFormatError(f"{where}: fingerprint.pipelines must be a list of {{name, path, files}}")
    return document
