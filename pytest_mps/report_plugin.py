"""Deprecated (0.1): the device lock moved to :mod:`pytest_mps.plugin.xdist`. This alias goes in the next
release."""

from __future__ import annotations

import warnings

from pytest_mps.plugin.xdist import DeviceLock, device_lock

__all__ = ["DeviceLock", "device_lock"]

warnings.warn(
    "pytest_mps.report_plugin is deprecated; import DeviceLock and device_lock from pytest_mps.plugin.xdist",
    DeprecationWarning,
    stacklevel=2,
)
