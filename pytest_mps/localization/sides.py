"""The two sides a localisation compares, one pair per check, each able to run the whole pipeline
(exactly as the check does) and to provide the module being searched in its own configuration.

- ``cpu_parity``: the pipeline on the target against the CPU, same dtype;
- ``float16``: the pipeline in float16 on the target against float32 on the CPU;
- ``attention_slicing``: sliced against unsliced attention, both on the target.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pytest_mps.emulated_target import cpu_arithmetic
from pytest_mps.running import Run, moved, noise_in_float32, run_pipeline

if TYPE_CHECKING:
    import torch

    from pytest_mps.target import Target

__all__ = ["Side", "make_side"]


def detached_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose tensors are ordinary ones, even when made inside
    ``torch.inference_mode()`` (an inference-mode copy could not be converted to another dtype)."""
    import torch

    with torch.inference_mode(False):
        return copy.deepcopy(module)


def host_copy(module: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A CPU copy of ``module`` (in ``dtype`` when given). A module on a device is moved to the CPU
    in place (lossless), copied there and moved back, so the device never holds two copies."""
    import torch

    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    if device.type != "cpu":
        module.to("cpu")
    try:
        twin = detached_copy(module)
    finally:
        if device.type != "cpu":
            module.to(device)
    return twin.to(dtype=dtype) if dtype is not None else twin


class Side:
    """The ``cpu_parity`` pair: the pipeline on the target against the CPU in the same dtype."""

    check = "cpu_parity"
    #: The dtype floating inputs are cast to for a replay on the target (None: as captured).
    cast: torch.dtype | None = None
    applicable = True
    reason = ""

    def __init__(self, pipe: Any, target: Target) -> None:
        import torch

        self.pipe = pipe
        self.target = target
        self.reference_device = torch.device("cpu")
        self.target_device = pipe.device

    # --- whole runs, exactly as the check makes them ------------------------------------------------
    def run_target(self, call: dict[str, Any]) -> Run:
        """The pipeline's run on the target side."""
        return run_pipeline(self.pipe, call, self.target)

    def run_reference(self, call: dict[str, Any]) -> Run:
        """The pipeline's run on the reference side."""
        with moved(self.pipe, "cpu", self._reference_convert()), cpu_arithmetic():
            return run_pipeline(self.pipe, call)

    def _reference_convert(self) -> torch.dtype | None:
        return None

    # --- one module at a time -----------------------------------------------------------------------
    def reference_copy(self, module: torch.nn.Module) -> torch.nn.Module | None:
        """A copy of ``module`` made during the reference run (so in the reference's device and
        dtype), for the search; None where the side needs none."""
        return detached_copy(module)

    @contextlib.contextmanager
    def roots(
        self, root: torch.nn.Module, reference: torch.nn.Module | None
    ) -> Iterator[tuple[torch.nn.Module, torch.nn.Module]]:
        """``root`` as the reference runs it and as the target runs it, for the whole search;
        ``reference`` is :meth:`reference_copy`'s copy, or None to make one now."""
        if reference is None:
            reference = host_copy(root, self._reference_convert())
        try:
            yield reference, self._target_root(root, reference)
        finally:
            del reference

    def _target_root(self, root: torch.nn.Module, reference: torch.nn.Module) -> torch.nn.Module:
        return root

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        """Around a reference call of a module: CPU arithmetic (an emulation, if active, suspended)."""
        return cpu_arithmetic()

    def on_target(self) -> contextlib.AbstractContextManager[Any]:
        """Around a replay of a module on the target."""
        return contextlib.nullcontext()


class Float16Side(Side):
    """The ``float16`` pair: float16 on the target against float32 on the CPU."""

    check = "float16"

    def __init__(self, pipe: Any, target: Target) -> None:
        import torch

        super().__init__(pipe, target)
        self.cast = torch.float16

    def run_target(self, call: dict[str, Any]) -> Run:
        import torch

        with moved(self.pipe, dtype=torch.float16), noise_in_float32():
            return run_pipeline(self.pipe, call, self.target)

    def _reference_convert(self) -> torch.dtype | None:
        import torch

        return torch.float32 if self.pipe.dtype != torch.float32 else None

    def _target_root(self, root: torch.nn.Module, reference: torch.nn.Module) -> torch.nn.Module:
        import torch

        # A float16 copy on the target, made from the float32 CPU copy: the user's module keeps its bits.
        return detached_copy(reference).to(self.target_device, torch.float16)


def _attention_modules(pipe: Any) -> list[Any]:
    import torch

    return [
        m
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module)
        for m in c.modules()
        if "processor" in m.__dict__ or hasattr(type(m), "set_processor")
    ]


