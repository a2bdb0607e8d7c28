"""Benchmark (not a test): what a parity check costs with a stored CPU reference, in one run.

For each tiny fixture pipeline, ``assert_cpu_parity(pipe)`` is timed in two situations against the bare
pipeline calls it stands for (each timed the same way: ``run_pipeline``, fresh generators,
``torch.inference_mode``, device synchronised before the clock is read):

- ``stored``: a new session (empty in-memory cache) whose reference folder already holds the CPU
  reference: one target call, the fingerprints, reading and verifying the file (safetensors header,
  SHA-256 over metadata and array) and the comparison. Judged against **one** bare target call.
- ``cold``: a new session with an empty reference folder: target call, CPU call, fingerprints, the
  comparison and writing the reference atomically. Judged against the **two** calls it needs (target +
  CPU).

Goal for both ratios: <= 1.10. The check's own cost is fixed (fingerprints, the comparison, the file),
so it is shown in milliseconds too, at the fixtures' 2 steps (10-30 ms calls, where a fixed ~2 ms is
~15%) and at 20 steps (closer to real use, where calls take seconds). Every timed check's
``details["reference"]`` is checked (``disk`` for stored, ``computed`` for cold), so the figures measure
what they claim. Medians of interleaved repeats.

Usage::

    python benchmarks/bench_references.py --device cpu --repeats 15
    python benchmarks/bench_references.py --device cuda --json bench_references.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# numpy's OpenBLAS wakes a thread pool for dot products over ~10k values (the comparison of a 64x64
# image); on a busy machine that alone costs milliseconds. One thread, like torch below: least noise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
TINY = ("tiny-sd", "tiny-ddpm", "tiny-dit")
GOAL = 1.10


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import safetensors
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "safetensors": safetensors.__version__,
        "torch_threads": torch.get_num_threads(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    }
    return env


def _load(name: str) -> Any:
    from pytest_mps.pipelines import load_pipeline, prepare_pipeline

    return prepare_pipeline(load_pipeline(FIXTURES / name))


def _clock(fn: Any, sync: Any) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_pipeline(name: str, device: str, repeats: int, folder: Path, steps: int) -> dict[str, Any]:
    """Median seconds of bare calls and of parity checks with a stored or a cold reference."""
    from pytest_mps import assert_cpu_parity, default_inputs
    from pytest_mps.context import CheckContext, using_context
    from pytest_mps.reference_store import ReferenceStore, stored_entries
    from pytest_mps.references import ReferenceCache, ReferenceKey
    from pytest_mps.running import moved, run_pipeline
    from pytest_mps.target import Target

    target = Target(device, "bench")
    sync = target.synchronize
    pipe = _load(name).to(device)
    cpu_pipe = _load(name)  # the bare CPU call's own copy, never moved
    inputs = default_inputs(pipe, steps=steps)
    warm_folder = folder / f"{name}-{steps}-stored"
    cold_folder = folder / f"{name}-{steps}-cold"
    origins: dict[str, set[str]] = {"stored": set(), "cold": set()}

    def check(store_folder: Path, label: str) -> None:
        session = ReferenceCache(store=ReferenceStore(store_folder))  # a new session: empty memory
        with using_context(CheckContext(target=target, references=session)):
            result = assert_cpu_parity(pipe, inputs)
        origins.setdefault(label, set()).add(result.details["reference"])

    def bare_target() -> None:
        run_pipeline(pipe, inputs, target)

    def bare_cpu() -> None:
        run_pipeline(cpu_pipe, inputs)

    def stored() -> None:
        check(warm_folder, "stored")

    def cold() -> None:
        shutil.rmtree(cold_folder, ignore_errors=True)
        check(cold_folder, "cold")

    def read_reference() -> None:
        from pytest_mps.reference_store import verify_entry

        for entry in stored_entries(warm_folder):
            verify_entry(entry)

    saver = ReferenceStore(folder / f"{name}-{steps}-save")
    reference = run_pipeline(cpu_pipe, inputs)
    key = ReferenceKey("bench", name, "float32")

    def save_reference() -> None:
        saver.save(key, reference)

    def move_round_trip() -> None:  # what the CPU reference pays to move the pipeline there and back
        with moved(pipe, "cpu"):
            pass

    # Warm-up: first calls pay one-off costs (kernel selection, lazy imports, the weights hash); the
    # stored folder gets its reference here.
    check(warm_folder, "warm-up")
    for fn in (bare_target, bare_cpu, stored, cold):
        fn()
    origins = {"stored": set(), "cold": set()}

    order = (
        ("bare target", bare_target),
        ("bare cpu", bare_cpu),
        ("stored", stored),
        ("cold", cold),
        ("read+verify file", read_reference),
        ("write file", save_reference),
        ("move round trip", move_round_trip),
    )
    samples: dict[str, list[float]] = {label: [] for label, _ in order}
    for _ in range(repeats):  # interleaved, so drift hits every figure alike
        for label, fn in order:
            gc.collect()
            samples[label].append(_clock(fn, sync))
    median = {k: statistics.median(v) for k, v in samples.items()}
    reference_bytes = sum(p.stat().st_size for p in stored_entries(warm_folder))
    return {
        "pipeline": name,
        "steps": steps,
        "repeats": repeats,
        "median_seconds": median,
        "min_max_seconds": {k: (min(v), max(v)) for k, v in samples.items()},
        "reference_bytes": reference_bytes,
        "origins": {k: sorted(v) for k, v in origins.items()},
        "ratios": {
            "stored / target": median["stored"] / median["bare target"],
            "cold / (target + cpu)": median["cold"] / (median["bare target"] + median["bare cpu"]),
        },
        "overhead_ms": {
            "stored - target": (median["stored"] - median["bare target"]) * 1e3,
            "cold - (target + cpu)": (median["cold"] - median["bare target"] - median["bare cpu"]) * 1e3,
        },
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    ms = 1e3
    print()
    print(f"assert_cpu_parity with stored references vs bare calls (median ms; ratio goal <= {GOAL:.2f})")
    header = (
        f"{'pipeline':<10} {'steps':>5} {'target':>8} {'cpu':>8} {'t+c':>8} {'stored':>8} {'cold':>8} "
        f"{'file':>6} {'read':>6} {'write':>6} {'move':>6} {'stored/target':>13} {'cold/(t+c)':>11}  origins"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        m, r = row["median_seconds"], row["ratios"]
        print(
            f"{row['pipeline']:<10} {row['steps']:>5} {m['bare target'] * ms:8.2f} {m['bare cpu'] * ms:8.2f} "
            f"{(m['bare target'] + m['bare cpu']) * ms:8.2f} {m['stored'] * ms:8.2f} {m['cold'] * ms:8.2f} "
            f"{row['reference_bytes'] / 1024:5.0f}K {m['read+verify file'] * ms:6.2f} "
            f"{m['write file'] * ms:6.2f} {m['move round trip'] * ms:6.2f} "
            f"{r['stored / target']:13.3f} {r['cold / (target + cpu)']:11.3f}  "
            f"stored={','.join(row['origins']['stored'])} cold={','.join(row['origins']['cold'])}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per figure (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: least noise)")
    parser.add_argument("--pipelines", default=",".join(TINY), help="comma-separated tiny fixtures")
    parser.add_argument(
        "--steps",
        default="2,20",
        help="comma-separated inference steps (default 2,20: the fixtures' default, whose 10-30 ms calls "
        "show the check's fixed cost, and a realistic step count)",
    )
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()

    env = environment(args.device)
    print("environment:")
    for key, value in env.items():
        print(f"  {key:<14} {value}")
    with tempfile.TemporaryDirectory(prefix="bench_references_") as tmp:
        rows = [
            bench_pipeline(name, args.device, args.repeats, Path(tmp), int(steps))
            for steps in args.steps.split(",")
            for name in args.pipelines.split(",")
            if name
        ]
    print_table(rows)
    verdicts = [
        f"{r['pipeline']}@{r['steps']}: stored {'OK' if r['ratios']['stored / target'] <= GOAL else 'OVER'}"
        f" (+{r['overhead_ms']['stored - target']:.1f} ms), cold "
        f"{'OK' if r['ratios']['cold / (target + cpu)'] <= GOAL else 'OVER'}"
        f" (+{r['overhead_ms']['cold - (target + cpu)']:.1f} ms)"
        for r in rows
    ]
    honest = all(r["origins"] == {"stored": ["disk"], "cold": ["computed"]} for r in rows)
    print(
        "stored: one target call + fingerprints + reading and verifying the file + the comparison.\n"
        "cold: target + CPU calls + moving the pipeline to the CPU and back (checks.cpu_reference) + "
        "writing the file.\nread/write: the store's own part (safetensors, SHA-256, atomic rename)."
    )
    print()
    print(f"goals (ratio <= {GOAL:.2f}; fixed cost in ms):")
    for verdict in verdicts:
        print(f"  {verdict}")
    if not honest:
        print("WARNING: unexpected reference origins")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
