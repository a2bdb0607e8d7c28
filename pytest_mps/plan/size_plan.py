"""The size plan: how large a pipeline can go on MPS, from meta-tensor traces (no real memory used).

For batch sizes 1, 2 and 4, with and without attention slicing, it finds the largest square side that
keeps every buffer under MPS's 2**32-byte limit (above it Metal aborts the process), and it estimates
the peak memory at common sizes against Apple's memory tiers (:mod:`pytest_mps.plan.tiers`), with the
attention-slicing advice that follows. Each answer comes from a direct trace: the boundary ``S`` is
traced clean and ``S + step`` is traced over the limit.

The search brackets the boundary and predicts the next side to trace from the largest buffer seen so far
(buffers grow as a power of the side: 2 for convolutions, 4 for attention scores), so a boundary
usually costs two or three traces of about a second each.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_mps.emulation.errors import NDARRAY_BYTE_LIMIT
from pytest_mps.emulation.findings import Finding, merge_findings
from pytest_mps.plan.memory import MemoryEstimate
from pytest_mps.plan.tiers import TIERS_GB, tier_verdict

__all__ = [
    "BATCHES",
    "SIDES",
    "Boundary",
    "MemoryRow",
    "PlanError",
    "Probe",
    "SizePlan",
    "plan_folder",
    "plan_pipeline",
    "resolution_step",
]

#: Batch sizes the boundary is found for.
BATCHES: tuple[int, ...] = (1, 2, 4)
#: Square sides the peak memory is estimated at.
SIDES: tuple[int, ...] = (512, 768, 1024, 1536, 2048)
#: The largest side searched.
MAX_SIDE = 8192
_SIZE_KINDS = ("buffer", "attention_scores")


class PlanError(RuntimeError):
    """The pipeline could not be traced far enough for a plan; the message says why, in one line."""


@dataclass(frozen=True)
class Probe:
    """One traced call at ``side`` x ``side`` with ``batch`` prompts (1 inference step)."""

    side: int
    batch: int
    slicing: bool
    limit: Finding | None  # the largest buffer of 2**32 bytes or more, if any
    memory: MemoryEstimate | None
    completed: bool
    stopped_by: str | None = None

    @property
    def over_limit(self) -> bool:
        """Some buffer reaches 2**32 bytes: a Mac aborts the process."""
        return self.limit is not None

    @property
    def largest_bytes(self) -> int:
        """The largest buffer the run asked for (what the search extrapolates)."""
        seen = self.memory.largest_buffer_bytes if self.memory is not None else 0
        over = (self.limit.nbytes or 0) if self.limit is not None else 0
        return max(seen, over, 1)


@dataclass(frozen=True)
class Boundary:
    """The largest square side for one batch size and slicing mode."""

    batch: int
    slicing: bool
    largest_side: int | None  # None: even the smallest side goes over the limit
    capped: bool  # the search stopped at its maximum without reaching the limit
    limit: Finding | None  # what goes over the limit one step above

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "batch": self.batch,
            "attention_slicing": self.slicing,
            "largest_side": self.largest_side,
            "capped": self.capped,
            "limit": _finding_dict(self.limit),
        }


@dataclass(frozen=True)
class MemoryRow:
    """The estimated peak at one side (batch 1) and what it means on each Apple memory tier."""

    side: int
    slicing: bool
    memory: MemoryEstimate | None
    over_limit: bool
    tiers: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "side": self.side,
            "attention_slicing": self.slicing,
            "over_limit": self.over_limit,
            "memory": self.memory.to_dict() if self.memory is not None else None,
            "tiers": {str(k): v for k, v in self.tiers.items()},
        }


@dataclass(frozen=True)
class SizePlan:
    """What :func:`plan_pipeline` found. ``format()`` is the text ``pytest-mps plan`` prints;
    ``to_dict()`` its ``--json``."""

    subject: str
    source: str
    dtype: str
    step: int
    slice_size: str
    weights_bytes: int
    boundaries: tuple[Boundary, ...]
    memory: tuple[MemoryRow, ...]
    advice: tuple[str, ...]
    traces: int
    seconds: float
    other_hazards: tuple[Finding, ...] = ()

    def boundary(self, batch: int, slicing: bool) -> Boundary | None:
        """The boundary row for ``batch`` and ``slicing`` (None when not planned)."""
        return next((b for b in self.boundaries if b.batch == batch and b.slicing == slicing), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "subject": self.subject,
            "source": self.source,
            "stand_in": "meta-tensor trace on the emulated MPS target: an estimate, not an MPS measurement",
            "dtype": self.dtype,
            "step": self.step,
            "attention_slice_size": self.slice_size,
            "buffer_limit_bytes": NDARRAY_BYTE_LIMIT,
            "weights_bytes": self.weights_bytes,
            "boundaries": [b.to_dict() for b in self.boundaries],
            "memory": [m.to_dict() for m in self.memory],
            "tiers_gb": list(TIERS_GB),
            "advice": list(self.advice),
            "other_hazards": [f.to_dict() for f in self.other_hazards],
            "traces": self.traces,
            "seconds": round(self.seconds, 2),
        }

    def format(self) -> str:
        """The plan as text."""
        from pytest_mps.plan.render import render_plan

        return render_plan(self)


def _finding_dict(finding: Finding | None) -> dict[str, Any] | None:
    if finding is None:
        return None
    return {
        "kind": finding.kind,
        "module": finding.module,
        "nbytes": finding.nbytes,
        "source": finding.source,
    }


def resolution_step(pipe: Any) -> int:
    """The step between planned sides: a valid size (:func:`pytest_mps.strategies.size_step`) whose
    latent also survives every down-sampling stage of the denoiser (what
    :func:`pytest_mps.inputs.smallest_size` rounds to), so buffers grow smoothly from step to step."""
    import math

    from pytest_mps.inputs import _denoiser, _vae_scale_factor
    from pytest_mps.strategies import size_step

    config = getattr(_denoiser(pipe), "config", None)
    blocks = getattr(config, "block_out_channels", None)
    down = 2 ** (len(blocks) - 1) if blocks else 1
    return math.lcm(size_step(pipe), _vae_scale_factor(pipe) * down)


class _Planner:
    """Runs and remembers the probes of one plan."""

    def __init__(self, pipe: Any, *, slice_size: str | int, max_side: int, call: dict[str, Any]) -> None:
        from pytest_mps.inputs import smallest_size

        self.pipe = pipe
        self.slice_size = slice_size
        self.step = resolution_step(pipe)
        self.lo = max(self.step, smallest_size(pipe) or self.step)
        self.hi = max(self.lo, max_side - max_side % self.step)
        self.call = call
        self.probes: dict[tuple[int, int, bool], Probe] = {}
        self.caches: dict[bool, dict[Any, Any]] = {False: {}, True: {}}
        self.others: list[Finding] = []
        self.weights_bytes = 0
        self._processors = {
            name: dict(module.attn_processors)
            for name, module in pipe.components.items()
            if hasattr(module, "attn_processors") and hasattr(module, "set_attn_processor")
        }
        self._sliced: bool | None = None

    def _set_slicing(self, on: bool) -> None:
        if self._sliced == on:
            return
        for name, processors in self._processors.items():
            self.pipe.components[name].set_attn_processor(dict(processors))
        if on:
            self.pipe.enable_attention_slicing(self.slice_size)
        self._sliced = on

    def restore(self) -> None:
        """Put the pipeline's attention processors back."""
        self._set_slicing(False)

    def probe(self, side: int, batch: int, slicing: bool) -> Probe:
        key = (side, batch, slicing)
        if key in self.probes:
            return self.probes[key]
        from pytest_mps.emulation.errors import MPSAbortError
        from pytest_mps.inputs import default_inputs
        from pytest_mps.plan.trace import traced_call

        self._set_slicing(slicing)
        call = {**default_inputs(self.pipe, batch_size=batch, steps=1, height=side, width=side), **self.call}
        run = traced_call(self.pipe, call, move=False, memory=True, cache=self.caches[slicing])
        sized = [f for f in run.findings if f.kind in _SIZE_KINDS and f.severity == "abort"]
        self.others += [f for f in run.findings if f.kind not in _SIZE_KINDS]
        if run.memory is not None:
            self.weights_bytes = run.memory.weights_bytes
        error = run.error
        if error is not None and not isinstance(error, MPSAbortError):
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise PlanError(
                f"the trace of {type(self.pipe).__name__} at {side}x{side}, batch {batch} stopped: "
                f"{type(error).__name__}: {first}"
            )
        probe = Probe(
            side=side,
            batch=batch,
            slicing=slicing,
            limit=max(sized, key=lambda f: f.nbytes or 0) if sized else None,
            memory=run.memory if error is None else None,
            completed=error is None,
            stopped_by=None if error is None else f"{type(error).__name__}: {error}",
        )
        self.probes[key] = probe
        return probe

    def _snap(self, side: float) -> int:
        snapped = int(side) - int(side) % self.step
        return min(self.hi, max(self.lo, snapped))

    def _predict(self, points: dict[int, Probe], ok: int | None, over: int | None) -> float:
        """The side at which the largest buffer reaches the limit, from the probes nearest to it."""
        ordered = sorted(points)
        below = [s for s in ordered if s <= (ok or 0)]
        above = [s for s in ordered if over is not None and s >= over]
        pair = [below[-1], above[0]] if below and above else (below[-2:] if len(below) >= 2 else None)
        if pair is None or pair[0] == pair[1]:
            anchor = points[ok if ok is not None else over]  # type: ignore[index]
            op = anchor.memory.largest_buffer_op if anchor.memory is not None else "scores"
            power = 4.0 if "scores" in op or anchor.limit is not None else 2.0
        else:
            small, large = (points[s] for s in pair)
            ratio = large.largest_bytes / small.largest_bytes
            power = math.log(ratio) / math.log(large.side / small.side) if ratio > 1 else 4.0
            power = min(max(power, 0.5), 8.0)
            anchor = small
        return anchor.side * (NDARRAY_BYTE_LIMIT / anchor.largest_bytes) ** (1.0 / power)

    def boundary(self, batch: int, slicing: bool, guess: int) -> Boundary:
        points = {s: p for (s, b, sl), p in self.probes.items() if b == batch and sl == slicing}
        side = self._snap(guess)
        for _ in range(64):
            ok = max((s for s, p in points.items() if not p.over_limit), default=None)
            over = min((s for s, p in points.items() if p.over_limit), default=None)
            if over == self.lo or ok == self.hi:
                break
            if ok is not None and over is not None and over - ok <= self.step:
                break
            if points:
                side = self._snap(self._predict(points, ok, over))
                if ok is not None and side <= ok:
                    side = ok + self.step
                if over is not None and side >= over:
                    side = over - self.step
            points[side] = self.probe(side, batch, slicing)
        if over == self.lo:
            return Boundary(batch, slicing, None, False, points[self.lo].limit)
        capped = ok == self.hi
        limit = None if capped or over is None else points[over].limit
        return Boundary(batch, slicing, ok, capped, limit)


