"""default_inputs for every pipeline family, batch splitting, and output_array for every output kind.

The pipelines are the zoo's (``tests/zoo``); nothing here runs inference, so each test takes well under
a second. Expectations are derived from the pipelines' own configs where a rule reads them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
import zoo
from diffusers.utils import BaseOutput

from pytest_mps.input_sizes import MIN_SIDE, frame_count, smallest_size, spatial_multiple
from pytest_mps.inputs import default_inputs, expand_batch, split_batch
from pytest_mps.pipelines import load_pipeline
from pytest_mps.running import UnreadableOutputError, output_array

from conftest import FIXTURES


@pytest.fixture(scope="module")
def built() -> Callable[[str], Any]:
    """Zoo pipelines by name, each built once for the module (cheap: no inference)."""
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = zoo.build(name)
        return cache[name]

    return get


def test_existing_fixtures_keep_their_inputs() -> None:
    sd = default_inputs(load_pipeline(FIXTURES / "tiny-sd"))
    assert set(sd) == {"prompt", "height", "width", "num_inference_steps", "generator", "output_type"}
    assert (sd["height"], sd["width"]) == (64, 64)
    assert set(default_inputs(load_pipeline(FIXTURES / "tiny-ddpm"))) == {
        "batch_size",
        "num_inference_steps",
        "generator",
        "output_type",
    }
    assert set(default_inputs(load_pipeline(FIXTURES / "tiny-dit"))) == {
        "class_labels",
        "num_inference_steps",
        "generator",
        "output_type",
    }


def test_video_pipelines_get_two_latent_frames_not_their_defaults(built) -> None:
    for name in ("wan", "ltx", "cogvideox"):
        pipe = built(name)
        temporal = getattr(pipe, "vae_scale_factor_temporal", None) or pipe.vae_temporal_compression_ratio
        inputs = default_inputs(pipe)
        assert inputs["num_frames"] == 1 + temporal
        default = inspect.signature(pipe.__call__).parameters["num_frames"].default
        assert default is None or inputs["num_frames"] < default
    assert default_inputs(built("animatediff"))["num_frames"] == 2
    latte = built("latte")  # a fixed-length temporal position table: exactly that many frames
    assert default_inputs(latte)["video_length"] == latte.transformer.config.video_length


def test_list_patch_sizes_and_fixed_prompt_lengths(built) -> None:
    wan = built("wan")
    assert isinstance(wan.transformer.config.patch_size, list | tuple)
    assert smallest_size(wan) % (wan.vae_scale_factor_spatial * wan.transformer.config.patch_size[-1]) == 0
    cog = built("cogvideox")
    assert default_inputs(cog)["max_sequence_length"] == cog.transformer.config.max_text_seq_length


def test_temporal_patches_round_the_latent_frames_up() -> None:
    @dataclass
    class Config:
        patch_size_t: int

    class Video:
        vae_scale_factor_temporal = 4

        def __init__(self, patch_t: int) -> None:
            self.transformer = type("T", (), {"config": Config(patch_t)})()

        def __call__(self, prompt: str = "", num_frames: int = 49) -> None: ...

    assert [frame_count(Video(p)) for p in (1, 2, 3)] == [5, 5, 9]


def test_audio_length_gives_the_smallest_spectrogram(built) -> None:
    pipe = built("audioldm2")
    seconds = default_inputs(pipe)["audio_length_in_s"]
    per_row = np.prod(pipe.vocoder.config.upsample_rates) / pipe.vocoder.config.sampling_rate
    rows = int(seconds / per_row)  # what the pipeline computes
    assert rows % spatial_multiple(pipe) == 0
    assert rows == min(MIN_SIDE, pipe.unet.config.sample_size * pipe.vae_scale_factor)


def test_decoders_get_seeded_image_embeddings_per_item(built) -> None:
    pipe = built("kandinsky22-decoder")
    width = pipe.unet.config.encoder_hid_dim
    one = default_inputs(pipe, seed=3)
    two = default_inputs(pipe, seed=3, batch_size=2)
    assert one["image_embeds"].shape == one["negative_image_embeds"].shape == (1, width)
    assert two["image_embeds"].shape == (2, width)
    assert not torch.equal(one["image_embeds"], one["negative_image_embeds"])
    singles = split_batch(two, 2)
    assert torch.equal(singles[0]["image_embeds"], one["image_embeds"])
    assert torch.equal(singles[1]["negative_image_embeds"], two["negative_image_embeds"][1:])
    assert [s["generator"].initial_seed() for s in singles] == [3, 4]


@pytest.mark.parametrize("name", ["sd-inpaint", "kandinsky22-decoder", "dit", "ddpm", "wan", "audioldm2"])
def test_batches_split_into_the_items_that_reproduce_them(built, name: str) -> None:
    pipe = built(name)
    batch = default_inputs(pipe, batch_size=2, seed=7)
    singles = split_batch(batch, 2)
    for i, single in enumerate(singles):
        alone = default_inputs(pipe, seed=7 + i)
        assert set(single) == set(alone)
        assert single["generator"].initial_seed() == alone["generator"].initial_seed()
        for key, value in alone.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(single[key], value), key
            elif isinstance(value, PIL.Image.Image):
                assert np.array_equal(np.asarray(single[key]), np.asarray(value)), key
            elif key not in ("generator", "prompt", "class_labels"):
                assert single[key] == value, key
    single = default_inputs(pipe)
    expanded = expand_batch(single, 3)
    assert [g.initial_seed() for g in expanded["generator"]] == [0, 1, 2]
    for i, item in enumerate(split_batch(expanded, 3)):  # expanding then splitting gives the item back
        assert item["generator"].initial_seed() == i
        for key, value in single.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(item[key], value), key
            elif key != "generator":
                assert item[key] == value or np.array_equal(np.asarray(item[key]), np.asarray(value)), key


def test_a_call_that_needs_an_unknown_argument_says_which() -> None:
    class NeedsHint:
        def __call__(self, hint: torch.Tensor, prompt: str | None = None) -> None: ...

    with pytest.raises(ValueError, match=r"^cannot build default inputs for NeedsHint: its call needs hint,"):
        default_inputs(NeedsHint())


# --- outputs --------------------------------------------------------------------------------------


@dataclass
class VideoOutput(BaseOutput):
    frames: object


@dataclass
class PriorOutput(BaseOutput):
    image_embeddings: object
    prompt_embeds: object = None


@dataclass
class KandinskyPriorOutput(BaseOutput):
    image_embeds: object
    negative_image_embeds: object


@dataclass
class AudioOutput(BaseOutput):
    audios: object


@dataclass
class SafetyOnly(BaseOutput):
    nsfw_content_detected: object
    watermark: object = None


def _pil(value: int, size: int = 4) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.full((size, size, 3), value, np.uint8))


def test_outputs_of_every_kind_are_read() -> None:
    video = np.random.default_rng(0).random((2, 3, 4, 4, 3), dtype=np.float32)
    assert np.array_equal(output_array(VideoOutput(frames=video)), video)
    frames = output_array(VideoOutput(frames=[[_pil(0), _pil(255)], [_pil(51), _pil(102)]]))
    assert frames.shape == (2, 2, 4, 4, 3) and frames[0, 1].min() == 1.0 and frames[1, 0].max() == 0.2
    embeddings = torch.randn(2, 16, 2, 2)
    assert np.array_equal(output_array(PriorOutput(image_embeddings=embeddings)), embeddings.numpy())
    rows = torch.randn(2, 8, dtype=torch.bfloat16)
    read = output_array(KandinskyPriorOutput(image_embeds=rows, negative_image_embeds=-rows))
    assert read.dtype == np.float32 and np.array_equal(read, rows.float().numpy())
    audio = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    assert np.array_equal(output_array(AudioOutput(audios=audio)), audio)
    images = np.zeros((1, 4, 4, 3), np.float16)
    assert output_array((images, None)).dtype == np.float16  # return_dict=False keeps the dtype
    assert output_array(([_pil(255)], [False])).shape == (1, 4, 4, 3)
    latents = torch.ones(1, 4, 2, 2, dtype=torch.float16)
    assert output_array(latents).dtype == np.float16


def test_an_unreadable_output_names_its_class_and_fields() -> None:
    with pytest.raises(UnreadableOutputError) as info:
        output_array(SafetyOnly(nsfw_content_detected=[False]))
    message = str(info.value)
    assert "\n" not in message
    assert "SafetyOnly with fields nsfw_content_detected, watermark" in message
    assert "images, frames" in message
    with pytest.raises(
        UnreadableOutputError, match=r"VideoOutput with fields frames \(its values are object"
    ):
        output_array(VideoOutput(frames=np.array([object()])))
