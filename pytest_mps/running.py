"""Running a pipeline for a check: outputs as arrays, timing that waits for the device, and moving a
pipeline to another device or dtype and back without losing a bit of its weights."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_mps.inputs import fresh_inputs

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pytest_mps.target import Target

__all__ = [
    "OUTPUT_FIELDS",
    "Run",
    "UnreadableOutputError",
    "moved",
    "noise_in_float32",
    "output_array",
    "pipeline_device",
    "run_pipeline",
    "training_modules",
]


@dataclass(frozen=True)
class Run:
    """One pipeline call: its output as a float32 array, the output's own dtype, and its wall time
    (device synchronised)."""

    array: np.ndarray
    seconds: float
    dtype: str = "float32"


#: The output fields read as a pipeline's result, in order: images, video frames, audio, then the
#: embeddings that priors return (Stable Cascade's ``image_embeddings``, Kandinsky's ``image_embeds``),
#: then latents.
OUTPUT_FIELDS: tuple[str, ...] = (
    "images",
    "frames",
    "videos",
    "audios",
    "audio",
    "image_embeddings",
    "image_embeds",
    "latents",
)


class UnreadableOutputError(TypeError):
    """A pipeline output that :func:`output_array` cannot turn into an array; the message is one line
    naming the output class and its fields."""


def output_array(output: Any) -> np.ndarray:
    """The result of a pipeline call as a numpy array of its own float dtype (float32 when it came as
    PIL images or integers).

    Reads a Diffusers output's first field of :data:`OUTPUT_FIELDS` (images; video frames as
    ``(batch, frames, height, width, channels)``; audio; prior embeddings; latents), a tuple's first
    element (``return_dict=False``), or a bare array, tensor or list of PIL images (nested lists for
    videos).

    Raises:
        UnreadableOutputError: one line naming the output's class and fields.
    """
    value = _result_value(output)
    try:
        array = _as_array(value)
    except (TypeError, ValueError) as exc:
        raise UnreadableOutputError(
            f"cannot read the output of the pipeline: {_describe(output)} ({exc}); pytest-mps reads "
            f"{', '.join(OUTPUT_FIELDS)}: pass output_type='np' or compare the output yourself"
        ) from None
    return array


def _fields(output: Any) -> list[str]:
    import dataclasses

    if dataclasses.is_dataclass(output):
        return [f.name for f in dataclasses.fields(output)]
    if isinstance(output, dict):
        return [str(k) for k in output]
    return [k for k in vars(output) if not k.startswith("_")] if hasattr(output, "__dict__") else []


def _describe(output: Any) -> str:
    fields = _fields(output)
    what = type(output).__name__
    return f"{what} with fields {', '.join(fields)}" if fields else what


def _result_value(output: Any) -> Any:
    """The part of ``output`` that is the result (see :func:`output_array`)."""
    for attr in OUTPUT_FIELDS:
        value = output.get(attr) if isinstance(output, dict) else getattr(output, attr, None)
        if value is not None:
            return value
    if isinstance(output, tuple) and output and (isinstance(output[0], list) or hasattr(output[0], "shape")):
        return output[0]  # return_dict=False: (images, ...)
    if isinstance(output, tuple | list) or hasattr(output, "shape") or _is_image(output):
        return output
    raise UnreadableOutputError(
        f"cannot read the output of the pipeline: {_describe(output)} holds none of "
        f"{', '.join(OUTPUT_FIELDS)}; compare its output yourself (pass the array to pytest_mps.compare)"
    )


def _as_array(value: Any) -> np.ndarray:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        from pytest_mps.devices import plain_cpu

        value = plain_cpu(value.detach().to("cpu"))
        if value.dtype == torch.bfloat16:
            value = value.float()
        return _floating(value.numpy())
    if _is_image(value):
        return np.asarray(value, dtype=np.float32)[None] / 255.0
    if isinstance(value, list | tuple):
        if not value:
            return np.zeros((0,), dtype=np.float32)
        if _is_image(value[0]):  # a batch of PIL images
            return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in value])
        if isinstance(value[0], list | tuple | torch.Tensor) or hasattr(value[0], "shape"):
            # a batch of videos (lists of PIL frames) or of per-item arrays and tensors
            return np.stack([_item_array(item) for item in value])
    return _floating(np.asarray(value))


def _item_array(item: Any) -> np.ndarray:
    import numpy as np

    if isinstance(item, list | tuple) and item and _is_image(item[0]):
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in item])
    return _as_array(item)


def _floating(array: np.ndarray) -> np.ndarray:
    import numpy as np

    if array.dtype.kind == "f":
        return array
    if array.dtype.kind in "iub":
        return array.astype(np.float32)
    raise ValueError(f"its values are {array.dtype}, not real numbers")


def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.")


def pipeline_device(pipe: Any) -> torch.device:
    """The device of a pipeline's weights."""
    return pipe.device


