"""pytest-mps: does this Diffusers pipeline work on Apple's MPS backend?

The public API is re-exported here and loaded lazily: importing ``pytest_mps`` (which pytest does at
every start-up) never imports torch, diffusers or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "MPSEnvironment": "pytest_mps.environment",
    "detect_environment": "pytest_mps.environment",
    "Target": "pytest_mps.target",
    "TargetError": "pytest_mps.target",
    "resolve_target": "pytest_mps.target",
    "PytestMPSWarning": "pytest_mps.warnings",
}

__all__ = [
    "MPSEnvironment",
    "PytestMPSWarning",
    "Target",
    "TargetError",
    "detect_environment",
    "resolve_target",
]

if TYPE_CHECKING:
    from pytest_mps.environment import MPSEnvironment, detect_environment
    from pytest_mps.target import Target, TargetError, resolve_target
    from pytest_mps.warnings import PytestMPSWarning


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_mps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
