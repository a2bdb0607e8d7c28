"""Benchmark (not a test): what ``--mps-isolate`` costs a project's own session, against the same
session in-process.

A throw-away project holds one file of ``--tests`` quick device tests (each moves a small tensor to
``mps_device`` and sums it) and, with ``--plain N``, N tests that use no device. The same ``pytest``
command runs it twice per repeat, interleaved, in fresh processes: in-process (``--no-mps-isolate``) and
isolated (``--mps-isolate``: one worker session serves every device test; it starts, collects and
imports torch while the parent starts). With ``--pipeline`` the device tests instead run
``assert_cpu_parity`` on the tiny DDPM fixture through ``mps_pipeline`` (one load, cached, in either
mode). The figures are wall-clock seconds of the whole ``pytest`` command (medians); the ratio is
isolated over in-process, side by side from the same run.

Usage::

    python benchmarks/bench_isolation_tests.py                      # 10 device tests, cpu target, 3 repeats
    python benchmarks/bench_isolation_tests.py --tests 10 --plain 10 --repeats 5
    python benchmarks/bench_isolation_tests.py --pipeline --device cuda   # on a GPU machine
    python benchmarks/bench_isolation_tests.py --json bench_isolation_tests.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

QUICK = """
import torch


def test_device_{i}(mps_device):
    assert torch.ones(64, device=mps_device).sum().item() == 64
"""

PIPELINE = """
from pytest_mps import assert_cpu_parity


def test_device_{i}(mps_pipeline):
    assert_cpu_parity(mps_pipeline({ddpm!r}))
"""

PLAIN = """

def test_plain_{i}():
    assert sum(range(10)) == 45
"""


def _project(folder: Path, tests: int, plain: int, pipeline: bool) -> None:
    body = "import torch\n" if not pipeline else "from pytest_mps import assert_cpu_parity\n"
    template = PIPELINE if pipeline else QUICK
    for i in range(tests):
        body += template.format(i=i, ddpm=str(FIXTURES / "tiny-ddpm")).split("\n", 2)[2]
    for i in range(plain):
        body += PLAIN.format(i=i)
    (folder / "test_bench.py").write_text(body)
    (folder / "pytest.ini").write_text("[pytest]\n")


def _run(folder: Path, device: str, isolate: bool, env: dict[str, str]) -> tuple[float, str]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--mps-device",
        device,
        "--mps-isolate" if isolate else "--no-mps-isolate",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode != 0:
        raise SystemExit(
            f"the {'isolated' if isolate else 'in-process'} run failed:\n{done.stdout}{done.stderr}"
        )
    return seconds, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10, help="device tests in the file (default 10)")
    parser.add_argument("--plain", type=int, default=0, help="tests without the device (default 0)")
    parser.add_argument(
        "--pipeline", action="store_true", help="device tests run assert_cpu_parity on tiny-ddpm"
    )
    parser.add_argument("--device", default="cpu", help="the target (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each mode (median)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default 1)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTEST_ADDOPTS": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    times: dict[str, list[float]] = {"in-process": [], "isolated": []}
    summary = {}
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        folder = Path(tmp)
        _project(folder, args.tests, args.plain, args.pipeline)
        _run(folder, args.device, False, env)  # untimed: warms the file system cache and bytecode
        for _ in range(max(1, args.repeats)):
            for mode in ("in-process", "isolated"):
                seconds, summary[mode] = _run(folder, args.device, mode == "isolated", env)
                times[mode].append(seconds)
    inproc = statistics.median(times["in-process"])
    isolated = statistics.median(times["isolated"])
    kind = "assert_cpu_parity on tiny-ddpm" if args.pipeline else "quick tensor"
    print(f"bench_isolation_tests: {platform.platform()}, Python {platform.python_version()}")
    print(
        f"{args.tests} {kind} device tests + {args.plain} plain tests, target {args.device}, "
        f"OMP_NUM_THREADS={args.threads}, {args.repeats} interleaved repeats (medians of whole pytest runs)"
    )
    rows = [
        ("mode", "wall s", "runs", "pytest says"),
        (
            "in-process",
            f"{inproc:.2f}",
            " ".join(f"{t:.2f}" for t in times["in-process"]),
            summary["in-process"],
        ),
        ("isolated", f"{isolated:.2f}", " ".join(f"{t:.2f}" for t in times["isolated"]), summary["isolated"]),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    extra = isolated - inproc
    print(
        f"ratio isolated / in-process: {isolated / inproc:.2f}  (+{extra:.2f} s per session: "
        f"{extra / max(1, args.tests):.3f} s per device test, amortised over {args.tests})"
    )
    if args.json:
        figures: dict[str, Any] = {
            "tests": args.tests,
            "plain": args.plain,
            "pipeline": args.pipeline,
            "device": args.device,
            "threads": args.threads,
            "runs": times,
            "in_process_s": inproc,
            "isolated_s": isolated,
            "ratio": isolated / inproc,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
