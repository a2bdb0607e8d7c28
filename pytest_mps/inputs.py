"""Valid, deterministic call arguments for any Diffusers pipeline, derived from its signature.

Noise comes from seeded ``torch.Generator("cpu")`` objects: Diffusers' ``randn_tensor`` draws on the CPU
and moves the result, so the same CPU generator gives the same starting latents on every device. That
is what makes a device-against-CPU comparison possible (Diffusers' own tests seed this way on MPS).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

__all__ = ["DEFAULT_PROMPT", "default_inputs", "fresh_inputs", "smallest_size"]

DEFAULT_PROMPT = "a photo of an astronaut riding a horse on mars"
_PROMPTS = (DEFAULT_PROMPT, "a watercolor painting of a lighthouse at dawn", "a red cube on a blue table")


def _call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def _vae_scale_factor(pipe: Any) -> int:
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(factor, int) and factor > 0:
        return factor
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(channels) - 1) if channels else 8


def _denoiser(pipe: Any) -> Any:
    for name in ("unet", "transformer", "prior", "decoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def smallest_size(pipe: Any) -> int | None:
    """The smallest side (pixels) that is valid for this pipeline and still meaningful: the latent
    must survive every down-sampling stage, so it is a multiple of the VAE factor times the
    denoiser's total down-sampling; capped by the pipeline's default size and at least 64 pixels
    where the default allows. None for pipelines that take no height/width."""
    params = _call_parameters(pipe)
    if "height" not in params or "width" not in params:
        return None
    vae_factor = _vae_scale_factor(pipe)
    config = getattr(_denoiser(pipe), "config", None)
    sample_size = getattr(config, "sample_size", None)
    if isinstance(sample_size, list | tuple):
        sample_size = min(sample_size)
    blocks = getattr(config, "block_out_channels", None)
    down = 2 ** (len(blocks) - 1) if blocks else 1
    patch = getattr(config, "patch_size", None) or 1
    multiple = vae_factor * max(down, int(patch))
    default = sample_size * vae_factor if isinstance(sample_size, int) else None
    size = max(64, multiple)
    if default is not None:
        size = min(size, default)
    return max(multiple, size - size % multiple)


def _synthetic_image(size: int, seed: int) -> Any:
    """A deterministic RGB test card (gradients and a checker), no randomness, as a PIL image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    checker = ((np.floor(x * 8) + np.floor(y * 8) + seed) % 2).astype(np.float32)
    rgb = np.stack([x, y, 0.25 + 0.5 * checker], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def _synthetic_mask(size: int) -> Any:
    """A deterministic inpainting mask: the centre square is repainted."""
    import numpy as np
    from PIL import Image

    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return Image.fromarray(mask)


def _class_labels(pipe: Any, batch_size: int) -> list[int]:
    labels = getattr(pipe, "labels", None)
    if isinstance(labels, dict) and labels:
        ids = sorted(set(labels.values()))
    else:
        config = getattr(_denoiser(pipe), "config", None)
        count = getattr(config, "num_embeds_ada_norm", None) or getattr(config, "num_class_embeds", None) or 1
        ids = list(range(int(count)))
    return [ids[(i + 1) % len(ids)] for i in range(batch_size)]


def _generators(seed: int, batch_size: int) -> Any:
    import torch

    if batch_size == 1:
        return torch.Generator("cpu").manual_seed(seed)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch_size)]


def default_inputs(
    pipe: Any,
    *,
    seed: int = 0,
    batch_size: int = 1,
    steps: int = 2,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, Any]:
    """Call arguments for ``pipe`` that any device can reproduce.

    Text pipelines get prompts, class-conditional ones (DiT) class labels, image-to-image ones a
    deterministic synthetic image; sizes are the smallest valid (:func:`smallest_size`) unless given;
    noise comes from seeded CPU generators (one per item when ``batch_size > 1``, item ``i`` seeded
    ``seed + i``, so item ``i`` of a batch can be reproduced alone). ``output_type`` is ``"np"``.

    Args:
        pipe: a Diffusers pipeline (any device).
        seed: seed of the first item's generator.
        batch_size: number of items (prompts, labels or images).
        steps: ``num_inference_steps``.
        height, width: output size in pixels; defaults to :func:`smallest_size`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    params = _call_parameters(pipe)
    inputs: dict[str, Any] = {}
    if "prompt" in params:
        prompts = [_PROMPTS[i % len(_PROMPTS)] for i in range(batch_size)]
        inputs["prompt"] = prompts[0] if batch_size == 1 else prompts
    if "class_labels" in params:
        inputs["class_labels"] = _class_labels(pipe, batch_size)
    elif "batch_size" in params and "prompt" not in params:
        inputs["batch_size"] = batch_size
    size = smallest_size(pipe)
    if size is not None:
        inputs["height"] = height or size
        inputs["width"] = width or size
    image = params.get("image")
    needs_image = image is not None and (
        image.default is inspect.Parameter.empty
        or "strength" in params  # image-to-image, inpainting
        or "controlnet" in getattr(pipe, "components", {})  # the control image
    )
    if needs_image:
        side = inputs.get("height") or size or 64
        images = [_synthetic_image(side, seed + i) for i in range(batch_size)]
        inputs["image"] = images[0] if batch_size == 1 else images
        if "mask_image" in params:
            masks = [_synthetic_mask(side) for _ in range(batch_size)]
            inputs["mask_image"] = masks[0] if batch_size == 1 else masks
    if "num_inference_steps" in params:
        inputs["num_inference_steps"] = steps
    if "generator" in params:
        inputs["generator"] = _generators(seed, batch_size)
    if "output_type" in params:
        inputs["output_type"] = "np"
    return inputs


def fresh_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``inputs`` whose generators are new objects in the same state as the originals.

    A generator is consumed by a run; comparing two runs needs two generators with equal states.
    """
    import torch

    def renew(value: Any) -> Any:
        if isinstance(value, torch.Generator):
            twin = torch.Generator(value.device)
            twin.set_state(value.get_state())
            return twin
        if isinstance(value, list):
            return [renew(v) for v in value]
        return value

    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Generator | list):
            out[key] = renew(value)
        elif isinstance(value, torch.Tensor):
            out[key] = value.clone()
        else:
            out[key] = copy.copy(value)
    return out


def split_batch(inputs: dict[str, Any], batch_size: int) -> list[dict[str, Any]]:
    """The single-item calls that a batched call of ``batch_size`` items stands for."""
    singles = []
    for i in range(batch_size):
        single: dict[str, Any] = {}
        for key, value in fresh_inputs(inputs).items():
            if key == "batch_size":
                single[key] = 1
            elif isinstance(value, list) and len(value) == batch_size:
                single[key] = [value[i]] if key == "class_labels" else value[i]
            else:
                single[key] = value
        singles.append(single)
    return singles
