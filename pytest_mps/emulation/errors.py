"""MPS's own error types and messages, spelled as the installed torch spells them on a Mac.

The texts come from PyTorch's MPS sources, so a test that matches on them behaves the same on the
emulated target and on Apple hardware:

* float64: ``aten/src/ATen/mps/EmptyTensor.cpp`` (``MPS_ERROR_DOUBLE_NOT_SUPPORTED``, raised by
  ``empty_mps`` for every MPS allocation of that dtype);
* other dtypes MPS lacks (complex128, ...): ``getMPSDataType`` in
  ``aten/src/ATen/native/mps/OperationUtils.mm``;
* more than 16 dimensions: ``empty_mps`` (``c10::metal::max_ndim``);
* missing kernels: ``aten/src/ATen/mps/MPSFallback.mm`` (``mps_error_fallback`` and, with
  ``PYTORCH_ENABLE_MPS_FALLBACK=1``, the ``TORCH_WARN`` of ``mps_fallback``); the tracking issue and the
  commit hash in the message follow the installed torch (pytorch/pytorch#141287 since torch 2.6);
* buffers of 2**32 bytes or more: the Metal assertion of ``MPSNDArray`` that kills the process on a Mac
  (PyTorch umbrella issue #149325). Here it becomes :class:`MPSAbortError`, so pytest survives to report it.
"""

from __future__ import annotations

__all__ = [
    "MAX_NDIM",
    "NDARRAY_BYTE_LIMIT",
    "MPSAbortError",
    "dtype_message",
    "fallback_warning_message",
    "missing_kernel_message",
    "ndarray_assertion_text",
    "ndim_message",
    "numpy_message",
]

#: ``c10::metal::max_ndim``: MPS refuses tensors with more dimensions than this.
MAX_NDIM = 16
#: MPSNDArray cannot describe a buffer of this many bytes or more (Metal asserts and the process aborts).
NDARRAY_BYTE_LIMIT = 2**32

_DOUBLE = (
    "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64. "
    "Please use float32 instead."
)
# c10's ScalarType names, which is how getMPSDataType prints the dtype it refuses.
_SCALAR_TYPE_NAMES = {
    "complex128": "ComplexDouble",
    "complex64": "ComplexFloat",
    "complex32": "ComplexHalf",
    "float64": "Double",
}


class MPSAbortError(RuntimeError):
    """The emulated Metal assertion: on a Mac this kills the whole process (no Python exception at all).

    The emulation raises it instead so the test run survives and reports a crash. ``assertion`` carries
    the Metal assertion text, ``nbytes`` the size of the buffer that triggered it.
    """

    def __init__(self, assertion: str, nbytes: int | None = None) -> None:
        super().__init__(
            f"{assertion} (on Apple hardware this assertion aborts the whole process; the emulated MPS "
            "target raised it instead)"
        )
        self.assertion = assertion
        self.nbytes = nbytes


def dtype_message(dtype_name: str) -> str:
    """MPS's ``TypeError`` text for a dtype it cannot hold (``dtype_name`` as in ``"float64"``)."""
    if dtype_name == "float64":
        return _DOUBLE
    name = _SCALAR_TYPE_NAMES.get(dtype_name, dtype_name)
    return f"Trying to convert {name} to the MPS backend but it does not have support for that dtype."


def ndim_message(ndim: int) -> str:
    """MPS's ``RuntimeError`` text for a tensor of ``ndim`` > 16 dimensions."""
    return f"MPS supports tensors with dimensions <= {MAX_NDIM}, but got {ndim}."


def missing_kernel_message(op_name: str, commit: str | None = None) -> str:
    """MPS's ``NotImplementedError`` text for an operator without an MPS kernel (``op_name`` like
    ``aten::_adaptive_avg_pool3d``); ``commit`` defaults to the installed torch's git hash."""
    if commit is None:
        commit = _torch_commit()
    return (
        f"The operator '{op_name}' is not currently implemented for the MPS device. If you want this op to "
        "be considered for addition please comment on https://github.com/pytorch/pytorch/issues/141287 and "
        f"mention use-case, that resulted in missing op as well as commit hash {commit}. As a temporary "
        "fix, you can set the environment variable `PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as a "
        "fallback for this op. WARNING: this will be slower than running natively on MPS."
    )


def fallback_warning_message(op_name: str) -> str:
    """The ``UserWarning`` MPS emits when ``PYTORCH_ENABLE_MPS_FALLBACK=1`` sends an op to the CPU."""
    return (
        f"The operator '{op_name}' is not currently supported on the MPS backend and will fall back to run "
        "on the CPU. This may have performance implications."
    )


def ndarray_assertion_text(nbytes: int) -> str:
    """The Metal assertion that aborts a Mac process for an MPSNDArray of ``nbytes`` >= 2**32 bytes."""
    return (
        "failed assertion `[MPSNDArray initWithDevice:descriptor:isTextureBacked:] Error: total bytes of "
        f"NDArray > 2**32' (this tensor needs {nbytes} bytes)"
    )


def numpy_message() -> str:
    """torch's ``TypeError`` text for ``.numpy()`` / ``np.asarray`` on a tensor that is not on the CPU."""
    return (
        "can't convert mps:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
        "memory first."
    )


def _torch_commit() -> str:
    try:
        import torch.version

        return str(getattr(torch.version, "git_version", None) or "Unknown")
    except ImportError:  # pragma: no cover - torch is a hard dependency of the emulation
        return "Unknown"
