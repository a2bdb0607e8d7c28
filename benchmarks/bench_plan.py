"""Size plan and traced audits: speed, memory, agreement with direct traces, and the peak-memory
estimate against a real GPU.

Parts (``--parts``, comma-separated):

- ``audit``: ``audit(tiny-sd, height=4096, width=4096)`` in a fresh subprocess (wall time and peak
  RSS of the child), next to the same audit forced to run for real (``trace=False``), killed after
  ``--real-timeout`` seconds.
- ``same``: tiny-sd at 384x384, where the VAE's attention scores pass 2**32 bytes: the traced audit and
  the real one side by side (time, and whether their findings are identical).
- ``plan``: ``pytest-mps plan`` of an SD-1.5-shaped and an SDXL-shaped config folder (time, traces,
  peak RSS), and every boundary checked by direct traces at ``S`` and ``S + step``.
- ``cuda`` (``--device cuda``): an SD-1.5-shaped pipeline with random weights, allocated for real on the
  GPU, run at several sizes with the math attention backend (what MPS's attention materialises); the
  estimate of :mod:`pytest_mps.plan.memory` against ``torch.cuda.max_memory_allocated``. Also with
  attention slicing, in float16, and with the default (flash) attention for contrast.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_plan.py                    # audit, same, plan (CPU, ~5 min)
    PYTHONPATH=. python benchmarks/bench_plan.py --device cuda      # the GPU validation (~2 min on an H100)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # pipeline_shapes: SD 1.5's and SDXL's configs, written out

_AUDIT_CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from diffusers import DiffusionPipeline
from pytest_mps.hazard_audit import audit
pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
side, trace = int(sys.argv[2]), {"auto": None, "real": False}[sys.argv[3]]
start = time.perf_counter()
report = audit(pipe, height=side, width=side, trace=trace)
seconds = time.perf_counter() - start
aborts = sorted({f.module for f in report.findings if f.severity == "abort"})
rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
print(json.dumps({"seconds": seconds, "traced": report.traced, "aborts": aborts, "peak_rss_gb": rss_gb}))
"""


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run a child Python, return its JSON line, wall time and peak RSS (or that it was killed)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _AUDIT_CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"killed_after": timeout, "wall": time.perf_counter() - start}
    wall = time.perf_counter() - start
    result = json.loads(out.decode().strip().splitlines()[-1]) if proc.returncode == 0 else {}
    return {**result, "wall": wall, "returncode": proc.returncode}


def part_audit(real_timeout: float) -> dict[str, Any]:
    pipeline = str(REPO / "fixtures" / "tiny-sd")
    traced = _child([pipeline, "4096", "auto"], timeout=600)
    print(
        f"audit(tiny-sd, 4096x4096): traced={traced.get('traced')} in {traced.get('seconds', 0):.1f}s "
        f"(child wall {traced['wall']:.1f}s incl. imports), peak RSS {traced.get('peak_rss_gb', 0):.2f} GB; "
        f"aborts in {traced.get('aborts')}"
    )
    real = _child([pipeline, "4096", "real"], timeout=real_timeout)
    if "killed_after" in real:
        ratio = real_timeout / max(traced.get("seconds", 1e-9), 1e-9)
        print(
            f"same audit forced to run for real: killed after {real_timeout:.0f}s "
            f"(> {ratio:.0f}x the traced run)"
        )
    else:
        print(
            f"same audit run for real: {real.get('seconds', 0):.1f}s, "
            f"peak RSS {real.get('peak_rss_gb', 0):.2f} GB"
        )
    return {"traced": traced, "real": real}


