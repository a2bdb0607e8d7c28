"""Evidence (not a test): every pytest-mps check on every tiny fixture pipeline on one device, and the
key checks on a full-size Stable-Diffusion-1.5-shaped pipeline with random weights, with TF32 off,
at torch's defaults and on.

The full-size pipeline is built in code from SD 1.5's configurations (nothing is downloaded):

- ``UNet2DConditionModel``: SD 1.5's config (860 M parameters);
- ``AutoencoderKL``: SD's VAE config (84 M parameters);
- ``CLIPTextModel``: CLIP ViT-L/14's text config (123 M parameters, vocabulary 49408);
- the tokenizer of ``fixtures/tiny-sd`` (576 tokens). With random weights any tokenizer will do, as
  long as its ids are below the text model's vocabulary (575 < 49408): prompts tokenise to other ids
  than with SD's own tokenizer, but nothing else changes (77 positions, same shapes, same compute);
- ``PNDMScheduler`` with SD 1.5's scheduler config;
- ``safety_checker=None``, ``feature_extractor=None``, ``requires_safety_checker=False``; all ``eval()``.

Its weights are drawn by the modules' own initialisers after ``torch.manual_seed(seed)``, on the
device (``with torch.device(device)``): initialising 1.07 B parameters on the CPU takes tens of
seconds, on a GPU well under one. The checks then move it to the CPU for the reference themselves.
The images of an untrained pipeline are structured noise; the script prints their statistics so the
figures can be judged (a near-constant image makes the cosine distance insensitive: the Pearson
distance, 1 - correlation, is printed beside it).

Usage::

    python benchmarks/device_evidence.py --device cuda                 # tiny + full size (H100: ~3 min)
    python benchmarks/device_evidence.py --device cuda --quick         # tiny pipelines only
    python benchmarks/device_evidence.py --device cpu --quick          # dry run on the CPU
    python benchmarks/device_evidence.py --device cpu --skip-tiny --full-size 128 --full-steps 2

JSON goes to ``$OUT/evidence.json`` when ``$OUT`` is set, and to ``--json PATH`` when given.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
TINY = ("tiny-sd", "tiny-ddpm", "tiny-dit")
ALL_CHECKS = ("cpu_parity", "batch_consistency", "attention_slicing", "determinism", "float16", "schedulers")

# --- SD 1.5's configurations, written out (runwayml/stable-diffusion-v1-5, no download) -------------

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14), with the tiny tokenizer's special ids.
CLIP_L14_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_sd15_random(device: str, seed: int = 0) -> Any:
    """An SD-1.5-shaped ``StableDiffusionPipeline`` with random weights, initialised on ``device``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from pytest_mps.pipelines import prepare_pipeline

    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "tiny-sd" / "tokenizer")
    text_config = CLIPTextConfig(
        **CLIP_L14_TEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert len(tokenizer) <= text_config.vocab_size
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(text_config)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return prepare_pipeline(pipe.to(device))


# --- TF32 ---------------------------------------------------------------------------------------------


def tf32_state() -> dict[str, bool]:
    import torch

    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
    }


@contextlib.contextmanager
def tf32_mode(mode: str, defaults: dict[str, bool]) -> Iterator[None]:
    """``off``: no TF32 anywhere; ``default``: torch's defaults (TF32 for cuDNN convolutions, not for
    matmuls); ``on``: TF32 for both; ``n/a``: leave alone (not a CUDA device)."""
    import torch

    if mode == "n/a":
        yield
        return
    saved = tf32_state()
    wanted = {"off": (False, False), "on": (True, True), "default": (defaults["matmul"], defaults["cudnn"])}
    matmul, cudnn = wanted[mode]
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn"]


# --- float16 noise: is the float16 run fed the same noise as the float32 reference? -----------------


def float32_noise() -> Any:
    """Diffusers' noise drawn in float32 and cast: the same patch the float16 check applies
    (:func:`pytest_mps.running.noise_in_float32`)."""
    from pytest_mps.running import noise_in_float32

    return noise_in_float32()


