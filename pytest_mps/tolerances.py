"""Tolerances of the checks, and where each value came from.

Precedence, highest first: the check's call argument > ``@pytest.mark.mps_tolerance`` > ini
(``mps_atol``, ``mps_rtol``, ``mps_max_cosine_distance``) > the check's own default.

Defaults and their sources:

- ``cpu_parity``: ``atol=3e-2`` (Diffusers' MPS tolerance for DDPM, 3x its CPU/CUDA 1e-2) and
  ``max_cosine_distance=1e-3``. Measured on an H100 stand-in (see README, "Measurements"): the largest
  honest divergence, a full-size SD-1.5-shaped pipeline at 512x512 with TF32 convolutions, stays far below.
- ``batch_consistency``: ``atol=3e-3`` (Diffusers' batch-vs-single tolerance for Stable Diffusion).
- ``attention_slicing``: ``atol=3e-3``: Diffusers' ``test_attention_slicing_forward_pass`` uses 1e-3 on
  tiny models, but a full-size SD-1.5-shaped pipeline at 512x512 on an H100 with cuDNN's default TF32
  differed by 1.13e-3 between sliced and unsliced attention (with TF32 off: 3.8e-6).
- ``determinism``: ``atol=1e-5``: repeated runs on one device should agree to rounding.
- ``float16``: ``max_cosine_distance=5e-2`` (Diffusers' float16-vs-float32 threshold) and ``atol=0.1``:
  cosine distance alone is blind to a wrong image with a bright mean (a denoiser 3x too strong in
  float16 gave max |diff| 0.38 at cosine 7.7e-3); honest float16 differed by at most 6.9e-3 on the tiny
  pipelines and 3.7e-3 on a full-size SD-1.5 shape (H100).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHECK_DEFAULTS", "INI_KEYS", "Tolerance", "resolve_tolerance"]

TOLERANCE_FIELDS = ("atol", "rtol", "max_cosine_distance", "min_psnr", "max_rms", "max_pixel_fraction")

CHECK_DEFAULTS: dict[str, dict[str, float | None]] = {
    "cpu_parity": {"atol": 3e-2, "rtol": 0.0, "max_cosine_distance": 1e-3},
    "batch_consistency": {"atol": 3e-3, "rtol": 0.0, "max_cosine_distance": 1e-4},
    "attention_slicing": {"atol": 3e-3, "rtol": 0.0, "max_cosine_distance": 1e-4},
    "determinism": {"atol": 1e-5, "rtol": 0.0, "max_cosine_distance": 1e-6},
    "float16": {"atol": 0.1, "rtol": 0.0, "max_cosine_distance": 5e-2},
    "schedulers": {"atol": 3e-2, "rtol": 0.0, "max_cosine_distance": 1e-3},
}

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
        values = {name: getattr(self, name) for name in TOLERANCE_FIELDS}
        values["sources"] = dict(self.sources)
        return values


def resolve_tolerance(
    check: str,
    *,
    arguments: Mapping[str, float | None] | None = None,
    marker: Mapping[str, float] | None = None,
    ini: Mapping[str, float] | None = None,
) -> Tolerance:
    """Combine the layers for ``check`` (a key of :data:`CHECK_DEFAULTS`) into a :class:`Tolerance`."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in (("argument", arguments or {}), ("marker", marker or {}), ("ini", ini or {})):
        for name, value in layer.items():
            if value is None:
                continue
            # A NaN limit would compare False against everything and silently pass every check.
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"{check}: tolerance {name}={value!r} (from the {source}) must be a finite, non-negative "
                    "number"
                )
    layers = (
        ("default", CHECK_DEFAULTS[check]),
        ("ini", ini or {}),
        ("marker", marker or {}),
        ("argument", {k: v for k, v in (arguments or {}).items() if v is not None}),
    )
    for source, layer in layers:
        for name, value in layer.items():
            if name in TOLERANCE_FIELDS:
                values[name] = value
                sources[name] = source
    if values.get("rtol") is None:
        values["rtol"] = 0.0
    return Tolerance(**values, sources=sources)
