"""How small a pipeline call can be: the smallest valid image side, frame count and audio length, read
from the pipeline's components and their configs.

A check wants the cheapest call that still runs every stage of the pipeline: the latent must survive
every down-sampling and patching stage of the denoiser, a video must have more than one latent frame,
and a spectrogram as many rows as an image has pixels. Sizes are never larger than the pipeline's own
default (a tiny test model's default can be smaller than 64 pixels).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

__all__ = [
    "MIN_SIDE",
    "audio_length",
    "default_size",
    "denoiser",
    "frame_count",
    "frame_parameter",
    "image_side",
    "smallest_size",
    "spatial_factor",
    "spatial_multiple",
]

#: The smallest side (pixels, or spectrogram rows) worth checking, where the pipeline's default allows.
MIN_SIDE = 64

_DENOISERS = ("unet", "transformer", "prior", "decoder")
_AUTOENCODERS = ("vae", "movq", "vqvae", "vqgan")
# Pipeline attributes that hold the autoencoder's spatial factor, most specific first (video pipelines
# keep a spatial and a temporal one; Kandinsky calls its autoencoder MoVQ).
_SPATIAL_ATTRIBUTES = (
    "vae_scale_factor_spatial",
    "vae_spatial_compression_ratio",
    "movq_scale_factor",
    "vae_scale_factor",
)
_TEMPORAL_ATTRIBUTES = ("vae_scale_factor_temporal", "vae_temporal_compression_ratio")
_FRAME_PARAMETERS = ("num_frames", "video_length")


def _parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def denoiser(pipe: Any) -> Any:
    """The pipeline's denoising model (``unet``, ``transformer``, ``prior`` or ``decoder``), or None."""
    for name in _DENOISERS:
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def _config(pipe: Any) -> Any:
    return getattr(denoiser(pipe), "config", None)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def spatial_factor(pipe: Any) -> int:
    """Pixels per latent cell along one side: the pipeline's own factor where it keeps one, else
    2 ** (autoencoder levels - 1); 1 for a pipeline without an autoencoder (pixel space)."""
    for attribute in _SPATIAL_ATTRIBUTES:
        factor = _positive_int(getattr(pipe, attribute, None))
        if factor is not None:
            return factor
    autoencoders = [getattr(pipe, name, None) for name in _AUTOENCODERS]
    for autoencoder in autoencoders:
        channels = getattr(getattr(autoencoder, "config", None), "block_out_channels", None)
        if channels:
            return 2 ** (len(channels) - 1)
    return 8 if any(a is not None for a in autoencoders) else 1


def _spatial_patch(config: Any) -> int:
    """The denoiser's patch side: an int, or the last entry of a ``(t, h, w)`` patch (Wan)."""
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, list | tuple):
        patch = patch[-1] if patch else None
    return _positive_int(patch) or 1


def _temporal_patch(config: Any) -> int:
    """The denoiser's patch length in time: ``patch_size_t``, or the first entry of a ``(t, h, w)``
    patch."""
    patch_t = _positive_int(getattr(config, "patch_size_t", None))
    if patch_t is not None:
        return patch_t
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, list | tuple) and len(patch) == 3:
        return _positive_int(patch[0]) or 1
    return 1


def _downsampling(config: Any) -> int:
    blocks = getattr(config, "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 1


def spatial_multiple(pipe: Any) -> int:
    """What every valid side is a multiple of: the autoencoder's factor times the denoiser's
    down-sampling and patch side."""
    config = _config(pipe)
    return spatial_factor(pipe) * _downsampling(config) * _spatial_patch(config)


def default_size(pipe: Any) -> int | None:
    """The pipeline's own default side in pixels: its ``default_sample_size``, else the denoiser's
    ``sample_size`` (or ``sample_height``), in latent cells, times :func:`spatial_factor`; else the
    ``height`` default of its call signature. None when nothing says."""
    factor = spatial_factor(pipe)
    cells = _positive_int(getattr(pipe, "default_sample_size", None))
    if cells is None:
        config = _config(pipe)
        sample = getattr(config, "sample_size", None)
        if isinstance(sample, list | tuple):
            sample = min(sample) if sample else None
        cells = _positive_int(sample) or _positive_int(getattr(config, "sample_height", None))
    if cells is not None:
        return cells * factor
    height = _parameters(pipe).get("height")
    return _positive_int(height.default) if height is not None else None


def _smallest_side(pipe: Any) -> int:
    multiple = spatial_multiple(pipe)
    size = max(MIN_SIDE, multiple)
    default = default_size(pipe)
    if default is not None:
        size = min(size, default)
    return max(multiple, size - size % multiple)


def smallest_size(pipe: Any) -> int | None:
    """The smallest side (pixels) that is valid for this pipeline and still meaningful: a multiple of
    :func:`spatial_multiple`, at least :data:`MIN_SIDE` pixels where the pipeline's default
    (:func:`default_size`) allows, never above it. None for pipelines that take no height/width."""
    params = _parameters(pipe)
    if "height" not in params or "width" not in params:
        return None
    return _smallest_side(pipe)


def image_side(pipe: Any) -> int:
    """The side of a synthetic input image (image-to-image, inpainting, control images) for a
    pipeline, whether or not it takes height/width."""
    return _smallest_side(pipe)


def frame_parameter(pipe: Any) -> str | None:
    """The call argument that sets a video's length (``num_frames``, or Latte's ``video_length``)."""
    params = _parameters(pipe)
    return next((name for name in _FRAME_PARAMETERS if name in params), None)


def frame_count(pipe: Any) -> int | None:
    """The fewest frames that still make a video: two latent frames (rounded up to the denoiser's
    temporal patch), decoded through the autoencoder's temporal compression: ``1 + t * (latents - 1)``
    (5 for Wan, LTX and CogVideoX, whose autoencoders compress time 4x; 2 for AnimateDiff). A denoiser
    built for one length (Latte's ``video_length``: its temporal position table) gets that length.
    None for pipelines without a frame argument."""
    if frame_parameter(pipe) is None:
        return None
    fixed = _positive_int(getattr(_config(pipe), "video_length", None))
    if fixed is not None:
        return fixed
    temporal = next(
        (f for f in (_positive_int(getattr(pipe, a, None)) for a in _TEMPORAL_ATTRIBUTES) if f is not None), 1
    )
    patch_t = _temporal_patch(_config(pipe))
    latents = patch_t * math.ceil(2 / patch_t)
    return 1 + temporal * (latents - 1)


def audio_length(pipe: Any) -> float | None:
    """``audio_length_in_s`` for AudioLDM-style pipelines: the spectrogram gets :data:`MIN_SIDE` rows
    (a multiple of the autoencoder factor times the UNet's down-sampling, at most the default), and
    the length is those rows times the vocoder's seconds per row. None for other pipelines."""
    if "audio_length_in_s" not in _parameters(pipe):
        return None
    vocoder = getattr(getattr(pipe, "vocoder", None), "config", None)
    rates, sampling_rate = getattr(vocoder, "upsample_rates", None), getattr(vocoder, "sampling_rate", None)
    if not rates or not sampling_rate:
        return None
    seconds_per_row = math.prod(rates) / sampling_rate
    rows = _smallest_side(pipe)
    length = rows * seconds_per_row
    # The pipeline takes int(length / seconds_per_row) rows: step past a float that rounds below.
    while int(length / seconds_per_row) < rows:
        length = math.nextafter(length, math.inf)
    return length
