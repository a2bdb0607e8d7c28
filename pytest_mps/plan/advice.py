"""The advice a size plan ends with: where attention slicing (or VAE tiling) is needed, and what fits
on each Apple memory tier: the Diffusers MPS guide's rule (:func:`pytest_mps.plan.tiers.slicing_advised`)
next to the plan's traced figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_mps.plan.tiers import (
    SLICING_ABOVE_SIDE,
    SLICING_MEMORY_GB,
    TIERS_GB,
    slicing_advised,
    working_set_bytes,
)

if TYPE_CHECKING:
    from pytest_mps.emulation.findings import Finding
    from pytest_mps.plan.size_plan import SizePlan

__all__ = ["advice_lines", "describe_limit", "gib"]


def gib(nbytes: int | None) -> str:
    """``6.08 GiB``, ``386.4 MiB``, ``12.0 KiB``."""
    if nbytes is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}" if unit == "GiB" else f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def describe_limit(finding: Finding | None) -> str:
    """What reaches 2**32 bytes, in words: ``the attention scores of unet.down_blocks.0... (5.06 GiB)``."""
    if finding is None:
        return "a buffer"
    what = "the attention scores of" if finding.kind == "attention_scores" else "a buffer in"
    return f"{what} {finding.module or '?'} ({gib(finding.nbytes)})"


def _side(side: int | None, capped: bool = False) -> str:
    if side is None:
        return "no size"
    return f"{side}x{side}" + (" (searched no further)" if capped else "")


def advice_lines(plan: SizePlan) -> tuple[str, ...]:
    """The plan's advice, one line each."""
    lines = [
        f"The Diffusers MPS guide advises pipe.enable_attention_slicing() below {SLICING_MEMORY_GB} GB "
        f"of memory or above {SLICING_ABOVE_SIDE}x{SLICING_ABOVE_SIDE}; this plan shows where it is "
        "required."
    ]
    for batch in sorted({b.batch for b in plan.boundaries}):
        lines.append(_batch_line(plan, batch))
    for tier in TIERS_GB:
        lines.append(_tier_line(plan, tier))
    return tuple(lines)


def _batch_line(plan: SizePlan, batch: int) -> str:
    off, on = plan.boundary(batch, False), plan.boundary(batch, True)
    parts = []
    if off is not None:
        text = f"up to {_side(off.largest_side, off.capped)} without slicing"
        if not off.capped:
            text += f" (one step above, {describe_limit(off.limit)} reaches 2**32 bytes: Metal aborts)"
        parts.append(text)
    if on is not None:
        raised = off is None or (on.largest_side or 0) > (off.largest_side or 0) or on.capped
        if raised:
            parts.append(f"with attention slicing up to {_side(on.largest_side, on.capped)}")
        else:
            parts.append("attention slicing does not raise it")
        module = (on.limit.module or "") if on.limit is not None and not on.capped else ""
        if module.startswith("vae"):
            parts[-1] += " (the VAE sets that limit: pipe.enable_vae_tiling() decodes in tiles)"
        elif module and plan.slice_size == "auto":
            parts[-1] += ' (enable_attention_slicing("max") slices further)'
    return f"batch {batch}: " + "; ".join(parts)


def _fitting(plan: SizePlan, tier: int, slicing: bool) -> int | None:
    sides = [r.side for r in plan.memory if r.slicing == slicing and r.tiers.get(tier) == "fits"]
    return max(sides, default=None)


def _tier_line(plan: SizePlan, tier: int) -> str:
    off, on = _fitting(plan, tier, False), _fitting(plan, tier, True)
    head = f"{tier} GB (Metal working set {gib(working_set_bytes(tier))}): "
    known = [r for r in plan.memory if r.memory is not None and not r.over_limit]
    if not known:
        return head + "every planned side goes over the 2**32-byte limit (see the limits above)"
    if off is None and on is None:
        least = min(known, key=lambda r: r.memory.peak_bytes if r.memory else 0)
        need = gib(least.memory.peak_bytes if least.memory else None)
        return (
            head
            + f"no planned size fits (batch 1; {least.side}x{least.side} needs {need}): "
            + (
                "expect swapping, or load the weights in float16"
                if plan.dtype == "float32"
                else "expect swapping"
            )
        )
    parts = [f"up to {off}x{off} without slicing" if off else "no planned size fits without slicing"]
    if on and (off is None or on > off):
        parts.append(f"up to {on}x{on} with attention slicing")
    largest = max(on or 0, off or 0)
    if slicing_advised(tier, SLICING_ABOVE_SIDE):
        guide = "the guide advises attention slicing at this memory size"
    elif slicing_advised(tier, largest):
        guide = f"the guide advises attention slicing above {SLICING_ABOVE_SIDE}x{SLICING_ABOVE_SIDE}"
    else:
        guide = "slicing not needed"
    return head + ", ".join(parts) + f" (batch 1); {guide}"
