"""The generic emulated call: unwrap emulated arguments, judge MPS's rules, run on the payloads, wrap.

Every torch function that involves an emulated tensor or an ``mps`` device and has no special handler
(:mod:`~pytest_mps.emulation.handlers`) comes here:

1. unwrap emulated arguments to their CPU (or meta) payloads and rewrite ``device="mps"`` to the payload
   device;
2. judge the rules that can be judged before running, in the order a Mac meets them: devices (a CPU
   tensor meeting an MPS tensor), the call's dtype (:mod:`~pytest_mps.emulation.function_rules`), the size
   of a requested allocation (:mod:`~pytest_mps.emulation.prechecks`), and the aten ops the call reaches
   (:mod:`~pytest_mps.emulation.kernel_trace`: kernels MPS lacks, CPU fallbacks, shape rules);
3. run the real function on the payloads;
4. check the results (dtype, rank, size) and wrap them as emulated tensors, keeping identity for in-place
   ops and for functions that return their input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pytest_mps.emulation import function_rules, kernel_trace, prechecks, rules, tensor
from pytest_mps.emulation.errors import MAX_NDIM, NDARRAY_BYTE_LIMIT
from pytest_mps.emulation.runtime import Runtime, device_type, op_name
from pytest_mps.emulation.tensor import EmulatedTensor

__all__ = ["emulated_call", "rebind", "wrap_out"]

_ET = EmulatedTensor
_Tensor = torch.Tensor
_FLOAT32 = torch.float32


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
    tensors count by dtype, rank and layout, value-like arguments by value, everything else by type.
    Emulated tensors go to ``found``; plain tensors with at least one dimension go to ``plain``."""
    out: list[Any] = []
    sig: list[Any] = []
    for a in seq:
        t = type(a)
        if t is _ET:
            found.append(a)
            a = a._payload
            sig.append(a.dtype)
            sig.append(a.dim())
            if a.layout is not torch.strided:
                sig.append(a.layout)
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


def emulated_call(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``func`` on payloads, enforcing MPS's rules, and wrap the results as emulated tensors."""
    __tracebackhide__ = True
    found: list[EmulatedTensor] = []
    plain: list[torch.Tensor] = []
    uargs, sig = _prep(args, found, plain) if args else (args, ())
    explicit: str | None = None
    if kwargs:
        ukwargs: dict[str, Any] = {}
        ksig: list[Any] = []
        for key, value in kwargs.items():
            if key == "device" and value is not None:
                explicit = device_type(value)
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
        if plain and found:
            _check_devices(rt, func, args, kwargs, found)
        dtype = found[0]._payload.dtype if found else None
        if dtype is not _FLOAT32 or func in (_FLOAT32_GAPS or _float32_gaps()):
            dtype = function_rules.primary_dtype(uargs, ukwargs)
            if dtype is not None:
                _check_dtype(rt, func, uargs, ukwargs, dtype)
        pre = _PRECHECKS.get(func)
        if pre is not None:
            pre(rt, func, uargs, ukwargs)
        shortcut = _META_SHORTCUTS.get(func) if rt.meta else None
        if shortcut is not None:
            out = shortcut(uargs, ukwargs)
        elif func in _BACKWARD:
            out = _observed(rt, func, uargs, ukwargs)
        else:
            out = _run_with_kernel_rules(rt, func, (func, sig), uargs, ukwargs)
    else:
        out = func(*uargs, **ukwargs)
    return wrap_out(rt, func, out, found)


# -- devices ------------------------------------------------------------------------------------------------
def _cpu_ok(names: tuple[str, ...]) -> Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]:
    """Arguments that must be checked when the others (documented CPU-index arguments) may stay on the
    CPU; ``names`` are the positional order after ``self``/``input``."""

    def checked(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        keep = [args[0]] if args else []
        keep += [a for i, a in enumerate(args[1:]) if i >= len(names) or names[i] not in _CPU_NAMES]
        keep += [v for k, v in kwargs.items() if k not in _CPU_NAMES]
        return keep

    return checked


_CPU_NAMES = frozenset({"indices", "index", "indices_or_sections", "tensor_indices_or_sections", "lengths"})

# Functions that take CPU tensors next to device tensors for some arguments, as documented: index tensors
# of indexing ops may live on the CPU (they are moved to the device), ``tensor_split``'s tensor argument
# must be a CPU tensor, and ``pack_padded_sequence``'s lengths must be on the CPU. Their other arguments
# follow the general rule.
_CPU_ARGS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]] = {}
for _owner, _name, _names in (
    (torch, "index_put", ("indices", "values", "accumulate")),
    (torch, "index_put_", ("indices", "values", "accumulate")),
    (torch.Tensor, "index_put", ("indices", "values", "accumulate")),
    (torch.Tensor, "index_put_", ("indices", "values", "accumulate")),
    (torch, "_index_put_impl_", ("indices", "values", "accumulate", "unsafe")),
    (torch, "tensor_split", ("indices_or_sections", "dim")),
    (torch.Tensor, "tensor_split", ("indices_or_sections", "dim")),
    (torch, "_pack_padded_sequence", ("lengths", "batch_first")),
):
    _fn = getattr(_owner, _name, None)
    if _fn is not None:
        _CPU_ARGS[_fn] = _cpu_ok(_names)

