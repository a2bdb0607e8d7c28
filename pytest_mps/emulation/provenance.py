"""Where a finding happened: the owning module path and the first source line outside torch.

Both are read from the Python stack only when a finding is recorded, so the emulation pays nothing for
them on the hot path (no forward hooks on every module call). A module frame is the frame of
``torch.nn.Module._call_impl`` (every ``module(...)`` call goes through it), whose ``self`` is the module;
objects registered by name (pipeline components such as ``unet`` or ``scheduler``) are recognised in any
of their methods' frames, so scheduler code gets ``scheduler`` as its owner too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import weakref
from collections.abc import Mapping
from types import FrameType
from typing import Any

import torch

__all__ = [
    "LoadingContext",
    "ModuleNamer",
    "created_at",
    "first_user_frame",
    "format_frame",
    "is_internal_file",
    "loading_context",
    "note_creation",
]

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # pytest_mps/
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
_CALL_IMPL_CODES = frozenset(
    getattr(torch.nn.Module, name).__code__
    for name in ("_call_impl", "_wrapped_call_impl")
    if hasattr(getattr(torch.nn.Module, name, None), "__code__")
)
_internal_cache: dict[str, bool] = {}


def is_internal_file(filename: str) -> bool:
    """True for frames that are not "user" code: torch, pytest_mps, the stdlib and frozen modules.
    Diffusers and transformers frames are user code here: they are what a finding should point at."""
    hit = _internal_cache.get(filename)
    if hit is None:
        if filename.startswith("<"):
            hit = True
        else:
            path = os.path.abspath(filename)
            site = "site-packages" in path or "dist-packages" in path
            hit = (
                path.startswith(_TORCH_DIR)
                or path.startswith(_PKG_DIR)
                or (path.startswith(_STDLIB_DIR) and not site)
            )
        _internal_cache[filename] = hit
    return hit


def first_user_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost frame, from ``frame`` outwards, that is not internal (see :func:`is_internal_file`)."""
    while frame is not None:
        if not is_internal_file(frame.f_code.co_filename):
            return frame
        frame = frame.f_back
    return None


def format_frame(frame: FrameType) -> str:
    """``path/to/file.py:123 in func``; paths inside site-packages or the working directory are shortened."""
    return f"{_short_path(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


def _short_path(filename: str) -> str:
    path = os.path.abspath(filename)
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        idx = path.rfind(marker)
        if idx >= 0:
            return path[idx + len(marker) :]
    cwd = os.getcwd() + os.sep
    return path[len(cwd) :] if path.startswith(cwd) else path


class ModuleNamer:
    """Turns the modules on the stack into a dotted path such as ``unet.down_blocks.1.attentions.0``.

    ``roots`` names top-level objects (pipeline components); a module reached from no named root is
    named from its outermost module's class name.
    """

    def __init__(self) -> None:
        self._roots: dict[int, tuple[weakref.ref[Any] | None, str]] = {}
        self._qualnames: dict[int, dict[int, str]] = {}

    def name(self, roots: Mapping[str, Any]) -> None:
        """Register named roots (``{"unet": pipe.unet, "scheduler": pipe.scheduler, ...}``)."""
        for label, obj in roots.items():
            if obj is None:
                continue
            try:
                ref: weakref.ref[Any] | None = weakref.ref(obj)
            except TypeError:
                ref = None
            self._roots[id(obj)] = (ref, label)
            self._qualnames.pop(id(obj), None)

    def _root_label(self, obj: Any) -> str | None:
        entry = self._roots.get(id(obj))
        if entry is None:
            return None
        ref, label = entry
        if ref is not None and ref() is not obj:  # id reused by another object
            return None
        return label

    def _qualname(self, root: torch.nn.Module, module: torch.nn.Module) -> str | None:
        table = self._qualnames.get(id(root))
        if table is None:
            table = {id(m): q for q, m in root.named_modules(remove_duplicate=False)}
            self._qualnames[id(root)] = table
        return table.get(id(module))

    def owner(self, frame: FrameType | None) -> str | None:
        """The dotted path of the innermost module (or named object) that ``frame`` runs inside."""
        chain: list[Any] = []  # innermost first
        while frame is not None:
            code = frame.f_code
            if code in _CALL_IMPL_CODES:
                obj = frame.f_locals.get("self")
                if isinstance(obj, torch.nn.Module) and (not chain or chain[-1] is not obj):
                    chain.append(obj)
            elif self._roots and "self" in code.co_varnames[: code.co_argcount]:
                obj = frame.f_locals.get("self")
                if (
                    obj is not None
                    and self._root_label(obj) is not None
                    and (not chain or chain[-1] is not obj)
                ):
                    chain.append(obj)
            frame = frame.f_back
        if not chain:
            return None
        chain.reverse()  # outermost first
        path: str | None = None
        root: Any = None
        root_path = ""
        for obj in chain:
            label = self._root_label(obj)
            if label is not None:
                root, root_path, path = obj, label, label
                continue
            if root is None:
                root, root_path, path = obj, type(obj).__name__, type(obj).__name__
                continue
            qual = self._qualname(root, obj) if isinstance(root, torch.nn.Module) else None
            if qual is not None:
                path = f"{root_path}.{qual}" if qual else root_path
            else:  # not a submodule of the current root: start a new root from its class name
                root, root_path, path = obj, f"{path}>{type(obj).__name__}", f"{path}>{type(obj).__name__}"
        return path