def plan_pipeline(
    pipe: Any,
    *,
    batches: tuple[int, ...] = BATCHES,
    sides: tuple[int, ...] = SIDES,
    slicing: tuple[bool, ...] = (False, True),
    slice_size: str | int = "auto",
    max_side: int = MAX_SIDE,
    source: str = "",
    **call_overrides: Any,
) -> SizePlan:
    """The size plan of ``pipe``, a pipeline with meta weights on the emulated device (see
    :func:`pytest_mps.plan.meta_pipeline.load_meta_pipeline`).

    Args:
        batches: batch sizes to find the 2**32 boundary for.
        sides: square sides to estimate peak memory at (batch 1); the batch-1 limits are added.
        slicing: plan without attention slicing (False), with it (True), or both (the default).
        slice_size: what ``pipe.enable_attention_slicing`` gets for the sliced rows (Diffusers' default
            ``"auto"``: half the heads at a time; ``"max"``: one).
        max_side: the largest side searched.
        call_overrides: extra call arguments (``guidance_scale=1.0`` to plan without CFG...).

    Raises:
        PlanError: when the pipeline cannot be traced (one line).
    """
    from pytest_mps.plan.advice import advice_lines

    start = time.perf_counter()
    planner = _Planner(pipe, slice_size=slice_size, max_side=max_side, call=dict(call_overrides))
    try:
        boundaries = _boundaries(planner, batches, slicing, _default_side(pipe) or planner.lo)
        rows: list[MemoryRow] = []
        for sliced in slicing:
            first = next(b for b in boundaries if b.slicing == sliced and b.batch == min(batches))
            limit = first.largest_side if first.batch == 1 else None
            wanted = {s for s in sides if s % planner.step == 0 and planner.lo <= s <= planner.hi}
            for side in sorted(wanted | ({limit} if limit else set())):
                if first.batch == 1 and (limit or 0) < side:
                    # Above the limit a buffer reaches 2**32 bytes a fortiori: no need to trace it.
                    rows.append(MemoryRow(side, sliced, None, True, {}))
                    continue
                probe = planner.probe(side, 1, sliced)
                verdicts: dict[int, str] = {}
                if probe.memory is not None and not probe.over_limit:
                    verdicts = {t: tier_verdict(probe.memory.peak_bytes, t) for t in TIERS_GB}
                rows.append(MemoryRow(side, sliced, probe.memory, probe.over_limit, verdicts))
    finally:
        planner.restore()
    plan = SizePlan(
        subject=type(pipe).__name__,
        source=source,
        dtype=_dtype_name(pipe),
        step=planner.step,
        slice_size=str(slice_size),
        weights_bytes=planner.weights_bytes,
        boundaries=tuple(sorted(boundaries, key=lambda b: (b.batch, b.slicing))),
        memory=tuple(sorted(rows, key=lambda r: (r.side, r.slicing))),
        advice=(),
        traces=len(planner.probes),
        seconds=time.perf_counter() - start,
        other_hazards=tuple(merge_findings(planner.others)),
    )
    return dataclasses.replace(plan, advice=advice_lines(plan))


