"""Benchmark (not a test): what pytest-mps's parity machinery costs, in one run, on one device.

(a) ``assert_cpu_parity(pipe)`` on the tiny fixture pipelines against the bare pipeline calls it
    stands for: one call on the target and one on the CPU with the same inputs, each timed the same
    way (``run_pipeline``: fresh generators, ``torch.inference_mode``, device synchronised before the
    clock is read, output converted to a numpy array). Three figures per pipeline:

    - ``cold``: a fresh CPU-reference cache (what the first parity check on a pipeline and inputs pays
      in a session): target call + CPU call + fingerprints + moving the pipeline to the CPU and back +
      the comparison. Judged against two bare calls (goal: ratio <= 1.10).
    - ``cold+hash``: ``cold`` plus re-hashing the weights (the weights digest is cached per module
      until its weights change, so a session pays this once per pipeline).
    - ``warm``: the CPU reference is in the session cache, so the check costs one target call plus
      fingerprints and the comparison. Judged against one bare target call (and shown against two).

    The bare CPU call runs on a second copy of the pipeline that stays on the CPU, so ``cold``'s ratio
    includes the cost of moving the pipeline between devices; that move is also timed on its own.

(b) How many times the ``mps_pipeline`` fixture loads a pipeline when 20 tests ask for the same one,
    in a real pytest run (``pytest.main`` on a generated test file, with a probe plugin that reads
    ``session_of(config).pipelines.loads`` at ``pytest_sessionfinish``; goal: 1), with the time per
    test; once with tests that only take the pipeline and once with tests that each call
    ``assert_cpu_parity`` (the CPU reference must then be computed once, not 20 times).

Usage::

    python benchmarks/bench_parity.py --device cpu --repeats 20
    python benchmarks/bench_parity.py --device cuda --repeats 30 --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
TINY = ("tiny-sd", "tiny-ddpm", "tiny-dit")
GOAL = 1.10


# --- environment ----------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = os.environ.get(var, "(unset)")
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = ", ".join(
            f"{p.get('internal_api')}:{p.get('num_threads')}" for p in threadpool_info()
        )
    except ImportError:
        pass
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    else:
        env["device_name"] = "cpu"
    return env


def print_environment(env: dict[str, Any]) -> None:
    print("environment:")
    for key, value in env.items():
        print(f"  {key:<14} {value}")


# --- (a) parity cost against bare calls -----------------------------------------------------------


def _load(name: str) -> Any:
    from pytest_mps.pipelines import load_pipeline, prepare_pipeline

    return prepare_pipeline(load_pipeline(FIXTURES / name))


def _clock(fn: Any, sync: Any) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_pipeline(name: str, device: str, repeats: int) -> dict[str, Any]:
    """Median seconds of bare calls and of parity checks for one tiny pipeline."""

    import pytest_mps.keys as keys
    import pytest_mps.references as references
    from pytest_mps import assert_cpu_parity, default_inputs
    from pytest_mps.running import moved, run_pipeline
    from pytest_mps.target import Target

    target = Target(device, "bench")
    sync = target.synchronize
    pipe = _load(name).to(device)
    cpu_pipe = _load(name)  # the bare CPU call's own copy, never moved
    inputs = default_inputs(pipe)

    def bare_target() -> None:
        run_pipeline(pipe, inputs, target)

    def bare_cpu() -> None:
        run_pipeline(cpu_pipe, inputs)

    def move_round_trip() -> None:
        with moved(pipe, "cpu"):
            pass

    def parity() -> Any:
        return assert_cpu_parity(pipe, inputs)

    def cold() -> None:
        references._SHARED = None
        parity()

    def cold_hash() -> None:
        references._SHARED = None
        keys._DIGESTS.clear()
        parity()

    def warm() -> None:
        parity()

    # Where the overhead goes: the pieces of a check that are not pipeline calls.
    from pytest_mps.checks import judge
    from pytest_mps.keys import inputs_fingerprint, pipeline_fingerprint
    from pytest_mps.tolerances import resolve_tolerance

    tolerance = resolve_tolerance("cpu_parity")
    out_a = run_pipeline(pipe, inputs, target).array
    out_b = run_pipeline(cpu_pipe, inputs).array

    def fingerprint_pipeline() -> None:
        pipeline_fingerprint(pipe)

    def fingerprint_inputs() -> None:
        inputs_fingerprint(inputs)

    def compare_outputs() -> None:
        judge(out_a, out_b, tolerance)

    # Warm-up: the first call of each kind pays one-off costs (kernel selection, allocator growth,
    # lazy imports, the first weights hash). Report it, but keep it out of the medians.
    first = {
        "first parity call": _clock(cold_hash, sync),
        "first bare target call": _clock(bare_target, sync),
        "first bare cpu call": _clock(bare_cpu, sync),
    }
    for fn in (bare_target, bare_cpu, move_round_trip, cold, warm):
        fn()

    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "bare target",
            "bare cpu",
            "move round trip",
            "cold",
            "cold+hash",
            "warm",
            "pipeline fingerprint",
            "inputs fingerprint",
            "judge",
        )
    }
    order = (
        ("bare target", bare_target),
        ("bare cpu", bare_cpu),
        ("move round trip", move_round_trip),
        ("cold", cold),
        ("cold+hash", cold_hash),
        ("warm", warm),
        ("pipeline fingerprint", fingerprint_pipeline),
        ("inputs fingerprint", fingerprint_inputs),
        ("judge", compare_outputs),
    )
    # One full collection before timing, none between samples: with torch, diffusers and transformers
    # imported a full gc.collect() walks ~400k objects and takes ~0.27 s, far more than a tiny call.
    gc.collect()
    for _ in range(repeats):  # interleaved, so drift hits every figure alike
        for label, fn in order:
            samples[label].append(_clock(fn, sync))
    # The check's own split of the last warm call, for the record.
    references._SHARED = None
    result = parity()
    median = {k: statistics.median(v) for k, v in samples.items()}
    spread = {k: (min(v), max(v)) for k, v in samples.items()}
    two = median["bare target"] + median["bare cpu"]
    return {
        "pipeline": name,
        "repeats": repeats,
        "median_seconds": median,
        "min_max_seconds": spread,
        "first_calls_seconds": first,
        "max_abs_target_vs_cpu": float(abs(out_a - out_b).max()),
        "ratios": {
            "cold / (target + cpu)": median["cold"] / two,
            "cold+hash / (target + cpu)": median["cold+hash"] / two,
            "warm / target": median["warm"] / median["bare target"],
            "warm / (target + cpu)": median["warm"] / two,
        },
        "check": {"passed": result.passed, "summary": result.summary, "timings": result.timings},
    }


def print_parity_table(rows: list[dict[str, Any]]) -> None:
    ms = 1e3
    print()
    print(f"(a) assert_cpu_parity vs bare calls (median ms; ratio goal <= {GOAL:.2f})")
    header = (
        f"{'pipeline':<10} {'target':>8} {'cpu':>8} {'t+c':>8} {'move':>7} {'cold':>8} {'c+hash':>8} "
        f"{'warm':>8} {'cold/(t+c)':>11} {'c+h/(t+c)':>10} {'warm/t':>7} {'warm/(t+c)':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        m, r = row["median_seconds"], row["ratios"]
        print(
            f"{row['pipeline']:<10} {m['bare target'] * ms:8.2f} {m['bare cpu'] * ms:8.2f} "
            f"{(m['bare target'] + m['bare cpu']) * ms:8.2f} {m['move round trip'] * ms:7.2f} "
            f"{m['cold'] * ms:8.2f} {m['cold+hash'] * ms:8.2f} {m['warm'] * ms:8.2f} "
            f"{r['cold / (target + cpu)']:11.3f} {r['cold+hash / (target + cpu)']:10.3f} "
            f"{r['warm / target']:7.3f} {r['warm / (target + cpu)']:10.3f}"
        )
    print(
        "overhead pieces (median ms): "
        + "; ".join(
            f"{row['pipeline']}: "
            + ", ".join(
                f"{k} {row['median_seconds'][k] * ms:.2f}"
                for k in ("pipeline fingerprint", "inputs fingerprint", "judge", "move round trip")
            )
            for row in rows
        )
    )
    print(
        "first calls (warm-up, ms): "
        + "; ".join(
            f"{row['pipeline']}: "
            + ", ".join(f"{k} {v * ms:.1f}" for k, v in row["first_calls_seconds"].items())
            for row in rows
        )
    )


# --- (b) pipeline loads through the mps_pipeline fixture ------------------------------------------

_TEST_TEMPLATE = """
import pytest

