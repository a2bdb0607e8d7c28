"""What the emulated MPS target costs: plain CPU vs emulated MPS vs the audit, side by side, in one run.

Usage::

    python benchmarks/bench_emulation.py [--rounds 20] [--pipeline tiny-sd] [--no-sdxl]

1. The tiny fixture pipeline (``fixtures/tiny-sd`` by default; 2 steps, its default size) is called
   ``--rounds`` times in each mode, interleaved so that machine load hits all modes alike: a plain CPU
   call, the same call on the emulated target (raising mode, pipeline already moved), and ``audit()``
   (collecting mode, including its moves to the emulated device and back). Reported: min and median
   milliseconds and the ratio to CPU (goal: emulation under 3x CPU). Warm-up calls come first (they load
   the op-coverage table and fill the per-signature kernel cache, once per process).
2. An SDXL-shaped ``UNet2DConditionModel`` is built from a hand-written config on the meta device (no
   download, no weights) and audited at 1024x1024 (and 2048x2048)
   with :func:`pytest_mps.hazard_audit.audit_module`;
   reported: build time, audit time, findings, and how much the process's peak RSS grew.

Not a test: numbers depend on the machine; min is the least noisy statistic on a shared machine.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pytest_mps.emulation import EmulatedMPS  # noqa: E402
from pytest_mps.emulation.shape_trace import spec  # noqa: E402
from pytest_mps.hazard_audit import audit, audit_module  # noqa: E402

# SDXL base 1.0's UNet config (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json), by hand.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.ERROR)


def _load(name: str) -> Any:
    from diffusers import DiffusionPipeline

    folder = REPO / "fixtures" / name
    if not folder.is_dir():
        sys.exit(f"{folder} is missing: run `python fixtures/build_fixtures.py` first")
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(pipe: Any) -> dict[str, Any]:
    from pytest_mps.inputs import default_inputs

    return default_inputs(pipe)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu_timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, process CPU) seconds. CPU time counts only this process's work, so it is far less disturbed
    by other processes on a shared machine than wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_pipeline(name: str, rounds: int) -> None:
    pipe = _load(name)
    emulated = _load(name)
    emulation = EmulatedMPS()
    with emulation:
        move = _timed(lambda: emulated.to("mps"))

    def cpu_call() -> Any:
        torch.manual_seed(0)
        return pipe(**_inputs(pipe)).images

    def emulated_call() -> Any:
        with emulation:
            torch.manual_seed(0)
            return emulated(**_inputs(emulated)).images

    def audit_call() -> Any:
        torch.manual_seed(0)
        report = audit(pipe)
        assert report.ok, report.format()
        return report.output

    # Warm-up: loads op_coverage (once per process) and fills the kernel cache; checks equality too.
    first = {"cpu": _timed(cpu_call), "emulated": _timed(emulated_call), "audit": _timed(audit_call)}
    same = bool((cpu_call() == emulated_call()).all())
    calls = {"cpu": cpu_call, "emulated": emulated_call, "audit": audit_call}
    wall: dict[str, list[float]] = {mode: [] for mode in calls}
    cpu: dict[str, list[float]] = {mode: [] for mode in calls}
    for _ in range(rounds):
        for mode, call in calls.items():
            w, c = _cpu_timed(call)
            wall[mode].append(w)
            cpu[mode].append(c)

    print(f"\n== {name}: {rounds} interleaved rounds (2 steps, default size); output equal to CPU: {same}")
    header = ("mode", "wall min ms", "wall med ms", "x CPU", "cpu-time min ms", "x CPU", "1st call ms")
    print("{:<9} {:>12} {:>12} {:>6} {:>16} {:>6} {:>12}".format(*header))
    for mode in calls:
        w_min, w_med, c_min = min(wall[mode]), statistics.median(wall[mode]), min(cpu[mode])
        print(
            f"{mode:<9} {w_min * 1e3:>12.1f} {w_med * 1e3:>12.1f} {w_min / min(wall['cpu']):>6.2f}"
            f" {c_min * 1e3:>16.1f} {c_min / min(cpu['cpu']):>6.2f} {first[mode] * 1e3:>12.1f}"
        )
    print(f"pipe.to('mps') on the emulated target (once): {move * 1e3:.1f} ms")


def bench_sdxl(resolutions: tuple[int, ...]) -> None:
    from diffusers import UNet2DConditionModel

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    build = time.perf_counter() - start
    params = sum(p.numel() for p in unet.parameters())
    print(
        f"\n== SDXL-shaped UNet2DConditionModel on meta: {params / 1e9:.2f} B parameters, "
        f"built in {build:.2f} s (no weights allocated)"
    )
    header = ("resolution", "audit s (1st)", "audit s (min of 3)", "findings", "aborts")
    print("{:<11} {:>14} {:>19} {:>9} {:>7}  worst".format(*header))
    for res in resolutions:
        latent = res // 8

        def run(latent: int = latent) -> Any:
            return audit_module(
                unet,
                spec(2, 4, latent, latent),
                999,
                encoder_hidden_states=spec(2, 77, 2048),
                added_cond_kwargs={"text_embeds": spec(2, 1280), "time_ids": spec(2, 6)},
                module_name="unet",
            )

        times: list[float] = []
        report = None
        for _ in range(3):
            start = time.perf_counter()
            report = run()
            times.append(time.perf_counter() - start)
        assert report is not None and report.completed, report.format() if report else ""
        worst = max(report.findings, key=lambda f: f.nbytes or 0, default=None)
        detail = "-"
        if worst is not None and worst.nbytes:
            detail = f"{worst.kind} {worst.nbytes / 2**30:.1f} GiB at {worst.module}"
        print(
            f"{res}x{res:<6} {times[0]:>14.2f} {min(times):>19.2f} {sum(f.count for f in report.findings):>9}"
            f" {sum(f.count for f in report.aborts):>7}  {detail}"
        )
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"peak RSS grew by {grown:.0f} MiB while building and tracing (the fp32 weights alone are 9.6 GiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pipeline", default="tiny-sd", choices=("tiny-sd", "tiny-ddpm", "tiny-dit"))
    parser.add_argument("--no-sdxl", action="store_true", help="skip the production-size UNet audit")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: a tiny pipeline gains nothing from more, and on a busy "
        "machine OpenMP barriers between oversubscribed threads swamp every other cost)",
    )
    args = parser.parse_args(argv)
    _quiet()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench_pipeline(args.pipeline, args.rounds)
    if not args.no_sdxl:
        bench_sdxl((1024, 2048))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
