"""The function-layer engine: a ``TorchFunctionMode`` that makes emulated tensors behave as MPS tensors.

Every torch function call while the mode is active comes here first. Calls that involve neither an
emulated tensor nor an ``mps`` device pass straight through (a dict lookup and a tuple scan). The others:

1. unwrap emulated arguments to their CPU (or meta) payloads and rewrite ``device="mps"`` to the payload
   device;
2. check MPS's rules that can be judged before running: the size of a requested allocation (so that
   ``torch.empty(2**31, 3, device="mps")`` fails without allocating 24 GB), the attention score matrix of
   ``scaled_dot_product_attention``, and aten operators without an MPS kernel;
3. run the real function on the payloads;
4. check the results (dtype, rank, size) and wrap them as emulated tensors, keeping identity for in-place
   ops and for functions that return their input.

Which aten operators a function reaches is learnt once per (function, argument signature) by running
that first call under a recording ``TorchDispatchMode`` and asking :mod:`op_coverage` about each op;
later calls with the same signature only look the answer up. Module paths and source lines are read
from the stack only when a finding is recorded.

Traps this handles (each one was met): ``torch.device(...)`` and ``torch._C._nn._parse_to`` must pass
through untouched, or ``Module.to("mps")`` silently stays on the CPU; property getters such as ``.device``
must answer for the wrapper, not the payload; no emulated tensor may reach a C++ kernel, and wrappers
never carry autograd metadata (both abort a CPU-only torch).
"""

from __future__ import annotations

import contextlib
import copy as _copy
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_mps.emulation import rules, tensor
from pytest_mps.emulation.errors import MAX_NDIM, NDARRAY_BYTE_LIMIT, numpy_message
from pytest_mps.emulation.findings import Finding
from pytest_mps.emulation.provenance import ModuleNamer, first_user_frame, format_frame
from pytest_mps.emulation.tensor import MPS_DEVICE, EmulatedTensor

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["PASSIVE", "EmulationMode", "Runtime", "dispatch", "emulated_call", "op_name"]

_ET = EmulatedTensor
_Tensor = torch.Tensor
_CPU = torch.device("cpu")
_EMPTY: dict[str, Any] = {}


class Runtime:
    """The state one emulation shares between its mode and its findings.

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
        self.enforce = enforce
        self.findings: list[Finding] = []
        self.namer = ModuleNamer()

    # -- recording -------------------------------------------------------------------------------------
    def hit(
        self,
        hazard: rules.Hazard,
        op: str,
        tensors: tuple[torch.Tensor, ...] = (),
        *,
        must_stop: bool = False,
    ) -> None:
        """Record ``hazard`` met in ``op`` (with the plain tensors involved); raise MPS's exception when
        not collecting, or when the run cannot go on (``must_stop``: e.g. a 24 GB allocation)."""
        if not self.enforce:
            return
        frame = sys._getframe(1)
        user = first_user_frame(frame)
        finding = Finding(
            kind=hazard.kind,
            severity=hazard.severity,
            op=op,
            dtypes=tuple(rules.dtype_name(t.dtype) for t in tensors),
            shapes=tuple(tuple(int(s) for s in t.shape) for t in tensors),
            nbytes=hazard.nbytes,
            module=self.namer.owner(frame),
            source=format_frame(user) if user is not None else None,
            message=hazard.message,
        )
        self.findings.append(finding)
        if hazard.severity == "fallback" and not self.collect:
            _warn_at(user, hazard.message)
        if hazard.exc_type is not None and (must_stop or not self.collect):
            raise _make_exc(hazard)

    def hit_shape(self, hazard: rules.Hazard, op: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """:meth:`hit` for an allocation that was refused before it happened (no tensor exists)."""
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


# -- small helpers -------------------------------------------------------------------------------------
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


def _device_type(dev: Any) -> str | None:
    t = type(dev)
    if t is torch.device:
        return dev.type
    if t is str:
        return dev.partition(":")[0]
    if t is int:
        return "cuda"  # an int device is a CUDA ordinal in torch's factory functions
    return None


def _unwrap(obj: Any, found: list[EmulatedTensor]) -> Any:
    t = type(obj)
    if t is _ET:
        found.append(obj)
        return obj._payload
    if t is tuple or t is list:
        if not obj:
            return obj
        return t([_unwrap(x, found) for x in obj])
    if t is dict:
        return {k: _unwrap(v, found) for k, v in obj.items()}
    return obj


# Argument values that can change which aten ops a function lowers to (F.interpolate's ``mode``, a
# dtype, a flag); other non-tensor arguments only count by type.
_VALUE_TYPES = frozenset({str, bool, type(None), torch.dtype, torch.layout, torch.memory_format})
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})


def _prep(
    seq: tuple[Any, ...] | list[Any], found: list[EmulatedTensor], plain: list[torch.Tensor]
) -> tuple[Any, tuple[Any, ...]]:
    """Unwrap ``seq`` and compute its signature (what the kernel-rule cache is keyed by) in one pass:
    tensors count by dtype and rank, value-like arguments by value, everything else by type. Emulated
    tensors go to ``found``; plain tensors with at least one dimension go to ``plain``."""
    out: list[Any] = []
    sig: list[Any] = []
    for a in seq:
        t = type(a)
        if t is _ET:
            found.append(a)
            a = a._payload
            sig.append(a.dtype)
            sig.append(a.dim())
        elif t in _PLAIN:
            ndim = a.dim()
            sig.append(a.dtype)
            sig.append(ndim)
            if ndim:
                plain.append(a)
        elif t is list or t is tuple:
            if len(a) <= 8:
                a, inner = _prep(a, found, plain)
                sig.append(inner)
            else:  # e.g. torch.tensor(long_list): unwrap, but keep the signature small
                a = _unwrap(a, found)
                first = a[0]
                sig.append((t, (first.dtype, first.dim()) if isinstance(first, _Tensor) else type(first)))
        elif t in _VALUE_TYPES:
            sig.append(a)
        elif t is torch.device:
            sig.append(a.type)
        elif t is dict:
            a = _unwrap(a, found)
            sig.append(t)
        else:
            sig.append(t)
        out.append(a)
    return (out if type(seq) is list else tuple(out)), tuple(sig)


class _OpRecorder(TorchDispatchMode):
    """Records the aten ops a call reaches (after CompositeImplicit decomposition, as MPS would see)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Any] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