PATH = {path!r}


@pytest.mark.parametrize("i", range({count}))
def test_same_pipeline(mps_pipeline, i):
    pipe = mps_pipeline(PATH)
    assert pipe.device.type == {device!r}
    {body}
"""

_BODIES = {
    "fixture only": "",
    "fixture + assert_cpu_parity": "from pytest_mps import assert_cpu_parity\n    assert_cpu_parity(pipe)",
}


class LoadProbe:
    """A pytest plugin that reads the session's pipeline and reference caches at the end."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.session: dict[str, Any] = {}
        self._per_test: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        self._per_test[report.nodeid] = self._per_test.get(report.nodeid, 0.0) + report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1
        if report.when == "teardown":
            self.durations.append(self._per_test[report.nodeid])

    def pytest_sessionfinish(self, session: Any) -> None:
        from pytest_mps.plugin import session_of

        mps = session_of(session.config)
        refs = mps.references
        self.session = {
            "loads": mps.pipelines.loads,
            "evictions": mps.pipelines.evictions,
            "references_computed": refs.computed,
            "reference_hits": refs.hits,
            "target": mps.target.label,
        }


def _plugin_args() -> list[str]:
    """``-p pytest_mps.plugin`` unless the installed distribution registers it already."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ["-p", "pytest_mps.plugin"]
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value.startswith("pytest_mps"):
            return []
    return ["-p", "pytest_mps.plugin"]


def bench_loads(device: str, count: int, pipeline: str) -> list[dict[str, Any]]:
    import pytest

    rows = []
    for label, body in _BODIES.items():
        with tempfile.TemporaryDirectory(prefix="bench_loads_") as tmp:
            folder = Path(tmp)
            (folder / "pytest.ini").write_text("[pytest]\n")
            slug = label.replace(" ", "_").replace("+", "and")
            test_file = folder / f"test_loads_{slug}.py"
            test_file.write_text(
                textwrap.dedent(
                    _TEST_TEMPLATE.format(
                        path=str(FIXTURES / pipeline), count=count, device=device, body=body
                    )
                )
            )
            probe = LoadProbe()
            args = [
                str(test_file),
                "-c",
                str(folder / "pytest.ini"),
                "--rootdir",
                str(folder),
                "--mps-device",
                device,
                "-p",
                "no:cacheprovider",
                "-q",
                "--no-header",
                "-W",
                "ignore::DeprecationWarning",
                "-W",
                "ignore::pytest.PytestAssertRewriteWarning",
                *_plugin_args(),
            ]
            log = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(log):
                code = pytest.main(args, plugins=[probe])
            wall = time.perf_counter() - start
        text = log.getvalue().strip().splitlines()
        if int(code) != 0:  # show what went wrong
            print("\n".join(text[-60:]))
        last = next(
            (line for line in reversed(text) if " in " in line and ("passed" in line or "failed" in line)), ""
        )
        durations = probe.durations
        rows.append(
            {
                "variant": label,
                "pipeline": pipeline,
                "tests": count,
                "exit_code": int(code),
                "pytest_summary": last.strip("= "),
                "outcomes": probe.outcomes,
                **probe.session,
                "wall_seconds": wall,
                "first_test_seconds": durations[0] if durations else None,
                "median_test_seconds": statistics.median(durations[1:]) if len(durations) > 1 else None,
                "mean_test_seconds": statistics.mean(durations) if durations else None,
            }
        )
    return rows


def print_loads_table(rows: list[dict[str, Any]]) -> None:
    print()
    print("(b) mps_pipeline loads in one pytest session (goal: 1 load)")
    header = (
        f"{'variant':<30} {'tests':>5} {'passed':>6} {'loads':>5} {'refs computed':>13} {'ref hits':>8} "
        f"{'1st test ms':>11} {'median ms':>9} {'mean ms':>8} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        first = row["first_test_seconds"]
        med = row["median_test_seconds"]
        mean = row["mean_test_seconds"]
        print(
            f"{row['variant']:<30} {row['tests']:>5} {row['outcomes'].get('passed', 0):>6} "
            f"{row.get('loads', '?')!s:>5} {row.get('references_computed', '?')!s:>13} "
            f"{row.get('reference_hits', '?')!s:>8} "
            f"{(first or 0) * 1e3:11.1f} {(med or 0) * 1e3:9.2f} {(mean or 0) * 1e3:8.2f} "
            f"{row['wall_seconds']:7.2f}"
        )
    for row in rows:
        print(
            f"  pytest ({row['variant']}): {row['pytest_summary']} [exit {row['exit_code']}], "
            f"target {row.get('target')}"
        )


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per figure (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: tiny pipelines gain nothing from more, and one thread "
        "keeps OpenMP spin-waiting from adding noise)",
    )
    parser.add_argument("--pipelines", default=",".join(TINY), help="comma-separated tiny fixtures")
    parser.add_argument("--tests", type=int, default=20, help="tests asking for the same pipeline in (b)")
    parser.add_argument("--loads-pipeline", default="tiny-ddpm")
    parser.add_argument("--skip-loads", action="store_true", help="skip (b)")
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
    print_environment(env)
    rows = [bench_pipeline(name, args.device, args.repeats) for name in args.pipelines.split(",") if name]
    print_parity_table(rows)
    loads = [] if args.skip_loads else bench_loads(args.device, args.tests, args.loads_pipeline)
    if loads:
        print_loads_table(loads)
    verdicts = [
        f"{r['pipeline']}: cold {'OK' if r['ratios']['cold / (target + cpu)'] <= GOAL else 'OVER'}, "
        f"warm {'OK' if r['ratios']['warm / target'] <= GOAL else 'OVER'}"
        for r in rows
    ] + [f"loads ({x['variant']}): {'OK' if x.get('loads') == 1 else 'NOT 1'}" for x in loads]
    print()
    print("goals: " + "; ".join(verdicts))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "parity": rows, "loads": loads}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