NOISE_SHAPES = ((1, 4, 32, 32), (1, 3, 32, 32), (1, 4, 8, 8), (1, 4, 64, 64), (2, 4, 64, 64), (1, 100))


def noise_probe() -> list[dict[str, Any]]:
    """Does ``torch.randn(shape, generator=cpu, dtype=float16)`` equal the float32 draw rounded?"""
    import torch

    rows = []
    for shape in NOISE_SHAPES:
        half = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(0), dtype=torch.float16)
        full = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(0), dtype=torch.float32)
        diff = (half.float() - full.half().float()).abs()
        a, b = half.double().ravel(), full.double().ravel()
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.numel() > 1 else 1.0
        rows.append(
            {
                "shape": list(shape),
                "max_abs": float(diff.max()),
                "equal_fraction": float((diff == 0).double().mean()),
                "correlation": corr,
            }
        )
    print("\nCPU randn, float16 draw vs float32 draw rounded to float16 (seed 0):")
    for r in rows:
        print(
            f"  shape {tuple(r['shape'])!s:<18} max |diff| {r['max_abs']:.3g}, "
            f"equal {r['equal_fraction']:.3f}, correlation {r['correlation']:.4f}"
        )
    return rows


# --- running one check and keeping everything it says ---------------------------------------------


def _finite(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and (math.isinf(value) or math.isnan(value))):
        return None
    return value


def image_stats(array: Any) -> dict[str, float]:
    import numpy as np

    a = np.asarray(array, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "clipped_fraction": float(np.mean((a <= 0.0) | (a >= 1.0))),
    }


def pearson_distance(a: Any, b: Any) -> float | None:
    import numpy as np

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return None if denom == 0 else max(0.0, 1.0 - float((x * y).sum()) / denom)


def run_check(
    pipeline: str,
    check: str,
    fn: Callable[..., Any],
    pipe: Any,
    inputs: dict[str, Any] | None,
    *,
    target: Any,
    references: Any,
    mode: str,
    defaults: dict[str, bool],
    **kwargs: Any,
) -> dict[str, Any]:
    """Run one check in its own context (so its result is kept even when it fails) and flatten it."""
    import torch

    from pytest_mps.context import CheckContext, using_context

    recorded: list[Any] = []
    ctx = CheckContext(target=target, references=references, record=recorded.append)
    row: dict[str, Any] = {"pipeline": pipeline, "check": check, "tf32": mode}
    cuda = target.name == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with tf32_mode(mode, defaults), using_context(ctx):
        row["tf32_flags"] = tf32_state() if cuda else None
        try:
            fn(pipe, inputs, **kwargs)
            row["outcome"] = "passed"
        except AssertionError as exc:
            row["outcome"] = "failed"
            row["report"] = str(exc)
        except Exception as exc:  # a crash of the check itself: exactly what this script is for
            row["outcome"] = "error"
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
    if cuda:
        torch.cuda.synchronize()
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    row["wall_seconds"] = time.perf_counter() - start
    result = recorded[-1] if recorded else None
    if result is None:
        return row
    row["summary"] = result.summary
    row["failures"] = list(result.failures)
    row["timings"] = dict(result.timings)
    row["details"] = result.to_dict()["details"]
    row["metrics"] = {name: c.to_dict() for name, c in result.comparisons.items()}
    if result.comparisons:
        worst = max(result.comparisons.values(), key=lambda c: c.max_abs)
        row["max_abs"] = worst.max_abs
        row["mean_abs"] = worst.mean_abs
        row["cosine_distance"] = max(c.cosine_distance for c in result.comparisons.values())
        row["psnr"] = _finite(min(c.psnr for c in result.comparisons.values()))
        row["pixel_fraction"] = worst.pixel_fraction
    if "cpu" in result.images and "target" in result.images:
        row["pearson_distance"] = pearson_distance(result.images["target"], result.images["cpu"])
        row["image_stats"] = {k: image_stats(v) for k, v in result.images.items()}
    return row


