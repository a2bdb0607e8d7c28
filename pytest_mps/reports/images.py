"""PNG images for the HTML report: the CPU output, the target output and an amplified, colour-mapped
heatmap of their absolute difference. Encoding happens where the arrays are (a pytest-xdist worker
sends the PNG bytes to the controller), so only bytes travel.

numpy and Pillow are imported inside the functions.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_GAIN", "encode_images", "heatmap", "to_rgb"]

#: The heatmap maps the largest difference to the top of the colour map, but never amplifies more.
MAX_GAIN = 1e6
_MAX_WIDTH = 4096  # a batch is tiled side by side, up to this many pixels
#: An "inferno"-like colour map: black (no difference) through purple and orange to pale yellow.
_ANCHORS = (
    (0, 0, 4),
    (40, 11, 84),
    (101, 21, 110),
    (159, 42, 99),
    (212, 72, 66),
    (245, 125, 21),
    (250, 193, 39),
    (252, 255, 164),
)
_NAN_COLOUR = (0, 255, 255)  # cyan, outside the colour map: non-finite values


def to_rgb(array: Any) -> np.ndarray | None:
    """``array`` (images or video frames: ``[N,]H,W,C``, ``N,C,H,W`` or ``N,F,H,W,C``) as one float64
    ``H x W x 3`` picture with the batch side by side; None when it is not an image."""
    import numpy as np

    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 5:
        a = a.reshape(-1, *a.shape[2:])
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or 0 in a.shape:
        return None
    if a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)
    if a.shape[-1] not in (1, 3, 4):
        return None
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    keep = max(1, _MAX_WIDTH // a.shape[2])
    return np.concatenate(list(a[:keep]), axis=1)


def _png(rgb: np.ndarray) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_uint8(picture: np.ndarray) -> np.ndarray:
    import numpy as np

    finite = np.isfinite(picture).all(axis=-1)
    out = (np.clip(np.nan_to_num(picture, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) * 255.0).round()
    out = out.astype(np.uint8)
    out[~finite] = _NAN_COLOUR
    return out


def heatmap(cpu: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The colour-mapped ``|target - cpu|`` (largest channel per pixel, amplified so the largest
    difference reaches the top of the map), the gain used and the largest difference."""
    import numpy as np

    diff = np.abs(target - cpu).max(axis=-1)
    finite = np.isfinite(diff)
    largest = float(diff[finite].max()) if finite.any() else 0.0
    gain = min(MAX_GAIN, 1.0 / largest) if largest > 0 else 1.0
    level = np.clip(np.where(finite, diff, 0.0) * gain, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(level).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (level - low)[..., None]
    anchors = np.asarray(_ANCHORS, dtype=np.float64)
    rgb = (anchors[low] * (1 - frac) + anchors[low + 1] * frac).round().astype(np.uint8)
    rgb[~finite] = _NAN_COLOUR
    return rgb, gain, largest


def encode_images(images: Mapping[str, Any]) -> tuple[dict[str, bytes], dict[str, float]] | None:
    """PNG bytes for a check's ``images`` (``cpu`` and ``target`` arrays, values in [0, 1]): keys
    ``cpu``, ``target`` and, when the shapes agree, ``diff``; plus the heatmap's gain and largest
    difference. None when there is nothing to draw."""
    cpu = to_rgb(images["cpu"]) if "cpu" in images else None
    target = to_rgb(images["target"]) if "target" in images else None
    if cpu is None and target is None:
        return None
    pngs: dict[str, bytes] = {}
    info: dict[str, float] = {}
    for name, picture in (("cpu", cpu), ("target", target)):
        if picture is not None:
            pngs[name] = _png(_to_uint8(picture))
    if cpu is not None and target is not None and cpu.shape == target.shape:
        rgb, gain, largest = heatmap(cpu, target)
        pngs["diff"] = _png(rgb)
        info = {"diff_gain": gain, "diff_max": largest}
    return pngs, info
