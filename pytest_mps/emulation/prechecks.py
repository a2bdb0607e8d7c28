"""Rules judged before a call runs: the size of a requested allocation (so that
``torch.empty(2**31, 3, device="mps")`` fails without allocating 24 GB) and the attention score matrix that
MPS's math path would materialise for ``scaled_dot_product_attention``; plus shape-only shortcuts for
production-size traces on meta payloads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_mps.emulation import rules
from pytest_mps.emulation.runtime import Runtime, op_name

__all__ = ["META_SHORTCUTS", "PRECHECKS"]

_Tensor = torch.Tensor


def _size_from(args: tuple[Any, ...], kwargs: dict[str, Any], first: int = 0) -> tuple[int, ...] | None:
    if "size" in kwargs:
        size = kwargs["size"]
    elif len(args) > first and isinstance(args[first], (tuple, list, torch.Size)):
        size = args[first]
    else:
        size = args[first:]
    try:
        return tuple(int(s) for s in size)
    except (TypeError, ValueError):
        return None


def _check_request(rt: Runtime, func: Any, shape: tuple[int, ...] | None, dtype: Any) -> None:
    __tracebackhide__ = True
    if shape is None:
        return
    dt = dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()
    hazards = rules.request_hazards(shape, dt)
    if hazards:
        for hazard in hazards:
            if hazard.kind in ("buffer", "dims"):  # dtype rules are judged on the result
                rt.hit_shape(hazard, op_name(func), shape, dt)


def _pre_factory(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    _check_request(rt, func, _size_from(args, kwargs), kwargs.get("dtype"))


def _pre_full(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    size = kwargs.get("size", args[0] if args else None)
    shape = tuple(int(s) for s in size) if isinstance(size, (tuple, list, torch.Size)) else None
    dtype = kwargs.get("dtype")
    if dtype is None and len(args) > 1 and isinstance(args[1], bool):
        dtype = torch.bool
    _check_request(rt, func, shape, dtype)


def _pre_randint(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    size = kwargs.get("size")
    if size is None:
        size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
    shape = tuple(int(s) for s in size) if size is not None else None
    _check_request(rt, func, shape, kwargs.get("dtype", torch.int64))


def _pre_new(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    # Tensor.new_empty(self, size, ...): the dtype defaults to self's.
    dtype = kwargs.get("dtype") or (args[0].dtype if args and isinstance(args[0], _Tensor) else None)
    _check_request(rt, func, _size_from(args, kwargs, first=1), dtype)


def _pre_sdpa(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    query = args[0] if args else kwargs.get("query")
    key = args[1] if len(args) > 1 else kwargs.get("key")
    if isinstance(query, _Tensor) and isinstance(key, _Tensor):
        hazard = rules.attention_hazard(query, key)
        if hazard is not None:
            # The CPU kernel does not allocate the score matrix, so the run can go on when collecting.
            rt.hit(hazard, "aten::scaled_dot_product_attention", (query, key))


PRECHECKS: dict[Any, Callable[[Runtime, Any, tuple[Any, ...], dict[str, Any]], None]] = {
    **{getattr(torch, n): _pre_factory for n in ("empty", "zeros", "ones", "rand", "randn")},
    torch.full: _pre_full,
    torch.randint: _pre_randint,
    **{getattr(torch.Tensor, n): _pre_new for n in ("new_empty", "new_zeros", "new_ones")},
    torch.nn.functional.scaled_dot_product_attention: _pre_sdpa,
}
if hasattr(torch._C._nn, "scaled_dot_product_attention"):
    PRECHECKS[torch._C._nn.scaled_dot_product_attention] = _pre_sdpa


# -- meta shortcuts ------------------------------------------------------------------------------------
# On meta payloads torch computes these output shapes through Python reference decompositions
# (torch._refs), which cost most of a production-size trace; their shapes are simple, and all three have
# native MPS kernels (no kernel rule to learn), so a trace answers them directly.
def _same_as_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    x = args[0] if args else kwargs["input"]
    return torch.empty_like(x)


def _sdpa_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    query = args[0] if args else kwargs["query"]
    value = args[2] if len(args) > 2 else kwargs["value"]
    shape = (*torch.broadcast_shapes(query.shape[:-2], value.shape[:-2]), query.shape[-2], value.shape[-1])
    return torch.empty(shape, dtype=query.dtype, device=query.device)


META_SHORTCUTS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor]] = {
    torch.nn.functional.layer_norm: _same_as_input,
    torch.layer_norm: _same_as_input,
    torch.nn.functional.group_norm: _same_as_input,
    torch.group_norm: _same_as_input,
    torch.nn.functional.scaled_dot_product_attention: _sdpa_shape,
}
