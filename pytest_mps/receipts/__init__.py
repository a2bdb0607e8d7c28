"""Signed receipts: evidence of a real-MPS run on a contributor's Mac, verified in CI without one.

On a Mac, a run's JSON report is signed with the contributor's SSH key (``ssh-keygen -Y sign``, no
network) together with a fingerprint of what was checked: the pipeline folders' files, the project's
source tree (and its git commit), and the machine (macOS, chip, torch, Diffusers). In ordinary CI,
``pytest-mps verify-receipt`` checks the signature against the project's allowed-signers file,
recomputes the fingerprint from the checkout, and accepts only a real-MPS run whose every pipeline
earns the MPS badge. Stand-in runs can be signed, never accepted.

What a good receipt establishes: a holder of a trusted key signed the results of these checks over
this exact code and these exact weights. It is signer attestation, not hardware attestation: it
cannot prove that a Mac ran the checks, only who vouches that it did.

Modules: :mod:`~pytest_mps.receipts.document` (format, canonical form),
:mod:`~pytest_mps.receipts.fingerprint` (hashing), :mod:`~pytest_mps.receipts.ssh` (``ssh-keygen -Y``),
:mod:`~pytest_mps.receipts.sign` and :mod:`~pytest_mps.receipts.verify` (the two commands).
"""

from __future__ import annotations

from pytest_mps.receipts.document import (
    NAMESPACE,
    RECEIPT_VERSION,
    ReceiptError,
    ReceiptFormatError,
    ReceiptRefused,
    canonical_bytes,
    parse_receipt,
    verdict_of,
)
from pytest_mps.receipts.sign import (
    ReceiptFiles,
    build_receipt,
    default_signing_key,
    describe_written,
    signature_path,
    write_receipt,
)
from pytest_mps.receipts.verify import Verified, verify_receipt

__all__ = [
    "NAMESPACE",
    "RECEIPT_VERSION",
    "ReceiptError",
    "ReceiptFiles",
    "ReceiptFormatError",
    "ReceiptRefused",
    "Verified",
    "build_receipt",
    "canonical_bytes",
    "default_signing_key",
    "describe_written",
    "parse_receipt",
    "signature_path",
    "verdict_of",
    "verify_receipt",
    "write_receipt",
]
