"""The tensors inside module inputs and outputs: found in any structure, copied off the device,
moved back for a replay, and compared.

Module inputs and outputs come as tensors, tuples, lists, dicts, Diffusers' ``BaseOutput`` and
transformers' ``ModelOutput`` (both ordered dicts and dataclasses), mixed with non-tensor values
(``None``, ints, processors' keyword dicts). Every helper here walks them in one deterministic order,
so the n-th tensor of a reference call and the n-th tensor of its replay are the same output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Difference", "copy_off_device", "difference", "nbytes", "onto", "tensors_in", "with_tensors"]


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value``, depth first, in order (mapping values in insertion order)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in tensors_in(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in tensors_in(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in tensors_in(getattr(value, f.name))]
    return []


def _rebuild(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to every tensor, in the order of :func:`tensors_in`."""
    import torch

    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, torch.Generator):
        twin = torch.Generator(value.device)  # a replay must not consume the caller's generator
        twin.set_state(value.get_state())
        return twin
    if isinstance(value, Mapping):
        items = {k: _rebuild(v, fn) for k, v in value.items()}
        try:
            return type(value)(items)
        except Exception:
            return items
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_rebuild(v, fn) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(_rebuild(v, fn) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _rebuild(getattr(value, f.name), fn) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def with_tensors(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` with its tensors replaced, in :func:`tensors_in` order, by ``tensors`` (each moved to
    the device and dtype of the tensor it replaces); ``value`` itself when the counts differ."""
    if len(tensors_in(value)) != len(tensors):
        return value
    given = iter(tensors)
    return _rebuild(value, lambda tensor: next(given).to(device=tensor.device, dtype=tensor.dtype))


def _aliases_host_memory(tensor: torch.Tensor) -> bool:
    """True when ``tensor.to("cpu")`` would share memory with ``tensor``: a CPU tensor, or an
    emulated-MPS tensor (which keeps its data in a CPU payload)."""
    import sys

    if tensor.device.type == "cpu":
        return True
    emulation = sys.modules.get("pytest_mps.emulation.tensor")
    return emulation is not None and bool(emulation.is_emulated(tensor))


def copy_off_device(value: Any) -> Any:
    """``value`` with every tensor copied to plain CPU memory (detached, never aliasing the original:
    a module that later updates its input in place must not change what was captured)."""
    from pytest_mps.devices import plain_cpu

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        out = plain_cpu(tensor.detach().to("cpu"))
        return out.clone() if _aliases_host_memory(tensor) else out

    return _rebuild(value, copy)


def onto(
    value: Any, device: Any, cast: torch.dtype | None = None, *, dtypes: list[torch.dtype] | None = None
) -> Any:
    """``value`` with every tensor moved to ``device`` (a fresh copy, so an in-place module cannot
    change the capture). With ``cast``, floating tensors of 32 or 64 bits become ``cast``; ``dtypes``
    (one per tensor, in :func:`tensors_in` order, as the target run saw them) overrides it."""
    hints = list(dtypes) if dtypes is not None and len(dtypes) == len(tensors_in(value)) else None
    position = iter(range(len(hints))) if hints is not None else None

    def move(tensor: torch.Tensor) -> torch.Tensor:
        dtype = None
        if hints is not None and position is not None:
            hint = hints[next(position)]
            dtype = hint if tensor.is_floating_point() and hint.is_floating_point else None
        elif cast is not None and tensor.is_floating_point() and tensor.element_size() >= 4:
            dtype = cast
        out = tensor.to(device=device, dtype=dtype)
        return out.clone() if out is tensor or _aliases_host_memory(out) else out

    return _rebuild(value, move)


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in ``value``."""
    return sum(t.numel() * t.element_size() for t in tensors_in(value))


@dataclass(frozen=True)
class Difference:
    """How far a target's tensors are from the reference's, judged against ``atol + rtol * scale``.

    Attributes:
        max_abs: largest |target - reference| over finite pairs (``inf`` with ``nonfinite``).
        scale: largest |reference| (finite values).
        ratio: ``max_abs / (atol + rtol * scale)``; above 1 means the tensors differ. ``inf`` for
            NaN/Inf on one side only, integer tensors that differ, or a structure mismatch.
        nonfinite: values that are NaN/Inf on the target but finite (or another non-finite value)
            in the reference.
        shape, dtype: of the target tensor with the largest ratio.
        problem: a structure mismatch in words (count, shape), else empty.
        spread: the largest RMS of the difference over the RMS of the reference, over the tensors: a
            scale-free size that outliers do not set (``inf`` where ``ratio`` is).
    """

    max_abs: float
    scale: float
    ratio: float
    nonfinite: int = 0
    shape: tuple[int, ...] = ()
    dtype: str = ""
    problem: str = ""
    spread: float = 0.0

    @property
    def relative(self) -> float:
        """``max_abs`` over the reference's largest magnitude (``max_abs`` itself when that is 0)."""
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    @property
    def differs(self) -> bool:
        """True when the target's tensors are beyond the threshold."""
        return self.ratio > 1.0


def _pair(target: torch.Tensor, reference: torch.Tensor, rtol: float, atol: float) -> Difference:
    import torch

    shape = tuple(target.shape)
    dtype = str(target.dtype).replace("torch.", "")
    if target.shape != reference.shape:
        problem = f"shape {shape} vs {tuple(reference.shape)}"
        return Difference(math.inf, 0.0, math.inf, 0, shape, dtype, problem, math.inf)
    if target.numel() == 0:
        return Difference(0.0, 0.0, 0.0, 0, shape, dtype)
    if not (target.is_floating_point() or target.is_complex()):
        equal = bool(torch.equal(target.to(reference.dtype), reference))
        worst = 0.0 if equal else math.inf
        return Difference(worst, 0.0, worst, 0, shape, dtype, "", worst)
    if target.dtype == reference.dtype and bool(torch.equal(target, reference)):
        return Difference(0.0, float(reference.abs().max()), 0.0, 0, shape, dtype)  # the common case, fast
    wide = torch.complex128 if target.is_complex() or reference.is_complex() else torch.float64
    a, b = target.to(wide), reference.to(wide)
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    same_special = ~fa & ~fb & ((a == b) | (torch.isnan(a) & torch.isnan(b)))
    target_only = int((~fa & ~same_special).sum())
    reference_only = int((fa & ~fb).sum())
    both = fa & fb
    max_abs = float((a - b).abs()[both].max()) if bool(both.any()) else 0.0
    scale = float(b.abs()[fb].max()) if bool(fb.any()) else 0.0
    if target_only or reference_only:
        problem = "" if target_only else f"the reference (not the target) has {reference_only} NaN/Inf here"
        return Difference(math.inf, scale, math.inf, target_only, shape, dtype, problem, math.inf)
    limit = atol + rtol * scale
    ratio = max_abs / limit if limit > 0 else (math.inf if max_abs > 0 else 0.0)
    rms = float(b.abs().square().mean().sqrt())
    off = float((a - b).abs().square().mean().sqrt())
    spread = off / rms if rms > 0 else (math.inf if off > 0 else 0.0)
    return Difference(max_abs, scale, ratio, 0, shape, dtype, "", spread)


def difference(
    target: list[torch.Tensor], reference: list[torch.Tensor], *, rtol: float, atol: float
) -> Difference:
    """Compare two lists of tensors pairwise (see :class:`Difference`); the worst pair is reported."""
    if len(target) != len(reference):
        problem = f"{len(target)} output tensors vs {len(reference)} in the reference"
        return Difference(math.inf, 0.0, math.inf, problem=problem, spread=math.inf)
    worst = Difference(0.0, 0.0, 0.0)
    spread = 0.0
    for t, r in zip(target, reference, strict=True):
        pair = _pair(t, r, rtol, atol)
        spread = max(spread, pair.spread)
        if pair.ratio > worst.ratio or (pair.ratio == worst.ratio and not worst.shape):
            worst = pair
    return dataclasses.replace(worst, spread=spread)
