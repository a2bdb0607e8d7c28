"""Glue between the session's target and the MPS emulation engine (``pytest_mps.emulation``)."""

from __future__ import annotations

__all__ = ["emulation_unavailable_reason"]


def emulation_unavailable_reason() -> str | None:
    """Why ``--mps-device emulated`` cannot be used yet, or None when it can."""
    return "the emulated target is not available in this release yet; use --mps-device cpu or cuda"
