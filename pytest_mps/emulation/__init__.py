"""An emulated MPS device: tensors that say ``mps`` while computing on the CPU, under MPS's rules.

Most MPS failures are not numerical: float64 reaching a scheduler or RoPE table, complex FFTs, ops with no
MPS kernel, buffers of 2**32 bytes or more, tensors of more than 16 dimensions. Diffusers branches on the
device (``device.type == "mps"``, ``torch.backends.mps.is_available()``) and avoids some of these only on
MPS, so a plain CPU run reports hazards a Mac never sees, and misses the ones only the MPS branch has.
:class:`EmulatedMPS` takes the MPS branches on any machine and raises MPS's own exceptions (or, with
``collect=True``, records :class:`Finding` s).

    >>> with EmulatedMPS():
    ...     pipe.to("mps")
    ...     image = pipe(prompt, generator=torch.Generator("mps").manual_seed(0)).images

The names below are imported lazily, so importing this package (or its torch-free ``op_coverage``
module) does not import torch; pytest start-up stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_mps.emulation.emulator import (
        EmulatedMPS,
        emulated_mps,
        fallback_from_env,
        is_active,
        suspended,
    )
    from pytest_mps.emulation.errors import MPSAbortError
    from pytest_mps.emulation.findings import Finding
    from pytest_mps.emulation.tensor import EmulatedTensor, is_emulated, to_cpu

__all__ = [
    "EmulatedMPS",
    "EmulatedTensor",
    "Finding",
    "MPSAbortError",
    "emulated_mps",
    "fallback_from_env",
    "is_active",
    "is_emulated",
    "suspended",
    "to_cpu",
]

_WHERE = {
    "EmulatedMPS": "emulator",
    "emulated_mps": "emulator",
    "fallback_from_env": "emulator",
    "is_active": "emulator",
    "suspended": "emulator",
    "MPSAbortError": "errors",
    "Finding": "findings",
    "EmulatedTensor": "tensor",
    "is_emulated": "tensor",
    "to_cpu": "tensor",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