def training_modules(pipe: Any) -> list[str]:
    """Names of the pipeline's modules left in training mode (dropout and label-drop draw from the
    device RNG there, so device and CPU diverge for reasons unrelated to the device)."""
    import torch

    names = []
    for name, component in getattr(pipe, "components", {}).items():
        if isinstance(component, torch.nn.Module):
            names.extend(
                f"{name}.{sub}" if sub else name for sub, m in component.named_modules() if m.training
            )
    return names


def run_pipeline(
    pipe: Any, inputs: dict[str, Any], target: Target | None = None, *, global_seed: int | None = 0
) -> Run:
    """Call ``pipe`` on a fresh copy of ``inputs`` (generators renewed) without autograd, and time it
    with the target synchronised before the clock is read.

    Some pipelines draw from the global RNG as well as from the generator they are given (DiT passes
    none to ``scheduler.step``, so ancestral schedulers draw globally): ``global_seed`` seeds it for
    the call, inside a fork that leaves the caller's RNG state untouched. ``None`` leaves it alone
    (the determinism check, which must see a module that draws unseeded noise).
    """
    import torch

    call = fresh_inputs(inputs)
    if target is not None:
        target.synchronize()
    rng = torch.random.fork_rng(devices=[]) if global_seed is not None else contextlib.nullcontext()
    with rng:
        if global_seed is not None:
            torch.random.manual_seed(global_seed)
        start = time.perf_counter()
        with torch.inference_mode():
            output = pipe(**call)
            if target is not None:
                target.synchronize()
        seconds = time.perf_counter() - start
    array = output_array(output)
    return Run(array.astype("float32", copy=False), seconds, str(array.dtype))


@contextlib.contextmanager
def noise_in_float32() -> Iterator[None]:
    """Make Diffusers draw its noise in float32 and cast it, whatever dtype the pipeline asks for.

    ``randn_tensor(..., dtype=float16)`` with a CPU generator draws half-precision numbers that are
    not the float32 draw rounded (torch's CPU sampler takes other code paths for half precision; on
    torch 2.11 they were uncorrelated), so a float16 run would start from other noise than its float32
    reference and fail for that reason alone (cosine distance 0.06-0.13 on an H100). Every module that
    bound ``randn_tensor`` is patched for the block, so what remains to compare is float16 arithmetic.
    """
    import sys

    import diffusers.utils.torch_utils as torch_utils
    import torch

    original = torch_utils.randn_tensor
    low = (torch.float16, torch.bfloat16)

    def randn_tensor(
        shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **kw: Any
    ) -> Any:
        if dtype in low:
            return original(shape, generator=generator, device=device, dtype=torch.float32, **kw).to(dtype)
        return original(shape, generator=generator, device=device, dtype=dtype, **kw)

    bound = [m for m in list(sys.modules.values()) if getattr(m, "randn_tensor", None) is original]
    for module in bound:
        module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        for module in bound:
            module.randn_tensor = original