def caller_frame(depth: int = 1) -> FrameType | None:
    """The frame ``depth`` levels above the caller."""
    try:
        return sys._getframe(depth + 1)
    except ValueError:  # pragma: no cover - stack shallower than asked
        return None


# -- tensors reaching the device through Module.to() ------------------------------------------------------
_APPLY_CODE = getattr(torch.nn.Module._apply, "__code__", None)
# Where float64/complex128 CPU tensors were created while an emulation was active (the float64 buffer a
# model builds in __init__ is harmless on the CPU and fails only at ``.to("mps")``, much later).
# Keyed by id with a weak reference (a WeakKeyDictionary would compare tensors with ``==``).
_created: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}


def note_creation(tensor: torch.Tensor, frame: FrameType | None) -> None:
    """Remember the first user frame that created ``tensor`` (called for float64/complex128 outputs)."""
    user = first_user_frame(frame)
    if user is None:
        return
    key = id(tensor)
    with contextlib.suppress(TypeError):  # a tensor type without weak references
        ref = weakref.ref(tensor, lambda _ref, key=key: _created.pop(key, None))
        _created[key] = (ref, format_frame(user))


def created_at(tensor: torch.Tensor) -> str | None:
    """Where ``tensor`` was created, if an emulation saw it happen."""
    entry = _created.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        return None
    return entry[1]


class LoadingContext:
    """A tensor moved by ``Module.to()``: its module path, attribute name, kind and origin."""

    def __init__(
        self, module: str, name: str, kind: str, tensor: torch.Tensor, origin: tuple[str, str] | None
    ) -> None:
        self.module = module
        self.name = name
        self.kind = kind
        self.shape = [int(s) for s in tensor.shape]
        self.dtype = str(tensor.dtype).rpartition(".")[2]
        #: ``("created at" | "registered at", "path/file.py:123 in func")``, when known.
        self.origin = origin
        self.source = origin[1] if origin is not None else None

    @property
    def path(self) -> str:
        """``transformer.patch_embed.pos_embedding``."""
        return f"{self.module}.{self.name}" if self.module else self.name

    def describe(self) -> str:
        """``transformer.patch_embed.pos_embedding float64 [1, 19, 32] (buffer, created at ...)``."""
        where = f", {self.origin[0]} {self.origin[1]}" if self.origin is not None else ""
        return f"{self.path} {self.dtype} {self.shape} ({self.kind}{where})"


def loading_context(
    frame: FrameType | None, tensor: torch.Tensor, namer: ModuleNamer
) -> LoadingContext | None:
    """If ``frame`` runs inside ``Module._apply`` (``module.to(...)``, ``pipe.to(...)``), name the
    parameter or buffer being moved; None otherwise."""
    if _APPLY_CODE is None:
        return None
    applies: list[FrameType] = []
    outer_self: list[Any] = []
    f = frame
    while f is not None:
        if f.f_code is _APPLY_CODE:
            applies.append(f)
        elif applies and "self" in f.f_code.co_varnames[: f.f_code.co_argcount]:
            outer_self.append(f.f_locals.get("self"))
        f = f.f_back
    if not applies:
        return None
    inner, root_frame = applies[0], applies[-1]
    module = inner.f_locals.get("self")
    key = inner.f_locals.get("key")
    root = root_frame.f_locals.get("self")
    if not isinstance(module, torch.nn.Module) or not isinstance(key, str):
        return None
    kind = "parameter" if key in module._parameters else "buffer"
    source_tensor = inner.f_locals.get("param" if kind == "parameter" else "buf")
    root_label = _root_label(root, outer_self, namer)
    qual = namer._qualname(root, module) if isinstance(root, torch.nn.Module) else None
    path = ".".join(p for p in (root_label, qual) if p)
    created = created_at(source_tensor) if isinstance(source_tensor, torch.Tensor) else None
    registered = _registration_site(type(module), key) if created is None else None
    origin = ("created at", created) if created else ("registered at", registered) if registered else None
    return LoadingContext(path, key, kind, tensor, origin)


def _root_label(root: Any, outer: list[Any], namer: ModuleNamer) -> str:
    label = namer._root_label(root)
    if label is not None:
        return label
    for obj in outer:  # e.g. DiffusionPipeline.to: name the module by its component name
        components = getattr(obj, "components", None)
        if isinstance(components, Mapping):
            for name, value in components.items():
                if value is root:
                    return str(name)
    return type(root).__name__


def _registration_site(cls: type, name: str) -> str | None:
    """Where ``cls`` (or a base class) registers ``name``: ``register_buffer("name", ...)`` or
    ``self.name = ...``; a static answer for tensors built before any emulation started."""
    import inspect
    import re

    pattern = re.compile(
        rf"""register_(?:buffer|parameter)\(\s*["']{re.escape(name)}["']|self\.{re.escape(name)}\s*=[^=]"""
    )
    for klass in cls.__mro__:
        if klass is torch.nn.Module or klass is object:
            break
        try:
            lines, start = inspect.getsourcelines(klass)
            filename = inspect.getsourcefile(klass)
        except (OSError, TypeError):
            continue
        for offset, line in enumerate(lines):
            if pattern.search(line):
                return f"{_short_path(filename or '?')}:{start + offset} in {klass.__name__}"
    return None
