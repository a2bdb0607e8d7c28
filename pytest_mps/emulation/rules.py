"""MPS's rules, as cheap checks that say which hazard a tensor, a requested allocation, an attention call or
an aten operator trips. They only describe; :mod:`pytest_mps.emulation.mode` decides whether to raise
(with MPS's exception type) or to record a :class:`~pytest_mps.emulation.findings.Finding`.

Sources of each rule are in :mod:`pytest_mps.emulation.errors`. Everything here runs on the hot path of
every emulated call, so the common "no hazard" answer is a couple of dict/attribute lookups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from pytest_mps.emulation.errors import (
    MAX_NDIM,
    NDARRAY_BYTE_LIMIT,
    MPSAbortError,
    dtype_message,
    missing_kernel_message,
    ndarray_assertion_text,
    ndim_message,
)
from pytest_mps.emulation.findings import Severity
from pytest_mps.emulation.op_coverage import KernelStatus, OpCoverage, load_coverage

__all__ = [
    "DTYPE_RULES",
    "Hazard",
    "KernelHazard",
    "attention_hazard",
    "attention_scores_bytes",
    "coverage",
    "dtype_name",
    "min_macos",
    "missing_kernel_hazard",
    "request_hazards",
    "tensor_hazards",
    "verdict_of",
]

_INT32_MAX = 2**31 - 1


class Hazard(NamedTuple):
    """One broken rule: what to record, and the exception MPS raises for it (None: MPS does not raise)."""

    kind: str
    severity: Severity
    message: str
    exc_type: type[BaseException] | None
    nbytes: int | None = None


class KernelHazard(NamedTuple):
    """An aten op that has no MPS kernel (``missing``) or always runs on the CPU on MPS (``always``);
    ``backend`` is ``SparseMPS``/``SparseCsrMPS`` when the kernel missing is a sparse one."""

    op_name: str  # "aten::_adaptive_avg_pool3d"
    always_fallback: bool
    backend: str = "MPS"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` -> ``"float64"``."""
    return str(dtype).rpartition(".")[2]


def _dtype_rules() -> dict[torch.dtype, tuple[str, Severity, type[BaseException] | None, str]]:
    rules: dict[torch.dtype, tuple[str, Severity, type[BaseException] | None, str]] = {
        # empty_mps refuses float64 outright (EmptyTensor.cpp): diffusers #1169, #2241, #9047, #10986, #12432.
        torch.float64: ("float64", "error", TypeError, dtype_message("float64")),
        # getMPSDataType has no complex128 (OperationUtils.mm).
        torch.complex128: ("complex", "error", TypeError, dtype_message("complex128")),
    }
    # complex64/complex32 work with this torch (MPS needs macOS 14+, where complex is supported), but they
    # failed on the macOS 13 / torch <= 2.1 Macs many users still have: diffusers #7569 (FreeU's fftn).
    portability = (
        "complex tensors on MPS work only with macOS 14+ and a recent torch; older setups raise "
        "'TypeError: Trying to convert ComplexFloat to the MPS backend but it does not have support for "
        "that dtype.' (diffusers #7569)"
    )
    rules[torch.complex64] = ("complex", "warning", None, portability)
    rules[torch.complex32] = ("complex", "warning", None, portability)
    # bfloat16 needs macOS 14 ("MPS BFloat16 is only supported on MacOS 14 or newer", getMPSDataType); only
    # a torch that still runs on macOS 13 (before 2.9, which requires macOS 14) can meet an older Mac.
    if min_macos() < (14, 0):
        rules[torch.bfloat16] = (
            "dtype",
            "warning",
            None,
            "bfloat16 on MPS needs macOS 14+; on the macOS 13 Macs this torch still supports it raises "
            "'TypeError: MPS BFloat16 is only supported on MacOS 14 or newer'",
        )
    # float8 formats have no MPSDataType: any MPSGraph op on them raises (getMPSDataType).
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):
        dt = getattr(torch, name, None)
        if dt is not None:
            rules[dt] = ("dtype", "error", TypeError, _fp8_message(dt))
    return rules


def min_macos(version: str | None = None) -> tuple[int, int]:
    """The oldest macOS the installed torch (or ``version``) runs on with MPS: 12.3 before torch 2.6,
    13.0 for 2.6-2.8, 14.0 from 2.9 (PyTorch's release notes)."""
    text = version if version is not None else torch.__version__
    try:
        major, minor = (int(p) for p in text.split("+")[0].split(".")[:2])
    except ValueError:
        return (14, 0)
    if (major, minor) >= (2, 9):
        return (14, 0)
    if (major, minor) >= (2, 6):
        return (13, 0)
    return (12, 3)


def _fp8_message(dt: torch.dtype) -> str:
    # c10 prints these ScalarTypes as e.g. Float8_e4m3fn.
    name = dtype_name(dt)
    return dtype_message("Float8" + name[len("float8") :])


#: dtype -> (kind, severity, exception type or None, message).
DTYPE_RULES = _dtype_rules()


def tensor_hazards(t: torch.Tensor) -> list[Hazard] | None:
    """Hazards of a tensor that now lives on MPS (dtype, rank, per-dimension length, buffer size); None
    when there is none (the common case, kept cheap). ``t`` must be a plain (CPU or meta) tensor."""
    rule = DTYPE_RULES.get(t.dtype)
    ndim = t.dim()
    numel = t.numel()
    if rule is None and ndim <= MAX_NDIM and numel * 8 < NDARRAY_BYTE_LIMIT:
        return None
    # A view (expand, broadcast, slice) allocates nothing: count the buffer behind it, not its numel.
    nbytes = min(numel * _itemsize(t.dtype), t.untyped_storage().nbytes())
    return _describe(tuple(t.shape), t.dtype, rule, numel, nbytes)


