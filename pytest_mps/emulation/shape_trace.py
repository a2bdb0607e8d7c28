"""Production-size checks without production-size memory: run a module on the emulated MPS device with
meta payloads.

The emulation is the same one that runs tiny pipelines (tensors say ``mps``, Diffusers takes its MPS
branches, MPS's rules apply); only the payloads live on the ``meta`` device, which tracks shapes and
dtypes and allocates nothing. So a 1024x1024 SDXL-sized UNet is traced in about a second on a laptop, and
every buffer of 2**32 bytes or more, every attention score matrix that MPS's math path would materialise
at that size, every float64 and every op without an MPS kernel is reported with its module and source
line. The module's own parameters are never touched: the trace runs through
``torch.func.functional_call`` with meta stand-ins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_mps.emulation.emulator import EmulatedMPS
from pytest_mps.emulation.tensor import EmulatedTensor, is_emulated

__all__ = ["MetaEmulation", "TensorSpec", "TraceResult", "spec", "trace_module"]

_META = torch.device("meta")


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of an example input; becomes an emulated MPS tensor with a meta payload."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def materialize(self) -> EmulatedTensor:
        """The emulated tensor (no memory is allocated)."""
        return EmulatedTensor(torch.empty(self.shape, dtype=self.dtype, device=_META))


def spec(*shape: int, dtype: torch.dtype = torch.float32) -> TensorSpec:
    """``spec(2, 4, 128, 128)``: an example input of that shape (float32 unless ``dtype`` says otherwise)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    return TensorSpec(tuple(int(s) for s in shape), dtype)


class MetaEmulation(EmulatedMPS):
    """:class:`EmulatedMPS` whose tensors keep meta payloads: shapes and dtypes only, nothing allocated.
    Always collects (a trace reports every hazard instead of stopping at the first)."""

    def __init__(self, *, fallback: bool | None = None) -> None:
        super().__init__(collect=True, fallback=fallback)

    def _payload_device(self) -> torch.device:
        return _META


@dataclass(frozen=True)
class TraceResult:
    """What :func:`trace_module` saw: the emulation (with its findings), the output (emulated tensors
    with meta payloads; shapes and dtypes are real), and the exception that stopped the trace, if any."""

    emulation: MetaEmulation
    output: Any
    error: BaseException | None


def _to_meta_input(value: Any) -> Any:
    if isinstance(value, TensorSpec):
        return value.materialize()
    if is_emulated(value):
        return EmulatedTensor(value._payload.to(_META))
    if isinstance(value, torch.Tensor):
        meta = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=_META)
        return EmulatedTensor(meta)
    if isinstance(value, Mapping):
        return type(value)({k: _to_meta_input(v) for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_meta_input(v) for v in value)
    return value


def _meta_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, tensor in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        payload = tensor._payload if is_emulated(tensor) else tensor
        meta = payload.detach().to(_META)  # no data is read or allocated
        state[name] = EmulatedTensor(meta)
    return state


def trace_module(
    module: torch.nn.Module,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    module_name: str | None = None,
    fallback: bool | None = None,
) -> TraceResult:
    """Run ``module(*args, **kwargs)`` on the emulated MPS device with meta payloads and collect findings.

    Args:
        module: any ``nn.Module`` (real weights, meta weights, or already on the emulated device); it is
            not modified.
        args, kwargs: example inputs: :class:`TensorSpec` (see :func:`spec`), tensors (only their shape
            and dtype are used), nested dicts/lists of them (e.g. SDXL's ``added_cond_kwargs``) and plain
            Python values (timesteps, flags).
        module_name: how finding paths start (default: the module's class name).
        fallback: ``PYTORCH_ENABLE_MPS_FALLBACK`` behaviour; None reads the environment.
    """
    emulation = MetaEmulation(fallback=fallback)
    emulation.name_modules({module_name or type(module).__name__: module})
    state = _meta_state(module)
    meta_args = tuple(_to_meta_input(a) for a in args)
    meta_kwargs = {k: _to_meta_input(v) for k, v in (kwargs or {}).items()}
    output: Any = None
    error: BaseException | None = None
    with emulation, torch.no_grad():
        try:
            output = torch.func.functional_call(module, state, meta_args, meta_kwargs, strict=False)
        except Exception as exc:  # reported by the caller (audit_module) as the trace's stopping reason
            error = exc
    return TraceResult(emulation, output, error)
