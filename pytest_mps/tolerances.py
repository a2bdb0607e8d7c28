"""Tolerances of the checks, and where each value came from.

Precedence, highest first: the check's call argument > ``@pytest.mark.mps_tolerance`` > ini
(``mps_atol``, ``mps_rtol``, ``mps_max_cosine_distance``) > the check's own default. The defaults, and
where each comes from, are declared with the check in :mod:`pytest_mps.registry`; a default may differ
on stand-in targets (float16 arithmetic on a stand-in is not Metal's, so its absolute limit applies to
real MPS only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_mps.registry import TOLERANCE_FIELDS, get

__all__ = ["INI_KEYS", "TOLERANCE_FIELDS", "Tolerance", "check_tolerance_value", "resolve_tolerance"]

#: ini key -> tolerance field
INI_KEYS: dict[str, str] = {
    "mps_atol": "atol",
    "mps_rtol": "rtol",
    "mps_max_cosine_distance": "max_cosine_distance",
}


@dataclass(frozen=True)
class Tolerance:
    """Thresholds for one comparison; ``None`` means the figure is reported but not judged."""

    atol: float | None = None
    rtol: float = 0.0
    max_cosine_distance: float | None = None
    min_psnr: float | None = None
    max_rms: float | None = None
    max_pixel_fraction: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Thresholds and where each came from, for reports."""
        values: dict[str, Any] = {name: getattr(self, name) for name in TOLERANCE_FIELDS}
        values["sources"] = dict(self.sources)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        """The inverse of :meth:`to_dict`."""
        values = {k: float(data[k]) for k in TOLERANCE_FIELDS if data.get(k) is not None}
        return cls(**values, sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()})


def check_tolerance_value(name: str, value: Any, *, where: str) -> float:
    """``value`` as a tolerance, or ``ValueError`` (one line): a NaN limit would compare False
    against everything and silently pass every check, so only finite, non-negative numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance {name}={value!r} ({where}) must be a finite, non-negative number")
    return float(value)


def resolve_tolerance(
    check: str,
    *,
    arguments: Mapping[str, float | None] | None = None,
    marker: Mapping[str, float] | None = None,
    ini: Mapping[str, float] | None = None,
    real_mps: bool = True,
) -> Tolerance:
    """Combine the layers for ``check`` (an id of :mod:`pytest_mps.registry`) into a :class:`Tolerance`;
    ``real_mps`` picks the real-MPS or the stand-in defaults."""
    spec = get(check)
    given = {k: v for k, v in (arguments or {}).items() if v is not None}
    for source, layer in (("argument", given), ("marker", marker or {}), ("ini", ini or {})):
        for name, value in layer.items():
            try:
                check_tolerance_value(name, value, where=f"from the {source}")
            except ValueError as exc:
                raise ValueError(f"{spec.id}: {exc}") from None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in spec.defaults(real_mps=real_mps).items():
        values[name] = value
        sources[name] = "stand-in default" if not real_mps and name in spec.standin_tolerance else "default"
    layers = (
        ("ini", ini or {}),
        ("marker", marker or {}),
        ("argument", given),
    )
    for source, layer in layers:
        for name, value in layer.items():
            if name in TOLERANCE_FIELDS:
                values[name] = value
                sources[name] = source
    if values.get("rtol") is None:
        values["rtol"] = 0.0
    return Tolerance(**values, sources=sources)
