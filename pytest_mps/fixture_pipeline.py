"""What the ``mps_pipeline`` fixture does with a source: its cache key, and the load that puts it on
the target with the MPS guide's advice applied."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_mps.environment import MPSEnvironment
from pytest_mps.target import Target

__all__ = ["build_key", "load_for_target"]

#: The Diffusers MPS guide: attention slicing helps below 64 GB of unified memory.
SLICING_MEMORY_GB = 64


def _source_key(source: Any) -> Any:
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        path = Path(text).expanduser()
        return ("path", str(path.resolve())) if path.exists() else ("name", text)
    # Pipelines and factories are keyed by identity; the cache holds the pipeline, so the id is not reused.
    return (
        ("object", id(source))
        if not callable(source) or hasattr(source, "components")
        else ("callable", source)
    )


def build_key(
    source: Any,
    pipeline_cls: Any,
    torch_dtype: Any,
    attention_slicing: str,
    warmup: str,
    kwargs: dict[str, Any],
) -> tuple[Any, ...]:
    """The session-cache key for one set of ``mps_pipeline`` arguments."""
    return (
        _source_key(source),
        pipeline_cls,
        str(torch_dtype),
        attention_slicing,
        warmup,
        tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
    )


def _torch_below_2() -> bool:
    import torch
    from packaging.version import Version

    return Version(torch.__version__).release < (2, 0)


def load_for_target(
    source: Any,
    *,
    target: Target,
    environment: MPSEnvironment,
    pipeline_cls: Any = None,
    torch_dtype: Any = None,
    attention_slicing: str = "auto",
    warmup: str = "auto",
    **from_pretrained_kwargs: Any,
) -> Any:
    """Load ``source``, put it in eval mode without progress bars, move it to the target, then apply
    attention slicing and the warm-up pass as asked ("auto" follows the MPS guide on real MPS)."""
    import pytest

    from pytest_mps.inputs import default_inputs
    from pytest_mps.pipelines import PipelineLoadError, load_pipeline, prepare_pipeline

    try:
        pipe = load_pipeline(
            source, pipeline_cls=pipeline_cls, torch_dtype=torch_dtype, **from_pretrained_kwargs
        )
    except PipelineLoadError as exc:
        pytest.fail(str(exc), pytrace=False)
    prepare_pipeline(pipe)
    pipe.to(target.torch_device())
    slicing = attention_slicing == "on" or (
        attention_slicing == "auto"
        and target.is_real_mps
        and (environment.memory_gb is None or environment.memory_gb < SLICING_MEMORY_GB)
    )
    if slicing:
        pipe.enable_attention_slicing()
    if warmup == "on" or (warmup == "auto" and target.is_real_mps and _torch_below_2()):
        # torch 1.13 on MPS: the first pass differs from later ones and from the CPU (diffusers #372).
        import torch

        with torch.inference_mode():
            pipe(**default_inputs(pipe, steps=1))
    return pipe