# (func, signature) -> kernel hazards; shared by every emulation (answers depend only on the torch build)
_kernel_cache: dict[Any, tuple[rules.KernelHazard, ...]] = {}


# -- the generic emulated call ------------------------------------------------------------------------
def emulated_call(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``func`` on payloads, enforcing MPS's rules, and wrap the results as emulated tensors."""
    found: list[EmulatedTensor] = []
    plain: list[torch.Tensor] = []
    uargs, sig = _prep(args, found, plain) if args else (args, ())
    explicit: str | None = None
    if kwargs:
        ukwargs: dict[str, Any] = {}
        ksig: list[Any] = []
        for key, value in kwargs.items():
            if key == "device" and value is not None:
                explicit = _device_type(value)
                if explicit == "mps":
                    value = rt.payload_device
                ksig.append(explicit)
            else:
                (value,), inner = _prep((value,), found, plain)
                ksig.append(key)
                ksig.append(inner)
            ukwargs[key] = value
        sig = (sig, *ksig)
    else:
        ukwargs = kwargs
    on_mps = explicit == "mps" or (explicit is None and bool(found))
    if not on_mps:
        return func(*uargs, **ukwargs)
    if rt.enforce:
        if plain and found and func not in _CROSS_DEVICE_OK:
            _check_devices(rt, func, plain, found)
        pre = _PRECHECKS.get(func)
        if pre is not None:
            pre(rt, func, uargs, ukwargs)
        shortcut = _META_SHORTCUTS.get(func) if rt.payload_device.type == "meta" else None
        if shortcut is not None:
            out = shortcut(uargs, ukwargs)
        else:
            out = _run_with_kernel_rules(rt, func, (func, sig), uargs, ukwargs)
    else:
        out = func(*uargs, **ukwargs)
    return _wrap_out(rt, func, out, found)


# Functions that legitimately take CPU tensors next to device tensors: copies between devices, and
# indexing (CPU index tensors are accepted for any device). Everything else raises on a Mac when a CPU
# tensor with dimensions meets an MPS tensor (0-dim CPU tensors are allowed: they act as scalars).
_CROSS_DEVICE_OK = frozenset(
    {
        torch.Tensor.copy_,
        torch.Tensor.__setitem__,
        torch.Tensor.__getitem__,
        torch.Tensor.index_put_,
        torch.Tensor.index_put,
        torch.Tensor.set_,
        torch.tensor,
        torch.as_tensor,
        torch.Tensor.new_tensor,
        torch.Tensor.data.__set__,  # type: ignore[attr-defined]
        torch.Tensor.grad.__set__,  # type: ignore[attr-defined]
    }
)
_DEVICE_MESSAGE = (
    "Expected all tensors to be on the same device, but found at least two devices, mps:0 and cpu!"
)


def _check_devices(rt: Runtime, func: Any, plain: list[torch.Tensor], found: list[EmulatedTensor]) -> None:
    for cpu_tensor in plain:
        if cpu_tensor.device.type == "cpu":
            hazard = rules.Hazard("device", "error", _DEVICE_MESSAGE, RuntimeError)
            rt.hit(hazard, op_name(func), (found[0]._payload, cpu_tensor))
            return


def _run_with_kernel_rules(
    rt: Runtime, func: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    hazards = _kernel_cache.get(key)
    if hazards is None:
        recorder = _OpRecorder()
        with recorder:
            out = func(*args, **kwargs)
        hazards = rules.kernel_hazards(recorder.ops)
        _kernel_cache[key] = hazards
        if hazards:
            _report_kernels(rt, func, args, hazards)
        return out
    if hazards:
        _report_kernels(rt, func, args, hazards)  # raises before running, as MPS does
    return func(*args, **kwargs)


def _report_kernels(rt: Runtime, func: Any, args: tuple[Any, ...], hazards: Any) -> None:
    tensors = tuple(a for a in args if isinstance(a, _Tensor))
    for h in hazards:
        hazard = rules.missing_kernel_hazard(h, rt.fallback)
        rt.hit(hazard, h.op_name, tensors)


# In-place ops that change the tensor's metadata: the wrapper must be rebuilt around the new payload.
_META_MUTATORS = frozenset(
    getattr(torch.Tensor, name)
    for name in (
        "resize_",
        "resize_as_",
        "squeeze_",
        "unsqueeze_",
        "t_",
        "transpose_",
        "swapdims_",
        "swapaxes_",
        "as_strided_",
        "set_",
    )
    if hasattr(torch.Tensor, name)
)


def _wrap_out(rt: Runtime, func: Any, out: Any, found: list[EmulatedTensor]) -> Any:
    if type(out) is _Tensor or isinstance(out, _Tensor):
        for et in found:
            if out is et._payload:
                if func in _META_MUTATORS:
                    _rebind(et, out)
                return et
        if rt.enforce:
            hazards = rules.tensor_hazards(out)
            if hazards is not None:
                for hazard in hazards:
                    if not (found and _inherited(hazard, out, found)):
                        rt.hit(hazard, op_name(func), (out,))
        return _ET(out)
    if isinstance(out, (tuple, list)):
        return tensor._rebuild(out, [_wrap_out(rt, func, x, found) for x in out])
    return out


def _inherited(hazard: rules.Hazard, out: torch.Tensor, found: list[EmulatedTensor]) -> bool:
    """True when an input already broke the same rule: a hazard is reported where it is introduced (the
    op a Mac would fail on first), not again by every op downstream of it."""
    payloads = [et._payload for et in found]
    if hazard.kind == "dims":
        return any(p.dim() > MAX_NDIM for p in payloads)
    if hazard.kind == "buffer":
        return any(p.numel() * p.element_size() >= NDARRAY_BYTE_LIMIT for p in payloads)
    return any(p.dtype == out.dtype for p in payloads)


def _rebind(et: EmulatedTensor, payload: torch.Tensor) -> None:
    """Give ``et`` the metadata of ``payload`` (after an in-place op changed shape or strides)."""
    fresh = _ET(payload)
    extra = {k: v for k, v in et.__dict__.items() if k != "_payload"}
    torch.utils.swap_tensors(et, fresh)
    et.__dict__.update(extra)


# -- prechecks: allocations judged before they happen -------------------------------------------------
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
    if shape is None:
        return
    dt = dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()
    hazards = rules.request_hazards(shape, dt)
    if hazards:
        for hazard in hazards:
            if hazard.kind in ("buffer", "dims"):  # dtype rules are judged on the result
                rt.hit_shape(hazard, op_name(func), shape, dt)


def _pre_factory(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check_request(rt, func, _size_from(args, kwargs), kwargs.get("dtype"))


def _pre_full(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    size = kwargs.get("size", args[0] if args else None)
    shape = tuple(int(s) for s in size) if isinstance(size, (tuple, list, torch.Size)) else None
    dtype = kwargs.get("dtype")
    if dtype is None and len(args) > 1 and isinstance(args[1], bool):
        dtype = torch.bool
    _check_request(rt, func, shape, dtype)


def _pre_randint(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    size = kwargs.get("size")
    if size is None:
        size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
    shape = tuple(int(s) for s in size) if size is not None else None
    _check_request(rt, func, shape, kwargs.get("dtype", torch.int64))


def _pre_new(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # Tensor.new_empty(self, size, ...): the dtype defaults to self's.
    dtype = kwargs.get("dtype") or (args[0].dtype if args and isinstance(args[0], _Tensor) else None)
    _check_request(rt, func, _size_from(args, kwargs, first=1), dtype)


def _pre_sdpa(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    query = args[0] if args else kwargs.get("query")
    key = args[1] if len(args) > 1 else kwargs.get("key")
    if isinstance(query, _Tensor) and isinstance(key, _Tensor):
        hazard = rules.attention_hazard(query, key)
        if hazard is not None:
            # The CPU kernel does not allocate the score matrix, so the run can go on when collecting.
            rt.hit(hazard, "aten::scaled_dot_product_attention", (query, key))


_PRECHECKS: dict[Any, Callable[[Runtime, Any, tuple[Any, ...], dict[str, Any]], None]] = {
    **{getattr(torch, n): _pre_factory for n in ("empty", "zeros", "ones", "rand", "randn")},
    torch.full: _pre_full,
    torch.randint: _pre_randint,
    **{getattr(torch.Tensor, n): _pre_new for n in ("new_empty", "new_zeros", "new_ones")},
    torch.nn.functional.scaled_dot_product_attention: _pre_sdpa,
}
if hasattr(torch._C._nn, "scaled_dot_product_attention"):
    _PRECHECKS[torch._C._nn.scaled_dot_product_attention] = _pre_sdpa


# -- meta shortcuts -----------------------------------------------------------------------------------
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


_META_SHORTCUTS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor]] = {
    torch.nn.functional.layer_norm: _same_as_input,
    torch.layer_norm: _same_as_input,
    torch.nn.functional.group_norm: _same_as_input,
    torch.group_norm: _same_as_input,
    torch.nn.functional.scaled_dot_product_attention: _sdpa_shape,
}


# -- special functions --------------------------------------------------------------------------------
Handler = Callable[[Runtime, Any, Any, tuple[Any, ...], dict[str, Any]], Any]


def _passthrough(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)


def _const_getter(value: Any) -> Handler:
    def getter(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if type(args[0]) is _ET:
            return value
        return func(*args, **kwargs)

    return getter


def _get_device(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if type(args[0]) is _ET:
        return 0
    return func(*args, **kwargs)


def _handle_to(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self = args[0]
    src_et = type(self) is _ET
    kw = dict(kwargs)
    copy = bool(kw.pop("copy", False))
    # _parse_to reads a tensor argument's device from the wrapper itself: keep wrappers for it.
    device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args[1:], **kw)
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
    return _wrap_out(rt, func, out, [])


def _handle_cpu(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    return self._payload.to(_CPU, **kwargs)  # aliases, see _handle_to


def _handle_numpy(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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
    return id(args[0])


def _handle_deepcopy(
    rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
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
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    return self._payload.__reduce_ex__(*args[1:], **kwargs)  # pickles as a CPU tensor


def _handle_iter(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self = args[0]
    if type(self) is not _ET:
        return func(*args, **kwargs)
    if self._payload.dim() == 0:
        raise TypeError("iteration over a 0-d tensor")
    return iter([_ET(p) for p in self._payload.unbind(0)])


def _handle_type(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    self = args[0]
    if type(self) is _ET and len(args) == 1 and not kwargs:
        return self._payload.type().replace("torch.", "torch.mps.", 1)
    return emulated_call(rt, func, args, kwargs)


def _handle_set_data(
    rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
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
        _rebind(self, new.detach())
    return None


def _handle_shallow_copy_type(
    rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
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


_SPECIAL: dict[Any, Handler] = _specials()


def dispatch(rt: Runtime, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Handle one torch function call (the body of both the mode and the tensor's __torch_function__)."""
    special = _SPECIAL.get(func)
    if special is not None:
        return special(rt, func, types, args, kwargs)
    if _ET not in types:
        device = kwargs.get("device") if kwargs else None
        if device is None or _device_type(device) != "mps":
            return func(*args, **kwargs)
    return emulated_call(rt, func, args, kwargs)


class EmulationMode(TorchFunctionMode):
    """The ``TorchFunctionMode`` of one active emulation."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        return dispatch(self.runtime, func, types, args, kwargs or _EMPTY)


# Emulated tensors used outside any emulation keep working on their payloads, without MPS's rules.
PASSIVE = Runtime(collect=True, fallback=True, enforce=False)


def _outside(func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with torch._C.DisableTorchFunctionSubclass():
        return dispatch(PASSIVE, func, types, args, kwargs)


tensor._outside_handler = _outside
