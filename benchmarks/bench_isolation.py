"""Benchmark (not a test): what crash isolation costs, against the same suite checks in-process.

For each pipeline, the suite's checks (``pytest_mps.suite.run_check``, exactly what ``pytest-mps check``
runs) are timed three ways, each on a fresh load:

- ``in-process``: load and checks in this process (``--no-isolate``), after an untimed warm-up run of
  every pipeline (a pytest session pays its imports and first-call costs once; the imports are
  measured on their own, as ``import``).
- ``isolated, cold``: a new worker process (``IsolatedRunner``): spawn, import torch and diffusers,
  load the pipeline in the child, run the checks over the JSON pipe. What the first pipeline of a
  session, and the first check after a crash, pay.
- ``isolated, spare ready``: the worker was started ahead of need and has done its imports (the plugin
  starts the next pipeline's worker while the current one runs), so it pays load + checks + the pipe.

Each ratio is isolated time over in-process time. Then one session over all the pipelines, the way
``pytest-mps check`` runs them (a spare for the next pipeline started when a pipeline starts), against
the in-process session (one import + every pipeline's load and checks).

Usage::

    python benchmarks/bench_isolation.py                       # tiny-sd, tiny-ddpm, tiny-dit, all checks
    python benchmarks/bench_isolation.py --threads 1 --repeats 3 --checks load,inference,cpu_parity
    python benchmarks/bench_isolation.py --json bench_isolation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
TINY = ("tiny-sd", "tiny-ddpm", "tiny-dit")


def _in_process(spec: Any, settings: Any, checks: list[str]) -> tuple[float, list[str]]:
    from pytest_mps.suite import InProcessRunner

    runner = InProcessRunner(spec, settings)
    start = time.perf_counter()
    outcomes = [runner.load(), *(runner.check(name) for name in checks if name != "load")]
    seconds = time.perf_counter() - start
    runner.close()
    return seconds, _problems(outcomes)


def _isolated(spec: Any, settings: Any, checks: list[str], pool: Any) -> tuple[float, list[str], Any]:
    from pytest_mps.isolation import IsolatedRunner
    from pytest_mps.target import Target

    runner = IsolatedRunner(
        spec, settings, target=Target(settings.device, settings.device), timeout=None, pool=pool
    )
    start = time.perf_counter()
    outcomes = [runner.load(), *(runner.check(name) for name in checks if name != "load")]
    seconds = time.perf_counter() - start
    worker = runner._worker
    ready = dict(worker.ready or {}) if worker is not None else {}
    runner.close()
    return seconds, _problems(outcomes), ready


def _problems(outcomes: list[Any]) -> list[str]:
    return [
        f"{o.result.check}: {o.result.summary}"
        for o in outcomes
        if o.result is not None and not o.result.passed
    ]


def _import_seconds(env: dict[str, str]) -> float:
    """Wall time of a fresh interpreter doing a worker's imports (what a cold worker pays first)."""
    code = "import time; t = time.perf_counter(); from pytest_mps.worker import _preload; _preload(); "
    code += "print(time.perf_counter() - t)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    total = time.perf_counter() - start
    return max(total, float(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    from pytest_mps.suite import CHECKS, PipelineSpec, SuiteSettings, default_target_name, pipeline_specs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", default=[str(FIXTURES / n) for n in TINY])
    parser.add_argument("--checks", default=",".join(CHECKS))
    parser.add_argument("--device", default=None, help="target (default: as pytest-mps check picks)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each way per pipeline (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads here and in workers")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    env_extra: dict[str, str] = {}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        env_extra["OMP_NUM_THREADS"] = str(args.threads)
    import diffusers  # the in-process import, paid once per session: measured below, not per pipeline
    import torch

    diffusers.DiffusionPipeline  # noqa: B018
    from pytest_mps.isolation import WorkerPool

    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    device = args.device or default_target_name()
    settings = SuiteSettings(device=device)
    specs: list[PipelineSpec] = pipeline_specs(args.pipelines)
    child_env = {**os.environ, **env_extra}
    import_s = statistics.median(_import_seconds(child_env) for _ in range(max(1, args.repeats)))

    print(
        f"bench_isolation: {platform.platform()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    print(
        f"target {device}; torch threads here {torch.get_num_threads()}, workers "
        f"OMP_NUM_THREADS={child_env.get('OMP_NUM_THREADS', 'unset')}; checks: {', '.join(checks)}"
    )
    print(f"a worker's imports (torch, diffusers, pytest_mps) in a fresh interpreter: {import_s:.2f} s")
    for spec in specs:  # untimed: this process's first-call costs (lazy imports, kernel set-up) go here
        _in_process(spec, settings, checks)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for spec in specs:
        inproc: list[float] = []
        cold: list[float] = []
        warm: list[float] = []
        ready: dict[str, Any] = {}
        for _ in range(max(1, args.repeats)):
            seconds, bad = _in_process(spec, settings, checks)
            inproc.append(seconds)
            problems += [f"{spec.label} in-process {b}" for b in bad]
            pool = WorkerPool(env=env_extra)
            seconds, bad, ready = _isolated(spec, settings, checks, pool)
            cold.append(seconds)
            problems += [f"{spec.label} isolated {b}" for b in bad]
            pool.prewarm()
            assert pool._spare is not None and pool._spare.wait_ready()
            seconds, bad, _ = _isolated(spec, settings, checks, pool)
            warm.append(seconds)
            pool.close()
        row: dict[str, Any] = {
            "pipeline": spec.label,
            "in_process_s": statistics.median(inproc),
            "isolated_cold_s": statistics.median(cold),
            "isolated_spare_s": statistics.median(warm),
            "worker_imports_s": ready.get("seconds"),
        }
        row["cold_ratio"] = row["isolated_cold_s"] / row["in_process_s"]
        row["spare_ratio"] = row["isolated_spare_s"] / row["in_process_s"]
        rows.append(row)

    # One session over every pipeline, as pytest-mps check runs it (spare for the next pipeline).
    pool = WorkerPool(env=env_extra)
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        from pytest_mps.isolation import IsolatedRunner
        from pytest_mps.target import Target

        more = i < len(specs) - 1
        runner = IsolatedRunner(
            spec,
            settings,
            target=Target(device, device),
            timeout=None,
            pool=pool,
            on_worker=pool.prewarm if more else None,
        )
        runner.load()
        for name in checks:
            if name != "load":
                runner.check(name)
        runner.close()
    session_isolated = time.perf_counter() - start
    pool.close()
    session_inproc = import_s + sum(r["in_process_s"] for r in rows)

    head = (
        "pipeline",
        "in-process",
        "isolated cold",
        "ratio",
        "isolated, spare ready",
        "ratio",
        "worker imports",
    )
    table: list[tuple[str, ...]] = [head]
    for r in rows:
        imports = f"{r['worker_imports_s']:.2f} s" if r["worker_imports_s"] is not None else "-"
        table.append(
            (
                r["pipeline"],
                f"{r['in_process_s']:.2f} s",
                f"{r['isolated_cold_s']:.2f} s",
                f"{r['cold_ratio']:.2f}x",
                f"{r['isolated_spare_s']:.2f} s",
                f"{r['spare_ratio']:.2f}x",
                imports,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    print()
    for n, line in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print(
        f"session of {len(specs)} pipeline(s): in-process {session_inproc:.2f} s (import {import_s:.2f} s + "
        f"loads and checks {session_inproc - import_s:.2f} s); isolated {session_isolated:.2f} s; "
        f"ratio {session_isolated / session_inproc:.2f}x"
    )
    if problems:
        print("checks that failed (timings still count):")
        for problem in problems:
            print(f"  {problem}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device,
                    "checks": checks,
                    "worker_imports_s": import_s,
                    "pipelines": rows,
                    "session": {"in_process_s": session_inproc, "isolated_s": session_isolated},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
