"""The function-layer engine: a ``TorchFunctionMode`` that makes emulated tensors behave as MPS tensors.

Every torch function call while the mode is active comes here first (:func:`dispatch`). Calls that
involve neither an emulated tensor nor an ``mps`` device pass straight through (a dict lookup and a tuple
scan; a float64 or complex128 result has its creation site noted, so that a buffer built in a model's
``__init__`` can be named when ``.to("mps")`` refuses it later). Functions with a special meaning on the
device go to :mod:`~pytest_mps.emulation.handlers`; every other call to
:func:`~pytest_mps.emulation.calls.emulated_call`, which judges MPS's rules, runs the real function on the
CPU (or meta) payloads and wraps the results.

No emulated tensor may reach a C++ kernel, and wrappers never carry autograd metadata (both abort a
CPU-only torch). The engine's frames are marked ``__tracebackhide__`` so that a failing test shows the
user's line, not ours.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from pytest_mps.emulation import tensor
from pytest_mps.emulation.calls import emulated_call
from pytest_mps.emulation.handlers import SPECIAL
from pytest_mps.emulation.provenance import note_creation
from pytest_mps.emulation.runtime import Runtime, device_type, op_name
from pytest_mps.emulation.tensor import EmulatedTensor

__all__ = ["PASSIVE", "EmulationMode", "Runtime", "dispatch", "emulated_call", "op_name"]

_ET = EmulatedTensor
_Tensor = torch.Tensor
_EMPTY: dict[str, Any] = {}
# CPU results worth remembering the creation site of: dtypes MPS refuses when they reach the device.
_NOTED = frozenset({torch.float64, torch.complex128})


def dispatch(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Handle one torch function call (the body of both the mode and the tensor's __torch_function__)."""
    __tracebackhide__ = True
    special = SPECIAL.get(func)
    if special is not None:
        return special(rt, func, types, args, kwargs)
    if _ET not in types:
        device = kwargs.get("device") if kwargs else None
        if device is None or device_type(device) != "mps":
            out = func(*args, **kwargs)
            if type(out) is _Tensor and out.dtype in _NOTED and rt.enforce:
                note_creation(out, sys._getframe(1))
            return out
    return emulated_call(rt, func, args, kwargs)


class EmulationMode(TorchFunctionMode):
    """The ``TorchFunctionMode`` of one active emulation."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        __tracebackhide__ = True
        return dispatch(self.runtime, func, types, args, kwargs or _EMPTY)


# Emulated tensors used outside any emulation keep working on their payloads, without MPS's rules.
PASSIVE = Runtime(collect=True, fallback=True, enforce=False)


def _outside(func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    with torch._C.DisableTorchFunctionSubclass():
        return dispatch(PASSIVE, func, types, args, kwargs)


tensor._outside_handler = _outside