# Functions that legitimately take CPU tensors anywhere: copies between devices, and indexing (CPU index
# tensors are accepted for any device). Everything else raises on a Mac when a CPU tensor with dimensions
# meets an MPS tensor (0-dim CPU tensors are allowed: they act as scalars).
_CROSS_DEVICE_OK = frozenset(
    {
        torch.Tensor.copy_,
        torch.Tensor.__setitem__,
        torch.Tensor.__getitem__,
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


def _plain_tensors(obj: Any, out: list[torch.Tensor]) -> None:
    t = type(obj)
    if t in _PLAIN:
        if obj.dim():
            out.append(obj)
    elif t is list or t is tuple:
        for x in obj:
            _plain_tensors(x, out)
    elif t is dict:
        for x in obj.values():
            _plain_tensors(x, out)


def _check_devices(
    rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], found: list[EmulatedTensor]
) -> None:
    __tracebackhide__ = True
    if func in _CROSS_DEVICE_OK:
        return
    plain: list[torch.Tensor] = []
    narrow = _CPU_ARGS.get(func)
    _plain_tensors(narrow(args, kwargs) if narrow is not None else (args, kwargs), plain)
    for cpu_tensor in plain:
        if cpu_tensor.device.type == "cpu":
            hazard = rules.Hazard("device", "error", _DEVICE_MESSAGE, RuntimeError)
            rt.hit(hazard, op_name(func), (found[0]._payload, cpu_tensor))
            return


# -- dtypes -------------------------------------------------------------------------------------------------
_PRECHECKS = prechecks.PRECHECKS
_META_SHORTCUTS = prechecks.META_SHORTCUTS
_FLOAT32_GAPS: frozenset[Any] | None = None


def _float32_gaps() -> frozenset[Any]:
    """Functions with a float32 gap (float32 is the common case: one set lookup decides it)."""
    global _FLOAT32_GAPS
    _FLOAT32_GAPS = function_rules.function_rules().float32
    return _FLOAT32_GAPS


def _check_dtype(
    rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
) -> None:
    __tracebackhide__ = True
    if dtype.is_complex:
        message = function_rules.complex_refusal(func, op_name(func))
        if message is not None:
            tensors = tuple(a for a in args if isinstance(a, _Tensor))
            rt.hit(rules.Hazard("complex", "error", message, RuntimeError), op_name(func), tensors)
        return
    message = function_rules.dtype_refusal(func, args, kwargs, dtype)
    if message is not None:
        tensors = tuple(a for a in args if isinstance(a, _Tensor))
        rt.hit(rules.Hazard("unsupported_dtype", "error", message, RuntimeError), op_name(func), tensors)


# -- kernels ------------------------------------------------------------------------------------------------
# Backward passes: their ops depend on the autograd graph, not on the call's arguments, so they are
# recorded as they run, every time.
_BACKWARD = frozenset(
    f
    for f in (
        torch.Tensor.backward,
        getattr(torch.autograd, "grad", None),
        getattr(torch.autograd, "backward", None),
    )
    if f is not None
)

# (func, signature) -> what the walk found; shared by every emulation (answers depend only on the build)
_kernel_cache: dict[Any, kernel_trace.KernelReport] = {}


def _value_dependent() -> set[Any]:
    """Adaptive pooling functions: their answer depends on sizes the signature leaves out
    (``adaptive_avg_pool2d(x, 1)`` is a mean, ``(x, 4)`` a pool with a shape rule), so they are walked on
    every call, as is ``interpolate(mode="area")`` (which pools) and any call whose walk reached a shape
    rule. Other functions are walked once per signature."""
    found: set[Any] = set()
    for owner, names in (
        (
            F,
            (
                "adaptive_avg_pool1d",
                "adaptive_avg_pool2d",
                "adaptive_max_pool1d",
                "adaptive_max_pool2d",
                "adaptive_max_pool1d_with_indices",
                "adaptive_max_pool2d_with_indices",
                "_adaptive_max_pool1d",
                "_adaptive_max_pool2d",
            ),
        ),
        (torch, ("adaptive_avg_pool1d", "adaptive_max_pool1d")),
        (torch._C._nn, ("adaptive_avg_pool2d", "adaptive_max_pool2d")),
    ):
        for name in names:
            fn = getattr(owner, name, None)
            if fn is not None:
                found.add(fn)
    return found


_PER_CALL_FUNCS: frozenset[Any] = frozenset(_value_dependent())
_INTERPOLATE = frozenset({F.interpolate, getattr(F, "upsample", None)} - {None})


def _area(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return kwargs.get("mode") == "area" or (len(args) > 3 and args[3] == "area")


def _run_with_kernel_rules(
    rt: Runtime, func: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    __tracebackhide__ = True
    try:
        report = _kernel_cache.get(key)  # a report with per_call set is walked again below
    except TypeError:  # an unhashable argument value in the signature
        key, report = None, None
    if (
        report is None
        or report.per_call
        or func in _PER_CALL_FUNCS
        or (func in _INTERPOLATE and _area(args, kwargs))
    ):
        report = kernel_trace.walk_call(func, args, kwargs)
        if report is None:  # not walkable: judge the real call by the ops it reaches
            try:
                out, report = kernel_trace.observe(func, args, kwargs)
            except NotImplementedError as exc:
                match = _CPU_DTYPE_GAP.search(str(exc))
                if match is None:
                    raise
                return _run_upcast(func, args, kwargs, _BY_NAME[match.group(1)], exc)
            if key is not None:
                _kernel_cache[key] = report
            _report_kernels(rt, func, args, report)
            return out
        if key is not None:
            _kernel_cache[key] = report
    if report.kernels or report.shapes:
        _report_kernels(rt, func, args, report)  # raises before running, as MPS does
    try:
        return func(*args, **kwargs)
    except NotImplementedError as exc:
        match = _CPU_DTYPE_GAP.search(str(exc))
        if match is None:
            raise
        return _run_upcast(func, args, kwargs, _BY_NAME[match.group(1)], exc)


def _observed(rt: Runtime, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    out, report = kernel_trace.observe(func, args, kwargs)
    _report_kernels(rt, func, args, report)
    return out


# -- ops the CPU cannot run in a dtype that MPS can --------------------------------------------------------
# The CPU lacks some kernels in float16/bfloat16/bool that MPS has (cdist, avg_pool3d, the special
# functions, pow on bool ...): the CPU's NotImplementedError would be a false alarm. Such a call runs in
# float32 and its floating results are cast back, as PyTorch's own MPS tests compute their CPU reference.
_CPU_DTYPE_GAP = re.compile(r"not implemented for '(Half|BFloat16|Bool)'")
_BY_NAME = {"Half": torch.float16, "BFloat16": torch.bfloat16, "Bool": torch.bool}


def _convert(obj: Any, src: torch.dtype, dst: torch.dtype) -> Any:
    t = type(obj)
    if isinstance(obj, _Tensor):
        return obj.to(dst) if obj.dtype == src else obj
    if t is list or t is tuple:
        return t(_convert(x, src, dst) for x in obj)
    if t is dict:
        return {k: _convert(v, src, dst) for k, v in obj.items()}
    return obj


def _run_upcast(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype, exc: NotImplementedError
) -> Any:
    __tracebackhide__ = True
    out_arg = kwargs.get("out")
    try:
        out = func(*_convert(args, dtype, _FLOAT32), **_convert(kwargs, dtype, _FLOAT32))
    except Exception:
        raise exc from None  # float32 does not help either: the CPU's own error stands
    result = _convert(out, _FLOAT32, dtype)
    name = getattr(func, "__name__", "")
    target = out_arg if isinstance(out_arg, _Tensor) else None
    if (
        target is None
        and name.endswith("_")
        and not name.endswith("__")
        and args
        and isinstance(args[0], _Tensor)
    ):
        target = args[0]  # an in-place method: write the result back into the tensor it was called on
    if target is not None and isinstance(result, _Tensor):
        with torch.no_grad():
            target.copy_(result)
        return target
    return result


def _report_kernels(rt: Runtime, func: Any, args: tuple[Any, ...], report: kernel_trace.KernelReport) -> None:
    __tracebackhide__ = True
    tensors = tuple(a for a in args if isinstance(a, _Tensor))
    for shape in report.shapes:
        rt.hit(shape, op_name(func), tensors)
    for h in report.kernels:
        rt.hit(rules.missing_kernel_hazard(h, rt.fallback), h.op_name, tensors)


# -- results ------------------------------------------------------------------------------------------------
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


def wrap_out(rt: Runtime, func: Any, out: Any, found: list[EmulatedTensor]) -> Any:
    """Wrap ``out`` (payload tensors, possibly nested) as emulated tensors, checking each new one."""
    __tracebackhide__ = True
    if type(out) is _Tensor or isinstance(out, _Tensor):
        for et in found:
            if out is et._payload:
                if func in _META_MUTATORS:
                    rebind(et, out)
                return et
        if rt.enforce:
            hazards = rules.tensor_hazards(out)
            if hazards is not None:
                for hazard in hazards:
                    if not (found and _inherited(hazard, out, found)):
                        rt.hit(hazard, op_name(func), (out,))
        return _ET(out)
    if isinstance(out, (tuple, list)):
        return tensor._rebuild(out, [wrap_out(rt, func, x, found) for x in out])
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


def rebind(et: EmulatedTensor, payload: torch.Tensor) -> None:
    """Give ``et`` the metadata of ``payload`` (after an in-place op changed shape or strides)."""
    fresh = _ET(payload)
    extra = {k: v for k, v in et.__dict__.items() if k != "_payload"}
    torch.utils.swap_tensors(et, fresh)
    et.__dict__.update(extra)
