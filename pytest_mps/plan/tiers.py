"""Apple silicon memory tiers, how much of each the GPU may use, and the attention-slicing advice.

Sources:
- Metal's ``recommendedMaxWorkingSetSize`` (``torch.mps.recommended_max_memory()``) is the GPU's share of
  unified memory: about two thirds up to 36 GB and three quarters above (reported values: 5.3 GiB on
  8 GB, 10.7 GiB on 16 GB, 37.4 GiB on 48 GB, 48 GiB on 64 GB).
- PyTorch's MPS allocator refuses allocations past ``PYTORCH_MPS_HIGH_WATERMARK_RATIO`` (default 1.7)
  times that working set ("MPS backend out of memory"); between the two, macOS swaps, and the Diffusers
  MPS guide warns that performance is very sensitive to memory pressure.
- The Diffusers MPS guide advises ``pipe.enable_attention_slicing()`` below 64 GB of memory, or above
  512x512 pixels.
"""

from __future__ import annotations

from pytest_mps.fixture_pipeline import SLICING_MEMORY_GB

__all__ = [
    "HIGH_WATERMARK_RATIO",
    "SLICING_ABOVE_SIDE",
    "SLICING_MEMORY_GB",
    "TIERS_GB",
    "slicing_advised",
    "tier_verdict",
    "working_set_bytes",
]

#: Unified-memory sizes Apple sells (GB, as Apple counts them: GiB).
TIERS_GB: tuple[int, ...] = (8, 16, 24, 32, 64, 128)

#: PyTorch's default ``PYTORCH_MPS_HIGH_WATERMARK_RATIO``: the allocator's hard limit, in working sets.
HIGH_WATERMARK_RATIO = 1.7

#: The Diffusers MPS guide: attention slicing also helps above this side (512x512 pixels).
SLICING_ABOVE_SIDE = 512


def working_set_bytes(tier_gb: int) -> int:
    """Metal's recommended working set for a Mac with ``tier_gb`` GB of unified memory."""
    share = 2 / 3 if tier_gb <= 36 else 3 / 4
    return int(tier_gb * 2**30 * share)


def tier_verdict(peak_bytes: int, tier_gb: int) -> str:
    """``fits`` (within Metal's working set), ``swaps`` (within PyTorch's limit, under memory pressure)
    or ``oom`` (PyTorch's MPS allocator refuses: "MPS backend out of memory")."""
    limit = working_set_bytes(tier_gb)
    if peak_bytes <= limit:
        return "fits"
    if peak_bytes <= HIGH_WATERMARK_RATIO * limit:
        return "swaps"
    return "oom"


def slicing_advised(tier_gb: int, side: int) -> bool:
    """The Diffusers MPS guide's rule: slicing below 64 GB of memory, or above 512x512."""
    return tier_gb < SLICING_MEMORY_GB or side > SLICING_ABOVE_SIDE
