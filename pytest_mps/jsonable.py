"""The one JSON normaliser: what every report, worker message and result dict goes through."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["plain_json"]


def plain_json(value: Any) -> Any:
    """``value`` as strict JSON data: mappings with string keys, lists for tuples and sets, ``None``
    for NaN and infinities (strict JSON has neither), enums as their values, numpy scalars as Python
    numbers, objects with ``to_dict()`` as that dict, anything else as its ``str``."""
    if isinstance(value, enum.Enum):
        return plain_json(value.value)
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return plain_json(to_dict())
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalars
        try:
            return plain_json(item())
        except (TypeError, ValueError):
            pass
    return str(value)
