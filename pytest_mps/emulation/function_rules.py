"""MPS rules per (torch function, dtype), from PyTorch's own MPS test expectations for the installed torch.

The kernel registry says whether an op has an MPS kernel, not for which dtypes, and complex64 works on MPS
only for the ops PyTorch lists as supported. Both come from
:mod:`~pytest_mps.emulation.mps_expectations`, keyed by OpInfo key (``name + variant_test_name``). This
module maps those keys to the torch functions a call goes through (the emulation judges calls at the
function layer): an OpInfo ``name`` resolves like OpInfo's own ``op`` (``torch.<name>``, dotted for
``nn.functional.conv2d``, ``linalg.svd`` ...) plus its method and in-place variants on ``torch.Tensor``.

Two rules:

* **dtype gaps**: an entry of ``UNIMPLEMENTED_XFAILLIST`` ("ops not expected to work") that lists dtypes,
  e.g. ``nn.functional.conv2d: [int64]``, ``nn.functional.conv_transpose3d: [int64, bfloat16, float16]``,
  refuses those dtypes (a ``RuntimeError``). Entries without dtypes (the op fails outright) are left to
  the kernel registry and the shape rules, which explain them (``to: None`` fails for float64 samples,
  not for every ``.to()``); float32, MPS's reference dtype, is dropped from the plain entries that list
  it: there it is about particular sample inputs (``linalg.norm`` with ``ord="nuc"``), not the dtype.
  A variant entry applies when the call passes the variant as an argument value
  (``scatter_reduce(..., "prod")``, ``interpolate(mode="bicubic")``), as ``name_value``
  (``round(decimals=0)`` for ``decimals_0``), or as a flag that is set (``hermitian=True``).
* **complex64**: a complex input to a function that PyTorch's OpInfos cover but none of whose keys is in
  ``SUPPORTED_COMPLEX_OPS`` (torch 2.15+: all of whose keys are in ``UNSUPPORTED_COMPLEX_OPS``) is refused
  (``RuntimeError``). Functions no OpInfo names are not judged.

Every rule carries where it comes from, for the finding's message.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch

__all__ = [
    "FunctionRules",
    "complex_refusal",
    "disable",
    "dtype_refusal",
    "function_rules",
    "primary_dtype",
]


class DtypeGap(NamedTuple):
    """An expectation entry applied to a function: dtypes ``dtypes`` fail when ``variant`` matches."""

    key: str
    variant: str
    dtypes: frozenset[str]


class FunctionRules:
    """Rules by function object: dtype gaps, and (built on the first complex input, as it scans the OpInfo
    definitions) whether each function supports complex64."""

    def __init__(self, expectations: Any, gaps: Mapping[Any, tuple[DtypeGap, ...]], source: str) -> None:
        self.gaps = gaps
        self.source = source
        #: functions with a float32 gap (the common dtype: one set lookup decides it)
        self.float32 = frozenset(f for f, g in gaps.items() if any("float32" in gap.dtypes for gap in g))
        self._expectations = expectations

    @functools.cached_property
    def complex_ok(self) -> Mapping[Any, bool]:
        """Function -> True when some OpInfo of it is in ``SUPPORTED_COMPLEX_OPS``, False when none is."""
        return _complex_support(self._expectations) if self._expectations is not None else {}


def _resolve(name: str) -> list[Any]:
    """The callables an OpInfo ``name`` stands for: ``torch.<dotted name>`` and ``Tensor`` methods."""
    found: list[Any] = []
    obj: Any = torch
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is not None and callable(obj):
        found.append(obj)
        # F.max_pool2d and friends are boolean_dispatch closures that call one of two functions, each
        # with its own __torch_function__ entry: those are what the emulation sees.
        for cell in getattr(obj, "__closure__", None) or ():
            inner = cell.cell_contents
            if callable(inner) and getattr(inner, "__module__", "").startswith("torch"):
                found.append(inner)
    if "." not in name:
        for attr in (name, f"{name}_"):
            method = getattr(torch.Tensor, attr, None)
            if method is None:
                continue
            if callable(method):
                found.append(method)
            elif hasattr(method, "__get__"):  # a property such as .real or .mT: its getter is what's called
                found.append(method.__get__)
    return found


def _split(key: str, known: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """``(name, variant)`` of an OpInfo key: from the OpInfo scan, else the longest prefix that resolves."""
    if key in known:
        return known[key]
    for end in range(len(key), 0, -1):
        if _resolve(key[:end]):
            return key[:end], key[end:]
    return None


def _build(expectations: Any) -> FunctionRules:
    gaps: dict[Any, list[DtypeGap]] = {}
    unimplemented = expectations.lists.get("UNIMPLEMENTED_XFAILLIST", {})
    for key, listed in unimplemented.items():
        split = _split(key, {}) if listed is not None else None
        if split is None:
            continue
        name, variant = split
        # float32 in a plain entry is about particular samples; a variant entry names the arguments.
        dtypes = listed if variant else listed - {"float32"}
        if not dtypes:
            continue
        for func in _resolve(name):
            gaps.setdefault(func, []).append(DtypeGap(key, variant, frozenset(dtypes)))
    source = str(expectations.source) if expectations.source is not None else "no common_mps.py"
    return FunctionRules(expectations, {f: tuple(g) for f, g in gaps.items()}, source)


def _complex_support(expectations: Any) -> dict[Any, bool]:
    """Function -> whether complex64 works, from the allow-list (``SUPPORTED_COMPLEX_OPS``: some key of
    the function is listed) or, in torch 2.15+, the deny-list (``UNSUPPORTED_COMPLEX_OPS``: not every key
    of the function is listed)."""
    known = expectations.opinfo_keys
    supported = expectations.supported_complex
    unsupported = expectations.unsupported_complex
    if supported is None and unsupported is None:
        return {}
    keys_by_name: dict[str, list[str]] = {}
    for key, (name, _variant) in known.items():
        keys_by_name.setdefault(name, []).append(key)
    for key in supported if supported is not None else unsupported:
        split = _split(key, known)
        if split is not None:
            keys_by_name.setdefault(split[0], []).append(key)
    complex_ok: dict[Any, bool] = {}
    for name, keys in keys_by_name.items():
        if name.startswith("_refs.") or name.startswith("ops."):
            continue
        ok = (
            any(k in supported for k in keys)
            if supported is not None
            else not all(k in unsupported for k in keys)
        )
        for func in _resolve(name):
            complex_ok[func] = complex_ok.get(func, False) or ok
    return complex_ok


_OFF = FunctionRules(None, {}, "off")
_enabled = [True]


def function_rules() -> FunctionRules:
    """The rules for the installed torch (built on first use), or none after :func:`disable`."""
    return _installed_rules() if _enabled[0] else _OFF


@functools.cache
def _installed_rules() -> FunctionRules:
    from pytest_mps.emulation.mps_expectations import load_expectations

    return _build(load_expectations())


def disable() -> None:
    """Turn these rules off for the rest of the process (``bench_fidelity.py --registry-only`` measures
    what the kernel registry and shape rules predict without PyTorch's test expectations)."""
    _enabled[0] = False


# -- applying them ----------------------------------------------------------------------------------------
def primary_dtype(args: Iterable[Any], kwargs: Mapping[str, Any]) -> torch.dtype | None:
    """The dtype an OpInfo test would be parametrised by: the first tensor argument's (looking into a
    leading list, as for ``torch.cat``), else an explicit ``dtype=``."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.dtype
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0].dtype
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value.dtype
    dtype = kwargs.get("dtype")
    return dtype if isinstance(dtype, torch.dtype) else None


def _variant_matches(
    variant: str, args: Iterable[Any], kwargs: Mapping[str, Any], dtype: torch.dtype | None = None
) -> bool:
    if not variant:
        return True
    if any(isinstance(a, str) and a == variant for a in args):
        return True
    for key, value in kwargs.items():
        if isinstance(value, str) and value == variant:
            return True
        if key == variant and value is True:
            return True
        if f"{key}_{value}" == variant:
            return True
        # "with_dtype": the call converts (a dtype= equal to the input's is no conversion at all)
        if f"with_{key}" == variant and value is not None and not (key == "dtype" and value == dtype):
            return True
    return False


def _dtype_text(dtype: torch.dtype) -> str:
    return str(dtype).rpartition(".")[2]


def dtype_refusal(
    func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], dtype: torch.dtype
) -> str | None:
    """MPS's refusal of ``func`` at ``dtype`` as a message, or None when PyTorch expects it to work."""
    rules = function_rules()
    gaps = rules.gaps.get(func)
    if not gaps:
        return None
    name = _dtype_text(dtype)
    for gap in gaps:
        if name in gap.dtypes and _variant_matches(gap.variant, args, kwargs, dtype):
            return (
                f"MPS does not support {gap.key} for {name} with this torch: PyTorch's own MPS tests expect "
                f"it to fail (UNIMPLEMENTED_XFAILLIST: {gap.key!r} {sorted(gap.dtypes)} in {rules.source})"
            )
    return None


# Data movement works for every dtype MPS can hold: never judged by the complex allow-list.
_MOVES = frozenset(
    getattr(torch.Tensor, name)
    for name in ("copy_", "to", "cpu", "clone", "detach", "contiguous", "__getitem__", "__setitem__", "set_")
    if hasattr(torch.Tensor, name)
)


def complex_refusal(func: Any, name: str) -> str | None:
    """MPS's refusal of a complex input to ``func``, or None when complex64 is supported or unknown."""
    if func in _MOVES:
        return None
    rules = function_rules()
    ok = rules.complex_ok.get(func)
    if ok is None or ok:
        return None
    return (
        f"{name} does not support complex inputs on MPS with this torch: PyTorch's own MPS tests expect it "
        f"to fail with complex64 (SUPPORTED_COMPLEX_OPS / UNSUPPORTED_COMPLEX_OPS in {rules.source})"
    )