def _use(modules: list[Any], processors: list[Any]) -> None:
    for module, processor in zip(modules, processors, strict=True):
        if processor is None or getattr(module, "processor", None) is processor:
            continue
        if hasattr(module, "set_processor"):
            module.set_processor(processor)
        else:
            module.processor = processor


class SlicingSide(Side):
    """The ``attention_slicing`` pair: sliced against unsliced attention, both on the target. The
    pipeline's own processors are restored after every use of the sliced ones."""

    check = "attention_slicing"

    def __init__(self, pipe: Any, target: Target, slice_size: int | str) -> None:
        super().__init__(pipe, target)
        self.reference_device = pipe.device
        self._modules = _attention_modules(pipe)
        self._unsliced = [getattr(m, "processor", None) for m in self._modules]
        try:
            pipe.enable_attention_slicing(slice_size)
            self._sliced = [getattr(m, "processor", None) for m in self._modules]
        finally:
            _use(self._modules, self._unsliced)
        self.applicable = any(s is not u for s, u in zip(self._sliced, self._unsliced, strict=True))
        if not self.applicable:
            self.reason = "enable_attention_slicing() changes no attention processor of this pipeline"

    @contextlib.contextmanager
    def _sliced_processors(self) -> Iterator[None]:
        _use(self._modules, self._sliced)
        try:
            yield
        finally:
            _use(self._modules, self._unsliced)

    def run_target(self, call: dict[str, Any]) -> Run:
        with self._sliced_processors():
            return run_pipeline(self.pipe, call, self.target)

    def run_reference(self, call: dict[str, Any]) -> Run:
        return run_pipeline(self.pipe, call, self.target)

    def reference_copy(self, module: torch.nn.Module) -> torch.nn.Module | None:
        return None  # one module; the processors tell the sides apart

    @contextlib.contextmanager
    def roots(
        self, root: torch.nn.Module, reference: torch.nn.Module | None
    ) -> Iterator[tuple[torch.nn.Module, torch.nn.Module]]:
        yield root, root

    def reference(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def on_target(self) -> contextlib.AbstractContextManager[Any]:
        return self._sliced_processors()


#: Localisable checks, with the names they are also known by.
CHECK_NAMES: dict[str, str] = {
    "cpu_parity": "cpu_parity",
    "float16": "float16",
    "float16_parity": "float16",
    "attention_slicing": "attention_slicing",
}


def check_name(check: str) -> str:
    """The canonical name of a localisable check; a ``ValueError`` in one line for any other."""
    name = CHECK_NAMES.get(str(check).strip().lower())
    if name is None:
        raise ValueError(
            f"cannot localise check {check!r}; choose one of cpu_parity, float16 (or float16_parity), "
            "attention_slicing"
        )
    return name


def make_side(check: str, pipe: Any, target: Target, *, slice_size: int | str = 1) -> Side:
    """The pair of sides for ``check`` (a canonical name from :func:`check_name`)."""
    if check == "float16":
        return Float16Side(pipe, target)
    if check == "attention_slicing":
        return SlicingSide(pipe, target, slice_size)
    return Side(pipe, target)