def check_functions() -> dict[str, Callable[..., Any]]:
    import pytest_mps as pm

    return {
        "cpu_parity": pm.assert_cpu_parity,
        "batch_consistency": pm.assert_batch_consistency,
        "attention_slicing": pm.assert_attention_slicing_parity,
        "determinism": pm.assert_deterministic,
        "float16": pm.assert_float16_parity,
        "schedulers": pm.assert_schedulers_compatible,
    }


# --- the two parts ----------------------------------------------------------------------------------


def _float16_fp32_noise(pipe: Any, inputs: Any, **kwargs: Any) -> Any:
    import pytest_mps as pm

    with float32_noise():
        return pm.assert_float16_parity(pipe, inputs, **kwargs)


def tiny_part(
    device: str,
    modes: list[str],
    defaults: dict[str, bool],
    rows: list[dict[str, Any]],
    checks: tuple[str, ...] | list[str] = ALL_CHECKS,
) -> None:
    from pytest_mps.pipelines import load_pipeline, prepare_pipeline
    from pytest_mps.references import ReferenceCache
    from pytest_mps.target import Target

    fns = check_functions()
    fns["float16/fp32-noise"] = _float16_fp32_noise
    target = Target(device, "evidence")
    for name in TINY:
        pipe = prepare_pipeline(load_pipeline(FIXTURES / name)).to(device)
        references = ReferenceCache()  # one per pipeline, shared by its checks: a session's behaviour
        for mode in modes:
            for check in checks:
                row = run_check(
                    name,
                    check,
                    fns[check],
                    pipe,
                    None,
                    target=target,
                    references=references,
                    mode=mode,
                    defaults=defaults,
                )
                rows.append(row)
                print_row(row)
        row_refs = {
            "pipeline": name,
            "references_computed": references.computed,
            "reference_hits": references.hits,
        }
        print(
            f"  [{name}] CPU references computed {references.computed}, served from memory {references.hits}"
        )
        rows.append({"pipeline": name, "check": "(reference cache)", "details": row_refs, "tf32": "-"})
        del pipe
        _free(device)


