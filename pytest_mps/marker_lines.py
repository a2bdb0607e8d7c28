"""The plugin's marker names and their one-line registrations (what ``pytest --markers`` lists).

A leaf module with no imports, read at every pytest start-up: the parser of the markers' arguments
(:mod:`pytest_mps.markers`) is imported only when a collected test carries one of them.
"""

from __future__ import annotations

__all__ = ["MARKER_LINES"]

MARKER_LINES: dict[str, str] = {
    "mps": "mps: the test needs the target device (--mps-device); skipped with the reason when there is none",
    "skip_mps": "skip_mps(reason=None): skip when the target is MPS (real, or emulated)",
    "mps_requires": (
        'mps_requires(macos=">=13", torch=">=2.0", memory_gb=64): needs the target and these versions '
        "(packaging specifiers); skipped with the unmet requirement. macos applies to real MPS only"
    ),
    "xfail_mps": (
        'xfail_mps(reason=None, macos="<14", torch="<2.1", raises=None, strict=True): expected to fail on '
        "the MPS target, optionally only inside these version ranges"
    ),
    "mps_tolerance": (
        "mps_tolerance(atol=None, rtol=None, max_cosine_distance=None, ...): tolerances for this test's "
        "parity checks (a call argument overrides them)"
    ),
}
