"""Torch functions the emulation answers itself instead of running them on payloads.

Device queries (``.device``, ``.is_mps``, ``get_device``) answer for the wrapper; ``.to()``/``.cpu()``
move between the CPU and the emulated device by aliasing memory (as ``.to("cpu")`` of a CPU tensor does);
``numpy()`` without ``.cpu()`` is MPS's ``TypeError``; metadata reads skip the generic path (the hot path
of ``Module.to``); and the handful of dunder methods that must see the wrapper (repr, hash, deepcopy,
pickling, iteration) do. Traps this handles (each one was met): ``torch.device(...)`` and
``torch._C._nn._parse_to`` must pass through untouched, or ``Module.to("mps")`` silently stays on the
CPU; property getters such as ``.device`` must answer for the wrapper, not the payload.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable
from typing import Any

import torch

from pytest_mps.emulation import rules
from pytest_mps.emulation.calls import emulated_call, rebind, wrap_out
from pytest_mps.emulation.errors import numpy_message
from pytest_mps.emulation.runtime import Runtime, op_name
from pytest_mps.emulation.tensor import MPS_DEVICE, EmulatedTensor

__all__ = ["SPECIAL", "Handler"]

_ET = EmulatedTensor
_Tensor = torch.Tensor
_CPU = torch.device("cpu")


Handler = Callable[[Runtime, Any, Any, tuple[Any, ...], dict[str, Any]], Any]


def _passthrough(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    return func(*args, **kwargs)


def _const_getter(value: Any) -> Handler:
    def getter(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        __tracebackhide__ = True
        if type(args[0]) is _ET:
            return value
        return func(*args, **kwargs)

    return getter


def _get_device(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    if type(args[0]) is _ET:
        return 0
    return func(*args, **kwargs)


def _handle_to(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    src_et = type(self) is _ET
    kw = dict(kwargs)
    rest, copy = _split_copy(args[1:], kw)
    # _parse_to reads a tensor argument's device from the wrapper itself: keep wrappers for it.
    device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kw)
    src = self._payload if src_et else self
    options: dict[str, Any] = {"dtype": dtype, "non_blocking": non_blocking}
    if memory_format is not None:
        options["memory_format"] = memory_format
    # Moves between the CPU and the emulated device alias memory, exactly as .to("cpu") on a CPU tensor
    # does: a copy would land the data at a different alignment, and CPU kernels (oneDNN/MKL GEMMs) round
    # differently on differently aligned buffers (safetensors weights are often not 64-byte aligned), so
    # the emulated run would drift from the CPU run by ~1e-7. Emulated output must equal the CPU run's.
    if device is not None and device.type != "mps":
        if not src_et:
            return func(*args, **kwargs)
        return src.to(device, copy=copy, **options)
    if device is None and not src_et:
        return func(*args, **kwargs)
    out = src.to(rt.payload_device, copy=copy, **options)
    if src_et and out is src:
        return self
    return wrap_out(rt, func, out, [])


def _split_copy(rest: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], bool]:
    """Take ``copy`` out of ``Tensor.to``'s arguments (``_parse_to`` does not accept it), whether given by
    keyword or by position: ``to(dtype, non_blocking, copy)``, ``to(other, non_blocking, copy)`` and
    ``to(device, dtype, non_blocking, copy)``."""
    copy = bool(kw.pop("copy", False))
    if rest:
        first = rest[0]
        by_dtype_or_other = isinstance(first, (torch.dtype, torch.Tensor))
        position = 2 if by_dtype_or_other else 3
        if len(rest) > position:
            copy = copy or bool(rest[position])
            rest = rest[:position] + rest[position + 1 :]
    return rest, copy


def _handle_cpu(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    return self._payload.to(_CPU, **kwargs)  # aliases, see _handle_to


def _handle_numpy(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    payload = self._payload
    if func is _Tensor.numpy and kwargs.get("force"):
        return payload.detach().cpu().resolve_conj().resolve_neg().numpy()
    rt.hit(
        rules.Hazard("numpy", "error", numpy_message(), TypeError),
        op_name(func),
        (payload,),
    )
    # Collecting: carry on as the CPU would, so the rest of the run is still audited.
    rest = args[1:]
    return func(payload.detach(), *rest, **kwargs)


def _handle_repr(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    text = func(self._payload, *args[1:], **kwargs)
    suffix = "device='mps:0'"
    for marker in (", dtype=", ", grad_fn=", ", requires_grad=", ", names=", ", layout="):
        idx = text.find(marker)
        if idx >= 0:
            return f"{text[:idx]}, {suffix}{text[idx:]}"
    return f"{text[:-1]}, {suffix})" if text.endswith(")") else text


def _handle_hash(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    return id(args[0])


def _handle_deepcopy(
    rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    memo = args[1] if len(args) > 1 else kwargs.get("memo", {})
    if id(self) in memo:
        return memo[id(self)]
    new = _ET(self._payload.__deepcopy__(memo))
    memo[id(self)] = new
    for key, value in self.__dict__.items():
        if key != "_payload":
            new.__dict__[key] = _copy.deepcopy(value, memo)
    return new


def _handle_reduce(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    return self._payload.__reduce_ex__(*args[1:], **kwargs)  # pickles as a CPU tensor


def _handle_iter(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    if self._payload.dim() == 0:
        raise TypeError("iteration over a 0-d tensor")
    return iter([_ET(p) for p in self._payload.unbind(0)])


def _handle_type(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    self = args[0]
    if type(self) is _ET and len(args) == 1 and not kwargs:
        return self._payload.type().replace("torch.", "torch.mps.", 1)
    return emulated_call(rt, func, args, kwargs)


def _handle_set_data(
    rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    __tracebackhide__ = True
    self, value = args[0], args[1]
    if type(self) is not _ET:
        return func(self, value._payload if type(value) is _ET else value)
    new = value._payload if type(value) is _ET else value
    old = self._payload
    if new.shape == old.shape and new.stride() == old.stride() and new.dtype == old.dtype:
        new = new.detach()
        if old.requires_grad:
            new.requires_grad_(True)
        self._payload = new
    else:
        rebind(self, new.detach())
    return None


def _handle_shallow_copy_type(
    rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    __tracebackhide__ = True
    # Module._apply asks whether `param.data = moved` is possible: never between the CPU and MPS (their
    # TensorImpls differ), always between two emulated tensors.
    first, second = (type(a) is _ET for a in args[:2])
    if first or second:
        return first and second
    return func(*args, **kwargs)


def _light(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Metadata reads and autograd bookkeeping on one emulated tensor (``x.shape``, ``x.dim()``,
    ``x.detach()``, ``x.requires_grad_()``...): no kernel runs and no dtype or size changes, so no rule
    can apply. The hot path for the most frequent calls of all, and for ``Module.to``."""
    __tracebackhide__ = True
    self = args[0] if args else None
    if type(self) is not _ET or len(args) > 2 or (len(args) == 2 and type(args[1]) is _ET):
        if self is None or _ET not in types:
            return func(*args, **kwargs)
        return emulated_call(rt, func, args, kwargs)
    payload = self._payload
    out = func(payload, *args[1:], **kwargs)
    if type(out) is _Tensor or isinstance(out, _Tensor):
        return self if out is payload else _ET(out)
    return out