def part_same(side: int) -> dict[str, Any]:
    import torch
    from diffusers import DiffusionPipeline

    from pytest_mps.hazard_audit import audit

    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(REPO / "fixtures" / "tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    reports = {}
    for label, trace in (("traced", True), ("real", False)):
        start = time.perf_counter()
        reports[label] = (audit(pipe, height=side, width=side, trace=trace), time.perf_counter() - start)

    def keys(report: Any) -> list[Any]:
        return sorted(
            (f.kind, f.severity, f.op, f.module, f.source, f.nbytes, f.count) for f in report.findings
        )

    same = keys(reports["traced"][0]) == keys(reports["real"][0])
    traced_s, real_s = reports["traced"][1], reports["real"][1]
    print(
        f"tiny-sd at {side}x{side}: traced {traced_s:.2f}s, real {real_s:.2f}s "
        f"(real/traced {real_s / traced_s:.1f}x); "
        f"findings identical: {same} ({len(reports['real'][0].findings)} findings)"
    )
    for f in reports["traced"][0].findings:
        print(f"  {f.severity} {f.kind} {f.module} {f.nbytes} bytes at {f.source}")
    return {"side": side, "traced_s": traced_s, "real_s": real_s, "identical": same}


def _over(pipe: Any, side: int, batch: int, slicing: bool) -> bool:
    from pytest_mps.hazard_audit import audit
    from pytest_mps.inputs import default_inputs

    saved = {n: dict(m.attn_processors) for n, m in pipe.components.items() if hasattr(m, "attn_processors")}
    if slicing:
        pipe.enable_attention_slicing()
    try:
        report = audit(
            pipe, default_inputs(pipe, batch_size=batch, steps=1, height=side, width=side), trace=True
        )
    finally:
        for name, processors in saved.items():
            pipe.components[name].set_attn_processor(processors)
    return any(f.kind in ("buffer", "attention_scores") and f.severity == "abort" for f in report.findings)


def part_plan(kinds: list[str]) -> list[dict[str, Any]]:
    from pipeline_shapes import write_config_folder

    from pytest_mps.plan.meta_pipeline import load_meta_pipeline
    from pytest_mps.plan.size_plan import plan_pipeline

    rows = []
    for kind in kinds:
        folder = write_config_folder(kind, Path(tempfile.mkdtemp()) / kind)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        pipe = load_meta_pipeline(folder)
        plan = plan_pipeline(pipe, source=str(folder))
        seconds = time.perf_counter() - start
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 2**20
        print(
            f"\nplan of the {kind}-shaped pipeline: {seconds:.1f}s, {plan.traces} traces, "
            f"peak RSS grew {grown:.2f} GB (weights would be {plan.weights_bytes / 2**30:.2f} GiB)"
        )
        print("batch  slicing  largest side  direct trace at S  at S+step  agrees")
        for b in plan.boundaries:
            side = b.largest_side
            ok = side is not None and not _over(pipe, side, b.batch, b.slicing)
            over = side is not None and _over(pipe, side + plan.step, b.batch, b.slicing)
            flag = "on " if b.slicing else "off"
            print(
                f"{b.batch:<5}  {flag}      {side!s:<12}  {'clean' if ok else 'OVER':<17}  "
                f"{'over' if over else 'CLEAN':<9}  {ok and over}"
            )
            rows.append(
                {"kind": kind, "batch": b.batch, "slicing": b.slicing, "side": side, "agrees": ok and over}
            )
        print(plan.format())
    return rows


def part_cuda(sides: list[int], batches: list[int], device: str = "cuda") -> list[dict[str, Any]]:
    """Estimate against measured peak. Off CUDA (a smoke test of this code) nothing is measured."""
    import torch
    from pipeline_shapes import random_pipeline, write_config_folder
    from torch.nn.attention import SDPBackend

    from pytest_mps.inputs import default_inputs
    from pytest_mps.plan.meta_pipeline import load_meta_pipeline
    from pytest_mps.plan.trace import traced_call

    torch.backends.cudnn.benchmark = False
    folder = write_config_folder("sd15", Path(tempfile.mkdtemp()) / "sd15")
    rows = []
    for dtype in (torch.float32, torch.float16):
        meta = load_meta_pipeline(folder, dtype=dtype)
        real = random_pipeline("sd15", device).to(dtype=dtype)
        print(f"\n{str(dtype)[6:]}: side  batch  slicing  attention  estimate GiB  measured GiB  ratio")
        for slicing in (False, True):
            for pipe in (meta, real):
                if slicing:
                    pipe.enable_attention_slicing()
                else:
                    pipe.disable_attention_slicing()
            for batch in batches:
                for side in sides:
                    size = {"batch_size": batch, "steps": 1, "height": side, "width": side}
                    run = traced_call(meta, default_inputs(meta, **size), move=False, memory=True)
                    estimate = run.memory.peak_bytes if run.memory is not None and run.error is None else None
                    for backend, label in ((SDPBackend.MATH, "math"), (None, "default")):
                        measured = _measure(real, default_inputs(real, **size), device, backend)
                        ratio = f"{estimate / measured:.3f}" if estimate and measured else "-"
                        print(
                            f"        {side:<5} {batch:<6} {'on' if slicing else 'off':<8} {label:<9}  "
                            f"{(estimate or 0) / 2**30:<12.3f}  {(measured or 0) / 2**30:<12.3f}  {ratio}"
                        )
                        rows.append(
                            {
                                "dtype": str(dtype),
                                "side": side,
                                "batch": batch,
                                "slicing": slicing,
                                "attention": label,
                                "estimate": estimate,
                                "measured": measured,
                            }
                        )
        del real
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _measure(pipe: Any, call: dict[str, Any], device: str, backend: Any) -> int | None:
    """Peak allocated device memory of one call (None off CUDA, or when out of memory)."""
    import contextlib

    import torch
    from torch.nn.attention import sdpa_kernel

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        with (
            torch.inference_mode(),
            sdpa_kernel(backend) if backend is not None else contextlib.nullcontext(),
        ):
            pipe(**call)
        if cuda:
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
    except torch.OutOfMemoryError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--parts", default=None, help="audit,same,plan (cpu default) or cuda (cuda default)")
    parser.add_argument("--real-timeout", type=float, default=300.0)
    parser.add_argument("--same-side", type=int, default=384)
    parser.add_argument("--kinds", default="sd15,sdxl")
    parser.add_argument("--sides", default="256,384,512,640")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    parts = (args.parts or ("cuda" if args.device == "cuda" else "audit,same,plan")).split(",")
    results: dict[str, Any] = {}
    if "audit" in parts:
        results["audit"] = part_audit(args.real_timeout)
    if "same" in parts:
        results["same"] = part_same(args.same_side)
    if "plan" in parts:
        results["plan"] = part_plan(args.kinds.split(","))
    if "cuda" in parts:
        sides = [int(s) for s in args.sides.split(",")]
        results["cuda"] = part_cuda(sides, [int(b) for b in args.batches.split(",")], args.device)
    out = args.json or (os.path.join(os.environ["OUT"], "bench_plan.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
