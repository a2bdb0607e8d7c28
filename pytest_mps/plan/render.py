"""The size plan as text (what ``pytest-mps plan`` prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_mps.plan.advice import describe_limit, gib
from pytest_mps.plan.tiers import HIGH_WATERMARK_RATIO, TIERS_GB

if TYPE_CHECKING:
    from pytest_mps.plan.size_plan import SizePlan

__all__ = ["render_plan"]


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _cell(side: int | None, capped: bool) -> str:
    if side is None:
        return "none"
    return f">= {side}" if capped else str(side)


def render_plan(plan: SizePlan) -> str:
    """A header, the 2**32 boundary table, the memory table against Apple's tiers, and the advice."""
    lines = [
        f"Size plan for {plan.subject}" + (f" ({plan.source})" if plan.source else ""),
        f"{plan.dtype} weights ({gib(plan.weights_bytes)}), traced on meta tensors on the emulated MPS "
        "target: shapes only, nothing allocated; an estimate, not an MPS measurement.",
        f"Each trace is one full call (text encoder, 1 denoising step, VAE decode) at the pipeline's "
        f"default guidance; sides in steps of {plan.step} px.",
        "",
        "Largest square side (px) with every buffer under 2**32 bytes (Metal aborts the process at 2**32):",
    ]
    modes = sorted({b.slicing for b in plan.boundaries})
    titles = {False: "no slicing", True: f"attention slicing ({plan.slice_size})"}
    rows = [("batch", *(titles[m] for m in modes), "next step over the limit")]
    for batch in sorted({b.batch for b in plan.boundaries}):
        found = [plan.boundary(batch, m) for m in modes]
        cells = [_cell(b.largest_side, b.capped) if b is not None else "-" for b in found]
        first = next((b for b in found if b is not None and not b.capped and b.limit is not None), None)
        rows.append((str(batch), *cells, describe_limit(first.limit) if first is not None else "-"))
    lines += _table(rows)
    lines += ["", "Estimated peak memory, batch 1 (weights + peak activations), on each memory tier:"]
    head = ("side", "slicing", "peak", *(f"{t} GB" for t in TIERS_GB))
    mem_rows = [head]
    for row in plan.memory:
        peak = "abort" if row.over_limit else gib(row.memory.peak_bytes if row.memory else None)
        tiers = [row.tiers.get(t, "-") for t in TIERS_GB]
        mem_rows.append((f"{row.side}x{row.side}", "on" if row.slicing else "off", peak, *tiers))
    lines += _table(mem_rows)
    lines += [
        "fits: within Metal's recommended working set (about 2/3 of memory up to 36 GB, 3/4 above); "
        f"swaps: over it, under PyTorch's limit ({HIGH_WATERMARK_RATIO}x): memory pressure, slow; "
        "oom: PyTorch refuses (MPS backend out of memory); abort: a buffer reaches 2**32 bytes.",
        "",
        "Advice:",
        *(f"  - {line}" for line in plan.advice),
    ]
    if plan.other_hazards:
        kinds = sorted({f.kind for f in plan.other_hazards})
        lines.append(
            f"Other MPS hazards met on the way ({', '.join(kinds)}): run pytest_mps.audit(pipe) for them."
        )
    lines.append(f"{plan.traces} traces in {plan.seconds:.1f} s.")
    return "\n".join(lines)
