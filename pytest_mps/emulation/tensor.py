"""The emulated MPS tensor: reports ``device.type == "mps"``, holds its data in a CPU (or meta) tensor.

:class:`EmulatedTensor` is a wrapper subclass (``torch.Tensor._make_wrapper_subclass``): the wrapper
carries only metadata (shape, strides, dtype and the ``mps:0`` device) and never owns storage; the data
lives in ``_payload``. Nothing emulated may reach a C++ kernel: on a torch built without MPS, an ``mps``
tensor that does aborts the whole process ("PyTorch is not linked with support for mps devices"). Every
torch function call is therefore intercepted at the Python function layer (``__torch_function__``, see
:mod:`pytest_mps.emulation.mode`), which unwraps the payloads, runs the real function on them and wraps
the results. Wrappers never carry autograd metadata (``requires_grad`` lives on the payload), for the same
reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["MPS_DEVICE", "EmulatedTensor", "is_emulated", "to_cpu", "unwrap", "wrap"]

#: What an emulated tensor reports as its device (a Mac's tensors say ``mps:0``).
MPS_DEVICE = torch.device("mps", 0)

# Set by pytest_mps.emulation.mode: handles torch functions called on an emulated tensor while no
# emulation mode is active (a tensor that outlived its ``with EmulatedMPS()`` block keeps working, on the
# CPU, without MPS's rules).
_outside_handler: Callable[..., Any] | None = None


_make_wrapper = torch.Tensor._make_wrapper_subclass


class EmulatedTensor(torch.Tensor):
    """A tensor on the emulated ``mps:0`` device; its data is the CPU (or meta) tensor ``_payload``."""

    _payload: torch.Tensor

    @staticmethod
    def __new__(cls, payload: torch.Tensor) -> EmulatedTensor:
        # requires_grad stays False: autograd metadata on a wrapper aborts a CPU-only torch. The payload
        # carries requires_grad/grad instead (getters and setters are routed to it).
        if payload.layout is not torch.strided:  # sparse (COO, CSR, ...) tensors have no strides
            out = _make_wrapper(
                cls, payload.shape, dtype=payload.dtype, layout=payload.layout, device=MPS_DEVICE
            )
            out._payload = payload
            return out
        offset = payload.storage_offset()
        if offset:
            out = _make_wrapper(
                cls,
                payload.shape,
                payload.stride(),
                storage_offset=offset,
                dtype=payload.dtype,
                device=MPS_DEVICE,
            )
        else:
            out = _make_wrapper(cls, payload.shape, payload.stride(), dtype=payload.dtype, device=MPS_DEVICE)
        out._payload = payload
        return out

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if _outside_handler is None:
            import pytest_mps.emulation.mode  # noqa: F401 - installs the handler
        assert _outside_handler is not None
        return _outside_handler(func, types, args, kwargs or {})

    @classmethod
    def __torch_dispatch__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        # Safety net: an op that reached the dispatcher with an emulated tensor (a C++ path that skipped
        # __torch_function__) runs on the payloads instead of crashing the process.
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "mps":
            kwargs = dict(kwargs, device=_payload_device(args, kwargs))
        out = func(*unwrap(args), **unwrap(kwargs))
        return wrap(out)


def _payload_device(args: Any, kwargs: Mapping[str, Any]) -> torch.device:
    for value in (*args, *kwargs.values()):
        if type(value) is EmulatedTensor:
            return value._payload.device
    return torch.device("cpu")


def is_emulated(obj: object) -> bool:
    """True for a tensor on the emulated MPS device."""
    return type(obj) is EmulatedTensor


def unwrap(obj: Any) -> Any:
    """Replace emulated tensors by their payloads in ``obj`` (lists, tuples and dicts are walked)."""
    t = type(obj)
    if t is EmulatedTensor:
        return obj._payload
    if t is tuple or t is list:
        return t(unwrap(x) for x in obj)
    if t is dict:
        return {k: unwrap(v) for k, v in obj.items()}
    return obj


def wrap(obj: Any) -> Any:
    """Wrap every plain tensor in ``obj`` as an emulated tensor (containers are rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return obj if type(obj) is EmulatedTensor else EmulatedTensor(obj)
    if isinstance(obj, (list, tuple)):
        return _rebuild(obj, [wrap(x) for x in obj])
    return obj


def _rebuild(obj: list[Any] | tuple[Any, ...], items: list[Any]) -> Any:
    t = type(obj)
    if t is list or t is tuple:
        return t(items)
    if hasattr(t, "n_fields"):  # torch.return_types structseq
        return t(items)
    if hasattr(t, "_fields"):  # namedtuple
        return t(*items)
    return t(items)


def to_cpu(obj: Any) -> Any:
    """Unwrap emulated tensors in ``obj`` (a tensor or nested lists, tuples, dicts and dict-like outputs
    such as Diffusers' ``BaseOutput``) to the plain CPU tensors that hold their data.

    The result shares memory with the emulated tensors (no copy). Plain tensors, numpy arrays, images
    and other objects are returned unchanged, so this is safe to call on any pipeline output.
    """
    if type(obj) is EmulatedTensor:
        return obj._payload
    if isinstance(obj, (list, tuple)):
        return _rebuild(obj, [to_cpu(x) for x in obj])
    if isinstance(obj, Mapping):
        if type(obj) is dict:
            return {k: to_cpu(v) for k, v in obj.items()}
        try:
            out = copy.copy(obj)
            for key, value in obj.items():
                out[key] = to_cpu(value)
            return out
        except Exception:  # an exotic mapping: give back a plain dict
            return {k: to_cpu(v) for k, v in obj.items()}
    return obj
