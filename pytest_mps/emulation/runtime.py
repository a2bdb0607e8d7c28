"""The state one emulation shares between its handlers and its findings: :class:`Runtime`."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import resolve_name

from pytest_mps.emulation import rules
from pytest_mps.emulation.findings import Finding
from pytest_mps.emulation.provenance import ModuleNamer, first_user_frame, format_frame, loading_context

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["Runtime", "device_type", "op_name"]

_CPU = torch.device("cpu")


class Runtime:
    """What one emulation records and how it reacts to a broken rule.

    Args:
        collect: record findings instead of raising MPS's exceptions.
        fallback: ``PYTORCH_ENABLE_MPS_FALLBACK=1`` behaviour for ops without an MPS kernel.
        payload_device: where emulated tensors keep their data: ``cpu`` (real arithmetic) or ``meta``
            (shapes only, for production-size traces).
        enforce: False for the passive handler of emulated tensors used outside any emulation.
    """

    def __init__(
        self,
        *,
        collect: bool,
        fallback: bool,
        payload_device: torch.device = _CPU,
        enforce: bool = True,
    ) -> None:
        self.collect = collect
        self.fallback = fallback
        self.payload_device = payload_device
        self.meta = payload_device.type == "meta"
        self.enforce = enforce
        self.findings: list[Finding] = []
        self.namer = ModuleNamer()

    def hit(
        self,
        hazard: rules.Hazard,
        op: str,
        tensors: tuple[torch.Tensor, ...] = (),
        *,
        must_stop: bool = False,
    ) -> None:
        """Record ``hazard`` met in ``op`` (with the plain tensors involved); raise MPS's exception when
        not collecting, or when the run cannot go on (``must_stop``: e.g. a 24 GB allocation).

        A tensor that reaches the device through ``Module.to()`` (a float64 buffer built at construction,
        say) is named in the message by its module path, its name and where it was created."""
        __tracebackhide__ = True
        if not self.enforce:
            return
        frame = sys._getframe(1)
        user = first_user_frame(frame)
        message = hazard.message
        module = self.namer.owner(frame)
        source = format_frame(user) if user is not None else None
        if tensors and hazard.kind in ("float64", "complex", "dtype", "dims", "buffer"):
            loading = loading_context(frame, tensors[0], self.namer)
            if loading is not None:
                module, source = loading.module, loading.source or source
                message = f"{message} [{loading.describe()}]"
                hazard = hazard._replace(message=message)
        finding = Finding(
            kind=hazard.kind,
            severity=hazard.severity,
            op=op,
            dtypes=tuple(rules.dtype_name(t.dtype) for t in tensors),
            shapes=tuple(tuple(int(s) for s in t.shape) for t in tensors),
            nbytes=hazard.nbytes,
            module=module,
            source=source,
            message=message,
        )
        self.findings.append(finding)
        if hazard.severity == "fallback" and not self.collect:
            _warn_at(user, hazard.message)
        if hazard.exc_type is not None and (must_stop or not self.collect):
            raise _make_exc(hazard)

    def hit_shape(self, hazard: rules.Hazard, op: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """:meth:`hit` for an allocation that was refused before it happened (no tensor exists)."""
        __tracebackhide__ = True
        meta = torch.empty(shape, dtype=dtype, device="meta")  # metadata only: nothing is allocated
        self.hit(hazard, op, (meta,), must_stop=hazard.severity == "abort")


def _make_exc(hazard: rules.Hazard) -> BaseException:
    from pytest_mps.emulation.errors import MPSAbortError

    exc_type = hazard.exc_type
    if exc_type is MPSAbortError:
        assertion = hazard.message.rsplit(": failed assertion", 1)
        text = "failed assertion" + assertion[1] if len(assertion) == 2 else hazard.message
        return MPSAbortError(text, hazard.nbytes)
    assert exc_type is not None
    return exc_type(hazard.message)


def _warn_at(frame: FrameType | None, message: str) -> None:
    if frame is None:
        warnings.warn(message, UserWarning, stacklevel=3)
        return
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message,
        UserWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__", "<unknown>"),
        registry=registry,
    )


_op_names: dict[Any, str] = {}


def op_name(func: Any) -> str:
    """``torch.Tensor.to``, ``torch.nn.functional.scaled_dot_product_attention``, ..."""
    try:
        return _op_names[func]
    except (KeyError, TypeError):
        pass
    try:
        name = resolve_name(func)
    except Exception:
        name = None
    if not name:
        qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        # torch.<fn> builtins live on the private _VariableFunctionsClass
        name = "torch." + qualname.split(".")[-1] if qualname.startswith("_VariableFunctions") else qualname
    with contextlib.suppress(TypeError):
        _op_names[func] = name
    return name


def device_type(dev: Any) -> str | None:
    """The device type a ``device=`` argument names (``"mps"`` for ``"mps:0"``), or None."""
    t = type(dev)
    if t is torch.device:
        return dev.type
    if t is str:
        return dev.partition(":")[0]
    if t is int:
        return "cuda"  # an int device is a CUDA ordinal in torch's factory functions
    return None
