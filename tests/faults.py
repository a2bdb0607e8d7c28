"""Faults planted into healthy tiny pipelines, one per failure class a check exists for.

Each function takes a pipeline and changes it in place (forward hooks or patched classes), so the
tests can show that the matching check fails with the right message.
"""

from __future__ import annotations

from typing import Any

import torch


def denoiser(pipe: Any) -> torch.nn.Module:
    return getattr(pipe, "unet", None) or pipe.transformer


def _output_hook(module: torch.nn.Module, change) -> None:
    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (change(output[0]), *output[1:])
        if hasattr(output, "sample"):
            output.sample = change(output.sample)
            return output
        return change(output)

    module.register_forward_hook(hook)


def couple_batch(pipe: Any) -> None:
    """Items of a batch leak into each other (the MPS guide's batching caveat)."""
    _output_hook(denoiser(pipe), lambda x: x + 0.5 * (x.mean(0, keepdim=True) - x) * (x.shape[0] > 1))


def nondeterministic(pipe: Any) -> None:
    """Noise from the unseeded global RNG at every call."""
    _output_hook(denoiser(pipe), lambda x: x + 0.2 * torch.randn_like(x))


def first_call_drift(pipe: Any) -> None:
    """Only the very first pass differs (the torch 1.13 warm-up problem)."""
    calls = {"n": 0}

    def change(x):
        calls["n"] += 1
        return x * 1.5 if calls["n"] <= 2 else x  # both steps of the first 2-step run

    _output_hook(denoiser(pipe), change)


def nan_module(pipe: Any) -> None:
    """A module that produces NaN (black images)."""
    _output_hook(denoiser(pipe), lambda x: x * float("nan"))


def float16_overflow(pipe: Any) -> None:
    """Activations that overflow float16 only."""
    _output_hook(denoiser(pipe), lambda x: x * 1e6 if x.dtype == torch.float16 else x)