@contextlib.contextmanager
def moved(pipe: Any, device: Any = None, dtype: torch.dtype | None = None) -> Iterator[Any]:
    """Move ``pipe`` to ``device``/``dtype`` for the ``with`` block, then back.

    Moving between devices is lossless. A dtype change is not (float32 -> float16 -> float32 rounds
    the weights), so the original tensors are kept, untouched, and put back afterwards: the same
    storage, so exact and with nothing copied. Only on a CUDA or XPU device without room for the
    converted copy next to them are they copied to the CPU instead (and copied back).
    """
    original_device = pipe.device
    if (device is None or _same_device(original_device, device)) and (dtype is None or pipe.dtype == dtype):
        yield pipe  # nothing to move: a CPU target's reference runs in place
        return
    if dtype is None:
        # A device move only: move the modules directly. DiffusionPipeline.to's bookkeeping (offload
        # hooks, dtype rules, warnings) cost as much as a tiny pipeline's inference on an H100.
        _move_modules(pipe, device)
        try:
            yield pipe
        finally:
            _move_modules(pipe, original_device)
        return
    kept = _room_for_copy(pipe, device or original_device, dtype)
    saved = _kept_tensors(pipe) if kept else _snapshot_tensors(pipe)
    try:
        pipe.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        yield pipe
    finally:
        _put_back(pipe, saved, None if kept else original_device)


def _move_modules(pipe: Any, device: Any) -> None:
    for module in _modules(pipe).values():
        module.to(device)


def _same_device(current: Any, wanted: Any) -> bool:
    import torch

    wanted = torch.device(wanted)
    return current.type == wanted.type and (wanted.index is None or current.index == wanted.index)


def _modules(pipe: Any) -> dict[str, Any]:
    import torch

    return {n: c for n, c in getattr(pipe, "components", {}).items() if isinstance(c, torch.nn.Module)}


def _tensors(module: Any) -> Iterator[tuple[tuple[int, str, str], Any, Any]]:
    """((module id, store, name), owning module, tensor) for every parameter and buffer."""
    for sub in module.modules():
        for store in ("_parameters", "_buffers"):
            for key, tensor in getattr(sub, store).items():
                if tensor is not None:
                    yield (id(sub), store, key), sub, tensor


#: Device memory a converted copy leaves free at least, beyond the copy itself (bytes).
_COPY_MARGIN = 1 << 30


def _room_for_copy(pipe: Any, device: Any, dtype: torch.dtype | None) -> bool:
    """Whether the converted copy of the weights can sit next to the originals: always on the CPU and
    on MPS (one memory: a CPU snapshot would take the same room) and for any device the weights leave
    (the originals stay where they are); on a CUDA or XPU device, when its free memory holds the copy."""
    import torch

    wanted = torch.device(device)
    if wanted.type not in ("cuda", "xpu"):
        return True
    backend = getattr(torch, wanted.type, None)
    mem_get_info = getattr(backend, "mem_get_info", None)
    if mem_get_info is None:
        return False
    itemsize = (torch.empty((), dtype=dtype).element_size()) if dtype is not None else None
    needed = 0
    for module in _modules(pipe).values():
        for _, _, tensor in _tensors(module):
            size = itemsize if itemsize is not None and tensor.is_floating_point() else tensor.element_size()
            needed += tensor.numel() * size
    try:
        free, _total = mem_get_info(wanted)
    except Exception:  # a backend that cannot say: the safe way
        return False
    return int(free) >= needed + _COPY_MARGIN


def _kept_tensors(pipe: Any) -> dict[tuple[int, str, str], Any]:
    """Every parameter's data (an alias of its storage, not a copy) and every buffer itself."""
    return {
        slot: tensor.data if slot[1] == "_parameters" else tensor
        for module in _modules(pipe).values()
        for slot, _, tensor in _tensors(module)
    }


def _put_back(pipe: Any, saved: dict[tuple[int, str, str], Any], device: Any = None) -> None:
    """Give every parameter its saved storage and every module its saved buffer again: the kept
    tensors themselves (``device`` None), or CPU copies moved to ``device``."""
    import torch

    with torch.no_grad():
        for module in _modules(pipe).values():
            for slot, sub, tensor in list(_tensors(module)):
                original = saved.get(slot)
                if original is None:
                    continue
                if device is not None:
                    original = original.to(device)
                if slot[1] == "_parameters":
                    tensor.data = original
                else:
                    sub._buffers[slot[2]] = original
    if device is not None:
        pipe.to(device)


def _snapshot_tensors(pipe: Any) -> dict[tuple[int, str, str], Any]:
    from pytest_mps.devices import plain_cpu

    return {
        slot: plain_cpu(tensor.detach().to("cpu", copy=True))
        for module in _modules(pipe).values()
        for slot, _, tensor in _tensors(module)
    }
