"""Which pipeline a result is about: its source (folder name, hub id, factory name) as well as its class,
so two pipelines of one class stay apart in tables, messages and reports.

``mps_pipeline`` and the bundled suite name each pipeline they load after its source
(:func:`name_pipeline`); a pipeline a test built itself is named after ``pipe.name_or_path`` (set by
``from_pretrained``) or, failing that, its class, with a ``-2``, ``-3``... suffix while another pipeline
alive in the process already has that name.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from pathlib import Path
from typing import Any

__all__ = ["label_for_source", "name_pipeline", "new_naming_scope", "pipeline_label"]

_LABELS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
#: label -> (source key, the pipeline holding it now)
_HOLDERS: dict[str, tuple[Any, weakref.ReferenceType[Any] | None]] = {}
_LOCK = threading.Lock()


def label_for_source(source: Any) -> str:
    """The plain name of a pipeline source: a folder's name, a hub id, a factory's qualified name, or
    a pipeline object's ``name_or_path`` (its class name when it has none)."""
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.exists():
            return path.resolve().name or text
        return text
    name_or_path = getattr(source, "name_or_path", None)
    if isinstance(name_or_path, str) and name_or_path:
        return label_for_source(name_or_path)
    if hasattr(source, "components"):
        return type(source).__name__
    if callable(source):
        return str(getattr(source, "__qualname__", None) or getattr(source, "__name__", None) or source)
    return type(source).__name__


def _source_key(source: Any) -> Any:
    if isinstance(source, str | os.PathLike):
        path = Path(os.fspath(source)).expanduser()
        return ("path", str(path.resolve())) if path.exists() else ("name", os.fspath(source))
    if hasattr(source, "components"):
        name = getattr(source, "name_or_path", None)
        # A pipeline loaded from a folder is the same source as the folder's path.
        return _source_key(name) if isinstance(name, str) and name else ("object", id(source))
    return ("callable", getattr(source, "__module__", ""), getattr(source, "__qualname__", repr(source)))


def new_naming_scope() -> None:
    """Start a new naming scope (a pytest session): names taken in an earlier scope no longer push a new
    pipeline to a ``-2`` suffix, even if the pipeline holding them is still alive (a cache, a traceback).
    Pipelines named before keep their names until they are named again."""
    with _LOCK:
        _HOLDERS.clear()


def name_pipeline(pipe: Any, source: Any = None, *, label: str | None = None) -> str:
    """Name ``pipe`` after ``source`` (or with an explicit ``label``) and return its name. The same
    source keeps its name; another source with the same plain name gets a ``-2`` suffix."""
    base = label or label_for_source(source if source is not None else pipe)
    key = _source_key(source if source is not None else pipe) if label is None else ("label", label)
    with _LOCK:
        name, n = base, 1
        while True:
            holder = _HOLDERS.get(name)
            alive = holder is not None and holder[1] is not None and holder[1]() is not None
            if holder is None or holder[0] == key or not alive:
                break
            n += 1
            name = f"{base}-{n}"
        try:
            ref: weakref.ReferenceType[Any] | None = weakref.ref(pipe)
        except TypeError:
            ref = None
        _HOLDERS[name] = (key, ref)
        with contextlib.suppress(TypeError):
            _LABELS[pipe] = name
    return name


def pipeline_label(pipe: Any) -> str:
    """The name results give ``pipe`` (naming it now if nothing named it before)."""
    try:
        label = _LABELS.get(pipe)
    except TypeError:
        label = None
    return label if label is not None else name_pipeline(pipe)