def _boundaries(
    planner: _Planner, batches: tuple[int, ...], slicing: tuple[bool, ...], default: int
) -> list[Boundary]:
    """Every batch's boundary, without slicing then with it; each search starts from a guess made from
    the boundaries found before it (buffers grow about linearly with the batch, as the side to the
    fourth power where attention scores set the limit)."""
    found: list[Boundary] = []
    for sliced in slicing:
        previous: Boundary | None = None
        for batch in sorted(batches):
            if previous is not None and previous.largest_side is not None:
                guess = previous.largest_side * (previous.batch / batch) ** 0.25
            elif sliced and found and found[0].largest_side is not None:
                guess = found[0].largest_side * 1.25
            else:
                guess = default
            previous = planner.boundary(batch, sliced, int(guess))
            found.append(previous)
    return found


def _dtype_name(pipe: Any) -> str:
    from pytest_mps.inputs import _denoiser

    first = next(iter(_denoiser(pipe).parameters()), None) if _denoiser(pipe) is not None else None
    return str(first.dtype).replace("torch.", "") if first is not None else "?"


def _default_side(pipe: Any) -> int | None:
    from pytest_mps.inputs import _denoiser, _vae_scale_factor

    sample = getattr(getattr(_denoiser(pipe), "config", None), "sample_size", None)
    if isinstance(sample, list | tuple):
        sample = max(sample)
    return int(sample) * _vae_scale_factor(pipe) if isinstance(sample, int) else None


def plan_folder(path: str | Path, *, dtype: Any = None, **options: Any) -> SizePlan:
    """Load the pipeline folder ``path`` with meta weights (nothing of its weights is read) and plan it
    (see :func:`plan_pipeline` for ``options``)."""
    from pytest_mps.plan.meta_pipeline import load_meta_pipeline

    pipe = load_meta_pipeline(path, dtype=dtype)
    return plan_pipeline(pipe, source=str(path), **options)
