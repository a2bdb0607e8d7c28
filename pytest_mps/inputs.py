"""Valid, deterministic call arguments for any Diffusers pipeline, derived from its signature.

Noise comes from seeded ``torch.Generator("cpu")`` objects: Diffusers' ``randn_tensor`` draws on the CPU
and moves the result, so the same CPU generator gives the same starting latents on every device. That
is what makes a device-against-CPU comparison possible (Diffusers' own tests seed this way on MPS).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from pytest_mps.input_sizes import (
    audio_length,
    denoiser,
    frame_count,
    frame_parameter,
    image_side,
    smallest_size,
    spatial_factor,
)

__all__ = [
    "BATCHED_KEYS",
    "DEFAULT_PROMPT",
    "default_inputs",
    "expand_batch",
    "fresh_inputs",
    "smallest_size",
    "split_batch",
]

DEFAULT_PROMPT = "a photo of an astronaut riding a horse on mars"
_PROMPTS = (DEFAULT_PROMPT, "a watercolor painting of a lighthouse at dawn", "a red cube on a blue table")

#: Arguments that hold one entry per batch item (a list, or a tensor whose first dimension is the batch).
BATCHED_KEYS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "class_labels",
    "image",
    "mask_image",
    "control_image",
    "image_embeds",
    "negative_image_embeds",
)

# Arguments a check turns off where the signature has them: resolution binning snaps a small size to
# a 1024-class bin (PixArt-α/Σ, HunyuanDiT, Sana), caption cleaning needs optional packages (bs4,
# ftfy) and rewrites the prompt differently with and without them.
_SWITCHED_OFF: dict[str, Any] = {"use_resolution_binning": False, "clean_caption": False}

# Image embeddings draw from their own seeds, apart from the noise generators' seed + i.
_EMBEDDING_SEED_OFFSET = 10_000


def _call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


# Kept for callers that imported them from here (the suite's speed check); the rules live in
# pytest_mps.input_sizes.
_denoiser = denoiser
_vae_scale_factor = spatial_factor


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
        config = getattr(denoiser(pipe), "config", None)
        count = getattr(config, "num_embeds_ada_norm", None) or getattr(config, "num_class_embeds", None) or 1
        ids = list(range(int(count)))
    return [ids[(i + 1) % len(ids)] for i in range(batch_size)]


def _generators(seed: int, batch_size: int) -> Any:
    import torch

    if batch_size == 1:
        return torch.Generator("cpu").manual_seed(seed)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch_size)]


def _image_embedding_size(pipe: Any) -> int | None:
    """The width of the image embeddings a decoder is conditioned on (Kandinsky 2.x: the UNet's
    ``encoder_hid_dim`` for its ``image_proj``/``image`` conditioning)."""
    config = getattr(denoiser(pipe), "config", None)
    for name in ("encoder_hid_dim", "cross_attention_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _image_embeddings(pipe: Any, seed: int, batch_size: int) -> tuple[Any, Any]:
    """(``image_embeds``, ``negative_image_embeds``) as a prior would give them: one seeded unit-normal
    row per item (item ``i`` from seed ``seed + i``, so it can be reproduced alone), float32, CPU."""
    import torch

    width = _image_embedding_size(pipe)
    if width is None:
        raise ValueError(
            f"cannot make image embeddings for {type(pipe).__name__}: its denoiser's config names no "
            "encoder_hid_dim; pass image_embeds and negative_image_embeds yourself (e.g. from its prior)"
        )

    def rows(offset: int) -> Any:
        return torch.cat(
            [
                torch.randn((1, width), generator=torch.Generator("cpu").manual_seed(offset + seed + i))
                for i in range(batch_size)
            ]
        )

    return rows(_EMBEDDING_SEED_OFFSET), rows(2 * _EMBEDDING_SEED_OFFSET)


def _one_or_list(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _needs_image(pipe: Any, params: dict[str, inspect.Parameter]) -> bool:
    image = params.get("image")
    return image is not None and (
        image.default is inspect.Parameter.empty
        or "strength" in params  # image-to-image, inpainting
        or "controlnet" in getattr(pipe, "components", {})  # the control image
    )


def _max_sequence_length(pipe: Any) -> int | None:
    """The prompt length a denoiser was built for, where its config fixes one (CogVideoX's
    ``max_text_seq_length``: its position table has exactly that many text rows)."""
    value = getattr(getattr(denoiser(pipe), "config", None), "max_text_seq_length", None)
    return value if isinstance(value, int) and value > 0 else None


def default_inputs(
    pipe: Any,
    *,
    seed: int = 0,
    batch_size: int = 1,
    steps: int = 2,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, Any]:
    """Call arguments for ``pipe`` that any device can reproduce: the smallest valid call of its family.

    Read from the call signature and the components' configs (:mod:`pytest_mps.input_sizes`):

    - text pipelines get prompts; class-conditional ones (DiT) class labels; unconditional ones
      (DDPM) ``batch_size``;
    - image-to-image, inpainting and ControlNet pipelines a deterministic synthetic image (and mask,
      and ``control_image``);
    - decoders conditioned on image embeddings (Kandinsky 2.2) seeded ``image_embeds`` and
      ``negative_image_embeds``, as a prior would give them;
    - sizes are the smallest valid (:func:`smallest_size`) unless given; video pipelines the fewest
      frames that still make a video (:func:`~pytest_mps.input_sizes.frame_count`); AudioLDM-style
      pipelines a short ``audio_length_in_s``;
    - ``use_resolution_binning=False`` (PixArt, HunyuanDiT and Sana snap a small size to a 1024-class
      bin otherwise) and ``clean_caption=False`` (it needs optional packages and changes the prompt);
    - ``max_sequence_length`` where the denoiser fixes the prompt length (CogVideoX);
    - noise from seeded CPU generators (one per item when ``batch_size > 1``, item ``i`` seeded
      ``seed + i``, so item ``i`` of a batch can be reproduced alone); ``output_type="np"``.

    Args:
        pipe: a Diffusers pipeline (any device).
        seed: seed of the first item's generator.
        batch_size: number of items (prompts, labels, images or embeddings).
        steps: ``num_inference_steps``.
        height, width: output size in pixels; defaults to :func:`smallest_size`.

    Raises:
        ValueError: the pipeline needs an argument no default can provide (one line naming it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    params = _call_parameters(pipe)
    inputs: dict[str, Any] = {}
    if "prompt" in params:
        inputs["prompt"] = _one_or_list([_PROMPTS[i % len(_PROMPTS)] for i in range(batch_size)])
    if "class_labels" in params:
        inputs["class_labels"] = _class_labels(pipe, batch_size)
    elif "batch_size" in params and "prompt" not in params:
        inputs["batch_size"] = batch_size
    if "image_embeds" in params and params["image_embeds"].default is inspect.Parameter.empty:
        inputs["image_embeds"], negative = _image_embeddings(pipe, seed, batch_size)
        if "negative_image_embeds" in params:
            inputs["negative_image_embeds"] = negative
    size = smallest_size(pipe)
    if size is not None:
        inputs["height"] = height or size
        inputs["width"] = width or size
    frames = frame_count(pipe)
    if frames is not None:
        inputs[str(frame_parameter(pipe))] = frames
    seconds = audio_length(pipe)
    if seconds is not None:
        inputs["audio_length_in_s"] = seconds
    side = inputs.get("height") or image_side(pipe)
    if _needs_image(pipe, params):
        inputs["image"] = _one_or_list([_synthetic_image(side, seed + i) for i in range(batch_size)])
        if "mask_image" in params:
            inputs["mask_image"] = _one_or_list([_synthetic_mask(side) for _ in range(batch_size)])
    if "control_image" in params:
        inputs["control_image"] = _one_or_list([_synthetic_image(side, seed + i) for i in range(batch_size)])
    for name, value in _SWITCHED_OFF.items():
        if name in params:
            inputs[name] = value
    length = _max_sequence_length(pipe)
    if length is not None and "max_sequence_length" in params:
        inputs["max_sequence_length"] = length
    if "num_inference_steps" in params:
        inputs["num_inference_steps"] = steps
    if "generator" in params:
        inputs["generator"] = _generators(seed, batch_size)
    if "output_type" in params:
        inputs["output_type"] = "np"
    _require_all(pipe, params, inputs)
    return inputs


def _require_all(pipe: Any, params: dict[str, inspect.Parameter], inputs: dict[str, Any]) -> None:
    missing = [
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in inputs
    ]
    if missing:
        raise ValueError(
            f"cannot build default inputs for {type(pipe).__name__}: its call needs "
            f"{', '.join(missing)}, which pytest-mps cannot make up; pass inputs=... with them"
        )


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


def _per_item(key: str) -> bool:
    return key in BATCHED_KEYS or key in ("generator", "latents")


def split_batch(inputs: dict[str, Any], batch_size: int) -> list[dict[str, Any]]:
    """The single-item calls that a batched call of ``batch_size`` items stands for: lists of
    ``batch_size`` entries (prompts, images, generators) give item ``i`` its entry, tensors (image
    embeddings, latents) their row ``i``; ``batch_size`` becomes 1. Other arguments are shared."""
    import torch

    singles = []
    for i in range(batch_size):
        single: dict[str, Any] = {}
        for key, value in fresh_inputs(inputs).items():
            if key == "batch_size":
                single[key] = 1
            elif _per_item(key) and isinstance(value, list) and len(value) == batch_size:
                single[key] = [value[i]] if key == "class_labels" else value[i]
            elif _per_item(key) and isinstance(value, torch.Tensor) and value.shape[:1] == (batch_size,):
                single[key] = value[i : i + 1]
            else:
                single[key] = value
        singles.append(single)
    return singles


def expand_batch(inputs: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Single-item ``inputs`` turned into a batch of ``batch_size`` identical items with one generator
    each (item ``i`` seeded ``seed + i``): the inverse of :func:`split_batch`. Prompts, images and
    one-item lists are repeated, one-row tensors (image embeddings) repeated along the batch."""
    import torch

    out = fresh_inputs(inputs)
    for key in BATCHED_KEYS:
        value = out.get(key)
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.shape[:1] == (1,):
                out[key] = value.repeat(batch_size, *([1] * (value.dim() - 1)))
        elif not isinstance(value, list):
            out[key] = [value] * batch_size
        elif len(value) == 1:  # DiT's one-item class_labels
            out[key] = value * batch_size
    if "batch_size" in out:
        out["batch_size"] = batch_size
    generator = out.get("generator")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, torch.Generator):
        seed = generator.initial_seed()
        device = generator.device
        out["generator"] = [torch.Generator(device).manual_seed(seed + i) for i in range(batch_size)]
    return out
