"""Small device helpers shared by the checks."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["plain_cpu"]


def plain_cpu(value: Any) -> Any:
    """``value`` as plain CPU tensors: emulated-MPS tensors (which report device ``mps`` while
    holding CPU data) are unwrapped; everything else is returned as it is."""
    emulation = sys.modules.get("pytest_mps.emulation")
    if emulation is not None:
        return emulation.to_cpu(value)
    return value
