"""The JSON report (``--mps-report-json PATH``): every check with all its metrics, tolerances, timings
and details, and the environment of each run. Its shape is documented by ``schema.json`` next to this
module (JSON Schema, with ``schema_version`` :data:`~pytest_mps.reports.model.SCHEMA_VERSION`).

Image paths in the file are relative to the JSON file's folder, so a report and its HTML folder can be
moved together (``pytest-mps merge`` finds the images that way).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_mps.reports.atomic import atomic_write

__all__ = ["json_text", "relocate_images", "write_json"]


def json_text(report: Mapping[str, Any]) -> str:
    """Strict JSON (no NaN or Infinity), indented, UTF-8."""
    return json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def relocate_images(report: Mapping[str, Any], old_root: str | Path, new_root: str | Path) -> dict[str, Any]:
    """A copy of ``report`` whose image paths, relative to ``old_root``, are made relative to
    ``new_root``."""
    out = copy.deepcopy(dict(report))
    old, new = Path(old_root).resolve(), Path(new_root).resolve()
    for check in out["checks"]:
        images = check.get("images")
        if not isinstance(images, dict):
            continue
        for name, value in list(images.items()):
            if isinstance(value, str):
                images[name] = Path(os.path.relpath(old / value, new)).as_posix()
    return out


def write_json(report: Mapping[str, Any], path: str | Path, *, images_root: str | Path | None = None) -> Path:
    """Write ``report`` to ``path`` atomically. ``images_root``: the folder the checks' image paths are
    relative to (the HTML folder); they are rewritten relative to ``path``'s folder."""
    target = Path(path)
    data = relocate_images(report, images_root, target.parent) if images_root is not None else report
    return atomic_write(target, json_text(data))