_LIGHT_METHODS = (
    "dim",
    "size",
    "numel",
    "nelement",
    "stride",
    "storage_offset",
    "element_size",
    "is_contiguous",
    "is_floating_point",
    "is_complex",
    "is_signed",
    "data_ptr",
    "__len__",
    "detach",
    "detach_",
    "requires_grad_",
    "retain_grad",
    "untyped_storage",
)
_LIGHT_PROPERTIES = (
    "shape",
    "dtype",
    "ndim",
    "layout",
    "requires_grad",
    "is_leaf",
    "grad_fn",
    "grad",
    "data",
    "itemsize",
    "nbytes",
    "names",
    "is_sparse",
    "is_quantized",
    "is_nested",
    "_version",
)


def _specials() -> dict[Any, Handler]:
    t = torch.Tensor
    table: dict[Any, Handler] = {
        torch.device: _passthrough,
        torch._C._nn._parse_to: _passthrough,
        torch._has_compatible_shallow_copy_type: _handle_shallow_copy_type,
        t.to: _handle_to,
        t.cpu: _handle_cpu,
        t.numpy: _handle_numpy,
        t.__array__: _handle_numpy,
        t.__repr__: _handle_repr,
        t.__hash__: _handle_hash,
        t.__deepcopy__: _handle_deepcopy,
        t.__reduce_ex__: _handle_reduce,
        t.__iter__: _handle_iter,
        t.type: _handle_type,
        t.get_device: _get_device,
        t.device.__get__: _const_getter(MPS_DEVICE),  # type: ignore[attr-defined]
        t.is_mps.__get__: _const_getter(True),  # type: ignore[attr-defined]
        t.data.__set__: _handle_set_data,  # type: ignore[attr-defined]
    }
    for name in _LIGHT_METHODS:
        method = getattr(t, name, None)
        if method is not None:
            table[method] = _light
    for name in _LIGHT_PROPERTIES:
        prop = getattr(t, name, None)
        if prop is not None and hasattr(prop, "__get__"):
            table[prop.__get__] = _light
        if prop is not None and name in ("requires_grad", "grad") and hasattr(prop, "__set__"):
            table[prop.__set__] = _light
    other_devices = ("is_cpu", "is_cuda", "is_meta", "is_xpu", "is_hpu", "is_ipu", "is_xla", "is_mtia")
    for name in other_devices:
        prop = getattr(t, name, None)
        if prop is not None and hasattr(prop, "__get__"):
            table[prop.__get__] = _const_getter(False)
    return table


SPECIAL: dict[Any, Handler] = _specials()
