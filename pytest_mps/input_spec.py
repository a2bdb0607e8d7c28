"""What a check runs the pipeline on: the caller's inputs, or an :class:`InputSpec` from which each
check builds its own call (a single call, or a batch of several items).

A check given ``inputs=None`` uses ``InputSpec()``: :func:`pytest_mps.default_inputs` at the smallest
valid size with 2 steps. The bundled suite passes an ``InputSpec`` built from ``--mps-steps`` and
``--mps-size``, so every check follows those options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["InputSpec", "Inputs", "call_inputs"]


@dataclass(frozen=True)
class InputSpec:
    """How to build call inputs for a pipeline: ``steps``, output side (``None``: the smallest valid),
    and the first item's seed."""

    steps: int = 2
    height: int | None = None
    width: int | None = None
    seed: int = 0

    def build(self, pipe: Any, *, batch_size: int = 1, **overrides: Any) -> dict[str, Any]:
        """The call arguments for ``pipe`` (see :func:`pytest_mps.default_inputs`)."""
        from pytest_mps.inputs import default_inputs

        kwargs: dict[str, Any] = {
            "seed": self.seed,
            "batch_size": batch_size,
            "steps": self.steps,
            "height": self.height,
            "width": self.width,
        }
        kwargs.update(overrides)
        return default_inputs(pipe, **kwargs)


#: What a check accepts as ``inputs``.
Inputs = dict[str, Any] | InputSpec | None


def call_inputs(pipe: Any, inputs: Inputs, *, batch_size: int = 1) -> dict[str, Any]:
    """The call for ``pipe``: from an :class:`InputSpec` (or the default one for ``None``), or a fresh
    copy of a caller's dict (expanded to ``batch_size`` items when that is more than one)."""
    if inputs is None or isinstance(inputs, InputSpec):
        return (inputs or InputSpec()).build(pipe, batch_size=batch_size)
    from pytest_mps.inputs import expand_batch, fresh_inputs

    return expand_batch(inputs, batch_size) if batch_size > 1 else fresh_inputs(inputs)