def full_part(
    args: argparse.Namespace,
    modes: list[str],
    defaults: dict[str, bool],
    rows: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    import torch

    from pytest_mps import default_inputs
    from pytest_mps.references import ReferenceCache
    from pytest_mps.target import Target

    fns = check_functions()
    fns["float16/fp32-noise"] = _float16_fp32_noise
    device = args.device
    target = Target(device, "evidence")
    name = f"sd15-random-{args.full_size}px-{args.full_steps}steps"
    t0 = time.perf_counter()
    pipe = build_sd15_random(device, args.seed)
    if device == "cuda":
        torch.cuda.synchronize()
    build_seconds = time.perf_counter() - t0
    counts = {
        n: sum(p.numel() for p in c.parameters())
        for n, c in pipe.components.items()
        if isinstance(c, torch.nn.Module)
    }
    info = {
        "name": name,
        "build_seconds": build_seconds,
        "parameters": counts,
        "parameters_total": sum(counts.values()),
        "size": args.full_size,
        "steps": args.full_steps,
        "scheduler": type(pipe.scheduler).__name__,
        "guidance_scale": 7.5,
        "tokenizer_vocab": len(pipe.tokenizer),
    }
    print(
        f"\nfull-size pipeline {name}: {info['parameters_total'] / 1e6:.0f} M parameters "
        f"({', '.join(f'{k} {v / 1e6:.1f} M' for k, v in counts.items())}), built on {device} in "
        f"{build_seconds:.1f} s; tokenizer vocabulary {info['tokenizer_vocab']} (< 49408)"
    )
    inputs = default_inputs(pipe, steps=args.full_steps, height=args.full_size, width=args.full_size)
    references = ReferenceCache()
    # (check, mode, kwargs) in order of importance; later ones are skipped when the budget runs out.
    wanted = set(args.checks)
    plan: list[tuple[str, str, dict[str, Any]]] = [
        ("cpu_parity", m, {}) for m in modes if "cpu_parity" in wanted
    ]
    usual = "default" if "default" in modes else modes[0]  # torch's own TF32 settings where measured
    if not args.no_float16 and "float16" in wanted:
        plan.append(("float16", usual, {}))
    if not args.no_float16 and "float16/fp32-noise" in wanted:
        plan.append(("float16/fp32-noise", usual, {}))
    if not args.no_slicing and "attention_slicing" in wanted:
        plan += [("attention_slicing", m, {}) for m in modes if m in ("off", "default", "n/a")]
    if "determinism" in wanted:
        plan.append(("determinism", usual, {}))
    if "batch_consistency" in wanted:
        plan.append(("batch_consistency", usual, {}))
    if args.full_schedulers:
        plan.append(("schedulers", usual, {"parity": False}))
    for check, mode, kwargs in plan:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget and check not in ("cpu_parity", plan[0][0]):
            row = {
                "pipeline": name,
                "check": check,
                "tf32": mode,
                "outcome": "skipped",
                "summary": f"time budget {args.budget:.0f} s spent ({elapsed:.0f} s)",
            }
        else:
            row = run_check(
                name,
                check,
                fns[check],
                pipe,
                inputs,
                target=target,
                references=references,
                mode=mode,
                defaults=defaults,
                **kwargs,
            )
        rows.append(row)
        print_row(row)
    info["references_computed"] = references.computed
    info["reference_hits"] = references.hits
    del pipe
    _free(device)
    return info


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# --- output -------------------------------------------------------------------------------------------


def _fig(value: Any, fmt: str = "{:.2e}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def _key_figures(row: dict[str, Any]) -> str:
    parts = []
    details = row.get("details") or {}
    if row["check"] == "attention_slicing" and details.get("memory_bytes_sliced") is not None:
        sliced = details["memory_bytes_sliced"] / 2**20
        unsliced = details["memory_bytes_unsliced"] / 2**20
        parts.append(f"peak {sliced:.0f}/{unsliced:.0f} MiB sliced/unsliced")
    if row.get("pearson_distance") is not None:
        parts.append(f"1-corr {row['pearson_distance']:.2e}")
    if row["check"] in ("schedulers",) or not row.get("metrics"):
        parts.append(str(row.get("summary", ""))[:70])
    if row.get("outcome") in ("failed", "error"):
        why = row.get("error") or (row.get("failures") or [""])[0]
        parts.append(f"WHY: {why[:160]}")
    return "; ".join(p for p in parts if p)


def _timings(row: dict[str, Any]) -> str:
    t = row.get("timings") or {}
    if row["check"] in ("cpu_parity", "float16", "float16/fp32-noise"):
        keys = [k for k in t if k != "cpu" and "cpu" not in k]
        cpu = [k for k in t if "cpu" in k]
        text = ", ".join(f"{k} {t[k]:.3f}" for k in keys + cpu)
        ref = (row.get("details") or {}).get("reference")
        return text + (f" (ref {ref})" if ref else "")
    if len(t) > 4:
        return f"{len(t)} runs, total {sum(t.values()):.2f}"
    return ", ".join(f"{k} {v:.3f}" for k, v in t.items())


HEADER = (
    f"{'pipeline':<28} {'tf32':<7} {'check':<18} {'result':<7} {'max|diff|':>9} {'cos dist':>9} "
    f"{'PSNR dB':>7} {'wall s':>7}  timings s / key figures"
)


def print_row(row: dict[str, Any]) -> None:
    psnr = row.get("psnr")
    line = (
        f"{row['pipeline']:<28} {row['tf32']:<7} {row['check']:<18} {row.get('outcome', '?'):<7} "
        f"{_fig(row.get('max_abs')):>9} {_fig(row.get('cosine_distance')):>9} "
        f"{_fig(psnr, '{:.1f}') if 'max_abs' in row else '-':>7} {row.get('wall_seconds', 0):7.2f}  "
        f"{_timings(row)}"
    )
    extra = _key_figures(row)
    print(line + (f" | {extra}" if extra else ""), flush=True)
    if row.get("outcome") == "error":
        print(row.get("traceback", ""), flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n" + "=" * 40 + " evidence table " + "=" * 40)
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        if "outcome" in row:
            print_row(row)
    failed = [r for r in rows if r.get("outcome") in ("failed", "error")]
    passed = [r for r in rows if r.get("outcome") == "passed"]
    print(
        f"\n{len(passed)} passed, {len(failed)} failed or errored, "
        f"{sum(1 for r in rows if r.get('outcome') == 'skipped')} skipped"
    )
    for r in failed:
        print(f"  {r['outcome'].upper()}: {r['pipeline']} / {r['check']} / tf32 {r['tf32']}")
        for line in (r.get("report") or r.get("error") or "").splitlines()[:12]:
            print(f"      {line}")


def environment(device: str, defaults: dict[str, bool] | None) -> dict[str, Any]:
    import diffusers
    import numpy
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
    }
    if device == "cuda":
        env.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
            tf32_defaults=defaults,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return env


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny pipelines only (skip the full-size one)")
    parser.add_argument("--skip-tiny", action="store_true", help="full-size pipeline only")
    parser.add_argument("--full-size", type=int, default=512, help="full-size run: image side in pixels")
    parser.add_argument("--full-steps", type=int, default=20, help="full-size run: inference steps")
    parser.add_argument(
        "--tf32-modes", default="off,default,on", help="CUDA only: comma-separated off/default/on"
    )
    parser.add_argument("--no-float16", action="store_true")
    parser.add_argument("--no-slicing", action="store_true")
    parser.add_argument(
        "--full-schedulers",
        action="store_true",
        help="also sweep the compatible schedulers on the full-size pipeline (target only)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds after which optional full-size checks are skipped",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch CPU threads for the full-size CPU reference (default: all cores)",
    )
    parser.add_argument(
        "--tiny-threads", type=int, default=1, help="torch CPU threads for the tiny pipelines"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checks",
        default=",".join(ALL_CHECKS),
        help="comma-separated checks to run; 'float16/fp32-noise' is float16 with Diffusers' noise drawn in "
        "float32 (see float32_noise)",
    )
    parser.add_argument(
        "--noise-probe", action="store_true", help="add float16/fp32-noise rows and the CPU randn probe"
    )
    parser.add_argument("--json", help="write the evidence as JSON here (as well as $OUT/evidence.json)")
    args = parser.parse_args(argv)

    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    defaults = tf32_state() if args.device == "cuda" else None
    modes = [m for m in args.tf32_modes.split(",") if m] if args.device == "cuda" else ["n/a"]
    started = time.perf_counter()
    env = environment(args.device, defaults)
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    rows: list[dict[str, Any]] = []
    full_info = None
    args.checks = [c for c in args.checks.split(",") if c]
    if args.noise_probe and "float16" in args.checks and "float16/fp32-noise" not in args.checks:
        args.checks.insert(args.checks.index("float16") + 1, "float16/fp32-noise")
    probe = noise_probe() if args.noise_probe else None
    print("\n" + HEADER)
    print("-" * len(HEADER))
    if not args.skip_tiny:
        torch.set_num_threads(args.tiny_threads)
        tiny_part(args.device, modes, defaults or {}, rows, args.checks)
    if not args.quick:
        torch.set_num_threads(args.threads)
        full_info = full_part(args, modes, defaults or {}, rows, started)
    total = time.perf_counter() - started
    print_table(rows)
    print(f"\ntotal {total:.1f} s")
    data = {
        "environment": env,
        "full_size": full_info,
        "noise_probe": probe,
        "rows": rows,
        "total_seconds": total,
    }
    outputs = [Path(args.json)] if args.json else []
    if os.environ.get("OUT"):
        outputs.append(Path(os.environ["OUT"]) / "evidence.json")
    for path in outputs:
        path.write_text(json.dumps(data, indent=2, default=_json_default))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
