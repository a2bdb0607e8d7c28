"""The shapes of the objects users hand pytest-mps, as typing protocols (structural: any Diffusers
pipeline fits)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Pipeline"]


@runtime_checkable
class Pipeline(Protocol):
    """What the checks need of a pipeline: a Diffusers ``DiffusionPipeline`` (or anything shaped like
    one): its components, its device and dtype, a way to move it, and a call that returns images,
    frames, audio or latents."""

    @property
    def components(self) -> Mapping[str, Any]:
        """The pipeline's modules, scheduler, tokenizers... by name."""
        ...

    @property
    def device(self) -> Any:
        """The ``torch.device`` of its weights."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move or convert the pipeline (``pipe.to("mps")``)."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the pipeline."""
        ...
