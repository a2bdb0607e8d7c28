"""``pytest-mps plan PATH``: how large a pipeline can go on MPS, from meta-tensor traces.

Prints, for the pipeline folder, the largest square side for batch sizes 1, 2 and 4 that keeps every
buffer under 2**32 bytes (with and without attention slicing), the estimated peak memory at common
sizes against Apple's memory tiers, and the attention-slicing advice that follows (``--json`` for the
same as JSON). Only the configs are read: no weight is loaded and nothing of the model's size is
allocated, so it runs in seconds on any machine.

Exit status: 0 with a plan, 1 when the pipeline cannot be traced, 2 for bad input (a missing folder, a
folder that is not a Diffusers pipeline, a bad option value: one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main"]

USAGE_ERROR = 2
_DTYPES = ("float32", "float16", "bfloat16")


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4")
    return values


def _slice_size(text: str) -> str | int:
    if text in ("auto", "max"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, max or a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, max or a positive integer")
    return value


def _side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: the largest side must be at least 8 pixels")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"pytest-mps plan: error: {message} (pytest-mps plan --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def _parser() -> argparse.ArgumentParser:
    from pytest_mps.plan.size_plan import BATCHES, MAX_SIDE, SIDES

    parser = _Parser(
        prog="pytest-mps plan",
        description=(
            "How large a Diffusers pipeline can go on MPS: the largest size under the 2**32-byte buffer "
            "limit per batch size, with and without attention slicing, and the estimated peak memory "
            "against Apple's memory tiers. Reads only the configs; nothing is allocated."
        ),
    )
    parser.add_argument("path", help="a pipeline folder (saved with pipe.save_pretrained; weights optional)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights dtype (default float32)")
    parser.add_argument(
        "--batches",
        type=_positive_ints,
        default=BATCHES,
        help="batch sizes to find the limit for (default 1,2,4)",
    )
    parser.add_argument(
        "--sides",
        type=_positive_ints,
        default=SIDES,
        help="square sides to estimate peak memory at (default 512,768,1024,1536,2048)",
    )
    parser.add_argument(
        "--slice-size",
        type=_slice_size,
        default="auto",
        help="what enable_attention_slicing() gets for the sliced rows: auto (default), max or a number",
    )
    parser.add_argument(
        "--max-side", type=_side, default=MAX_SIDE, help=f"largest side searched (default {MAX_SIDE})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pytest-mps plan`` with ``argv`` (the arguments after ``plan``); returns the exit status."""
    args = _parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    import torch

    from pytest_mps.plan.meta_pipeline import PlanInputError
    from pytest_mps.plan.size_plan import PlanError, plan_folder

    try:
        with warnings.catch_warnings():
            # Diffusers' deprecation notices (SDXL's upcast_vae) are about its code, not this plan.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            plan = plan_folder(
                args.path,
                dtype=getattr(torch, args.dtype),
                batches=args.batches,
                sides=args.sides,
                slice_size=args.slice_size,
                max_side=args.max_side,
            )
    except PlanInputError as exc:
        print(f"pytest-mps plan: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except PlanError as exc:
        print(f"pytest-mps plan: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.format())
    return 0


if __name__ == "__main__":  # pragma: no cover - python -m pytest_mps.plan_cli PATH
    raise SystemExit(main(sys.argv[1:]))