def request_hazards(shape: Sequence[int], dtype: torch.dtype) -> list[Hazard] | None:
    """Hazards of allocating ``shape``/``dtype`` on MPS, judged before any memory is allocated."""
    numel = math.prod(int(s) for s in shape)
    return _describe(tuple(int(s) for s in shape), dtype, DTYPE_RULES.get(dtype), numel)


def _describe(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    rule: tuple[str, Severity, type[BaseException] | None, str] | None,
    numel: int,
    nbytes: int | None = None,
) -> list[Hazard] | None:
    out: list[Hazard] = []
    dense = numel * _itemsize(dtype)
    if nbytes is None:
        nbytes = dense
    # Order as in empty_mps: rank first, then dtype; the NDArray abort comes when a kernel touches it.
    if len(shape) > MAX_NDIM:
        out.append(Hazard("dims", "error", ndim_message(len(shape)), RuntimeError, nbytes))
    if rule is not None:
        kind, severity, exc, message = rule
        out.append(Hazard(kind, severity, message, exc, nbytes))
    if nbytes >= NDARRAY_BYTE_LIMIT:
        out.append(Hazard("buffer", "abort", ndarray_assertion_text(nbytes), MPSAbortError, nbytes))
    if numel > _INT32_MAX and nbytes >= dense and any(s > _INT32_MAX for s in shape):
        # check_mps_shape (OperationUtils.mm): one dimension longer than INT_MAX. ("MPSGaph" is torch's.)
        out.append(
            Hazard("dims", "error", "MPSGaph does not support tensor dims larger than INT_MAX", RuntimeError)
        )
    return out or None


def _itemsize(dtype: torch.dtype) -> int:
    try:
        return dtype.itemsize
    except AttributeError:  # pragma: no cover - torch < 2.1
        return torch.empty((), dtype=dtype, device="meta").element_size()


def attention_scores_bytes(query_shape: Sequence[int], key_shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of the ``(..., Lq, Lk)`` score matrix that MPS's math attention path materialises for
    ``scaled_dot_product_attention`` (the CPU kernels never allocate it, so a CPU run cannot see it)."""
    if len(query_shape) < 2 or len(key_shape) < 2:
        return 0
    batch = math.prod(int(s) for s in query_shape[:-2])
    return batch * int(query_shape[-2]) * int(key_shape[-2]) * _itemsize(dtype)


def attention_hazard(query: torch.Tensor, key: torch.Tensor) -> Hazard | None:
    """The abort MPS hits when the attention score matrix of ``query``/``key`` reaches 2**32 bytes."""
    nbytes = attention_scores_bytes(query.shape, key.shape, query.dtype)
    if nbytes < NDARRAY_BYTE_LIMIT:
        return None
    message = (
        f"scaled_dot_product_attention would materialise a {tuple(query.shape[:-1])} x {int(key.shape[-2])} "
        f"score matrix ({nbytes} bytes) on MPS's math path: " + ndarray_assertion_text(nbytes)
    )
    return Hazard("attention_scores", "abort", message, MPSAbortError, nbytes)


def missing_kernel_hazard(h: KernelHazard, fallback: bool) -> Hazard:
    """How a :class:`KernelHazard` shows on a Mac: ``NotImplementedError``, or the CPU-fallback warning
    when ``PYTORCH_ENABLE_MPS_FALLBACK=1`` (or always, for ops MPS registers as CPU fallbacks)."""
    from pytest_mps.emulation.errors import fallback_warning_message

    if h.backend != "MPS":  # MPSFallback.mm registers the CPU fallback for dense MPS tensors only
        message = (
            f"Could not run '{h.op_name}' with arguments from the '{h.backend}' backend. This could be "
            "because "
            "the operator doesn't exist for this backend, or was omitted during the selective/custom build "
            "process (if using custom build)."
        )
        return Hazard("missing_kernel", "error", message, NotImplementedError)
    if h.always_fallback or fallback:
        return Hazard("fallback", "fallback", fallback_warning_message(h.op_name), None)
    return Hazard("missing_kernel", "error", missing_kernel_message(h.op_name), NotImplementedError)


def verdict_of(status: KernelStatus) -> str | None:
    """``"missing"`` for an op MPS lacks, ``"always"`` for one MPS always runs on the CPU, else None."""
    if status is KernelStatus.MISSING:
        return "missing"
    if status is KernelStatus.ALWAYS_FALLBACK:
        return "always"
    return None


_coverage_state: list[OpCoverage | None] = []  # filled on first use


def coverage() -> OpCoverage | None:
    """The installed torch's :class:`~pytest_mps.emulation.op_coverage.OpCoverage` (loaded on first use:
    parsing the yaml takes a fraction of a second, and only emulated runs need it); None when it cannot
    be loaded (then no kernel findings, rather than false ones)."""
    if not _coverage_state:
        try:
            table: OpCoverage | None = load_coverage()
        except Exception:  # no yaml in this torch, or an unreadable one: degrade to "no kernel findings"
            table = None
        _coverage_state.append(table)
    return _coverage_state[0]
