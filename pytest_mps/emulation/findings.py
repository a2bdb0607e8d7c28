"""What the emulated MPS target found: one :class:`Finding` per hazard occurrence."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["KINDS", "SEVERITIES", "Finding", "Severity", "merge_findings"]

Severity = Literal["abort", "error", "fallback", "warning"]

#: Severities, worst first. ``abort``: the process dies on a Mac; ``error``: MPS raises; ``fallback``: the
#: op silently runs on the CPU (slow, and the warning is easy to miss); ``warning``: works with the installed
#: torch on a supported macOS, but is a known portability trap.
SEVERITIES: tuple[str, ...] = ("abort", "error", "fallback", "warning")

#: Finding kinds and what they mean.
KINDS: dict[str, str] = {
    "float64": "a float64 tensor on MPS (TypeError on a Mac)",
    "complex": "a complex tensor on MPS: complex128 raises; complex64 needs macOS 14 (diffusers #7569) and "
    "works only in the ops PyTorch supports it for",
    "dtype": "another dtype MPS cannot hold",
    "dims": "a tensor with more than 16 dimensions (RuntimeError on a Mac)",
    "buffer": "a buffer of 2**32 bytes or more (the Metal assertion aborts the process)",
    "attention_scores": "scaled_dot_product_attention's score matrix on MPS's math path reaches 2**32 bytes",
    "missing_kernel": "an aten op without an MPS kernel (NotImplementedError on a Mac)",
    "unsupported_dtype": "an op MPS runs, but not for this dtype (per PyTorch's own MPS test expectations)",
    "shape": "input sizes an MPS kernel does not implement (adaptive pooling that does not divide)",
    "fallback": "an aten op that runs on the CPU (PYTORCH_ENABLE_MPS_FALLBACK=1, or always on MPS)",
    "numpy": "numpy conversion of an MPS tensor without .cpu() (TypeError on a Mac)",
    "device": "a CPU tensor with dimensions meets an MPS tensor in one op (RuntimeError on a Mac)",
    "exception": "the run stopped with an exception that is not one of MPS's rules",
}


@dataclass(frozen=True)
class Finding:
    """One MPS hazard met while running on the emulated target.

    Attributes:
        kind: what rule it breaks; see :data:`KINDS`.
        severity: ``abort``, ``error``, ``fallback`` or ``warning`` (see :data:`SEVERITIES`).
        op: the torch function (``torch.Tensor.to``) or aten operator (``aten::_fft_r2c``) involved.
        dtypes: dtypes of the tensors involved, as strings (``"float64"``).
        shapes: their shapes.
        nbytes: bytes of the offending buffer, where the rule is about size.
        module: owning module path, e.g. ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1``.
        source: first source line outside torch and pytest_mps, ``path/to/file.py:123 in func``.
        message: the error text MPS would raise or warn with (or an explanation for ``warning``).
        count: how many times this same finding occurred (1 until merged by :func:`merge_findings`).
    """

    kind: str
    severity: Severity
    op: str
    dtypes: tuple[str, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()
    nbytes: int | None = None
    module: str | None = None
    source: str | None = None
    message: str = ""
    count: int = 1

    @property
    def where(self) -> str:
        """Module and source line, for one-line reports."""
        parts = [p for p in (self.module, self.source) if p]
        return " @ ".join(parts) if parts else "?"

    def identity(self) -> tuple[Any, ...]:
        """What makes two occurrences "the same finding" (shapes and counts aside)."""
        return (self.kind, self.severity, self.op, self.dtypes, self.module, self.source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["shapes"] = [list(s) for s in self.shapes]
        out["dtypes"] = list(self.dtypes)
        return out


def merge_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Fold repeats (same kind, op, dtypes, module and source, e.g. once per denoising step) into one
    finding with ``count`` summed, keeping first-seen order, the largest ``nbytes`` and its shapes."""
    merged: dict[tuple[Any, ...], Finding] = {}
    for f in findings:
        key = f.identity()
        seen = merged.get(key)
        if seen is None:
            merged[key] = f
            continue
        bigger = (f.nbytes or 0) > (seen.nbytes or 0)
        merged[key] = replace(
            seen,
            count=seen.count + f.count,
            nbytes=f.nbytes if bigger else seen.nbytes,
            shapes=f.shapes if bigger else seen.shapes,
            message=f.message if bigger else seen.message,
        )
    return tuple(merged.values())
