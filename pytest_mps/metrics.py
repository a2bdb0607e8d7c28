"""How far a target's output is from the reference: the figures every check reports.

Outputs are images (or frames) in [0, 1], as Diffusers returns them with ``output_type="np"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Comparison", "compare", "defects"]


@dataclass(frozen=True)
class Comparison:
    """Differences between a target output and its reference (both float arrays of one shape).

    Attributes:
        max_abs: largest absolute difference.
        mean_abs: mean absolute difference.
        rms_255: root-mean-square difference on the 0-255 scale (pytest-mpl's figure).
        cosine_distance: Diffusers' ``1 - a.b / (|a| |b|)`` over the flattened arrays.
        psnr: peak signal-to-noise ratio in dB for a data range of 1 (``inf`` when equal).
        pixel_fraction: share of pixels with any channel off by more than one 8-bit level.
        worst_index: index of the largest difference; ``worst_target``/``worst_reference`` its values.
        shape: the compared arrays' shape.
    """

    max_abs: float
    mean_abs: float
    rms_255: float
    cosine_distance: float
    psnr: float
    pixel_fraction: float
    worst_index: tuple[int, ...]
    worst_target: float
    worst_reference: float
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (``inf`` PSNR becomes ``None``)."""
        data = asdict(self)
        data["psnr"] = None if math.isinf(self.psnr) else self.psnr
        data["worst_index"] = list(self.worst_index)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Comparison:
        """The inverse of :meth:`to_dict` (``None`` PSNR is infinite again; ``None`` figures, which
        strict JSON writes for NaN, come back as NaN)."""

        def number(name: str) -> float:
            value = data.get(name)
            return float("nan") if value is None else float(value)

        psnr = data.get("psnr")
        return cls(
            max_abs=number("max_abs"),
            mean_abs=number("mean_abs"),
            rms_255=number("rms_255"),
            cosine_distance=number("cosine_distance"),
            psnr=math.inf if psnr is None else float(psnr),
            pixel_fraction=number("pixel_fraction"),
            worst_index=tuple(int(i) for i in data.get("worst_index") or ()),
            worst_target=number("worst_target"),
            worst_reference=number("worst_reference"),
            shape=tuple(int(i) for i in data.get("shape") or ()),
        )

    def where(self) -> str:
        """The worst element in words, e.g. ``item 0, row 12, column 40, channel 2``."""
        names = ("item", "row", "column", "channel") if len(self.worst_index) == 4 else None
        if names is None:
            return f"index {self.worst_index}"
        return ", ".join(f"{n} {i}" for n, i in zip(names, self.worst_index, strict=True))


def defects(array: np.ndarray, name: str) -> str | None:
    """Why ``array`` cannot be compared at all (empty, NaN, Inf), in words; None when it can."""
    import numpy as np

    if array.size == 0:
        return f"{name} output is empty (shape {tuple(array.shape)})"
    nan = int(np.isnan(array).sum())
    inf = int(np.isinf(array).sum())
    if nan or inf:
        finite = array[np.isfinite(array)]
        looks = "black image" if finite.size == 0 or float(np.abs(finite).max()) == 0.0 else "corrupted image"
        parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
        what = " and ".join(p for p in parts if p)
        return f"{name} output contains NaN/Inf ({what} of {array.size} values): {looks}"
    return None


def compare(target: np.ndarray, reference: np.ndarray) -> Comparison:
    """All figures of :class:`Comparison` for two finite arrays of the same shape."""
    import numpy as np

    if target.shape != reference.shape:
        raise ValueError(f"shape mismatch: target {target.shape} vs reference {reference.shape}")
    a = target.astype(np.float64, copy=False)
    b = reference.astype(np.float64, copy=False)
    diff = np.abs(a - b)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    mse = float(np.mean(diff**2))
    # Plain reductions, not np.linalg.norm/np.dot: those wake BLAS threads, 8 ms a call on 2 cores.
    na, nb = math.sqrt(float(np.sum(a * a))), math.sqrt(float(np.sum(b * b)))
    if na == 0.0 and nb == 0.0:
        cosine = 0.0
    elif na == 0.0 or nb == 0.0:
        cosine = 1.0
    else:
        cosine = 1.0 - float(np.sum(a * b)) / (na * nb)
    per_pixel = diff.max(axis=-1) if diff.ndim >= 3 else diff
    return Comparison(
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        rms_255=math.sqrt(mse) * 255.0,
        cosine_distance=max(cosine, 0.0),
        psnr=math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse),
        pixel_fraction=float(np.mean(per_pixel * 255.0 > 1.0)),
        worst_index=tuple(int(i) for i in worst),
        worst_target=float(a[worst]),
        worst_reference=float(b[worst]),
        shape=tuple(target.shape),
    )
