"""Benchmark (not a test): what a full ``pytest-mps check`` costs next to its floor, the work no
implementation can avoid (issue 14).

The check is the user's command, run as a subprocess: ``pytest-mps check PATHS --device D [--checks
...]``, timed from start to exit, three ways:

- ``first run``: nothing stored (``pytest-mps check`` keeps references in memory);
- ``first run, storing``: ``-- --mps-references DIR`` with an empty folder (the references are written);
- ``stored``: the same again, the references now read from DIR (no CPU reference is computed).

The floor is measured in a fresh process: importing torch and diffusers once, then for each pipeline its
load (from the folder, moved to the target) and every call the selected checks need, each timed bare
(``run_pipeline``'s synchronised wall time, or the audit's own time):

- the single call (inference; cpu_parity's target side; determinism's first run; batch's item 0; attention
  slicing's unsliced run; the scheduler sweep's own scheduler), once;
- its CPU reference (cpu_parity; float16's float32 reference; the sweep's own scheduler), once, and only
  without stored references;
- batch: the batched call and the single call of item 1 (other prompt and seed);
- attention slicing: the sliced call (where the pipeline can slice); determinism: one more call;
- float16: the float16 call (the conversion and the exact restoration of the weights are not counted);
- schedulers: for each other compatible scheduler, its target call and its CPU call, and on a stand-in
  other than the emulated device the hazard audit of every scheduler;
- audit (emulated target): one audit; speed: nothing when the CPU reference was computed in the run at
  the speed check's size, else its probe (a 1-step call on each device), shown separately.

Printed per device and mode: check seconds, floor seconds and their ratio (goal: at most 1.2, issue 14),
and the floor's parts. The rounds alternate floor and checks so both see the same machine load; medians
over ``--rounds``.

Usage::

    python benchmarks/bench_check_cost.py                                  # tiny pipelines, cpu + emulated
    python benchmarks/bench_check_cost.py --devices cpu --rounds 3 --checks load,inference,cpu_parity
    python benchmarks/bench_check_cost.py --full                           # + SD-1.5 shape on the GPU
    python benchmarks/bench_check_cost.py --full --skip-tiny               # the SD-1.5 shape only

``--full`` (CUDA only) builds an SD-1.5-shaped pipeline from its configs with random weights (nothing is
downloaded: see ``device_evidence.py``), saves it with safetensors to a temporary folder, and measures it
at 512x512 with 20 steps on the checks of issue 14 (``load,inference,cpu_parity,batch,attention_slicing,
determinism,float16,speed``; ``--full-checks`` to change). JSON with ``--json PATH`` (and ``$OUT/
bench_check_cost.json`` when ``$OUT`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
TINY = ("tiny-sd", "tiny-ddpm", "tiny-dit")
ISSUE_CHECKS = "load,inference,cpu_parity,batch,attention_slicing,determinism,float16,speed"
MODES = ("first run", "first run, storing", "stored")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


# --- the check, as a user runs it --------------------------------------------------------------------


def check_command(
    paths: list[str],
    device: str,
    checks: str | None,
    *,
    steps: int,
    size: int | None,
    references: Path | None,
) -> list[str]:
    """``pytest-mps check`` for these pipelines and options."""
    cmd = [sys.executable, "-m", "pytest_mps", "check", *paths, "--device", device, "--steps", str(steps)]
    if size:
        cmd += ["--size", str(size)]
    if checks:
        cmd += ["--checks", checks]
    if references is not None:
        cmd += ["--", "--mps-references", str(references)]
    return cmd


def time_check(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (the process and its workers, every thread) of one ``pytest-mps check`` run
    (a failing check is fine, a crash is not)."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode not in (0, 1):
        raise SystemExit(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


# --- the floor, measured in a fresh process ------------------------------------------------------------


def floor_command(paths: list[str], device: str, checks: str, *, steps: int, size: int | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--floor-worker", "--floor-device", device]
    cmd += ["--checks", checks, "--steps", str(steps), "--pipelines", ",".join(paths)]
    return cmd + (["--size", str(size)] if size else [])


def measure_floor(cmd: list[str]) -> dict[str, Any]:
    """Run the floor worker; its parts, and the wall and CPU seconds of the whole process (interpreter
    start and exit included)."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("FLOOR ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(
            f"floor worker failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    data = json.loads(line[len("FLOOR ") :])
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    data["process"] = [wall, cpu]
    return data


def _call_plan(checks: set[str]) -> dict[str, bool]:
    return {
        name: name in checks
        for name in (
            "inference",
            "cpu_parity",
            "batch",
            "attention_slicing",
            "determinism",
            "float16",
            "schedulers",
            "audit",
            "speed",
        )
    }


def _pipeline_floor(
    path: str, target: Any, plan: dict[str, bool], options: argparse.Namespace
) -> dict[str, float]:
    """One pipeline's load and bare calls (seconds by part)."""
    import torch

    from pytest_mps.checks.schedulers import scheduler_classes
    from pytest_mps.checks.slicing import _attention_modules
    from pytest_mps.emulated_target import audit_hazards, cpu_arithmetic
    from pytest_mps.input_spec import InputSpec
    from pytest_mps.inputs import split_batch
    from pytest_mps.pipelines import load_pipeline, prepare_pipeline
    from pytest_mps.running import moved, noise_in_float32, run_pipeline
    from pytest_mps.suite.suite_checks import PROBE_STEPS, _default_size

    parts: dict[str, list[float]] = {}  # name -> [wall, cpu]

    def add(name: str, work: Any) -> None:
        """Run ``work()`` and add its wall and CPU seconds (all threads of this process) to ``name``."""
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        target.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        total = parts.setdefault(name, [0.0, 0.0])
        total[0] += wall
        total[1] += cpu

    def load() -> None:
        nonlocal pipe
        pipe = prepare_pipeline(load_pipeline(path))
        pipe.to(target.torch_device())

    pipe: Any = None
    add("load", load)

    def on_target(call: dict[str, Any], **kw: Any) -> Any:
        return lambda: run_pipeline(pipe, call, target, **kw)

    def on_cpu(call: dict[str, Any]) -> Any:
        def run() -> None:
            with moved(pipe, "cpu"), cpu_arithmetic():
                run_pipeline(pipe, call)

        return run

    def audited(call: dict[str, Any]) -> Any:
        return lambda: audit_hazards(pipe, call)

    spec = InputSpec(steps=options.steps, height=options.size, width=options.size)
    single = spec.build(pipe)
    singles = ("inference", "cpu_parity", "batch", "attention_slicing", "determinism", "schedulers")
    if any(plan[c] for c in singles):
        add("target: single call", on_target(single))
    if plan["cpu_parity"] or plan["float16"] or plan["schedulers"]:
        add("cpu: reference (first run only)", on_cpu(single))
    if plan["batch"]:
        batch = spec.build(pipe, batch_size=2)
        add("target: batch", on_target(batch))
        add("target: batch", on_target(split_batch(batch, 2)[1]))
    if plan["attention_slicing"]:
        modules = _attention_modules(pipe)
        saved = [getattr(m, "processor", None) for m in modules]
        if modules:
            pipe.enable_attention_slicing(1)
            if any(getattr(m, "processor", None) is not p for m, p in zip(modules, saved, strict=True)):
                add("target: sliced call", on_target(single))
            pipe.disable_attention_slicing()
    if plan["determinism"]:
        add("target: determinism", on_target(single, global_seed=1))
    if plan["float16"]:
        with moved(pipe, dtype=torch.float16), noise_in_float32():
            add("target: float16", on_target(single))
    if plan["schedulers"]:
        original = pipe.scheduler
        for cls in scheduler_classes(pipe, "compatible"):
            try:
                pipe.scheduler = cls.from_config(original.config)
            except Exception:
                continue
            try:
                if cls is not type(original):
                    add("schedulers: target", on_target(single))
                    add("schedulers: cpu", on_cpu(single))
                if not target.is_mps_like:
                    add("schedulers: audit", audited(single))
            except Exception:  # fails here as in the check (on the CPU too): what it cost counts
                pass
        pipe.scheduler = original
    if plan["audit"] and target.name == "emulated":
        add("audit", audited(single))
    if plan["speed"]:
        side = options.size or _default_size(pipe)
        call = spec.build(pipe, height=side, width=side)
        probe = dict(call)
        if isinstance(call.get("num_inference_steps"), int) and call["num_inference_steps"] > PROBE_STEPS:
            probe["num_inference_steps"] = PROBE_STEPS
        add("speed probe: target", on_target(probe))
        add("speed probe: cpu", on_cpu(probe))
        same = call.get("height") == single.get("height") and call.get("width") == single.get("width")
        parts["speed: same size as the references"] = [float(same), float(same)]
    return parts


def floor_worker(options: argparse.Namespace) -> int:
    """Run in a fresh process: import once, then per pipeline its load and every call the checks need,
    each timed bare. Prints one ``FLOOR {json}`` line."""
    started = time.perf_counter()
    import contextlib
    import warnings

    warnings.simplefilter("ignore")
    import torch  # the import is part of the floor
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    import pytest_mps.checks  # noqa: F401 - what the check's worker imports too
    from pytest_mps.registry import check_ids
    from pytest_mps.target import resolve_target

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    imports = time.perf_counter() - started
    target = resolve_target(options.floor_device)
    checks = set(options.checks.split(",")) if options.checks else set(check_ids())
    plan = _call_plan(checks)
    emulation: Any = contextlib.nullcontext()
    if target.name == "emulated":
        from pytest_mps.emulation import EmulatedMPS

        emulation = EmulatedMPS()
    out: dict[str, Any] = {"imports": imports, "torch": torch.__version__, "pipelines": {}}
    with emulation:
        for path in options.pipelines.split(","):
            out["pipelines"][path] = _pipeline_floor(path, target, plan, options)
            target.empty_cache()
    print("FLOOR " + json.dumps(out))
    return 0


def floor_seconds(floor: dict[str, Any], *, stored: bool, column: int) -> tuple[float, float]:
    """The floor of a run with or without stored references: the floor process's own seconds (imports,
    loads, the bare calls) less what that run does not need (the CPU reference when it is stored; the
    speed probe, returned apart: the speed check adds it where the run has no CPU timing of its own).
    ``column``: 0 for wall seconds, 1 for CPU seconds."""
    total = floor["process"][column]
    probe = 0.0
    for parts in floor["pipelines"].values():
        needs_probe = stored or not parts.get("speed: same size as the references", [1.0])[0]
        for name, seconds in parts.items():
            if name.startswith("speed probe"):
                total -= seconds[column]
                probe += seconds[column] if needs_probe else 0.0
            elif stored and name.startswith("cpu: reference"):
                total -= seconds[column]
    return total, probe


# --- the SD-1.5 shape --------------------------------------------------------------------------------


def build_full(folder: Path) -> str:
    """Save an SD-1.5-shaped pipeline with random weights (built on the GPU) to ``folder``."""
    import torch

    sys.path.insert(0, str(HERE))
    from device_evidence import build_sd15_random

    pipe = build_sd15_random("cuda")
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    torch.cuda.empty_cache()
    return str(folder)


# --- main --------------------------------------------------------------------------------------------


def measure(
    label: str,
    paths: list[str],
    device: str,
    checks: str | None,
    options: argparse.Namespace,
    *,
    steps: int,
    size: int | None,
) -> dict[str, Any]:
    """Floor and check runs, alternating, for ``options.rounds`` rounds; prints the table."""
    from pytest_mps.registry import check_ids

    chosen = checks or ",".join(check_ids())
    runs: dict[str, list[tuple[float, float]]] = {}
    floors: list[dict[str, Any]] = []
    for _ in range(options.rounds):
        floors.append(measure_floor(floor_command(paths, device, chosen, steps=steps, size=size)))
        for isolation in [i for i in options.isolation.split(",") if i]:
            with tempfile.TemporaryDirectory(prefix="bench-refs-") as refs:
                for mode, folder in zip(MODES, (None, Path(refs), Path(refs)), strict=True):
                    cmd = check_command(paths, device, checks, steps=steps, size=size, references=folder)
                    if isolation == "off":
                        cmd.insert(cmd.index("--device"), "--no-isolate")
                    runs.setdefault(f"{mode} (isolation {isolation})", []).append(time_check(cmd))
    print(f"\n{label}: device {device}, {steps} steps, size {size or 'smallest valid'}, checks {chosen}")
    print(
        f"  {options.rounds} round(s), medians. floor: imports + loads + bare calls; "
        "+probe: the floor with the speed check's probe (a 1-step call on each device)"
    )
    head = f"  {'run':36}{'check':>9}{'floor':>9}{'ratio':>7}{'+probe':>9}{'ratio':>7}"
    summary: dict[str, Any] = {}
    for column, unit in ((0, "wall s"), (1, "cpu s")):
        print(f"  [{unit}]\n{head}")
        for name, values in runs.items():
            stored = name.startswith("stored")
            check = statistics.median(v[column] for v in values)
            floor = statistics.median(floor_seconds(f, stored=stored, column=column)[0] for f in floors)
            probe = statistics.median(floor_seconds(f, stored=stored, column=column)[1] for f in floors)
            print(
                f"  {name:36}{check:9.2f}{floor:9.2f}{check / floor:7.2f}"
                f"{floor + probe:9.2f}{check / (floor + probe):7.2f}"
            )
            summary.setdefault(name, {})[unit] = {
                "check": check,
                "floor": floor,
                "probe": probe,
                "ratio": check / floor,
                "ratio_with_probe": check / (floor + probe),
            }
    names = {n for f in floors for p in f["pipelines"].values() for n in p if not n.startswith("speed: same")}
    parts = {"imports": statistics.median(f["imports"] for f in floors)}
    for name in names:
        parts[name] = statistics.median(
            sum(p.get(name, [0.0, 0.0])[0] for p in f["pipelines"].values()) for f in floors
        )
    ordered = sorted(parts.items(), key=lambda kv: -kv[1])
    print("  floor parts (wall s, summed over pipelines): " + ", ".join(f"{k} {v:.2f}" for k, v in ordered))
    return {
        "label": label,
        "device": device,
        "checks": chosen,
        "steps": steps,
        "size": size,
        "runs": runs,
        "floors": floors,
        "summary": summary,
        "parts": parts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="cpu,emulated", help="targets for the tiny pipelines")
    parser.add_argument("--pipelines", default=",".join(str(FIXTURES / n) for n in TINY))
    parser.add_argument(
        "--checks", default=None, help="comma-separated checks (default: all, as pytest-mps check)"
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="rounds (each: the floor, then the check runs)")
    parser.add_argument(
        "--isolation",
        default="on",
        help="crash isolation of the check runs: on (pytest-mps check's default), off, or on,off",
    )
    parser.add_argument("--skip-tiny", action="store_true", help="only the SD-1.5 shape (with --full)")
    parser.add_argument(
        "--full", action="store_true", help="also an SD-1.5-shaped pipeline on the GPU (cuda)"
    )
    parser.add_argument("--full-checks", default=ISSUE_CHECKS)
    parser.add_argument("--full-steps", type=int, default=20)
    parser.add_argument("--full-size", type=int, default=512)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor-device", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.floor_worker:
        return floor_worker(options)

    results = []
    if not options.skip_tiny:
        paths = options.pipelines.split(",")
        for device in options.devices.split(","):
            results.append(
                measure(
                    "tiny pipelines",
                    paths,
                    device,
                    options.checks,
                    options,
                    steps=options.steps,
                    size=options.size,
                )
            )
    if options.full:
        import torch

        if not torch.cuda.is_available():
            parser.error("--full needs a CUDA device (an SD-1.5 shape on the CPU takes minutes per call)")
        with tempfile.TemporaryDirectory(prefix="bench-sd15-") as tmp:
            folder = build_full(Path(tmp) / "sd15-random")
            results.append(
                measure(
                    "SD-1.5 shape (random weights)",
                    [folder],
                    "cuda",
                    options.full_checks,
                    options,
                    steps=options.full_steps,
                    size=options.full_size,
                )
            )
    outputs = [options.json] if options.json else []
    if os.environ.get("OUT"):
        outputs.append(Path(os.environ["OUT"]) / "bench_check_cost.json")
    for path in outputs:
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
