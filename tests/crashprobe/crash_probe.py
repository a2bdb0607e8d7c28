"""Deliberate worker crashes, for pytest-mps's own tests of crash isolation (test code: it is not part of
the installed package).

A worker process (``pytest_mps.worker``, never the pytest process) started with this folder on its
``PYTHONPATH`` loads ``sitecustomize.py``, which makes it call :func:`maybe_crash` before each request.
It does something only when the environment variable ``PYTEST_MPS_CRASH_PROBE`` names that request, as
``POINT=KIND[,POINT=KIND...]``: ``POINT`` is ``load`` or a check name, ``KIND`` is

- ``abort``: print a Metal-style failed assertion to stderr, then ``os.abort()`` (SIGABRT), as MPS
  does when a buffer reaches 2**32 bytes;
- ``segfault``: read address 0 (SIGSEGV);
- ``hang``: sleep for an hour;
- ``exit``: leave at once with status 3, no answer;
- ``noise``: write junk to stdout (Python's and file descriptor 1), then carry on: the answers must
  still arrive intact;
- ``fallback`` (a check name only): no crash, but during that check the pipeline's denoiser also runs
  an op that has no MPS kernel (``adaptive_avg_pool3d``): under ``PYTORCH_ENABLE_MPS_FALLBACK=1`` the
  emulated device notes a CPU fallback, without it the op raises (:func:`plant_fallback`).

The variable is set by nothing but these tests.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

__all__ = ["ENV_VARIABLE", "FOLDER", "KINDS", "maybe_crash", "planned"]

ENV_VARIABLE = "PYTEST_MPS_CRASH_PROBE"
#: The folder to put on a worker's PYTHONPATH so that it obeys the variable.
FOLDER = os.path.dirname(os.path.abspath(__file__))

#: The assertion a real Metal abort prints (PyTorch issues #84039, #90981), reproduced for the tests.
METAL_ASSERTION = (
    "/AppleInternal/Library/BuildRoots/0000/Library/Caches/com.apple.xbs/Sources/MetalPerformanceShaders/"
    "MPSCore/Types/MPSNDArray.mm:829: failed assertion `[MPSNDArray initWithDevice:descriptor:"
    "isTextureBacked:] Error: total bytes of NDArray > 2**32'"
)


def planned(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The crashes asked for: ``{point: kind}`` (empty unless the variable is set)."""
    raw = (os.environ if environ is None else environ).get(ENV_VARIABLE, "")
    plan: dict[str, str] = {}
    for part in raw.split(","):
        point, _, kind = part.strip().partition("=")
        if point and kind in KINDS:
            plan[point] = kind
    return plan


def _abort() -> None:
    print(METAL_ASSERTION, file=sys.stderr, flush=True)
    os.abort()


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def _hang() -> None:
    time.sleep(3600)


def _exit() -> None:
    print("crash probe: leaving with status 3", file=sys.stderr, flush=True)
    os._exit(3)


def _noise() -> None:
    print("crash probe: noise on sys.stdout {not json", flush=True)
    os.write(1, b"crash probe: noise on fd 1 {not json\n")


def plant_fallback(pipe: object) -> object:
    """Make ``pipe``'s denoiser run ``adaptive_avg_pool3d`` (no MPS kernel) on its input at every call;
    returns the hook's handle."""
    import torch.nn.functional as F

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)

    def hook(_module: object, args: tuple) -> None:
        F.adaptive_avg_pool3d(args[0].unsqueeze(0), (1, 2, 2))

    return denoiser.register_forward_pre_hook(hook)  # type: ignore[union-attr]


KINDS = {
    "abort": _abort,
    "segfault": _segfault,
    "hang": _hang,
    "exit": _exit,
    "noise": _noise,
    "fallback": lambda: None,  # planted inside the check by sitecustomize.py, not before it
}


def maybe_crash(point: str) -> None:
    """Crash as planned for ``point`` (``load`` or a check name); return at once otherwise."""
    kind = planned().get(point)
    if kind is not None:
        KINDS[kind]()
